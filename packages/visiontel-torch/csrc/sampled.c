#include "roots.h"

/* The root hooks' work for a forward whose span the sampler keeps, at model or stage
 * granularity (in Python: visiontel-support's livespans.LiveSpans.start, and
 * _model.ModelInstrumentation's _begin and _finish): its decision under the current span,
 * its live span started with the ids the SDK would draw, made current in the OpenTelemetry
 * context, and at the end its context detached and the rest handed to the resolver's later
 * work, as Python does. The context's ContextVar and span key, the span classes and the id
 * source come from the gate (visiontel-support's _otel_private) in the plan (roots.h). */

static PyObject *time_ns, *empty_tuple, *bits64, *bits128, *ratio_mask;
static PyObject *str_context, *str_get_span_context, *str_sdk_span, *str_ended, *str_later,
    *str_path, *str_name, *str_parent, *str_attributes, *str_start_ns, *str_check, *str_probes,
    *str_arm, *str_disarm, *str_seen, *str_names, *str_next_check;

/* A random id of `bits` bits, never 0 (the invalid id), as the SDK's RandomIdGenerator. */
static PyObject *draw_id(SpanPlan *plan, PyObject *bits) {
    PyObject *id = PyObject_CallOneArg(plan->getrandbits, bits);
    while (id != NULL && PyObject_Not(id) == 1)
        Py_SETREF(id, PyObject_CallOneArg(plan->getrandbits, bits));
    return id;
}

/* The current span's SpanContext (new reference), NULL without an exception for none. */
static PyObject *current_span_context(SpanPlan *plan, PyObject **context_out) {
    PyObject *context = NULL;
    *context_out = NULL;
    if (PyContextVar_Get(plan->context_var, NULL, &context) < 0) return NULL;
    if (context == NULL) return NULL;
    *context_out = context;
    if (!PyDict_Check(context)) return NULL;
    PyObject *span = PyDict_GetItemWithError(context, plan->span_key); /* borrowed */
    if (span == NULL || span == Py_None) return NULL;
    if ((PyObject *)Py_TYPE(span) == plan->live_class) return PyObject_GetAttr(span, str_context);
    int is_span = PyObject_IsInstance(span, plan->span_abc);
    if (is_span <= 0) return NULL; /* not a span: get_current_span gives INVALID_SPAN */
    return PyObject_CallMethodNoArgs(span, str_get_span_context);
}

int sampled_decide(SpanPlan *plan, int may_draw, PyObject **parent, PyObject **trace_id) {
    *parent = *trace_id = NULL;
    PyObject *context;
    PyObject *span_context = current_span_context(plan, &context);
    Py_XDECREF(context);
    if (span_context == NULL && PyErr_Occurred()) return -1;
    PyObject *decision = plan->decisions[0]; /* a new trace */
    if (span_context != NULL) {
        if ((PyObject *)Py_TYPE(span_context) != plan->span_context_class ||
            PyTuple_GET_SIZE(span_context) != 6) {
            Py_DECREF(span_context);
            return 0;
        }
        int remote = PyObject_IsTrue(PyTuple_GET_ITEM(span_context, 2));
        int valid = PyObject_IsTrue(PyTuple_GET_ITEM(span_context, 5));
        long flags = PyLong_AsLong(PyTuple_GET_ITEM(span_context, 3));
        if (remote < 0 || valid < 0 || (flags == -1 && PyErr_Occurred())) {
            Py_DECREF(span_context);
            return -1;
        }
        if (remote) { /* the tracer decides under a remote parent */
            Py_DECREF(span_context);
            return 0;
        }
        if (valid) {
            decision = plan->decisions[(flags & 1) ? 1 : 2];
            *parent = span_context;
        } else {
            Py_DECREF(span_context);
        }
    }
    if (decision == Py_True) return 1;
    if (decision == Py_False) return 2;
    if (*parent != NULL || plan->ratio_bound == Py_None || !may_draw) return 0;
    /* a new trace under a trace-id ratio: its id decides, drawn as the SDK would */
    if ((*trace_id = draw_id(plan, bits128)) == NULL) return -1;
    PyObject *masked = PyNumber_And(*trace_id, ratio_mask);
    if (masked == NULL) return -1;
    int kept = PyObject_RichCompareBool(masked, plan->ratio_bound, Py_LT);
    Py_DECREF(masked);
    return kept < 0 ? -1 : kept ? 1 : 2;
}

