#include "roots.h"

/* The root hooks' work for a forward whose span the sampler drops (in Python:
 * _model.ModelInstrumentation._begin_dropped and the first branch of _finish). Most
 * forwards are these where one in a hundred is traced. */

int dropped_begin(RootHooks *self, PyObject *first, PyObject *batch) {
    PyObject *table = NULL, *perf = NULL, *previous = NULL, *zero = NULL, *record = NULL;
    int result = -1;
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
    if (push_record(self, record) < 0) goto done;
    result = 0;
done:
    Py_XDECREF(table);
    Py_XDECREF(perf);
    Py_XDECREF(zero);
    Py_XDECREF(previous);
    Py_XDECREF(record);
    return result;
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

PyObject *count_output(RootHooks *self, PyObject *output) {
    /* shapes only, read now: the output is not kept */
    if (self->count_tensors && (PyObject *)Py_TYPE(output) == self->tensor_class)
        return count_tensor(output);
    return PyObject_CallOneArg(self->count, output);
}

/* The points of a finished dropped forward, as ForwardPoints.add leaves them. */
static int add_points(RootHooks *self, long long nanoseconds, PyObject *batch,
                      PyObject *counts) {
    PyObject *seconds = PyFloat_FromDouble((double)nanoseconds / 1e9);
    if (seconds == NULL) return -1;
    int failed = call_method_one(self->durations, str_append, seconds);
    Py_DECREF(seconds);
    if (failed) return -1;
    int has_images = PyObject_IsTrue(batch);
    if (has_images < 0 ||
        (has_images && call_method_one(self->images, str_append, batch) < 0))
        return -1;
    if (counts != Py_None) {
        int has_counts = PyObject_IsTrue(counts);
        if (has_counts < 0 ||
            (has_counts && call_method_one(self->detections, str_extend, counts) < 0))
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

int dropped_finish(RootHooks *self, PyObject *record, long long end, PyObject *output) {
    PyObject *start = NULL, *batch = NULL, *previous = NULL, *counts = NULL;
    int result = -1;
    if ((start = PyObject_GetAttr(record, str_perf_start)) == NULL) goto done;
    if ((batch = PyObject_GetAttr(record, str_batch_size)) == NULL) goto done;
    if ((previous = PyObject_GetAttr(record, str_previous)) == NULL) goto done;
    long long started = PyLong_AsLongLong(start);
    if (started == -1 && PyErr_Occurred()) goto done;
    if (PyObject_SetAttr(self->state, str_record, previous) < 0 || add_depth(self, -1) < 0)
        goto done;
    if ((counts = count_output(self, output)) == NULL) goto done;
    if (add_points(self, end - started, batch, counts) < 0) goto done;
    result = 1;
done:
    Py_XDECREF(start);
    Py_XDECREF(batch);
    Py_XDECREF(previous);
    Py_XDECREF(counts);
    return result;
}
