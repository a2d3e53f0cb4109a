#include "speedups.h"

/* _probes._Wrapper, compiled: puts a module's forward wrapper in its instance dictionary and
 * takes it out again, restoring exactly what was there. Armed and disarmed once per sampled
 * forward for every probed module, hence install_all / uninstall_all. */
typedef struct {
    PyObject_HEAD
    PyObject *module, *dict, *function, *inner;
    PyObject *previous; /* what "forward" was in the instance dictionary; NULL: absent */
} ForwardSwap;


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

PyTypeObject ForwardSwapType = {
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

PyObject *install_all(PyObject *module, PyObject *swaps) {
    return for_all(swaps, swap_install, str_install);
}

PyObject *uninstall_all(PyObject *module, PyObject *swaps) {
    return for_all(swaps, swap_uninstall, str_uninstall);
}