/* A sampled live span, as livespans._start_live makes it (plain attributes). */
PyObject *live_span_start(SpanPlan *plan, PyObject *name, PyObject *base_attributes,
                          PyObject *wall, PyObject *parent, PyObject *trace_id,
                          PyObject *input_attributes) {
    PyObject *span_id = NULL, *new_trace = NULL, *context = NULL, *attributes = NULL;
    PyObject *span = NULL;
    /* a new trace's id first, then the span's: the order the SDK's tracer draws them in */
    PyObject *trace = parent != NULL ? PyTuple_GET_ITEM(parent, 0) : trace_id;
    if (trace == NULL && (trace = new_trace = draw_id(plan, bits128)) == NULL) goto done;
    if ((span_id = draw_id(plan, bits64)) == NULL) goto done;
    PyObject *state = parent != NULL ? PyTuple_GET_ITEM(parent, 4) : plan->no_state;
    /* what tuple.__new__(SpanContext, items) makes (the gate checked the layout) */
    PyTypeObject *context_type = (PyTypeObject *)plan->span_context_class;
    if ((context = context_type->tp_alloc(context_type, 6)) == NULL) goto done;
    PyObject *items[6] = {trace, span_id, Py_False, plan->sampled_flags, state, Py_True};
    for (int i = 0; i < 6; i++) PyTuple_SET_ITEM(context, i, Py_NewRef(items[i]));
    if ((attributes = PyDict_Copy(base_attributes)) == NULL) goto done;
    if (input_attributes != NULL && PyDict_Update(attributes, input_attributes) < 0) goto done;
    span = PyBaseObject_Type.tp_new((PyTypeObject *)plan->live_class, empty_tuple, NULL);
    if (span == NULL) goto done;
    PyObject *names[] = {str_path,       str_name,     str_context, str_parent, str_attributes,
                         str_start_ns,   str_sdk_span, str_ended,   str_later};
    PyObject *values[] = {plan->path, name, context, parent ? parent : Py_None,
                          attributes, wall, Py_None, Py_False, plan->later};
    for (int i = 0; i < 9; i++) {
        if (PyObject_SetAttr(span, names[i], values[i]) < 0) {
            Py_CLEAR(span);
            break;
        }
    }
done:
    Py_XDECREF(span_id);
    Py_XDECREF(new_trace);
    Py_XDECREF(context);
    Py_XDECREF(attributes);
    return span;
}

/* otel_context.attach(set_span_in_context(span)): the token. */
PyObject *attach_span(SpanPlan *plan, PyObject *span) {
    PyObject *current;
    if (PyContextVar_Get(plan->context_var, NULL, &current) < 0) return NULL;
    PyObject *values =
        current != NULL && PyDict_Check(current) ? PyDict_Copy(current) : PyDict_New();
    Py_XDECREF(current);
    if (values == NULL) return NULL;
    PyObject *token = NULL;
    if (PyDict_SetItem(values, plan->span_key, span) == 0) {
        PyObject *context = PyObject_CallOneArg(plan->context_class, values);
        if (context != NULL) {
            token = PyContextVar_Set(plan->context_var, context);
            Py_DECREF(context);
        }
    }
    Py_DECREF(values);
    return token;
}

/* otel_context.detach(token): the variable reset, or where that fails (another context's
 * token, one used already), detach itself, which fails the same way and logs it. */
int detach_token(SpanPlan *plan, PyObject *token) {
    if (PyContextVar_Reset(plan->context_var, token) == 0) return 0;
    PyErr_Clear();
    PyObject *detached = PyObject_CallOneArg(plan->detach, token);
    Py_XDECREF(detached);
    return detached == NULL ? -1 : 0;
}

