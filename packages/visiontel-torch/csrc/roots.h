/* RootHooks (roots.c): a model's root-hook work, compiled, for the forwards it can be sure
 * of; dropped.c and sampled.c do the two kinds of forward. */
#ifndef VISIONTEL_ROOTS_H
#define VISIONTEL_ROOTS_H

#include "speedups.h"

/* What a compiled span start may do, and while which reads hold: armed from the gate's
 * answer (visiontel-support's livespans.LiveSpans.compiled_roots) by RootHooks and
 * StageHooks alike. The fields after `plan` are borrowed from it. */
typedef struct {
    /* attribute reads that must hold for the plan to be used (or None), and the plan */
    PyObject *guard;
    PyObject *plan;
    int always_drop;            /* every span dropped under any parent: no parent is read */
    PyObject *decisions[3];     /* root, local sampled parent, local dropped parent */
    PyObject *ratio_bound;      /* a new trace's id decides (TraceIdRatioBased), or None */
    PyObject *context_var;      /* the OpenTelemetry runtime context's ContextVar */
    PyObject *span_key;         /* the context key of the current span */
    PyObject *context_class;    /* opentelemetry.context.Context */
    PyObject *span_context_class; /* SpanContext, built as a tuple */
    PyObject *getrandbits;      /* random.getrandbits: the SDK's random ids */
    PyObject *live_class;       /* livespans._LiveSpan */
    PyObject *path;             /* the gate's FastPath the live spans use */
    PyObject *later;            /* the resolver's later(function, *args) */
    PyObject *sampled_flags;    /* TraceFlags(SAMPLED) */
    PyObject *no_state;         /* the empty TraceState of a new trace */
    PyObject *span_abc;         /* opentelemetry.trace.Span */
    PyObject *detach;           /* opentelemetry.context.detach: a failed reset, logged */
} SpanPlan;

typedef struct {
    PyObject_HEAD
    SpanPlan p;
    /* Fixed per model. */
    PyObject *state;        /* the model's ThreadRecord (or threading.local) with .record */
    PyObject *depth;        /* _threads.depth: a ForwardDepth (or threading.local) */
    PyObject *owner;        /* the model's ProbeTree: .table, .check, .probes, .seen */
    PyObject *tracer;
    PyObject *invalid_span;
    PyObject *tensor_class;
    PyObject *count;        /* the model's detection counter (count_detections or the user's) */
    int count_tensors;      /* count is count_detections: a plain tensor is counted here */
    PyObject *durations, *images, *detections; /* deques of the ForwardPoints */
    /* their bound append/extend, looked up once: one lookup fewer per point */
    PyObject *add_duration, *add_images, *add_detections;
    PyObject *points_owner; /* UnsampledPoints: .due makes later work due */
    Py_ssize_t record_every;
    PyObject *name;         /* the root span's name */
    PyObject *attributes;   /* its attributes (plain values), or None: sampled ones in Python */
    int describe;           /* capture_shapes: the input attributes from input_cache */
    PyObject *input_cache;  /* _inputs.attribute_cache */
    PyObject *describe_inputs; /* _inputs.describe_inputs: a signature not cached yet */
    PyObject *instrumentation; /* a weak reference to the model's ModelInstrumentation */
    PyObject *complete;     /* ModelInstrumentation._complete(instrumentation, record, ...) */
} RootHooks;

/* roots.c: a plan with nothing armed (guard None); its references for tp_traverse and
 * tp_clear; arm(guard, plan) parsed into it (-1 with an exception); 1 while its guard
 * holds (else 0, the guard cleared). */
void plan_init(SpanPlan *plan);
int plan_traverse(SpanPlan *plan, visitproc visit, void *arg);
void plan_clear(SpanPlan *plan);
int plan_arm(SpanPlan *plan, PyObject *guard, PyObject *armed);
int plan_holds(SpanPlan *plan);
int roots_init_names(void);
/* `record` made this thread's current one, the forward depth one more: -1 on failure. */
int push_record(RootHooks *self, PyObject *record);
int call_method_one(PyObject *target, PyObject *method, PyObject *value);
extern PyObject *str_table, *str_shape, *str_append, *str_extend, *str_due, *str_boxes;

/* dropped.c: a dropped forward's record made current (its batch size known); its points
 * added at the end. Each: -1 with an exception, else 0 (begin) or 1/0 (finish: done or
 * declined, nothing done). */
int dropped_begin(RootHooks *self, PyObject *first, PyObject *batch);
int dropped_finish(RootHooks *self, PyObject *record, long long end, PyObject *output);
/* dropped.c: the detections of an output, as the model's counter gives them. */
PyObject *count_output(RootHooks *self, PyObject *output);

/* sampled.c: the decision for a new root span under the current span (1 sampled, 2
 * dropped, 0 declined: Python decides; -1 error), with the parent's SpanContext (or NULL
 * for a new trace) and a drawn trace id (or NULL; with `may_draw` 0, a new trace whose id
 * would decide is declined, leaving the one draw to Python); then a sampled forward's start
 * and end (1 done, 0 declined with nothing done, -1 error). */
int sampled_decide(SpanPlan *plan, int may_draw, PyObject **parent, PyObject **trace_id);
/* sampled.c: a sampled live span named `name` with a copy of `attributes` (plain values) and
 * `input_attributes` (or NULL) added, started at `wall` under `parent` (or a new trace, of
 * `trace_id` where drawn); and the token of it made current. NULL with an exception. */
PyObject *live_span_start(SpanPlan *plan, PyObject *name, PyObject *base_attributes,
                          PyObject *wall, PyObject *parent, PyObject *trace_id,
                          PyObject *input_attributes);
PyObject *attach_span(SpanPlan *plan, PyObject *span);
/* sampled.c: otel_context.detach(token) (a failed reset goes to detach, which logs it; -1
 * only where detach itself raised); and the attach undone after a failure, its error kept. */
int detach_token(SpanPlan *plan, PyObject *token);
void undo_attach(SpanPlan *plan, PyObject *token);
int sampled_begin(RootHooks *self, PyObject *model, PyObject *first, PyObject *batch,
                  PyObject *input_attributes, PyObject *parent, PyObject *trace_id);
int sampled_finish(RootHooks *self, PyObject *record, PyObject *span, long long end,
                   PyObject *output);
int sampled_init_names(void);

#endif
