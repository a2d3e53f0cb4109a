#include "speedups.h"

/* DroppedRoots: the root hooks' work for a forward whose span the sampler drops under any
 * parent, compiled (_model.ModelInstrumentation._begin_dropped and the first branch of
 * _finish in Python). Most forwards are these where one in a hundred is traced, and in
 * Python their hooks ran some twenty functions, each slow after the forward has evicted
 * them; here the Python hook calls one function on each side.
 *
 * begin() and finish() answer False, having done nothing, whenever they cannot be sure:
 * then the Python path runs. begin() is sure only while `guard` holds: attribute reads
 * that _otel_private (which alone knows the SDK's internals) expects to give the same
 * objects as when it last answered "every span is dropped and spans end in batches". A
 * read that gives another object clears the guard until Python asks the gate again. */
typedef struct {
    PyObject_HEAD
    PyObject *guard;        /* tuple of (object, attribute name, expected), or None */
    PyObject *state;        /* the model's ThreadRecord (or threading.local) with .record */
    PyObject *depth;        /* _model._depth: a threading.local with .value */
    PyObject *make_record;  /* (table, tracer, span, perf ns, wall ns, stamps, **kw) */
    PyObject *record_kwnames; /* ("batch_size", "inputs", "previous") */
    PyObject *owner;        /* the object with .table (the model's ProbeTree) */
    PyObject *tracer;
    PyObject *invalid_span;
    PyObject *tensor_class;
    PyObject *count;        /* the model's detection counter (count_detections or the user's) */
    int count_tensors;      /* count is count_detections: a plain tensor is counted here */
    PyObject *durations, *images, *detections; /* deques of the ForwardPoints */
    PyObject *points_owner; /* UnsampledPoints: .due makes later work due */
    Py_ssize_t record_every;
} DroppedRoots;

static PyObject *str_value, *str_table, *str_span, *str_perf_start, *str_batch_size,
    *str_previous, *str_shape, *str_dim, *str_append, *str_extend, *str_due;

static int guard_holds(DroppedRoots *self) {
    if (!PyTuple_Check(self->guard)) return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(self->guard);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *check = PyTuple_GET_ITEM(self->guard, i);
        if (!PyTuple_Check(check) || PyTuple_GET_SIZE(check) != 3) goto failed;
        PyObject *now = PyObject_GetAttr(PyTuple_GET_ITEM(check, 0), PyTuple_GET_ITEM(check, 1));
        if (now == NULL) {
            PyErr_Clear();
            goto failed;
        }
        int same = now == PyTuple_GET_ITEM(check, 2);
        Py_DECREF(now);
        if (!same) goto failed;
    }
    return 1;
failed:
    Py_SETREF(self->guard, Py_NewRef(Py_None));
    return 0;
}

static int add_depth(DroppedRoots *self, long change) {
    PyObject *value = PyObject_GetAttr(self->depth, str_value);
    if (value == NULL) return -1;
    long depth = PyLong_AsLong(value);
    Py_DECREF(value);
    if (depth == -1 && PyErr_Occurred()) return -1;
    PyObject *updated = PyLong_FromLong(depth + change);
    if (updated == NULL) return -1;
    int failed = PyObject_SetAttr(self->depth, str_value, updated);
    Py_DECREF(updated);
    return failed;
}