/* The caller's context back after a failure once `token` was attached, keeping the error. */
void undo_attach(SpanPlan *plan, PyObject *token) {
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (PyContextVar_Reset(plan->context_var, token) < 0) PyErr_Clear();
    PyErr_Restore(type, value, traceback);
}

int sampled_begin(RootHooks *self, PyObject *model, PyObject *first, PyObject *batch,
                  PyObject *input_attributes, PyObject *parent, PyObject *trace_id) {
    PyObject *wall = NULL, *perf = NULL, *span = NULL, *checked = NULL, *table = NULL;
    PyObject *names = NULL, *stamps = NULL, *previous = NULL, *record = NULL, *token = NULL;
    PyObject *probes = NULL, *armed = NULL;
    int result = -1;
    long long now;
    if ((wall = PyObject_CallNoArgs(time_ns)) == NULL) goto done;
    if (clock_ns(&now) < 0 || (perf = PyLong_FromLongLong(now)) == NULL) goto done;
    if ((span = live_span_start(&self->p, self->name, self->attributes, wall, parent, trace_id,
                                     input_attributes)) == NULL) goto done;
    /* tree.check(model, perf): whose first line returns before next_check_ns */
    if ((checked = PyObject_GetAttr(self->owner, str_next_check)) == NULL) goto done;
    int due = PyObject_RichCompareBool(perf, checked, Py_GE);
    Py_CLEAR(checked);
    if (due < 0) goto done;
    if (due && (checked = PyObject_CallMethodObjArgs(self->owner, str_check, model, perf,
                                                      NULL)) == NULL)
        goto done;
    if ((table = PyObject_GetAttr(self->owner, str_table)) == NULL) goto done;
    if ((names = PyObject_GetAttr(table, str_names)) == NULL) goto done;
    int layered = PyObject_IsTrue(names);
    if (layered < 0) goto done;
    if ((stamps = layered ? PyList_New(0) : Py_NewRef(Py_None)) == NULL) goto done;
    if ((previous = current_record(self->state)) == NULL) goto done;
    PyObject *required[] = {table, self->tracer, span, perf, wall, stamps};
    record = record_create(required, batch, first, previous);
    if (record == NULL || (token = attach_span(&self->p, span)) == NULL) goto done;
    if (record_set(record, F_CONTEXT_TOKEN, token) < 0) goto done;
    if (layered) {
        if ((probes = PyObject_GetAttr(self->owner, str_probes)) == NULL) goto done;
        if (record_set(record, F_PROBES, probes) < 0) goto done;
        if ((armed = PyObject_CallMethodNoArgs(probes, str_arm)) == NULL) goto done;
    }
    if (push_record(self, record) < 0) goto done;
    result = 0;
done:
    if (result < 0 && token != NULL) undo_attach(&self->p, token);
    Py_XDECREF(wall);
    Py_XDECREF(perf);
    Py_XDECREF(span);
    Py_XDECREF(checked);
    Py_XDECREF(table);
    Py_XDECREF(names);
    Py_XDECREF(stamps);
    Py_XDECREF(previous);
    Py_XDECREF(record);
    Py_XDECREF(token);
    Py_XDECREF(probes);
    Py_XDECREF(armed);
    return result;
}

/* 1 when `span` is a live span still open and not handed to the SDK, 0 else, -1 error. */
static int still_live(PyObject *span) {
    PyObject *sdk_span = PyObject_GetAttr(span, str_sdk_span);
    if (sdk_span == NULL) return -1;
    PyObject *ended = PyObject_GetAttr(span, str_ended);
    int live = ended == NULL ? -1 : sdk_span == Py_None && ended == Py_False;
    Py_DECREF(sdk_span);
    Py_XDECREF(ended);
    return live;
}

