#include "roots.h"

/* The later work of a sampled forward at model granularity, compiled (in Python:
 * _model.ModelInstrumentation._complete with defer_points, for a forward without GPU
 * events, layer stamps or failure): its duration and detection points left with its span
 * in the run's SampledPoints, its images counted, its detection total set on the live
 * span, and the span handed to the processors in this same item of later work. A span no
 * longer live (promoted to an SDK span, or ended) goes through the Python function
 * instead, which does what that span needs. */

/* The fields of RootHooks.completion, a tuple (_model.ModelInstrumentation._completion). */
enum CompletionField {
    C_POINTS,             /* the runtime's SampledPoints: ._waiting, a list */
    C_DURATION,           /* the visiontel.inference.duration histogram */
    C_DETECTIONS,         /* the visiontel.inference.detections histogram */
    C_METRIC_ATTRIBUTES,  /* the duration's attributes */
    C_IMAGE_ATTRIBUTES,   /* the detections' attributes */
    C_DURATION_MEMO,      /* record_points' memo for each */
    C_DETECTIONS_MEMO,
    C_ADD_IMAGES,         /* adds to visiontel.inference.images */
    C_END,                /* _livespan.end_in_later_work(span, end_ns) */
    COMPLETION_FIELDS
};

static PyObject *str_waiting, *str_detections_total, *str_set_attribute, *zero;

int completion_check(PyObject *completion) {
    if (completion == Py_None ||
        (PyTuple_CheckExact(completion) && PyTuple_GET_SIZE(completion) == COMPLETION_FIELDS))
        return 0;
    PyErr_Format(PyExc_TypeError, "completion: None or a tuple of %d fields", COMPLETION_FIELDS);
    return -1;
}

/* One waiting point: (histogram, attributes, memo, value, span), as SampledPoints.add. */
static int leave_point(PyObject *waiting, PyObject *completion, int histogram, int attributes,
                       int memo, PyObject *value, PyObject *span) {
    PyObject *point = PyTuple_Pack(5, PyTuple_GET_ITEM(completion, histogram),
                                   PyTuple_GET_ITEM(completion, attributes),
                                   PyTuple_GET_ITEM(completion, memo), value, span);
    if (point == NULL) return -1;
    int result = PyList_Append(waiting, point);
    Py_DECREF(point);
    return result;
}

/* The detections' points and their total on the live span (its attributes dict, where
 * _LiveSpan.set_attribute stores an int or a float as it is; anything else through it). */
static int leave_detections(PyObject *waiting, PyObject *completion, PyObject *counts,
                            PyObject *span) {
    PyObject *items = PySequence_Fast(counts, "detection counts: a sequence");
    if (items == NULL) return -1;
    PyObject *total = Py_NewRef(zero), *attributes = NULL;
    int result = -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items); i++) {
        PyObject *count = PySequence_Fast_GET_ITEM(items, i);
        if (leave_point(waiting, completion, C_DETECTIONS, C_IMAGE_ATTRIBUTES,
                        C_DETECTIONS_MEMO, count, span) < 0)
            goto done;
        Py_SETREF(total, PyNumber_Add(total, count)); /* sum(counts), in order */
        if (total == NULL) goto done;
    }
    if (PyLong_CheckExact(total) || PyFloat_CheckExact(total)) {
        if ((attributes = PyObject_GetAttr(span, str_attributes)) == NULL) goto done;
        result = PyDict_SetItem(attributes, str_detections_total, total);
    } else {
        PyObject *set = PyObject_CallMethodObjArgs(span, str_set_attribute, str_detections_total,
                                                   total, NULL);
        result = set == NULL ? -1 : 0;
        Py_XDECREF(set);
    }
done:
    Py_DECREF(items);
    Py_XDECREF(total);
    Py_XDECREF(attributes);
    return result;
}

