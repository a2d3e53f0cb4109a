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
    PyObject *required[] = {table, self->tracer, self->invalid_span, perf, zero, Py_None};
    record = record_create(required, batch, first, previous);
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

/* The rows of an N x 6 tensor (one image's detections): 1 and *rows, 0 for another shape,
 * -1 on error. */
static int detection_rows(PyObject *tensor, PyObject **rows) {
    /* its shape's length is its dim(), without a method call */
    PyObject *shape = PyObject_GetAttr(tensor, str_shape);
    if (shape == NULL) return -1;
    int found = 0;
    if (PyTuple_Check(shape) && PyTuple_GET_SIZE(shape) == 2) {
        long columns = PyLong_AsLong(PyTuple_GET_ITEM(shape, 1));
        if (columns == -1 && PyErr_Occurred()) {
            found = -1;
        } else if (columns == 6) {
            *rows = Py_NewRef(PyTuple_GET_ITEM(shape, 0));
            found = 1;
        }
    }
    Py_DECREF(shape);
    return found;
}

/* A torchvision image's dict: its "boxes" tensor's rows (0 for a 0-d one). 1 and *rows, 0
 * for no such tensor, 2 for a value only count_detections can judge, -1 on error. */
static int box_rows(RootHooks *self, PyObject *image, PyObject **rows) {
    PyObject *boxes = PyDict_GetItemWithError(image, str_boxes); /* borrowed */
    if (boxes == NULL) return PyErr_Occurred() ? -1 : 0;
    if ((PyObject *)Py_TYPE(boxes) != self->tensor_class) return 2;
    PyObject *shape = PyObject_GetAttr(boxes, str_shape);
    if (shape == NULL) return -1;
    int found = PyTuple_Check(shape) ? 1 : 2;
    if (found == 1 && PyTuple_GET_SIZE(shape))
        *rows = Py_NewRef(PyTuple_GET_ITEM(shape, 0));
    else if (found == 1)
        *rows = PyLong_FromLong(0);
    Py_DECREF(shape);
    return found == 1 && *rows == NULL ? -1 : found;
}

/* count_detections' answer where the output is made only of exact tensors, lists, tuples
 * and dicts: a plain N x 6 tensor, a list of them, torchvision's list of dicts. NULL
 * without an exception where count_detections must be asked. */
static PyObject *count_plain(RootHooks *self, PyObject *output) {
    if ((PyObject *)Py_TYPE(output) == self->tensor_class) {
        PyObject *rows = NULL;
        int found = detection_rows(output, &rows);
        if (found < 0) return NULL;
        if (!found) return Py_NewRef(Py_None);
        PyObject *counts = PyList_New(1);
        if (counts == NULL) Py_DECREF(rows);
        else PyList_SET_ITEM(counts, 0, rows);
        return counts;
    }
    int sequence = PyList_CheckExact(output) || PyTuple_CheckExact(output);
    if (!sequence && !PyDict_CheckExact(output)) return NULL;
    Py_ssize_t n = sequence ? PySequence_Fast_GET_SIZE(output) : 1;
    if (n == 0) return NULL; /* count_detections: None; asked, it says so */
    PyObject *counts = PyList_New(n);
    if (counts == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = sequence ? PySequence_Fast_GET_ITEM(output, i) : output;
        PyObject *rows = NULL;
        int found;
        if ((PyObject *)Py_TYPE(item) == self->tensor_class) /* only ever an item of one */
            found = detection_rows(item, &rows);
        else if (PyDict_CheckExact(item))
            found = box_rows(self, item, &rows);
        else
            found = 2;
        if (found != 1) {
            Py_DECREF(counts);
            if (found == 0) return Py_NewRef(Py_None);
            return NULL; /* an error (set), or a case for count_detections (none set) */
        }
        PyList_SET_ITEM(counts, i, rows);
    }
    return counts;
}

PyObject *count_output(RootHooks *self, PyObject *output) {
    /* shapes only, read now: the output is not kept */
    if (self->count_tensors) {
        PyObject *counts = count_plain(self, output);
        if (counts != NULL || PyErr_Occurred()) return counts;
    }
    return PyObject_CallOneArg(self->count, output);
}

/* function(value), its result dropped: 0, or -1 with an exception. */
static int call_one(PyObject *function, PyObject *value) {
    PyObject *result = PyObject_CallOneArg(function, value);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

/* The points of a finished dropped forward, as ForwardPoints.add leaves them. */
static int add_points(RootHooks *self, long long nanoseconds, PyObject *batch,
                      PyObject *counts) {
    PyObject *seconds = PyFloat_FromDouble((double)nanoseconds / 1e9);
    if (seconds == NULL) return -1;
    int failed = call_one(self->add_duration, seconds);
    Py_DECREF(seconds);
    if (failed) return -1;
    int has_images = PyObject_IsTrue(batch);
    if (has_images < 0 || (has_images && call_one(self->add_images, batch) < 0)) return -1;
    if (counts != Py_None) {
        int has_counts = PyObject_IsTrue(counts);
        if (has_counts < 0 || (has_counts && call_one(self->add_detections, counts) < 0))
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
    if ((start = record_get(record, F_PERF_START)) == NULL) goto done;
    if ((batch = record_get(record, F_BATCH_SIZE)) == NULL) goto done;
    if ((previous = record_get(record, F_PREVIOUS)) == NULL) goto done;
    long long started = nanoseconds_of(start);
    if (started == -1 && PyErr_Occurred()) goto done;
    if (set_current_record(self->state, previous) < 0 || depth_add(self->depth, -1) < 0)
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
