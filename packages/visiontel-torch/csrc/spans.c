#include "speedups.h"

/* What a finished span is built from; one per call of layer_spans. */
typedef struct {
    PyObject *span_class, *template, *new_span_id, *new_context, *context_class, *limited;
    PyObject *sampled, *trace_id, *trace_state, *ended, *empty;
    Py_ssize_t max_attributes; /* < 0: no count limit */
    int length_limited;
    PyObject *drawn;       /* bytes: span ids drawn at once, 8 little-endian bytes each */
    Py_ssize_t next_drawn; /* the next unused id in drawn */
} Builder;

/* The span ids of a forward's layer spans, drawn in one call: random.getrandbits(64 * n)
 * fills its 32-bit words from the least significant up, exactly as n calls of
 * getrandbits(64) would in turn, so its 64-bit chunks are the ids those calls would give
 * (the SDK's RandomIdGenerator). One call instead of one per span. */
static int draw_span_ids(Builder *b, PyObject *draw_bits, Py_ssize_t count) {
    if (draw_bits == Py_None || count <= 0) return 0;
    PyObject *bits = PyObject_CallFunction(draw_bits, "n", count * 64);
    if (bits == NULL) return -1;
    b->drawn = PyObject_CallMethod(bits, "to_bytes", "ns", count * 8, "little");
    Py_DECREF(bits);
    if (b->drawn != NULL && !PyBytes_Check(b->drawn)) {
        Py_CLEAR(b->drawn);
        PyErr_SetString(PyExc_TypeError, "int.to_bytes did not give bytes");
    }
    return b->drawn == NULL ? -1 : 0;
}

/* The next drawn id; NULL without an exception when none is left or it is 0 (invalid). */
static PyObject *next_drawn_id(Builder *b) {
    if (b->drawn == NULL || (b->next_drawn + 1) * 8 > PyBytes_GET_SIZE(b->drawn)) return NULL;
    const unsigned char *bytes =
        (const unsigned char *)PyBytes_AS_STRING(b->drawn) + 8 * b->next_drawn++;
    unsigned long long id = 0;
    for (int i = 7; i >= 0; i--) id = (id << 8) | bytes[i];
    return id == 0 ? NULL : PyLong_FromUnsignedLongLong(id);
}

typedef struct {
    Py_ssize_t index;
    long long perf_ns;
    PyObject *context;    /* NULL: over the budget, timed into the histogram instead */
    PyObject *parent;     /* borrowed: the root's context or an open call's */
    PyObject *attributes; /* owned, with context */
} OpenCall;

/* The SpanContext of a new child: a tuple built directly where the gate found it exact. */
static PyObject *child_context(Builder *b) {
    PyObject *span_id = next_drawn_id(b);
    if (span_id == NULL && PyErr_Occurred()) return NULL;
    if (span_id == NULL) span_id = PyObject_CallNoArgs(b->new_span_id);
    while (span_id != NULL && PyLong_Check(span_id) && PyObject_Not(span_id) == 1)
        Py_SETREF(span_id, PyObject_CallNoArgs(b->new_span_id)); /* 0 is the invalid id */
    if (span_id == NULL) return NULL;
    PyObject *context = NULL;
    if (b->context_class != Py_None) {
        /* what tuple.__new__(SpanContext, items) makes, without its two temporary tuples */
        PyTypeObject *type = (PyTypeObject *)b->context_class;
        context = type->tp_alloc(type, 6);
        if (context != NULL) {
            PyObject *items[6] = {b->trace_id, span_id, Py_False, b->sampled, b->trace_state,
                                  Py_True};
            for (int i = 0; i < 6; i++) PyTuple_SET_ITEM(context, i, Py_NewRef(items[i]));
        }
    } else {
        context = PyObject_CallFunctionObjArgs(b->new_context, b->trace_id, span_id, b->sampled,
                                               b->trace_state, NULL);
    }
    Py_DECREF(span_id);
    return context;
}

