#include "speedups.h"

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
    PyObject *record = current_record(self->state);
    PyObject *stamps = NULL, *events = NULL, *result = NULL;
    if (record == NULL) goto done;
    if (record != Py_None) {
        stamps = record_get(record, F_STAMPS);
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
    events = record_get(record, F_EVENTS);
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

PyTypeObject StampedForwardType = {
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
