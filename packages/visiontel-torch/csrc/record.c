#include "speedups.h"
#include "structmember.h"

/* _record.ForwardRecord, compiled: the same sixteen fields, constructor and methods. The
 * dataclass costs a Python __init__ of sixteen stores per forward (most of the C root
 * hooks' instructions for a dropped forward), and every field the hooks read or write went
 * through a slot descriptor found by name; here the hooks make a record in one allocation
 * and reach its fields by index (record_get, record_set). */

static const char *const field_names[RECORD_FIELDS] = {
    "table",    "tracer",      "span",          "perf_start_ns",   "wall_start_ns", "stamps",
    "events",   "start_event", "end_event",     "perf_end_ns",     "batch_size",    "inputs",
    "context_token", "containers_open", "probes", "previous",
};
static PyObject *interned[RECORD_FIELDS]; /* field_names, interned */
static PyObject *zero;                     /* the default of the integer fields */

/* The first six fields are required, as the dataclass's. */
#define REQUIRED 6

static int integer_field(int field) {
    return field == F_PERF_END || field == F_BATCH_SIZE || field == F_CONTAINERS_OPEN;
}

static ForwardRecordObject *record_alloc(PyTypeObject *type) {
    ForwardRecordObject *self = (ForwardRecordObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    for (int i = REQUIRED; i < RECORD_FIELDS; i++)
        self->fields[i] = Py_NewRef(integer_field(i) ? zero : Py_None);
    return self;
}

PyObject *record_create(PyObject *const required[REQUIRED], PyObject *batch_size,
                        PyObject *inputs, PyObject *previous) {
    ForwardRecordObject *self = record_alloc(&ForwardRecordType);
    if (self == NULL) return NULL;
    for (int i = 0; i < REQUIRED; i++) self->fields[i] = Py_NewRef(required[i]);
    Py_SETREF(self->fields[F_BATCH_SIZE], Py_NewRef(batch_size));
    Py_SETREF(self->fields[F_INPUTS], Py_NewRef(inputs));
    Py_SETREF(self->fields[F_PREVIOUS], Py_NewRef(previous));
    return (PyObject *)self;
}

PyObject *record_get(PyObject *record, int field) {
    if (!Py_IS_TYPE(record, &ForwardRecordType))
        return PyObject_GetAttr(record, interned[field]);
    PyObject *value = ((ForwardRecordObject *)record)->fields[field];
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, interned[field]);
        return NULL;
    }
    return Py_NewRef(value);
}

int record_set(PyObject *record, int field, PyObject *value) {
    if (!Py_IS_TYPE(record, &ForwardRecordType))
        return PyObject_SetAttr(record, interned[field], value);
    Py_XSETREF(((ForwardRecordObject *)record)->fields[field], Py_NewRef(value));
    return 0;
}

static int field_index(PyObject *name) {
    for (int i = 0; i < RECORD_FIELDS; i++)
        if (name == interned[i]) return i;
    for (int i = 0; i < RECORD_FIELDS; i++) {
        int same = PyUnicode_Check(name) ? PyUnicode_Compare(name, interned[i]) == 0 : 0;
        if (same) return i;
    }
    if (PyErr_Occurred()) return -2;
    return -1;
}

/* ForwardRecord(table, tracer, span, perf_start_ns, wall_start_ns, stamps, *, ...): the
 * dataclass's signature (every field may also be given by position or name). */
static PyObject *record_vectorcall(PyObject *type, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames) {
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs > RECORD_FIELDS) {
        PyErr_Format(PyExc_TypeError, "ForwardRecord takes at most %d arguments (%zd given)",
                     RECORD_FIELDS, nargs);
        return NULL;
    }
    PyObject *given[RECORD_FIELDS] = {NULL};
    for (Py_ssize_t i = 0; i < nargs; i++) given[i] = args[i];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int field = field_index(name);
        if (field == -2) return NULL;
        if (field < 0 || given[field] != NULL) {
            PyErr_Format(PyExc_TypeError,
                         field < 0 ? "ForwardRecord got an unexpected keyword argument %R"
                                   : "ForwardRecord got multiple values for argument %R",
                         name);
            return NULL;
        }
        given[field] = args[nargs + i];
    }
    for (int i = 0; i < REQUIRED; i++) {
        if (given[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "ForwardRecord missing required argument '%s'",
                         field_names[i]);
            return NULL;
        }
    }
    ForwardRecordObject *self = record_alloc((PyTypeObject *)type);
    if (self == NULL) return NULL;
    for (int i = 0; i < RECORD_FIELDS; i++)
        if (given[i] != NULL) Py_XSETREF(self->fields[i], Py_NewRef(given[i]));
    return (PyObject *)self;
}