/* The finished span of one call: the template's fields plus its own, as finished_span. */
static int finish(Builder *b, PyObject *name, OpenCall *call, long long start_wall,
                  long long end_wall) {
    PyObject *attributes = call->attributes;
    Py_INCREF(attributes);
    if (b->length_limited ||
        (b->max_attributes >= 0 && PyDict_GET_SIZE(attributes) > b->max_attributes)) {
        Py_SETREF(attributes, PyObject_CallOneArg(b->limited, attributes));
        if (attributes == NULL) return -1;
    }
    PyObject *fields = PyDict_Copy(b->template);
    PyObject *start = PyLong_FromLongLong(start_wall), *end = PyLong_FromLongLong(end_wall);
    PyObject *span = NULL;
    int failed = fields == NULL || start == NULL || end == NULL ||
                 PyDict_SetItem(fields, str_f_name, name) < 0 ||
                 PyDict_SetItem(fields, str_f_context, call->context) < 0 ||
                 PyDict_SetItem(fields, str_f_parent, call->parent) < 0 ||
                 PyDict_SetItem(fields, str_f_attributes, attributes) < 0 ||
                 PyDict_SetItem(fields, str_f_start, start) < 0 ||
                 PyDict_SetItem(fields, str_f_end, end) < 0;
    if (!failed) {
        span = PyBaseObject_Type.tp_new((PyTypeObject *)b->span_class, b->empty, NULL);
        failed = span == NULL || PyObject_GenericSetDict(span, fields, NULL) < 0 ||
                 PyList_Append(b->ended, span) < 0;
        /* Out of the cyclic GC's sight: at layer granularity a forward makes ~100 spans that
         * wait in the batch processor's queue, and the collections their allocations set off
         * cost ~4 % of a 2 ms forward (measured with gc.disable()). None of the three can be
         * in a cycle: a finished span holds its name, ids, times, plain attributes and the
         * template's immutable values (resource, scope, status, empty events and links),
         * none of which refers back; reference counting frees them. */
        if (!failed) {
            PyObject_GC_UnTrack(span);
            PyObject_GC_UnTrack(fields);
            if (PyObject_GC_IsTracked(call->context)) PyObject_GC_UnTrack(call->context);
        }
    }
    Py_XDECREF(span);
    Py_XDECREF(fields);
    Py_XDECREF(start);
    Py_XDECREF(end);
    Py_DECREF(attributes);
    return failed ? -1 : 0;
}

static int mark_incomplete_and_finish(Builder *b, PyObject *names, OpenCall *call,
                                      long long to_wall, long long end_wall) {
    if (PyDict_SetItem(call->attributes, str_incomplete, Py_True) < 0) return -1;
    return finish(b, PyTuple_GET_ITEM(names, call->index), call, call->perf_ns + to_wall,
                  end_wall);
}

static int stamp_fields(PyObject *stamp, Py_ssize_t *index, long long *perf_ns) {
    if (!PyTuple_Check(stamp) || PyTuple_GET_SIZE(stamp) < 2) {
        PyErr_SetString(PyExc_TypeError, "a stamp is an (index, perf_ns, event) tuple");
        return -1;
    }
    *index = PyLong_AsSsize_t(PyTuple_GET_ITEM(stamp, 0));
    if (*index == -1 && PyErr_Occurred()) return -1;
    *perf_ns = nanoseconds_of(PyTuple_GET_ITEM(stamp, 1));
    return (*perf_ns == -1 && PyErr_Occurred()) ? -1 : 0;
}

/*
 * layer_spans(stamps, names, classes, budget, root_context, to_wall, root_end_wall,
 *             span_class, template, new_span_id, new_context, context_class, limited,
 *             sampled, max_attributes, length_limited, draw_bits)
 *   draw_bits: random.getrandbits where span ids are the SDK's random ones, else None
 *   -> (finished spans in the order they ended, [(module name, seconds), ...] over budget)
 */
