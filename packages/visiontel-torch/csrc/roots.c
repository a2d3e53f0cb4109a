#include "roots.h"

/* RootHooks: a model's root-hook work, compiled, for the forwards it can be sure of: one
 * tensor in, spans ending in batches, CPU (no GPU events). In Python the root hooks ran
 * some twenty to forty functions per forward, each slow after the forward has evicted
 * them; here each Python hook calls one function (after its torch.compile checks, which
 * Dynamo must see).
 *
 * begin() and finish() answer False, having done nothing, whenever they cannot be sure:
 * then the Python path runs (ModelInstrumentation._begin, _begin_dropped and _finish).
 * begin() is sure only while `guard` holds: attribute reads that _otel_private (which
 * alone knows the SDK's internals) expects to give the same objects as when it last
 * answered "this provider's spans may be started here, and end in batches". A read that
 * gives another object clears the guard until Python asks the gate again and arms this
 * with a new guard and plan. */

PyObject *str_table, *str_shape, *str_append, *str_extend, *str_due, *str_boxes;
/* read on every sampled forward: interned once, not made from a C string each time */
static PyObject *str_dtype, *str_device, *str_is_cuda, *str_attributes;

int plan_holds(SpanPlan *plan) {
    /* held while read: a call into Python (an attribute read) may let another thread arm()
     * a new guard meanwhile */
    PyObject *guard = plan->guard;
    if (!PyTuple_Check(guard)) return 0;
    Py_INCREF(guard);
    Py_ssize_t n = PyTuple_GET_SIZE(guard);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *check = PyTuple_GET_ITEM(guard, i);
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
    Py_DECREF(guard);
    return 1;
failed:
    if (plan->guard == guard) Py_SETREF(plan->guard, Py_NewRef(Py_None));
    Py_DECREF(guard);
    return 0;
}

int push_record(RootHooks *self, PyObject *record) {
    if (set_current_record(self->state, record) < 0) return -1;
    return depth_add(self->depth, 1);
}

int call_method_one(PyObject *target, PyObject *method, PyObject *value) {
    PyObject *result = PyObject_CallMethodOneArg(target, method, value);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 0;
}

/* The input attributes of `first` (a new reference): from the description cache, or from
 * describe_inputs, which adds them to it (once per input signature). */
static PyObject *input_attributes(RootHooks *self, PyObject *first, PyObject *shape,
                                  PyObject *batch, PyObject *call_args, PyObject *kwargs) {
    PyObject *dtype = PyObject_GetAttr(first, str_dtype);
    if (dtype == NULL) return NULL;
    PyObject *device = PyObject_GetAttr(first, str_device);
    if (device == NULL) {
        Py_DECREF(dtype);
        return NULL;
    }
    PyObject *found = NULL, *key = NULL;
    PyObject *signature = PyTuple_Pack(3, shape, dtype, device);
    Py_DECREF(dtype);
    Py_DECREF(device);
    if (signature == NULL) return NULL;
    key = PyTuple_Pack(2, batch, signature);
    Py_DECREF(signature);
    if (key == NULL) return NULL;
    found = PyDict_GetItemWithError(self->input_cache, key);
    Py_DECREF(key);
    if (found != NULL) return Py_NewRef(found);
    if (PyErr_Occurred()) return NULL;
    PyObject *description = PyObject_CallFunctionObjArgs(self->describe_inputs, call_args,
                                                         kwargs, Py_True, NULL);
    if (description == NULL) return NULL;
    found = PyObject_GetAttr(description, str_attributes);
    Py_DECREF(description);
    return found;
}

/* begin(model, args, kwargs) -> bool: this forward's record made current (and its span
 * started, when sampled). */
