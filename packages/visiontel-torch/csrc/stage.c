#include "roots.h"

/* StageHooks: a `vt.stage` block's entry and exit, compiled, for the blocks it can be sure
 * of: a sampled span whose attributes are plain values, no GPU events, spans ending in
 * batches, and the block leaving without an exception. In Python, __enter__ and __exit__
 * ran some thirty functions of the API and the gate per block (docs/benchmarks.md, issue
 * 16); here each calls one method, which answers False, having done nothing, whenever it
 * cannot be sure. Then _stage.stage's Python path runs, as without the extension.
 *
 * The plan is the root hooks' (roots.h), from the same gate, with one more read in its guard
 * where the stage follows the default runtime. What the block's end leaves as later work,
 * its duration point and the span's end, is _stage._StageEnd.complete, as in Python. */

typedef struct {
    PyObject_HEAD
    SpanPlan p;
    PyObject *name;       /* the span's name */
    PyObject *attributes; /* its attributes, plain values (copied per span) */
    PyObject *metric;     /* the duration point's attributes, or None (metric=False) */
    PyObject *memo;       /* the stage's record_points memo, shared with its copies */
    PyObject *stage_end;  /* _stage._StageEnd */
    PyObject *runtime;    /* the Runtime the plan was armed for, or None */
} StageHooks;

static PyObject *str_span, *str_token, *str_start_ns, *str_wall_start_ns, *str_complete;
static PyObject *time_ns;

static int set_fields(PyObject *stage, PyObject *span, PyObject *token, PyObject *start,
                      PyObject *wall) {
    PyObject *names[] = {str_span, str_token, str_start_ns, str_wall_start_ns};
    PyObject *values[] = {span, token, start, wall};
    for (int i = 0; i < 4; i++)
        if (PyObject_SetAttr(stage, names[i], values[i]) < 0) return -1;
    return 0;
}

/* enter(stage) -> bool: the block's span started, made current, kept on `stage`. */
static PyObject *stage_enter(StageHooks *self, PyObject *stage) {
    /* held while its items are used: another thread may arm() a new plan meanwhile (a
     * decorated function's copies share these hooks), once a call into Python lets it run */
    PyObject *plan = Py_NewRef(self->p.plan);
    PyObject *wall = NULL, *start = NULL, *parent = NULL, *trace_id = NULL, *span = NULL;
    PyObject *token = NULL;
    int entered = -1;
    if (self->p.always_drop || self->p.span_context_class == Py_None ||
        self->p.getrandbits == Py_None || !plan_holds(&self->p)) {
        entered = 0;
        goto done;
    }
    long long now;
    /* the times first, as Python reads them before it starts the span */
    if ((wall = PyObject_CallNoArgs(time_ns)) == NULL) goto done;
    if (clock_ns(&now) < 0 || (start = PyLong_FromLongLong(now)) == NULL) goto done;
    /* no id drawn here: a drop decided by it would make Python draw and decide again */
    int decision = sampled_decide(&self->p, 0, &parent, &trace_id);
    if (decision != 1) { /* dropped or asked: the Python path starts the span */
        entered = decision < 0 ? -1 : 0;
        goto done;
    }
    span = live_span_start(&self->p, self->name, self->attributes, wall, parent, trace_id, NULL);
    if (span == NULL || (token = attach_span(&self->p, span)) == NULL) goto done;
    if (set_fields(stage, span, token, start, wall) < 0) {
        undo_attach(&self->p, token);
        goto done;
    }
    entered = 1;
done:
    Py_DECREF(plan);
    Py_XDECREF(wall);
    Py_XDECREF(start);
    Py_XDECREF(parent);
    Py_XDECREF(trace_id);
    Py_XDECREF(span);
    Py_XDECREF(token);
    if (entered < 0) return NULL;
    return PyBool_FromLong(entered);
}

/* exit(stage) -> bool: a block entered here left without an exception: the context back,
 * and its point and span's end handed to the resolver's later work. */
