/*
 * visiontel.torch._speedups: the two per-layer loops of layer granularity, compiled.
 *
 * Why C: after a 2 ms forward has evicted the interpreter's working set, every Python
 * bytecode of the per-layer work runs three to five times slower than warm
 * (docs/benchmarks.md, issue 16). These two loops run once per layer call and once per
 * layer span; in C they touch a fraction of the instructions.
 *
 *   StampedForward   a child module's armed forward wrapper: two (index, perf ns, event)
 *                    stamps around the original forward (the closure in _probes.py).
 *   layer_spans      the finished layer spans of one forward, built from its stamps
 *                    (the SDK fast path of Resolver._materialise, without GPU events).
 *
 * Both mirror their pure-Python versions exactly; _compiled.py picks one or the other and
 * the tests run both (VISIONTEL_TORCH_PURE_PYTHON=1). Nothing here knows OpenTelemetry:
 * the span class, its field template and the id and context factories come from
 * _otel_private.py, behind its gate.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <time.h>

/* perf_counter_ns() is CLOCK_MONOTONIC on Linux; elsewhere we call it (see clock_ns). */
static PyObject *perf_counter_ns = NULL;
static PyObject *str_record, *str_stamps, *str_events, *str_layer_start, *str_layer_end;
static PyObject *str_class, *str_call, *str_incomplete;
static PyObject *str_f_name, *str_f_context, *str_f_parent, *str_f_attributes, *str_f_start,
    *str_f_end;

static int clock_ns(long long *out) {
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return 0;
    }
#endif
    PyObject *now = PyObject_CallNoArgs(perf_counter_ns);
    if (now == NULL) return -1;
    *out = PyLong_AsLongLong(now);
    Py_DECREF(now);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* ---------------------------------------------------------------- ThreadRecord */

/* _model._ThreadState, compiled: each thread's in-flight ForwardRecord of one model, as the
 * attribute ``record`` (None when the thread runs no forward of it). A threading.local
 * costs a per-thread dictionary lookup and a generic attribute lookup on every layer call;
 * this keeps the last thread's record at hand. Only threads with a forward in flight have
 * an entry (setting None removes it), so a thread that ends leaves nothing behind. */
typedef struct {
    PyObject_HEAD
    PyObject *records;      /* {thread ident: record} */
    unsigned long last_ident;
    PyObject *last_record;  /* borrowed from records; NULL: not known */
} ThreadRecord;

static PyTypeObject ThreadRecordType;

static PyObject *thread_record_get(ThreadRecord *self) { /* borrowed; NULL: None */
    unsigned long ident = PyThread_get_thread_ident();
    if (self->last_record != NULL && ident == self->last_ident) return self->last_record;
    PyObject *key = PyLong_FromUnsignedLong(ident);
    if (key == NULL) return NULL;
    PyObject *record = PyDict_GetItemWithError(self->records, key);
    Py_DECREF(key);
    if (record != NULL) {
        self->last_ident = ident;
        self->last_record = record;
    }
    return record;
}

static PyObject *record_getter(ThreadRecord *self, void *closure) {
    PyObject *record = thread_record_get(self);
    if (record == NULL && PyErr_Occurred()) return NULL;
    return Py_NewRef(record == NULL ? Py_None : record);
}

static int record_setter(ThreadRecord *self, PyObject *value, void *closure) {
    PyObject *key = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (key == NULL) return -1;
    self->last_record = NULL; /* the entry it borrowed from may go */
    int failed;
    if (value == NULL || value == Py_None) {
        failed = PyDict_DelItem(self->records, key);
        if (failed < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear();
            failed = 0;
        }
    } else {
        failed = PyDict_SetItem(self->records, key, value);
    }
    Py_DECREF(key);
    return failed;
}