/* begin(args, kwargs) -> bool: a dropped forward's record made and made current. */
static PyObject *dropped_begin(DroppedRoots *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "begin(args, kwargs)");
        return NULL;
    }
    PyObject *call_args = args[0], *kwargs = args[1];
    /* model(images) only: anything else is described by the Python path */
    if (!PyTuple_Check(call_args) || PyTuple_GET_SIZE(call_args) != 1) Py_RETURN_FALSE;
    if (kwargs != Py_None && (!PyDict_Check(kwargs) || PyDict_GET_SIZE(kwargs))) Py_RETURN_FALSE;
    PyObject *first = PyTuple_GET_ITEM(call_args, 0);
    if ((PyObject *)Py_TYPE(first) != self->tensor_class || !guard_holds(self)) Py_RETURN_FALSE;
    PyObject *shape = PyObject_GetAttr(first, str_shape);
    if (shape == NULL) return NULL;
    PyObject *batch;
    if (PyTuple_Check(shape) && PyTuple_GET_SIZE(shape)) {
        batch = Py_NewRef(PyTuple_GET_ITEM(shape, 0));
    } else if (PyTuple_Check(shape)) {
        batch = PyLong_FromLong(0);
    } else {
        Py_DECREF(shape);
        Py_RETURN_FALSE;
    }
    Py_DECREF(shape);
    if (batch == NULL) return NULL;
    PyObject *table = NULL, *perf = NULL, *previous = NULL, *zero = NULL, *record = NULL;
    long long now;
    if (clock_ns(&now) < 0) goto done;
    if ((table = PyObject_GetAttr(self->owner, str_table)) == NULL) goto done;
    if ((perf = PyLong_FromLongLong(now)) == NULL) goto done;
    if ((zero = PyLong_FromLong(0)) == NULL) goto done;
    if ((previous = current_record(self->state)) == NULL) goto done;
    PyObject *record_args[] = {
        table, self->tracer, self->invalid_span, perf, zero, Py_None, batch, first, previous,
    };
    record = PyObject_Vectorcall(self->make_record, record_args, 6, self->record_kwnames);
    if (record == NULL) goto done;
    if (PyObject_SetAttr(self->state, str_record, record) < 0 || add_depth(self, 1) < 0) {
        Py_CLEAR(record);
        goto done;
    }
done:
    Py_DECREF(batch);
    Py_XDECREF(table);
    Py_XDECREF(perf);
    Py_XDECREF(zero);
    Py_XDECREF(previous);
    if (record == NULL) return NULL;
    Py_DECREF(record);
    Py_RETURN_TRUE;
}

/* count_detections' answer for a plain tensor output: [rows] for N x 6, else None. */
static PyObject *count_tensor(PyObject *output) {
    PyObject *dim = PyObject_CallMethodNoArgs(output, str_dim);
    if (dim == NULL) return NULL;
    long dims = PyLong_AsLong(dim);
    Py_DECREF(dim);
    if (dims == -1 && PyErr_Occurred()) return NULL;
    if (dims != 2) return Py_NewRef(Py_None);
    PyObject *shape = PyObject_GetAttr(output, str_shape);
    if (shape == NULL) return NULL;
    PyObject *counts = NULL;
    if (!PyTuple_Check(shape) || PyTuple_GET_SIZE(shape) != 2) {
        counts = Py_NewRef(Py_None);
    } else {
        long columns = PyLong_AsLong(PyTuple_GET_ITEM(shape, 1));
        if (columns == -1 && PyErr_Occurred()) {
            counts = NULL;
        } else if (columns != 6) {
            counts = Py_NewRef(Py_None);
        } else {
            counts = PyList_New(1);
            if (counts != NULL) PyList_SET_ITEM(counts, 0, Py_NewRef(PyTuple_GET_ITEM(shape, 0)));
        }
    }
    Py_DECREF(shape);
    return counts;
}