static PyObject *stage_exit(StageHooks *self, PyObject *stage) {
    long long end;
    if (clock_ns(&end) < 0) return NULL;
    PyObject *plan = Py_NewRef(self->p.plan); /* held while used, as in enter() */
    PyObject *span = NULL, *token = NULL, *start = NULL, *wall = NULL, *elapsed = NULL;
    PyObject *wall_end = NULL, *ending = NULL, *complete = NULL, *later = NULL;
    int done = -1;
    if (!plan_holds(&self->p)) {
        done = 0;
        goto done;
    }
    if ((span = PyObject_GetAttr(stage, str_span)) == NULL) goto done;
    if ((token = PyObject_GetAttr(stage, str_token)) == NULL) goto done;
    if ((PyObject *)Py_TYPE(span) != self->p.live_class || !PyContextToken_CheckExact(token)) {
        done = 0; /* not begun here, or as Python begins it: Python ends it */
        goto done;
    }
    if ((start = PyObject_GetAttr(stage, str_start_ns)) == NULL) goto done;
    if ((wall = PyObject_GetAttr(stage, str_wall_start_ns)) == NULL) goto done;
    long long start_ns = nanoseconds_of(start), wall_ns = nanoseconds_of(wall);
    if ((start_ns == -1 || wall_ns == -1) && PyErr_Occurred()) goto done;
    if (detach_token(&self->p, token) < 0) goto done;
    if (set_fields(stage, Py_None, Py_None, start, wall) < 0) goto done;
    /* as Python: (end - start) / 1e9, and the wall end from the same monotonic span */
    if ((elapsed = PyFloat_FromDouble((double)(end - start_ns) / 1e9)) == NULL) goto done;
    if ((wall_end = PyLong_FromLongLong(wall_ns + end - start_ns)) == NULL) goto done;
    PyObject *args[] = {self->runtime, elapsed, wall_end, self->memo};
    if ((ending = PyObject_Vectorcall(self->stage_end, args, 4, NULL)) == NULL) goto done;
    if ((complete = PyObject_GetAttr(ending, str_complete)) == NULL) goto done;
    /* later(end.complete, span, metric, end_span=True, defer_points=True) */
    PyObject *later_args[] = {complete, span, self->metric, Py_True, Py_True};
    if ((later = PyObject_Vectorcall(self->p.later, later_args, 5, NULL)) == NULL) goto done;
    done = 1;
done:
    Py_DECREF(plan);
    Py_XDECREF(span);
    Py_XDECREF(token);
    Py_XDECREF(start);
    Py_XDECREF(wall);
    Py_XDECREF(elapsed);
    Py_XDECREF(wall_end);
    Py_XDECREF(ending);
    Py_XDECREF(complete);
    Py_XDECREF(later);
    if (done < 0) return NULL;
    return PyBool_FromLong(done);
}

/* arm(guard, plan, runtime): the plan of LiveSpans.compiled_roots, for `runtime`. */
static PyObject *stage_arm(StageHooks *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "arm(guard, plan, runtime)");
        return NULL;
    }
    if (plan_arm(&self->p, args[0], args[1]) < 0) return NULL;
    Py_SETREF(self->runtime, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyObject *stage_guard(StageHooks *self, void *closure) {
    return Py_NewRef(self->p.guard);
}

static PyGetSetDef stage_getset[] = {
    {"guard", (getter)stage_guard, NULL,
     "(object, attribute, expected) reads that must hold for enter() to act, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef stage_methods[] = {
    {"enter", (PyCFunction)stage_enter, METH_O,
     "enter(stage) -> bool: True when the block's span was started and made current."},
    {"exit", (PyCFunction)stage_exit, METH_O,
     "exit(stage) -> bool: True when the block entered here was ended here."},
    {"arm", (PyCFunction)(void (*)(void))stage_arm, METH_FASTCALL,
     "arm(guard, plan, runtime): what enter() may do, and while which reads hold."},
    {NULL, NULL, 0, NULL},
};

static PyObject *stage_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"name", "attributes", "metric", "memo", "stage_end", NULL};
    PyObject *name, *attributes, *metric, *memo, *stage_end;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$UO!OO!O:StageHooks", keywords, &name,
                                     &PyDict_Type, &attributes, &metric, &PyDict_Type, &memo,
                                     &stage_end))
        return NULL;
    if (metric != Py_None && !PyDict_Check(metric)) {
        PyErr_SetString(PyExc_TypeError, "metric: a dict or None");
        return NULL;
    }
    StageHooks *self = (StageHooks *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    plan_init(&self->p);
    self->name = Py_NewRef(name);
    self->attributes = Py_NewRef(attributes);
    self->metric = Py_NewRef(metric);
    self->memo = Py_NewRef(memo);
    self->stage_end = Py_NewRef(stage_end);
    self->runtime = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int stage_traverse(StageHooks *self, visitproc visit, void *arg) {
    if (plan_traverse(&self->p, visit, arg) < 0) return -1;
    Py_VISIT(self->name);
    Py_VISIT(self->attributes);
    Py_VISIT(self->metric);
    Py_VISIT(self->memo);
    Py_VISIT(self->stage_end);
    Py_VISIT(self->runtime);
    return 0;
}

static int stage_clear(StageHooks *self) {
    plan_clear(&self->p);
    Py_CLEAR(self->name);
    Py_CLEAR(self->attributes);
    Py_CLEAR(self->metric);
    Py_CLEAR(self->memo);
    Py_CLEAR(self->stage_end);
    Py_CLEAR(self->runtime);
    return 0;
}

static void stage_dealloc(StageHooks *self) {
    PyObject_GC_UnTrack(self);
    stage_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyTypeObject StageHooksType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.StageHooks",
    .tp_basicsize = sizeof(StageHooks),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = stage_new,
    .tp_traverse = (traverseproc)stage_traverse,
    .tp_clear = (inquiry)stage_clear,
    .tp_dealloc = (destructor)stage_dealloc,
    .tp_getset = stage_getset,
    .tp_methods = stage_methods,
    .tp_doc = "StageHooks(*, name, attributes, metric, memo, stage_end): a stage block's "
              "entry and exit for the blocks it can be sure of.",
};

int stage_init_names(void) {
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    NAME(str_span, "_span");
    NAME(str_token, "_token");
    NAME(str_start_ns, "_start_ns");
    NAME(str_wall_start_ns, "_wall_start_ns");
    NAME(str_complete, "complete");
#undef NAME
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL) return -1;
    time_ns = PyObject_GetAttrString(time_module, "time_ns");
    Py_DECREF(time_module);
    return time_ns == NULL ? -1 : 0;
}