static int call_method(PyObject *target, PyObject *method) {
    PyObject *result = PyObject_CallMethodNoArgs(target, method);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

int sampled_finish(RootHooks *self, PyObject *record, PyObject *span, long long end,
                   PyObject *output) {
    if (self->p.context_var == Py_None) return 0;
    int live = still_live(span);
    if (live <= 0) return live;
    PyObject *events = record_get(record, F_EVENTS);
    if (events == NULL) return -1;
    int gpu = events != Py_None;
    Py_DECREF(events);
    if (gpu) return 0;
    /* held weakly: a strong reference from here would make the model's instrumentation
     * (and the submodules its tree holds) wait for the cyclic collector once removed */
    PyObject *instrumentation = PyObject_CallNoArgs(self->instrumentation);
    if (instrumentation == NULL) return -1;
    if (instrumentation == Py_None) {
        Py_DECREF(instrumentation);
        return 0;
    }
    PyObject *previous = NULL, *perf_end = NULL, *token = NULL, *probes = NULL, *stamps = NULL;
    PyObject *counts = NULL, *later = NULL;
    int result = -1;
    if ((previous = record_get(record, F_PREVIOUS)) == NULL) goto done;
    if (set_current_record(self->state, previous) < 0 || depth_add(self->depth, -1) < 0)
        goto done;
    if ((perf_end = PyLong_FromLongLong(end)) == NULL) goto done;
    if (record_set(record, F_PERF_END, perf_end) < 0) goto done;
    if ((token = record_get(record, F_CONTEXT_TOKEN)) == NULL) goto done;
    if (token != Py_None && detach_token(&self->p, token) < 0) goto done;
    if ((probes = record_get(record, F_PROBES)) == NULL) goto done;
    if (probes != Py_None) {
        if (call_method(probes, str_disarm) < 0) goto done;
        if ((stamps = record_get(record, F_STAMPS)) == NULL) goto done;
        int any = PyObject_IsTrue(stamps);
        if (any < 0) goto done;
        if (!any) Py_SETREF(stamps, PyList_New(0));
        if (stamps == NULL || call_method_one(self->owner, str_seen, stamps) < 0) goto done;
    }
    if ((counts = count_output(self, output)) == NULL) goto done;
    /* Nor the inputs, nor the enclosing forward's record: queued work must not keep
     * tensors (GPU memory) alive for the batch's lifetime. */
    if (record_set(record, F_INPUTS, Py_None) < 0 || record_set(record, F_PREVIOUS, Py_None) < 0)
        goto done;
    later = PyObject_CallFunctionObjArgs(self->p.later, self->complete, instrumentation, record,
                                         counts, Py_None, NULL);
    if (later == NULL) goto done;
    result = 1;
done:
    Py_DECREF(instrumentation);
    Py_XDECREF(previous);
    Py_XDECREF(perf_end);
    Py_XDECREF(token);
    Py_XDECREF(probes);
    Py_XDECREF(stamps);
    Py_XDECREF(counts);
    Py_XDECREF(later);
    return result;
}

int sampled_init_names(void) {
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    NAME(str_context, "context");
    NAME(str_get_span_context, "get_span_context");
    NAME(str_sdk_span, "_sdk_span");
    NAME(str_ended, "_ended");
    NAME(str_later, "_later");
    NAME(str_path, "_path");
    NAME(str_name, "name");
    NAME(str_parent, "parent");
    NAME(str_attributes, "attributes");
    NAME(str_start_ns, "start_ns");
    NAME(str_check, "check");
    NAME(str_probes, "probes");
    NAME(str_arm, "arm");
    NAME(str_disarm, "disarm");
    NAME(str_seen, "seen");
    NAME(str_names, "names");
    NAME(str_next_check, "next_check_ns");
#undef NAME
    if ((empty_tuple = PyTuple_New(0)) == NULL) return -1;
    if ((bits64 = PyLong_FromLong(64)) == NULL || (bits128 = PyLong_FromLong(128)) == NULL)
        return -1;
    if ((ratio_mask = PyLong_FromUnsignedLongLong(0xFFFFFFFFFFFFFFFFULL)) == NULL) return -1;
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL) return -1;
    time_ns = PyObject_GetAttrString(time_module, "time_ns");
    Py_DECREF(time_module);
    return time_ns == NULL ? -1 : 0;
}