static PyObject *record_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    /* ForwardRecord(*args, **kwargs) where vectorcall is not used (a subclass, say) */
    return PyVectorcall_Call((PyObject *)type, args, kwargs);
}

/* wall_ns(perf_ns): a perf_counter_ns stamp on the root span's wall clock. */
static PyObject *record_wall_ns(ForwardRecordObject *self, PyObject *perf_ns) {
    PyObject *wall = self->fields[F_WALL_START], *start = self->fields[F_PERF_START];
    if (wall == NULL || start == NULL) {
        PyErr_SetString(PyExc_AttributeError, "wall_start_ns or perf_start_ns");
        return NULL;
    }
    PyObject *elapsed = PyNumber_Subtract(perf_ns, start);
    if (elapsed == NULL) return NULL;
    PyObject *result = PyNumber_Add(wall, elapsed);
    Py_DECREF(elapsed);
    return result;
}

static int append_event(PyObject *events, PyObject *event) {
    return event == NULL || event == Py_None ? 0 : PyList_Append(events, event);
}

/* gpu_events(): every GPU event the record holds, the stamps' first. */
static PyObject *record_gpu_events(ForwardRecordObject *self, PyObject *unused) {
    PyObject *events = PyList_New(0);
    if (events == NULL) return NULL;
    PyObject *stamps = self->fields[F_STAMPS];
    if (stamps != NULL && stamps != Py_None) {
        PyObject *iterator = PyObject_GetIter(stamps);
        if (iterator == NULL) goto failed;
        PyObject *stamp;
        while ((stamp = PyIter_Next(iterator)) != NULL) {
            PyObject *event = PySequence_GetItem(stamp, 2);
            Py_DECREF(stamp);
            int failed = event == NULL ? -1 : append_event(events, event);
            Py_XDECREF(event);
            if (failed < 0) break;
        }
        Py_DECREF(iterator);
        if (PyErr_Occurred()) goto failed;
    }
    if (append_event(events, self->fields[F_START_EVENT]) < 0 ||
        append_event(events, self->fields[F_END_EVENT]) < 0)
        goto failed;
    return events;
failed:
    Py_DECREF(events);
    return NULL;
}

static int record_traverse(ForwardRecordObject *self, visitproc visit, void *arg) {
    for (int i = 0; i < RECORD_FIELDS; i++) Py_VISIT(self->fields[i]);
    return 0;
}

static int record_clear(ForwardRecordObject *self) {
    for (int i = 0; i < RECORD_FIELDS; i++) Py_CLEAR(self->fields[i]);
    return 0;
}

static void record_dealloc(ForwardRecordObject *self) {
    PyObject_GC_UnTrack(self);
    record_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *record_repr(ForwardRecordObject *self) {
    return PyUnicode_FromFormat("ForwardRecord(span=%R, perf_start_ns=%R, batch_size=%R)",
                                self->fields[F_SPAN] ? self->fields[F_SPAN] : Py_None,
                                self->fields[F_PERF_START] ? self->fields[F_PERF_START] : Py_None,
                                self->fields[F_BATCH_SIZE] ? self->fields[F_BATCH_SIZE] : Py_None);
}

static PyMemberDef record_members[RECORD_FIELDS + 1];

static PyMethodDef record_methods[] = {
    {"wall_ns", (PyCFunction)record_wall_ns, METH_O,
     "Map a perf_counter_ns stamp onto the wall clock of the root span."},
    {"gpu_events", (PyCFunction)record_gpu_events, METH_NOARGS,
     "Every GPU event the record holds."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ForwardRecordType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.ForwardRecord",
    .tp_doc = "What the hooks write during one root forward (_record.ForwardRecord).",
    .tp_basicsize = sizeof(ForwardRecordObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = record_new,
    .tp_vectorcall = record_vectorcall,
    .tp_traverse = (traverseproc)record_traverse,
    .tp_clear = (inquiry)record_clear,
    .tp_dealloc = (destructor)record_dealloc,
    .tp_repr = (reprfunc)record_repr,
    .tp_members = record_members,
    .tp_methods = record_methods,
};

int record_init_type(void) {
    if ((zero = PyLong_FromLong(0)) == NULL) return -1;
    for (int i = 0; i < RECORD_FIELDS; i++) {
        if ((interned[i] = PyUnicode_InternFromString(field_names[i])) == NULL) return -1;
        record_members[i] = (PyMemberDef){
            (char *)field_names[i], T_OBJECT_EX,
            (Py_ssize_t)(offsetof(ForwardRecordObject, fields) + i * sizeof(PyObject *)), 0,
            NULL};
    }
    record_members[RECORD_FIELDS] = (PyMemberDef){NULL};
    return PyType_Ready(&ForwardRecordType);
}