PyObject *layer_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 17) {
        PyErr_SetString(PyExc_TypeError, "layer_spans takes 17 positional arguments");
        return NULL;
    }
    PyObject *stamps = args[0], *names = args[1], *classes = args[2], *root = args[4];
    if (!PyList_Check(stamps) || !PyTuple_Check(names) || !PyTuple_Check(classes) ||
        PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(classes)) {
        PyErr_SetString(PyExc_TypeError, "stamps: list; names, classes: tuples of one length");
        return NULL;
    }
    Py_ssize_t budget = PyLong_AsSsize_t(args[3]);
    long long to_wall = nanoseconds_of(args[5]), root_end = nanoseconds_of(args[6]);
    Py_ssize_t max_attributes = args[14] == Py_None ? -1 : PyLong_AsSsize_t(args[14]);
    int length_limited = PyObject_IsTrue(args[15]);
    if (PyErr_Occurred() || length_limited < 0) return NULL;
    Builder b = {args[7], args[8], args[9], args[10], args[11], args[12], args[13],
                 NULL, NULL, PyList_New(0), PyTuple_New(0), max_attributes, length_limited,
                 NULL, 0};
    PyObject *aggregated = PyList_New(0), *result = NULL;
    Py_ssize_t modules = PyTuple_GET_SIZE(names), count = PyList_GET_SIZE(stamps);
    Py_ssize_t *calls = PyMem_Calloc(modules ? modules : 1, sizeof(Py_ssize_t));
    OpenCall *open = PyMem_Calloc(count ? count : 1, sizeof(OpenCall));
    Py_ssize_t depth = 0, created = 0;
    b.trace_id = PyObject_GetAttr(root, str_trace_id);
    b.trace_state = PyObject_GetAttr(root, str_trace_state);
    if (b.ended == NULL || b.empty == NULL || aggregated == NULL || calls == NULL ||
        open == NULL || b.trace_id == NULL || b.trace_state == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t starts = 0; /* the spans this forward will have: a start stamp each, budgeted */
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t index;
        long long perf_ns;
        if (stamp_fields(PyList_GET_ITEM(stamps, i), &index, &perf_ns) < 0)
            PyErr_Clear(); /* refused in the loop below */
        else
            starts += index >= 0;
    }
    if (draw_span_ids(&b, args[16], starts < budget ? starts : budget) < 0) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t index;
        long long perf_ns;
        if (stamp_fields(PyList_GET_ITEM(stamps, i), &index, &perf_ns) < 0) goto done;
        Py_ssize_t module_index = index >= 0 ? index : ~index;
        if (module_index >= modules) {
            PyErr_SetString(PyExc_IndexError, "a stamp names a module outside the table");
            goto done;
        }
        if (index >= 0) {
            OpenCall *call = &open[depth++];
            Py_ssize_t nth = ++calls[index];
            call->index = index;
            call->perf_ns = perf_ns;
            call->parent = root; /* the innermost open call that has a span */
            for (Py_ssize_t j = depth - 2; j >= 0; j--)
                if (open[j].context != NULL) {
                    call->parent = open[j].context;
                    break;
                }
            if (created >= budget) continue;
            call->attributes = PyDict_New();
            if (call->attributes == NULL ||
                PyDict_SetItem(call->attributes, str_class, PyTuple_GET_ITEM(classes, index)) < 0)
                goto done;
            if (nth > 1) {
                PyObject *n = PyLong_FromSsize_t(nth);
                int failed = n == NULL || PyDict_SetItem(call->attributes, str_call, n) < 0;
                Py_XDECREF(n);
                if (failed) goto done;
            }
            call->context = child_context(&b);
            if (call->context == NULL) goto done;
            created++;
            continue;
        }
        Py_ssize_t closed = ~index, matched = -1;
        while (depth > 0) { /* close calls whose end was never stamped, up to this one */
            OpenCall *call = &open[--depth];
            if (call->index == closed) {
                matched = depth;
                break;
            }
            if (call->context != NULL &&
                mark_incomplete_and_finish(&b, names, call, to_wall, perf_ns + to_wall) < 0)
                goto done;
            Py_CLEAR(call->context);
            Py_CLEAR(call->attributes);
        }
        if (matched < 0) continue;
        OpenCall *call = &open[matched];
        if (call->context == NULL) {
            double seconds = (double)(perf_ns - call->perf_ns) / 1e9;
            PyObject *point = Py_BuildValue("(Od)", PyTuple_GET_ITEM(names, closed), seconds);
            int failed = point == NULL || PyList_Append(aggregated, point) < 0;
            Py_XDECREF(point);
            if (failed) goto done;
            continue;
        }
        int failed = finish(&b, PyTuple_GET_ITEM(names, closed), call, call->perf_ns + to_wall,
                            perf_ns + to_wall);
        Py_CLEAR(call->context);
        Py_CLEAR(call->attributes);
        if (failed < 0) goto done;
    }
    for (Py_ssize_t j = 0; j < depth; j++) /* unmatched calls end with the root */
        if (open[j].context != NULL &&
            mark_incomplete_and_finish(&b, names, &open[j], to_wall, root_end) < 0)
            goto done;
    result = PyTuple_Pack(2, b.ended, aggregated);
done:
    if (open != NULL)
        for (Py_ssize_t j = 0; j < count; j++) {
            Py_XDECREF(open[j].context);
            Py_XDECREF(open[j].attributes);
        }
    PyMem_Free(open);
    PyMem_Free(calls);
    Py_XDECREF(b.trace_id);
    Py_XDECREF(b.trace_state);
    Py_XDECREF(b.ended);
    Py_XDECREF(b.empty);
    Py_XDECREF(b.drawn);
    Py_XDECREF(aggregated);
    return result;
}