static PyObject *begin_with_plan(RootHooks *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "begin(model, args, kwargs)");
        return NULL;
    }
    PyObject *model = args[0], *call_args = args[1], *kwargs = args[2];
    /* model(images) only: anything else is described by the Python path */
    if (!PyTuple_Check(call_args) || PyTuple_GET_SIZE(call_args) != 1) Py_RETURN_FALSE;
    if (kwargs != Py_None && (!PyDict_Check(kwargs) || PyDict_GET_SIZE(kwargs))) Py_RETURN_FALSE;
    PyObject *first = PyTuple_GET_ITEM(call_args, 0);
    if ((PyObject *)Py_TYPE(first) != self->tensor_class || !plan_holds(&self->p))
        Py_RETURN_FALSE;
    PyObject *shape = PyObject_GetAttr(first, str_shape);
    if (shape == NULL) return NULL;
    if (!PyTuple_Check(shape)) {
        Py_DECREF(shape);
        Py_RETURN_FALSE;
    }
    PyObject *batch = PyTuple_GET_SIZE(shape) ? Py_NewRef(PyTuple_GET_ITEM(shape, 0))
                                              : PyLong_FromLong(0);
    if (batch == NULL) {
        Py_DECREF(shape);
        return NULL;
    }
    int declined = -1; /* 0: begun here, 1: left to Python, -1: error */
    PyObject *parent = NULL, *trace_id = NULL;
    if (self->p.always_drop) {
        declined = dropped_begin(self, first, batch);
        goto finished;
    }
    if (self->attributes == Py_None || self->p.span_context_class == Py_None ||
        self->p.getrandbits == Py_None) {
        declined = 1;
        goto finished;
    }
    /* a GPU forward needs events: Python times it */
    PyObject *on_cuda = PyObject_GetAttr(first, str_is_cuda);
    if (on_cuda == NULL) goto finished;
    int cuda = PyObject_IsTrue(on_cuda);
    Py_DECREF(on_cuda);
    if (cuda) {
        declined = cuda < 0 ? -1 : 1;
        goto finished;
    }
    int decision = sampled_decide(&self->p, 1, &parent, &trace_id);
    if (decision == 1) {
        PyObject *described = NULL;
        if (self->describe &&
            (described = input_attributes(self, first, shape, batch, call_args, kwargs)) == NULL)
            goto finished;
        declined = sampled_begin(self, model, first, batch, described, parent, trace_id);
        Py_XDECREF(described);
    } else if (decision == 2) {
        declined = dropped_begin(self, first, batch);
    } else {
        declined = decision == 0 ? 1 : -1;
    }
finished:
    Py_DECREF(shape);
    Py_DECREF(batch);
    Py_XDECREF(parent);
    Py_XDECREF(trace_id);
    if (declined < 0) return NULL;
    if (declined) Py_RETURN_FALSE;
    Py_RETURN_TRUE;
}

/* finish(output) -> bool: a forward begun here (or by Python, the same way) ended. */
static PyObject *finish_with_plan(RootHooks *self, PyObject *output) {
    long long end;
    if (clock_ns(&end) < 0) return NULL;
    if (output == Py_None || !PyTuple_Check(self->p.guard)) Py_RETURN_FALSE;
    PyObject *record = current_record(self->state);
    if (record == NULL) return NULL;
    int done = 0;
    if (record != Py_None) {
        PyObject *span = record_get(record, F_SPAN);
        if (span == NULL) {
            done = -1;
        } else if (span == self->invalid_span) {
            done = dropped_finish(self, record, end, output);
        } else if ((PyObject *)Py_TYPE(span) == self->p.live_class) {
            done = sampled_finish(self, record, span, end, output);
        }
        Py_XDECREF(span);
    }
    Py_DECREF(record);
    if (done < 0) return NULL;
    if (done) Py_RETURN_TRUE;
    Py_RETURN_FALSE;
}

/* The plan is held while begin() and finish() use its items: a call into Python may let
 * another thread arm() a new one meanwhile (two threads running one model). */
static PyObject *roots_begin(RootHooks *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *plan = Py_NewRef(self->p.plan);
    PyObject *result = begin_with_plan(self, args, nargs);
    Py_DECREF(plan);
    return result;
}

static PyObject *roots_finish(RootHooks *self, PyObject *output) {
    PyObject *plan = Py_NewRef(self->p.plan);
    PyObject *result = finish_with_plan(self, output);
    Py_DECREF(plan);
    return result;
}

static void plan_fields_none(SpanPlan *plan) {
    plan->always_drop = 0;
    PyObject **fields[] = {
        &plan->decisions[0], &plan->decisions[1], &plan->decisions[2], &plan->ratio_bound,
        &plan->context_var,  &plan->span_key,     &plan->context_class, &plan->span_context_class,
        &plan->getrandbits,  &plan->live_class,   &plan->path,         &plan->later,
        &plan->sampled_flags, &plan->no_state,    &plan->span_abc,     &plan->detach,
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) *fields[i] = Py_None;
}

void plan_init(SpanPlan *plan) {
    plan->guard = Py_NewRef(Py_None);
    plan->plan = Py_NewRef(Py_None);
    plan_fields_none(plan);
}

int plan_traverse(SpanPlan *plan, visitproc visit, void *arg) {
    Py_VISIT(plan->guard);
    Py_VISIT(plan->plan);
    return 0;
}

void plan_clear(SpanPlan *plan) {
    plan_fields_none(plan); /* borrowed from plan */
    Py_CLEAR(plan->guard);
    Py_CLEAR(plan->plan);
}