static PyObject *complete_here(RootHooks *self, PyObject *record, PyObject *counts,
                               PyObject *span) {
    PyObject *completion = self->completion, *waiting = NULL, *seconds = NULL;
    PyObject *batch = NULL, *added = NULL, *end = NULL, *finished = NULL;
    PyObject *fields[3] = {NULL, NULL, NULL};
    long long ns[3];
    int images;
    for (int i = 0; i < 3; i++) {
        int field = i == 0 ? F_PERF_START : i == 1 ? F_PERF_END : F_WALL_START;
        if ((fields[i] = record_get(record, field)) == NULL) goto done;
        ns[i] = PyLong_AsLongLong(fields[i]);
        if (ns[i] == -1 && PyErr_Occurred()) goto done;
    }
    /* (perf_end - perf_start) / 1e9 in Python: the int difference, then float division */
    if ((seconds = PyFloat_FromDouble((double)(ns[1] - ns[0]) / 1e9)) == NULL) goto done;
    if ((waiting = PyObject_GetAttr(PyTuple_GET_ITEM(completion, C_POINTS), str_waiting)) == NULL)
        goto done;
    if (!PyList_Check(waiting)) {
        PyErr_SetString(PyExc_TypeError, "SampledPoints._waiting: a list");
        goto done;
    }
    if (leave_point(waiting, completion, C_DURATION, C_METRIC_ATTRIBUTES, C_DURATION_MEMO,
                    seconds, span) < 0)
        goto done;
    if ((batch = record_get(record, F_BATCH_SIZE)) == NULL || (images = PyObject_IsTrue(batch)) < 0)
        goto done;
    if (images && (added = PyObject_CallOneArg(PyTuple_GET_ITEM(completion, C_ADD_IMAGES),
                                               batch)) == NULL)
        goto done;
    if (counts != Py_None && leave_detections(waiting, completion, counts, span) < 0) goto done;
    /* record.wall_ns(perf_end): the span ends, handed to the processors now */
    if ((end = PyLong_FromLongLong(ns[2] + ns[1] - ns[0])) == NULL) goto done;
    finished = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(completion, C_END), span, end, NULL);
done:
    for (int i = 0; i < 3; i++) Py_XDECREF(fields[i]);
    Py_XDECREF(waiting);
    Py_XDECREF(seconds);
    Py_XDECREF(batch);
    Py_XDECREF(added);
    Py_XDECREF(end);
    if (finished == NULL) return NULL;
    Py_DECREF(finished);
    Py_RETURN_NONE;
}

/* complete_sampled(roots, instrumentation, record, counts): queued by sampled_finish. */
static PyObject *complete_sampled(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !Py_IS_TYPE(args[0], &RootHooksType)) {
        PyErr_SetString(PyExc_TypeError,
                        "complete_sampled(roots, instrumentation, record, counts)");
        return NULL;
    }
    RootHooks *self = (RootHooks *)args[0];
    PyObject *instrumentation = args[1], *record = args[2], *counts = args[3];
    PyObject *span = record_get(record, F_SPAN);
    if (span == NULL) return NULL;
    int live = still_live(span);
    PyObject *result = NULL;
    if (live > 0 && self->completion != Py_None) {
        result = complete_here(self, record, counts, span);
    } else if (live >= 0) { /* ModelInstrumentation._complete(instrumentation, ...) */
        result = PyObject_CallFunctionObjArgs(self->complete, instrumentation, record, counts,
                                              Py_None, NULL);
    }
    Py_DECREF(span);
    return result;
}

static PyMethodDef complete_def = {
    "complete_sampled", (PyCFunction)(void (*)(void))complete_sampled, METH_FASTCALL,
    "A sampled forward's later work at model granularity (RootHooks queues it).",
};

PyObject *complete_function;

int complete_init(void) {
    if ((str_waiting = PyUnicode_InternFromString("_waiting")) == NULL) return -1;
    if ((str_detections_total = PyUnicode_InternFromString("visiontel.detections")) == NULL)
        return -1;
    if ((str_set_attribute = PyUnicode_InternFromString("set_attribute")) == NULL) return -1;
    if ((zero = PyLong_FromLong(0)) == NULL) return -1;
    complete_function = PyCFunction_New(&complete_def, NULL);
    return complete_function == NULL ? -1 : 0;
}
