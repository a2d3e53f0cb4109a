#include "speedups.h"

/* _threads.ThreadState, compiled: each thread's in-flight ForwardRecord of one model, as the
 * attribute ``record`` (None when the thread runs no forward of it). A threading.local
 * costs a per-thread dictionary lookup and a generic attribute lookup on every layer call;
 * this keeps the last thread's record at hand. Only threads with a forward in flight have
 * an entry (setting None removes it), so a thread that ends leaves nothing behind. */
typedef struct {
    PyObject_HEAD
    PyObject *records;      /* {thread ident: record} */
    unsigned long last_ident;
    int last_known;         /* last_record is last_ident's record */
    PyObject *last_record;  /* borrowed from records; NULL: None */
    PyObject *weakrefs;     /* _model keeps a WeakSet of them, for fork */
    unsigned long key_ident;
    PyObject *key;          /* key_ident as an int (the dictionary key), or NULL */
} ThreadRecord;

/* This thread's key in self->records (borrowed): the last one made, while the same thread
 * sets its record (a forward sets it twice). */
static PyObject *thread_key(ThreadRecord *self) {
    unsigned long ident = PyThread_get_thread_ident();
    if (self->key != NULL && self->key_ident == ident) return self->key;
    PyObject *key = PyLong_FromUnsignedLong(ident);
    if (key == NULL) return NULL;
    Py_XSETREF(self->key, key);
    self->key_ident = ident;
    return key;
}


PyObject *thread_record_get(PyObject *state) { /* borrowed; NULL: None */
    ThreadRecord *self = (ThreadRecord *)state;
    unsigned long ident = PyThread_get_thread_ident();
    if (self->last_known && ident == self->last_ident) return self->last_record;
    PyObject *key = PyLong_FromUnsignedLong(ident);
    if (key == NULL) return NULL;
    PyObject *record = PyDict_GetItemWithError(self->records, key);
    Py_DECREF(key);
    if (record != NULL || !PyErr_Occurred()) {
        self->last_ident = ident;
        self->last_record = record;
        self->last_known = 1;
    }
    return record;
}