#define PLAN_SIZE 15

/* arm(guard, plan): see livespans.LiveSpans.compiled_roots (visiontel-support) for the plan. */
int plan_arm(SpanPlan *self, PyObject *guard, PyObject *plan) {
    if (guard == Py_None || plan == Py_None) {
        Py_SETREF(self->guard, Py_NewRef(Py_None));
        return 0;
    }
    if (!PyTuple_Check(guard) || !PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != PLAN_SIZE) {
        PyErr_SetString(PyExc_TypeError, "arm(guard, plan): two tuples, the plan of 15 fields");
        return -1;
    }
    PyObject *decisions = PyTuple_GET_ITEM(plan, 1);
    PyObject *context_var = PyTuple_GET_ITEM(plan, 3);
    PyObject *context_class = PyTuple_GET_ITEM(plan, 5);
    PyObject *span_context_class = PyTuple_GET_ITEM(plan, 6);
    PyObject *live_class = PyTuple_GET_ITEM(plan, 8);
    if (!PyTuple_Check(decisions) || PyTuple_GET_SIZE(decisions) != 3 ||
        (context_var != Py_None &&
         (!PyContextVar_CheckExact(context_var) || !PyType_Check(context_class))) ||
        (span_context_class != Py_None && !PyType_Check(span_context_class)) ||
        !PyType_Check(live_class)) {
        PyErr_SetString(PyExc_TypeError, "arm(guard, plan): a plan of other types");
        return -1;
    }
    Py_SETREF(self->plan, Py_NewRef(plan));
    self->always_drop = PyObject_IsTrue(PyTuple_GET_ITEM(plan, 0)) == 1;
    for (int i = 0; i < 3; i++) self->decisions[i] = PyTuple_GET_ITEM(decisions, i);
    PyObject **fields[] = {
        &self->ratio_bound, &self->context_var, &self->span_key, &self->context_class,
        &self->span_context_class, &self->getrandbits, &self->live_class, &self->path,
        &self->later, &self->sampled_flags, &self->no_state, &self->span_abc, &self->detach,
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        *fields[i] = PyTuple_GET_ITEM(plan, (Py_ssize_t)i + 2);
    if (context_var == Py_None) self->span_context_class = Py_None; /* no sampled spans */
    Py_SETREF(self->guard, Py_NewRef(guard));
    return 0;
}

static PyObject *roots_arm(RootHooks *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "arm(guard, plan)");
        return NULL;
    }
    if (plan_arm(&self->p, args[0], args[1]) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *guard_getter(RootHooks *self, void *closure) {
    return Py_NewRef(self->p.guard);
}

static PyGetSetDef roots_getset[] = {
    {"guard", (getter)guard_getter, NULL,
     "(object, attribute, expected) reads that must hold for begin() to act, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef roots_methods[] = {
    {"begin", (PyCFunction)(void (*)(void))roots_begin, METH_FASTCALL,
     "begin(model, args, kwargs) -> bool: True when this forward's record was made."},
    {"finish", (PyCFunction)roots_finish, METH_O,
     "finish(output) -> bool: True when this forward was ended here."},
    {"arm", (PyCFunction)(void (*)(void))roots_arm, METH_FASTCALL,
     "arm(guard, plan): what begin() may do, and while which reads hold."},
    {NULL, NULL, 0, NULL},
};

static PyObject *roots_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {
        "state", "depth", "owner", "tracer", "invalid_span", "tensor_class",
        "count", "count_tensors", "durations", "images", "detections", "points_owner",
        "record_every", "name", "attributes", "describe", "input_cache", "describe_inputs",
        "instrumentation", "complete", NULL,
    };
    PyObject *state, *depth, *owner, *tracer, *invalid_span, *tensor_class,
        *count, *durations, *images, *detections, *points_owner, *name, *attributes,
        *input_cache, *describe_inputs, *instrumentation, *complete;
    int count_tensors, describe;
    Py_ssize_t record_every;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$OOOOOOOpOOOOnOOpO!OOO:RootHooks", keywords, &state, &depth,
            &owner, &tracer, &invalid_span, &tensor_class, &count,
            &count_tensors, &durations, &images, &detections, &points_owner, &record_every,
            &name, &attributes, &describe, &PyDict_Type, &input_cache, &describe_inputs,
            &instrumentation, &complete))
        return NULL;
    if (record_every < 1) {
        PyErr_SetString(PyExc_ValueError, "record_every must be at least 1");
        return NULL;
    }
    if (attributes != Py_None && !PyDict_Check(attributes)) {
        PyErr_SetString(PyExc_TypeError, "attributes: a dict or None");
        return NULL;
    }
    if (!PyWeakref_CheckRef(instrumentation)) {
        PyErr_SetString(PyExc_TypeError, "instrumentation: a weak reference");
        return NULL;
    }
    RootHooks *self = (RootHooks *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    plan_init(&self->p);
    self->state = Py_NewRef(state);
    self->depth = Py_NewRef(depth);
    self->owner = Py_NewRef(owner);
    self->tracer = Py_NewRef(tracer);
    self->invalid_span = Py_NewRef(invalid_span);
    self->tensor_class = Py_NewRef(tensor_class);
    self->count = Py_NewRef(count);
    self->count_tensors = count_tensors;
    self->durations = Py_NewRef(durations);
    self->images = Py_NewRef(images);
    self->detections = Py_NewRef(detections);
    if ((self->add_duration = PyObject_GetAttr(durations, str_append)) == NULL ||
        (self->add_images = PyObject_GetAttr(images, str_append)) == NULL ||
        (self->add_detections = PyObject_GetAttr(detections, str_extend)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->points_owner = Py_NewRef(points_owner);
    self->record_every = record_every;
    self->name = Py_NewRef(name);
    self->attributes = Py_NewRef(attributes);
    self->describe = describe;
    self->input_cache = Py_NewRef(input_cache);
    self->describe_inputs = Py_NewRef(describe_inputs);
    self->instrumentation = Py_NewRef(instrumentation);
    self->complete = Py_NewRef(complete);
    return (PyObject *)self;
}

static int roots_traverse(RootHooks *self, visitproc visit, void *arg) {
    if (plan_traverse(&self->p, visit, arg) < 0) return -1;
    Py_VISIT(self->state);
    Py_VISIT(self->depth);
    Py_VISIT(self->owner);
    Py_VISIT(self->tracer);
    Py_VISIT(self->invalid_span);
    Py_VISIT(self->tensor_class);
    Py_VISIT(self->count);
    Py_VISIT(self->durations);
    Py_VISIT(self->images);
    Py_VISIT(self->detections);
    Py_VISIT(self->add_duration);
    Py_VISIT(self->add_images);
    Py_VISIT(self->add_detections);
    Py_VISIT(self->points_owner);
    Py_VISIT(self->name);
    Py_VISIT(self->attributes);
    Py_VISIT(self->input_cache);
    Py_VISIT(self->describe_inputs);
    Py_VISIT(self->instrumentation);
    Py_VISIT(self->complete);
    return 0;
}

static int roots_clear(RootHooks *self) {
    plan_clear(&self->p);
    Py_CLEAR(self->state);
    Py_CLEAR(self->depth);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->tracer);
    Py_CLEAR(self->invalid_span);
    Py_CLEAR(self->tensor_class);
    Py_CLEAR(self->count);
    Py_CLEAR(self->durations);
    Py_CLEAR(self->images);
    Py_CLEAR(self->detections);
    Py_CLEAR(self->add_duration);
    Py_CLEAR(self->add_images);
    Py_CLEAR(self->add_detections);
    Py_CLEAR(self->points_owner);
    Py_CLEAR(self->name);
    Py_CLEAR(self->attributes);
    Py_CLEAR(self->input_cache);
    Py_CLEAR(self->describe_inputs);
    Py_CLEAR(self->instrumentation);
    Py_CLEAR(self->complete);
    return 0;
}

static void roots_dealloc(RootHooks *self) {
    PyObject_GC_UnTrack(self);
    roots_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyTypeObject RootHooksType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "visiontel.torch._speedups.RootHooks",
    .tp_basicsize = sizeof(RootHooks),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = roots_new,
    .tp_traverse = (traverseproc)roots_traverse,
    .tp_clear = (inquiry)roots_clear,
    .tp_dealloc = (destructor)roots_dealloc,
    .tp_getset = roots_getset,
    .tp_methods = roots_methods,
    .tp_doc = "RootHooks(*, ...): a model's root-hook work for the forwards it can be sure of.",
};

int roots_init_names(void) {
#define NAME(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return -1
    NAME(str_table, "table");
    NAME(str_shape, "shape");
    NAME(str_append, "append");
    NAME(str_extend, "extend");
    NAME(str_due, "due");
    NAME(str_boxes, "boxes");
    NAME(str_dtype, "dtype");
    NAME(str_device, "device");
    NAME(str_is_cuda, "is_cuda");
    NAME(str_attributes, "attributes");
#undef NAME
    return sampled_init_names();
}