static PyGetSetDef thread_record_getset[] = {
    {"record", (getter)record_getter, (setter)record_setter,
     "This thread's in-flight forward record, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *thread_record_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "ThreadRecord() takes no arguments");
        return NULL;
    }
    ThreadRecord *self = (ThreadRecord *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->records = PyDict_New();
    if (self->records == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int thread_record_traverse(ThreadRecord *self, visitproc visit, void *arg) {
    Py_VISIT(self->records);
    return 0;
}

static int thread_record_clear(ThreadRecord *self) {
    self->last_record = NULL;
    Py_CLEAR(self->records);
    return 0;
}

static void thread_record_dealloc(ThreadRecord *self) {
    PyObject_GC_UnTrack(self);
    thread_record_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ThreadRecordType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.ThreadRecord",
    .tp_basicsize = sizeof(ThreadRecord),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = thread_record_new,
    .tp_traverse = (traverseproc)thread_record_traverse,
    .tp_clear = (inquiry)thread_record_clear,
    .tp_dealloc = (destructor)thread_record_dealloc,
    .tp_getset = thread_record_getset,
    .tp_doc = "ThreadRecord(): each thread's in-flight forward record, as .record.",
};

/* ---------------------------------------------------------------- StampedForward */

typedef struct {
    PyObject_HEAD
    PyObject *inner;      /* list: [the forward to call] */
    PyObject *state;      /* threading.local with .record */
    PyObject *acquire;    /* (events, site) -> event or None, never raises */
    PyObject *start_index, *end_index; /* index and ~index, as ints */
    vectorcallfunc vectorcall;
} StampedForward;

/* Append (index, now, event) to stamps; event acquired from events when it is not None. */
static int stamp(StampedForward *self, PyObject *stamps, PyObject *events, PyObject *index,
                 PyObject *site) {
    PyObject *event = Py_None;
    Py_INCREF(event);
    if (events != Py_None) {
        Py_DECREF(event);
        event = PyObject_CallFunctionObjArgs(self->acquire, events, site, NULL);
        if (event == NULL) return -1;
    }
    long long now;
    if (clock_ns(&now) < 0) {
        Py_DECREF(event);
        return -1;
    }
    PyObject *ns = PyLong_FromLongLong(now);
    if (ns == NULL) {
        Py_DECREF(event);
        return -1;
    }
    PyObject *item = PyTuple_Pack(3, index, ns, event);
    Py_DECREF(ns);
    Py_DECREF(event);
    if (item == NULL) return -1;
    int failed = PyList_Append(stamps, item);
    Py_DECREF(item);
    return failed;
}

static PyObject *stamped_call(PyObject *callable, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames) {
    StampedForward *self = (StampedForward *)callable;
    PyObject *forward = PyList_GetItem(self->inner, 0);
    if (forward == NULL) return NULL;
    Py_INCREF(forward);
    PyObject *record;
    if (Py_IS_TYPE(self->state, &ThreadRecordType)) {
        record = thread_record_get((ThreadRecord *)self->state);
        if (record == NULL && !PyErr_Occurred()) record = Py_None;
        Py_XINCREF(record);
    } else {
        record = PyObject_GetAttr(self->state, str_record);
    }
    PyObject *stamps = NULL, *events = NULL, *result = NULL;
    if (record == NULL) goto done;
    if (record != Py_None) {
        stamps = PyObject_GetAttr(record, str_stamps);
        if (stamps == NULL) goto done;
    }
    if (stamps == NULL || stamps == Py_None) {
        result = PyObject_Vectorcall(forward, args, nargsf, kwnames);
        goto done;
    }
    /* No torch.compile / jit.trace check here, unlike the Python wrapper: a record exists
     * only for a root forward that began outside them (the root pre-hook checks), and
     * dynamo never traces into C (it would into a Python wrapper, hence its check). */
    if (!PyList_Check(stamps)) {
        result = PyObject_Vectorcall(forward, args, nargsf, kwnames);
        goto done;
    }
    events = PyObject_GetAttr(record, str_events);
    if (events == NULL) goto done;
    if (stamp(self, stamps, events, self->start_index, str_layer_start) < 0) goto done;
    result = PyObject_Vectorcall(forward, args, nargsf, kwnames);
    /* like try/finally: the end is stamped when the layer raises too */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    if (stamp(self, stamps, events, self->end_index, str_layer_end) < 0) {
        Py_CLEAR(result);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        goto done;
    }
    PyErr_Restore(type, value, traceback);
done:
    Py_DECREF(forward);
    Py_XDECREF(record);
    Py_XDECREF(stamps);
    Py_XDECREF(events);
    return result;
}

/* A copy or pickle of a module taken while it is armed gets the forward the wrapper calls:
 * the module as if never instrumented (as _probes._CopiesAsInner does). */
static PyObject *deepcopy_function = NULL;

static PyObject *stamped_deepcopy(StampedForward *self, PyObject *memo) {
    PyObject *forward = PyList_GetItem(self->inner, 0);
    if (forward == NULL) return NULL;
    return PyObject_CallFunctionObjArgs(deepcopy_function, forward, memo, NULL);
}

static PyObject *stamped_reduce_ex(StampedForward *self, PyObject *protocol) {
    PyObject *forward = PyList_GetItem(self->inner, 0);
    if (forward == NULL) return NULL;
    return PyObject_CallMethod(forward, "__reduce_ex__", "O", protocol);
}

static PyMethodDef stamped_methods[] = {
    {"__deepcopy__", (PyCFunction)stamped_deepcopy, METH_O, "A copy of the wrapped forward."},
    {"__reduce_ex__", (PyCFunction)stamped_reduce_ex, METH_O, "The wrapped forward's."},
    {NULL, NULL, 0, NULL},
};

static PyObject *stamped_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *inner, *state, *acquire;
    Py_ssize_t index;
    static char *names[] = {"inner", "state", "index", "acquire", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OnO", names, &PyList_Type, &inner,
                                     &state, &index, &acquire))
        return NULL;
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "index must be >= 0");
        return NULL;
    }
    StampedForward *self = (StampedForward *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->start_index = PyLong_FromSsize_t(index);
    self->end_index = PyLong_FromSsize_t(~index);
    if (self->start_index == NULL || self->end_index == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(inner);
    self->inner = inner;
    Py_INCREF(state);
    self->state = state;
    Py_INCREF(acquire);
    self->acquire = acquire;
    self->vectorcall = stamped_call;
    return (PyObject *)self;
}

static int stamped_traverse(StampedForward *self, visitproc visit, void *arg) {
    Py_VISIT(self->inner);
    Py_VISIT(self->state);
    Py_VISIT(self->acquire);
    return 0;
}

static int stamped_clear(StampedForward *self) {
    Py_CLEAR(self->inner);
    Py_CLEAR(self->state);
    Py_CLEAR(self->acquire);
    Py_CLEAR(self->start_index);
    Py_CLEAR(self->end_index);
    return 0;
}

static void stamped_dealloc(StampedForward *self) {
    PyObject_GC_UnTrack(self);
    stamped_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject StampedForwardType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.StampedForward",
    .tp_basicsize = sizeof(StampedForward),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(StampedForward, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = stamped_new,
    .tp_traverse = (traverseproc)stamped_traverse,
    .tp_clear = (inquiry)stamped_clear,
    .tp_dealloc = (destructor)stamped_dealloc,
    .tp_methods = stamped_methods,
    .tp_doc = "StampedForward(inner, state, index, acquire): a stamping forward wrapper.",
};

/* ---------------------------------------------------------------- ForwardSwap */

/* _probes._Wrapper, compiled: puts a module's forward wrapper in its instance dictionary and
 * takes it out again, restoring exactly what was there. Armed and disarmed once per sampled
 * forward for every probed module, hence install_all / uninstall_all. */
typedef struct {
    PyObject_HEAD
    PyObject *module, *dict, *function, *inner;
    PyObject *previous; /* what "forward" was in the instance dictionary; NULL: absent */
} ForwardSwap;

static PyTypeObject ForwardSwapType;
static PyObject *str_forward, *str_install, *str_uninstall;

static int swap_install(ForwardSwap *self) {
    PyObject *current = PyDict_GetItemWithError(self->dict, str_forward);
    if (current == NULL && PyErr_Occurred()) return -1;
    if (current == self->function) return 0;
    /* what the wrapper calls: the class's forward, bound now, unless the instance has one */
    PyObject *called = current == NULL ? PyObject_GetAttr(self->module, str_forward) : current;
    if (called == NULL) return -1;
    if (current != NULL) Py_INCREF(called);
    if (PyList_SetItem(self->inner, 0, called) < 0) return -1; /* steals called */
    Py_XINCREF(current);
    Py_XSETREF(self->previous, current);
    return PyDict_SetItem(self->dict, str_forward, self->function);
}

static int swap_uninstall(ForwardSwap *self) {
    PyObject *current = PyDict_GetItemWithError(self->dict, str_forward);
    if (current == NULL && PyErr_Occurred()) return -1;
    if (current != self->function) return 0; /* something stacked on top puts us back */
    int failed = self->previous == NULL
                     ? PyDict_DelItem(self->dict, str_forward)
                     : PyDict_SetItem(self->dict, str_forward, self->previous);
    Py_CLEAR(self->previous);
    return failed;
}

static PyObject *swap_install_method(ForwardSwap *self, PyObject *unused) {
    return swap_install(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *swap_uninstall_method(ForwardSwap *self, PyObject *unused) {
    return swap_uninstall(self) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *swap_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *module, *function, *inner;
    static char *names[] = {"module", "function", "inner", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO!", names, &module, &function,
                                     &PyList_Type, &inner))
        return NULL;
    PyObject *dict = PyObject_GenericGetDict(module, NULL);
    if (dict == NULL) return NULL;
    ForwardSwap *self = (ForwardSwap *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(dict);
        return NULL;
    }
    self->dict = dict;
    self->module = Py_NewRef(module);
    self->function = Py_NewRef(function);
    self->inner = Py_NewRef(inner);
    return (PyObject *)self;
}

static int swap_traverse(ForwardSwap *self, visitproc visit, void *arg) {
    Py_VISIT(self->module);
    Py_VISIT(self->dict);
    Py_VISIT(self->function);
    Py_VISIT(self->inner);
    Py_VISIT(self->previous);
    return 0;
}

static int swap_clear(ForwardSwap *self) {
    Py_CLEAR(self->module);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->function);
    Py_CLEAR(self->inner);
    Py_CLEAR(self->previous);
    return 0;
}

static void swap_dealloc(ForwardSwap *self) {
    PyObject_GC_UnTrack(self);
    swap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef swap_methods[] = {
    {"install", (PyCFunction)swap_install_method, METH_NOARGS, "Put the wrapper in place."},
    {"uninstall", (PyCFunction)swap_uninstall_method, METH_NOARGS, "Restore the forward."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ForwardSwapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.ForwardSwap",
    .tp_basicsize = sizeof(ForwardSwap),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = swap_new,
    .tp_traverse = (traverseproc)swap_traverse,
    .tp_clear = (inquiry)swap_clear,
    .tp_dealloc = (destructor)swap_dealloc,
    .tp_methods = swap_methods,
    .tp_doc = "ForwardSwap(module, function, inner): a forward wrapper put in and taken out.",
};

/* install_all(swaps) / uninstall_all(swaps): each item's install() / uninstall(). */
static PyObject *for_all(PyObject *swaps, int (*action)(ForwardSwap *), PyObject *method) {
    if (!PyList_Check(swaps)) {
        PyErr_SetString(PyExc_TypeError, "a list of ForwardSwap");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(swaps); i++) {
        PyObject *item = PyList_GET_ITEM(swaps, i);
        if (Py_IS_TYPE(item, &ForwardSwapType)) {
            if (action((ForwardSwap *)item) < 0) return NULL;
            continue;
        }
        PyObject *done = PyObject_CallMethodNoArgs(item, method); /* a pure-Python wrapper */
        if (done == NULL) return NULL;
        Py_DECREF(done);
    }
    Py_RETURN_NONE;
}

static PyObject *install_all(PyObject *module, PyObject *swaps) {
    return for_all(swaps, swap_install, str_install);
}

static PyObject *uninstall_all(PyObject *module, PyObject *swaps) {
    return for_all(swaps, swap_uninstall, str_uninstall);
}

/* ---------------------------------------------------------------- layer_spans */

/* What a finished span is built from; one per call of layer_spans. */
typedef struct {
    PyObject *span_class, *template, *new_span_id, *new_context, *context_class, *limited;
    PyObject *sampled, *trace_id, *trace_state, *ended, *empty;
    Py_ssize_t max_attributes; /* < 0: no count limit */
    int length_limited;
} Builder;

typedef struct {
    Py_ssize_t index;
    long long perf_ns;
    PyObject *context;    /* NULL: over the budget, timed into the histogram instead */
    PyObject *parent;     /* borrowed: the root's context or an open call's */
    PyObject *attributes; /* owned, with context */
} OpenCall;

/* The SpanContext of a new child: a tuple built directly where the gate found it exact. */
static PyObject *child_context(Builder *b) {
    PyObject *span_id = PyObject_CallNoArgs(b->new_span_id);
    while (span_id != NULL && PyLong_Check(span_id) && PyObject_Not(span_id) == 1)
        Py_SETREF(span_id, PyObject_CallNoArgs(b->new_span_id)); /* 0 is the invalid id */
    if (span_id == NULL) return NULL;
    PyObject *context = NULL;
    if (b->context_class != Py_None) {
        PyObject *items = PyTuple_Pack(6, b->trace_id, span_id, Py_False, b->sampled,
                                       b->trace_state, Py_True);
        PyObject *args = items == NULL ? NULL : PyTuple_Pack(1, items);
        if (args != NULL)
            context = PyTuple_Type.tp_new((PyTypeObject *)b->context_class, args, NULL);
        Py_XDECREF(items);
        Py_XDECREF(args);
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
    *perf_ns = PyLong_AsLongLong(PyTuple_GET_ITEM(stamp, 1));
    return (*perf_ns == -1 && PyErr_Occurred()) ? -1 : 0;
}

/*
 * layer_spans(stamps, names, classes, budget, root_context, to_wall, root_end_wall,
 *             span_class, template, new_span_id, new_context, context_class, limited,
 *             sampled, max_attributes, length_limited)
 *   -> (finished spans in the order they ended, [(module name, seconds), ...] over budget)
 */
static PyObject *layer_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 16) {
        PyErr_SetString(PyExc_TypeError, "layer_spans takes 16 positional arguments");
        return NULL;
    }
    PyObject *stamps = args[0], *names = args[1], *classes = args[2], *root = args[4];
    if (!PyList_Check(stamps) || !PyTuple_Check(names) || !PyTuple_Check(classes) ||
        PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(classes)) {
        PyErr_SetString(PyExc_TypeError, "stamps: list; names, classes: tuples of one length");
        return NULL;
    }
    Py_ssize_t budget = PyLong_AsSsize_t(args[3]);
    long long to_wall = PyLong_AsLongLong(args[5]), root_end = PyLong_AsLongLong(args[6]);
    Py_ssize_t max_attributes = args[14] == Py_None ? -1 : PyLong_AsSsize_t(args[14]);
    int length_limited = PyObject_IsTrue(args[15]);
    if (PyErr_Occurred() || length_limited < 0) return NULL;
    Builder b = {args[7], args[8], args[9], args[10], args[11], args[12], args[13],
                 NULL, NULL, PyList_New(0), PyTuple_New(0), max_attributes, length_limited};
    PyObject *aggregated = PyList_New(0), *result = NULL;
    Py_ssize_t modules = PyTuple_GET_SIZE(names), count = PyList_GET_SIZE(stamps);
    Py_ssize_t *calls = PyMem_Calloc(modules ? modules : 1, sizeof(Py_ssize_t));
    OpenCall *open = PyMem_Calloc(count ? count : 1, sizeof(OpenCall));
    Py_ssize_t depth = 0, created = 0;
    b.trace_id = PyObject_GetAttrString(root, "trace_id");
    b.trace_state = PyObject_GetAttrString(root, "trace_state");
    if (b.ended == NULL || b.empty == NULL || aggregated == NULL || calls == NULL ||
        open == NULL || b.trace_id == NULL || b.trace_state == NULL) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto done;
    }
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
    Py_XDECREF(aggregated);
    return result;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"install_all", install_all, METH_O, "install() every ForwardSwap of a list."},
    {"uninstall_all", uninstall_all, METH_O, "uninstall() every ForwardSwap of a list."},
    {"layer_spans", (PyCFunction)(void (*)(void))layer_spans, METH_FASTCALL,
     "The finished layer spans of one forward, built from its stamps."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups = {
    PyModuleDef_HEAD_INIT, "visiontel.torch._speedups",
    "Compiled per-layer loops of visiontel-torch (see _compiled.py).", -1, methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__speedups(void) {
    INTERN(str_record, "record");
    INTERN(str_forward, "forward");
    INTERN(str_install, "install");
    INTERN(str_uninstall, "uninstall");
    INTERN(str_stamps, "stamps");
    INTERN(str_events, "events");
    INTERN(str_layer_start, "layer start");
    INTERN(str_layer_end, "layer end");
    INTERN(str_class, "visiontel.module.class");
    INTERN(str_call, "visiontel.module.call");
    INTERN(str_incomplete, "visiontel.module.incomplete");
    INTERN(str_f_name, "_name");
    INTERN(str_f_context, "_context");
    INTERN(str_f_parent, "_parent");
    INTERN(str_f_attributes, "_attributes");
    INTERN(str_f_start, "_start_time");
    INTERN(str_f_end, "_end_time");
    PyObject *copy_module = PyImport_ImportModule("copy");
    if (copy_module == NULL) return NULL;
    deepcopy_function = PyObject_GetAttrString(copy_module, "deepcopy");
    Py_DECREF(copy_module);
    if (deepcopy_function == NULL) return NULL;
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL) return NULL;
    perf_counter_ns = PyObject_GetAttrString(time_module, "perf_counter_ns");
    Py_DECREF(time_module);
    if (perf_counter_ns == NULL || PyType_Ready(&StampedForwardType) < 0 ||
        PyType_Ready(&ForwardSwapType) < 0 || PyType_Ready(&ThreadRecordType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&speedups);
    if (module == NULL) return NULL;
    Py_INCREF(&StampedForwardType);
    if (PyModule_AddObject(module, "StampedForward", (PyObject *)&StampedForwardType) < 0) {
        Py_DECREF(&StampedForwardType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&ThreadRecordType);
    if (PyModule_AddObject(module, "ThreadRecord", (PyObject *)&ThreadRecordType) < 0) {
        Py_DECREF(&ThreadRecordType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&ForwardSwapType);
    if (PyModule_AddObject(module, "ForwardSwap", (PyObject *)&ForwardSwapType) < 0) {
        Py_DECREF(&ForwardSwapType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