static int call_one(PyObject *target, PyObject *method, PyObject *value) {
    PyObject *result = PyObject_CallMethodOneArg(target, method, value);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* The points of a finished dropped forward, as ForwardPoints.add leaves them. */
static int add_points(DroppedRoots *self, long long nanoseconds, PyObject *batch,
                      PyObject *counts) {
    PyObject *seconds = PyFloat_FromDouble((double)nanoseconds / 1e9);
    if (seconds == NULL) return -1;
    int failed = call_one(self->durations, str_append, seconds);
    Py_DECREF(seconds);
    if (failed) return -1;
    int has_images = PyObject_IsTrue(batch);
    if (has_images < 0 || (has_images && call_one(self->images, str_append, batch) < 0)) return -1;
    if (counts != Py_None) {
        int has_counts = PyObject_IsTrue(counts);
        if (has_counts < 0 || (has_counts && call_one(self->detections, str_extend, counts) < 0))
            return -1;
    }
    Py_ssize_t waiting = PyObject_Length(self->durations);
    if (waiting < 0) return -1;
    if (waiting % self->record_every) return 0;
    PyObject *due = PyObject_GetAttr(self->points_owner, str_due);
    if (due == NULL) return -1;
    PyObject *result = due == Py_None ? Py_NewRef(Py_None) : PyObject_CallNoArgs(due);
    Py_DECREF(due);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* finish(output) -> bool: a dropped forward that ended with an output, its points added. */
static PyObject *dropped_finish(DroppedRoots *self, PyObject *output) {
    long long end;
    if (clock_ns(&end) < 0) return NULL;
    if (output == Py_None || !PyTuple_Check(self->guard)) Py_RETURN_FALSE;
    PyObject *record = current_record(self->state);
    if (record == NULL) return NULL;
    PyObject *span = NULL, *start = NULL, *batch = NULL, *previous = NULL, *counts = NULL;
    PyObject *answer = NULL;
    if (record == Py_None) {
        answer = Py_NewRef(Py_False);
        goto done;
    }
    if ((span = PyObject_GetAttr(record, str_span)) == NULL) goto done;
    if (span != self->invalid_span) { /* a sampled forward: the Python path ends it */
        answer = Py_NewRef(Py_False);
        goto done;
    }
    if ((start = PyObject_GetAttr(record, str_perf_start)) == NULL) goto done;
    if ((batch = PyObject_GetAttr(record, str_batch_size)) == NULL) goto done;
    if ((previous = PyObject_GetAttr(record, str_previous)) == NULL) goto done;
    long long started = PyLong_AsLongLong(start);
    if (started == -1 && PyErr_Occurred()) goto done;
    if (PyObject_SetAttr(self->state, str_record, previous) < 0 || add_depth(self, -1) < 0)
        goto done;
    /* shapes only, read now: the output is not kept */
    if (self->count_tensors && (PyObject *)Py_TYPE(output) == self->tensor_class)
        counts = count_tensor(output);
    else
        counts = PyObject_CallOneArg(self->count, output);
    if (counts == NULL) goto done;
    if (add_points(self, end - started, batch, counts) < 0) goto done;
    answer = Py_NewRef(Py_True);
done:
    Py_DECREF(record);
    Py_XDECREF(span);
    Py_XDECREF(start);
    Py_XDECREF(batch);
    Py_XDECREF(previous);
    Py_XDECREF(counts);
    return answer;
}

static PyObject *guard_getter(DroppedRoots *self, void *closure) {
    return Py_NewRef(self->guard);
}

static int guard_setter(DroppedRoots *self, PyObject *value, void *closure) {
    Py_XSETREF(self->guard, Py_NewRef(value == NULL ? Py_None : value));
    return 0;
}

static PyGetSetDef dropped_getset[] = {
    {"guard", (getter)guard_getter, (setter)guard_setter,
     "(object, attribute, expected) reads that must hold for begin() to act, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef dropped_methods[] = {
    {"begin", (PyCFunction)(void (*)(void))dropped_begin, METH_FASTCALL,
     "begin(args, kwargs) -> bool: True when this dropped forward's record was made."},
    {"finish", (PyCFunction)dropped_finish, METH_O,
     "finish(output) -> bool: True when this dropped forward's points were added."},
    {NULL, NULL, 0, NULL},
};

static PyObject *dropped_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {
        "state", "depth", "make_record", "owner", "tracer", "invalid_span", "tensor_class",
        "count", "count_tensors", "durations", "images", "detections", "points_owner",
        "record_every", NULL,
    };
    PyObject *state, *depth, *make_record, *owner, *tracer, *invalid_span, *tensor_class,
        *count, *durations, *images, *detections, *points_owner;
    int count_tensors;
    Py_ssize_t record_every;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$OOOOOOOOpOOOOn:DroppedRoots", keywords, &state, &depth,
            &make_record, &owner, &tracer, &invalid_span, &tensor_class, &count,
            &count_tensors, &durations, &images, &detections, &points_owner, &record_every))
        return NULL;
    if (record_every < 1) {
        PyErr_SetString(PyExc_ValueError, "record_every must be at least 1");
        return NULL;
    }
    DroppedRoots *self = (DroppedRoots *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->record_kwnames = Py_BuildValue("(sss)", "batch_size", "inputs", "previous");
    if (self->record_kwnames == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->guard = Py_NewRef(Py_None);
    self->state = Py_NewRef(state);
    self->depth = Py_NewRef(depth);
    self->make_record = Py_NewRef(make_record);
    self->owner = Py_NewRef(owner);
    self->tracer = Py_NewRef(tracer);
    self->invalid_span = Py_NewRef(invalid_span);
    self->tensor_class = Py_NewRef(tensor_class);
    self->count = Py_NewRef(count);
    self->count_tensors = count_tensors;
    self->durations = Py_NewRef(durations);
    self->images = Py_NewRef(images);
    self->detections = Py_NewRef(detections);
    self->points_owner = Py_NewRef(points_owner);
    self->record_every = record_every;
    return (PyObject *)self;
}

static int dropped_traverse(DroppedRoots *self, visitproc visit, void *arg) {
    Py_VISIT(self->guard);
    Py_VISIT(self->state);
    Py_VISIT(self->depth);
    Py_VISIT(self->make_record);
    Py_VISIT(self->owner);
    Py_VISIT(self->tracer);
    Py_VISIT(self->invalid_span);
    Py_VISIT(self->tensor_class);
    Py_VISIT(self->count);
    Py_VISIT(self->durations);
    Py_VISIT(self->images);
    Py_VISIT(self->detections);
    Py_VISIT(self->points_owner);
    return 0;
}

static int dropped_clear(DroppedRoots *self) {
    Py_CLEAR(self->guard);
    Py_CLEAR(self->state);
    Py_CLEAR(self->depth);
    Py_CLEAR(self->make_record);
    Py_CLEAR(self->record_kwnames);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->tracer);
    Py_CLEAR(self->invalid_span);
    Py_CLEAR(self->tensor_class);
    Py_CLEAR(self->count);
    Py_CLEAR(self->durations);
    Py_CLEAR(self->images);
    Py_CLEAR(self->detections);
    Py_CLEAR(self->points_owner);
    return 0;
}

static void dropped_dealloc(DroppedRoots *self) {
    PyObject_GC_UnTrack(self);
    dropped_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyTypeObject DroppedRootsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.DroppedRoots",
    .tp_basicsize = sizeof(DroppedRoots),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = dropped_new,
    .tp_traverse = (traverseproc)dropped_traverse,
    .tp_clear = (inquiry)dropped_clear,
    .tp_dealloc = (destructor)dropped_dealloc,
    .tp_getset = dropped_getset,
    .tp_methods = dropped_methods,
    .tp_doc = "DroppedRoots(*, ...): a model's root-hook work for forwards the sampler drops.",
};

int dropped_init_names(void) {
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    NAME(str_value, "value");
    NAME(str_table, "table");
    NAME(str_span, "span");
    NAME(str_perf_start, "perf_start_ns");
    NAME(str_batch_size, "batch_size");
    NAME(str_previous, "previous");
    NAME(str_shape, "shape");
    NAME(str_dim, "dim");
    NAME(str_append, "append");
    NAME(str_extend, "extend");
    NAME(str_due, "due");
#undef NAME
    return 0;
}