PyObject *current_record(PyObject *state) {
    if (!Py_IS_TYPE(state, &ThreadRecordType)) return PyObject_GetAttr(state, str_record);
    PyObject *record = thread_record_get(state);
    if (record == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    return Py_NewRef(record);
}

static PyObject *record_getter(ThreadRecord *self, void *closure) {
    return current_record((PyObject *)self);
}

static int record_setter(ThreadRecord *self, PyObject *value, void *closure) {
    PyObject *key = thread_key(self);
    if (key == NULL) return -1;
    self->last_known = 0; /* the entry it borrowed from may go */
    int failed;
    if (value == NULL || value == Py_None) {
        value = NULL;
        failed = PyDict_DelItem(self->records, key);
        if (failed < 0 && PyErr_ExceptionMatches(PyExc_KeyError)) {
            PyErr_Clear();
            failed = 0;
        }
    } else {
        failed = PyDict_SetItem(self->records, key, value);
    }
    if (!failed) { /* a forward sets its record, then reads it back at its end */
        self->last_ident = self->key_ident;
        self->last_record = value; /* borrowed from the entry just set */
        self->last_known = 1;
    }
    return failed;
}

int set_current_record(PyObject *state, PyObject *record) {
    if (!Py_IS_TYPE(state, &ThreadRecordType)) return PyObject_SetAttr(state, str_record, record);
    return record_setter((ThreadRecord *)state, record, NULL);
}

/* After fork only the forking thread exists: the records of forwards other threads had in
 * flight would otherwise stay referenced (and their inputs alive) in the child. */
static PyObject *keep_this_thread(ThreadRecord *self, PyObject *unused) {
    PyObject *key = PyLong_FromUnsignedLong(PyThread_get_thread_ident());
    if (key == NULL) return NULL;
    PyObject *mine = PyDict_GetItemWithError(self->records, key);
    Py_XINCREF(mine);
    self->last_known = 0;
    PyDict_Clear(self->records);
    int failed = mine != NULL && PyDict_SetItem(self->records, key, mine) < 0;
    Py_XDECREF(mine);
    Py_DECREF(key);
    if (failed || PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *threads(ThreadRecord *self, PyObject *unused) {
    return PyLong_FromSsize_t(PyDict_GET_SIZE(self->records));
}

static PyMethodDef thread_record_methods[] = {
    {"keep_this_thread", (PyCFunction)keep_this_thread, METH_NOARGS,
     "Forget every other thread's record (after fork)."},
    {"threads", (PyCFunction)threads, METH_NOARGS, "How many threads have a record now."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef thread_record_getset[] = {
    {"record", (getter)record_getter, (setter)record_setter,
     "This thread's in-flight forward record, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* -1 with a TypeError when a constructor that takes nothing was given something. */
static int no_arguments(const char *name, PyObject *args, PyObject *kwargs) {
    if (!PyTuple_GET_SIZE(args) && (kwargs == NULL || !PyDict_GET_SIZE(kwargs))) return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
    return -1;
}

static PyObject *thread_record_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (no_arguments("ThreadRecord", args, kwargs) < 0) return NULL;
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
    self->last_known = 0;
    Py_CLEAR(self->records);
    Py_CLEAR(self->key);
    return 0;
}

static void thread_record_dealloc(ThreadRecord *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) PyObject_ClearWeakRefs((PyObject *)self);
    thread_record_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyTypeObject ThreadRecordType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.ThreadRecord",
    .tp_basicsize = sizeof(ThreadRecord),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = thread_record_new,
    .tp_traverse = (traverseproc)thread_record_traverse,
    .tp_clear = (inquiry)thread_record_clear,
    .tp_dealloc = (destructor)thread_record_dealloc,
    .tp_getset = thread_record_getset,
    .tp_methods = thread_record_methods,
    .tp_weaklistoffset = offsetof(ThreadRecord, weakrefs),
    .tp_doc = "ThreadRecord(): each thread's in-flight forward record, as .record.",
};


/* _threads.Depth, compiled: how many instrumented forwards run on this thread now, as the
 * attribute ``value``. Every root forward adds one and takes one away; a threading.local
 * finds the thread's dictionary and then the name in it each time, this reads a
 * thread-specific slot. A forked child keeps the forking thread's value, as a
 * threading.local does. */
typedef struct {
    PyObject_HEAD
    Py_tss_t key; /* the depth itself, stored as the pointer's integer value */
} ForwardDepth;

static long depth_of(ForwardDepth *self) {
    return (long)(intptr_t)PyThread_tss_get(&self->key);
}

int depth_add(PyObject *depth, long change) {
    if (!Py_IS_TYPE(depth, &ForwardDepthType)) {
        PyObject *value = PyObject_GetAttr(depth, str_value);
        if (value == NULL) return -1;
        long now = PyLong_AsLong(value);
        Py_DECREF(value);
        if (now == -1 && PyErr_Occurred()) return -1;
        PyObject *updated = PyLong_FromLong(now + change);
        if (updated == NULL) return -1;
        int failed = PyObject_SetAttr(depth, str_value, updated);
        Py_DECREF(updated);
        return failed;
    }
    ForwardDepth *self = (ForwardDepth *)depth;
    if (PyThread_tss_set(&self->key, (void *)(intptr_t)(depth_of(self) + change)) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "could not set the thread's forward depth");
        return -1;
    }
    return 0;
}

static PyObject *depth_getter(ForwardDepth *self, void *closure) {
    return PyLong_FromLong(depth_of(self));
}

static int depth_setter(ForwardDepth *self, PyObject *value, void *closure) {
    long now = value == NULL ? 0 : PyLong_AsLong(value); /* del: back to the default */
    if (now == -1 && PyErr_Occurred()) return -1;
    return depth_add((PyObject *)self, now - depth_of(self));
}

static PyGetSetDef depth_getset[] = {
    {"value", (getter)depth_getter, (setter)depth_setter,
     "How many instrumented forwards run on this thread now.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyObject *depth_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (no_arguments("ForwardDepth", args, kwargs) < 0) return NULL;
    ForwardDepth *self = (ForwardDepth *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->key = (Py_tss_t)Py_tss_NEEDS_INIT;
    if (PyThread_tss_create(&self->key) != 0) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_RuntimeError, "no thread-specific storage left");
        return NULL;
    }
    return (PyObject *)self;
}

static void depth_dealloc(ForwardDepth *self) {
    if (PyThread_tss_is_created(&self->key)) PyThread_tss_delete(&self->key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyTypeObject ForwardDepthType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.ForwardDepth",
    .tp_basicsize = sizeof(ForwardDepth),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = depth_new,
    .tp_dealloc = (destructor)depth_dealloc,
    .tp_getset = depth_getset,
    .tp_doc = "ForwardDepth(): each thread's count of instrumented forwards running, as .value.",
};
