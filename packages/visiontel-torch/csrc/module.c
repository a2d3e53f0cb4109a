/*
 * visiontel.torch._speedups: the per-layer work of layer granularity, compiled.
 *
 * Why C: after a 2 ms forward has evicted the interpreter's working set, every Python
 * bytecode of the per-layer work runs three to five times slower than warm
 * (docs/benchmarks.md, issue 16). This work runs once per layer call or layer span; in C
 * it touches a fraction of the instructions.
 *
 *   thread_record.c  ThreadRecord: each thread's in-flight forward record of one model
 *                    (_threads.ThreadState, a threading.local, in Python), and
 *                    ForwardDepth: its count of instrumented forwards (_threads.Depth).
 *   stamped.c        StampedForward: a child module's armed forward wrapper, two
 *                    (index, perf ns, event) stamps around the original forward.
 *   swap.c           ForwardSwap, install_all, uninstall_all: arming and disarming a
 *                    model's wrappers (_probes._Wrapper).
 *   spans.c          layer_spans: the finished layer spans of one forward, built from its
 *                    stamps (the SDK fast path of Resolver._materialise, no GPU events).
 *   roots.c          RootHooks: a model's root-hook work for a one-tensor CPU forward
 *                    (_model.ModelInstrumentation's _begin, _begin_dropped and _finish),
 *   dropped.c        for a forward the sampler drops,
 *   sampled.c        and for one it samples: its root span started, made current, ended.
 *   stage.c          StageHooks: a sampled `vt.stage` block's entry and exit (_stage.stage's
 *                    __enter__ and __exit__), with the root hooks' plan.
 *   record.c         ForwardRecord: what the hooks write during one root forward
 *                    (_record.ForwardRecord, a dataclass, in Python).
 *   module.c         this: shared names, the clock, the module.
 *
 * Each mirrors its pure-Python version; _compiled.py picks one or the other and
 * tests/test_speedups.py compares them (VISIONTEL_TORCH_PURE_PYTHON=true gives Python).
 * Nothing here knows OpenTelemetry: the span class, its field template and the id and
 * context factories come from _otel_private.py, behind its gate. CPython's C API only.
 */
#include <time.h>

#include "speedups.h"

PyObject *str_value, *str_record, *str_stamps, *str_events, *str_layer_start, *str_layer_end;
PyObject *str_trace_id, *str_trace_state;
PyObject *str_class, *str_call, *str_incomplete, *str_forward, *str_install, *str_uninstall;
PyObject *str_f_name, *str_f_context, *str_f_parent, *str_f_attributes, *str_f_start, *str_f_end;
PyObject *deepcopy_function = NULL;
/* perf_counter_ns() is CLOCK_MONOTONIC on Linux; elsewhere we call it (see clock_ns). */
static PyObject *perf_counter_ns = NULL;

int clock_ns(long long *out) {
#if defined(__linux__)
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) == 0) {
        *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        return 0;
    }
#endif
    PyObject *now = PyObject_CallNoArgs(perf_counter_ns);
    if (now == NULL) return -1;
    *out = PyLong_AsLongLong(now);
    Py_DECREF(now);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static PyMethodDef methods[] = {
    {"install_all", install_all, METH_O, "install() every ForwardSwap of a list."},
    {"uninstall_all", uninstall_all, METH_O, "uninstall() every ForwardSwap of a list."},
    {"layer_spans", (PyCFunction)(void (*)(void))layer_spans, METH_FASTCALL,
     "The finished layer spans of one forward, built from its stamps."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups = {
    PyModuleDef_HEAD_INIT, "visiontel.torch._speedups",
    "Compiled per-layer loops of visiontel-torch (see _compiled.py).", -1, methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__speedups(void) {
    INTERN(str_value, "value");
    INTERN(str_record, "record");
    INTERN(str_forward, "forward");
    INTERN(str_install, "install");
    INTERN(str_uninstall, "uninstall");
    INTERN(str_stamps, "stamps");
    INTERN(str_events, "events");
    INTERN(str_layer_start, "layer start");
    INTERN(str_layer_end, "layer end");
    INTERN(str_class, "visiontel.module.class");
    INTERN(str_call, "visiontel.module.call");
    INTERN(str_incomplete, "visiontel.module.incomplete");
    INTERN(str_f_name, "_name");
    INTERN(str_f_context, "_context");
    INTERN(str_f_parent, "_parent");
    INTERN(str_f_attributes, "_attributes");
    INTERN(str_f_start, "_start_time");
    INTERN(str_f_end, "_end_time");
    INTERN(str_trace_id, "trace_id");
    INTERN(str_trace_state, "trace_state");
    PyObject *copy_module = PyImport_ImportModule("copy");
    if (copy_module == NULL) return NULL;
    deepcopy_function = PyObject_GetAttrString(copy_module, "deepcopy");
    Py_DECREF(copy_module);
    if (deepcopy_function == NULL) return NULL;
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL) return NULL;
    perf_counter_ns = PyObject_GetAttrString(time_module, "perf_counter_ns");
    Py_DECREF(time_module);
    if (perf_counter_ns == NULL || record_init_type() < 0 || roots_init_names() < 0 ||
        stage_init_names() < 0)
        return NULL;
    /* the module's types, by the names Python imports them under */
    struct {
        const char *name;
        PyTypeObject *type;
    } types[] = {
        {"StampedForward", &StampedForwardType}, {"ThreadRecord", &ThreadRecordType},
        {"ForwardSwap", &ForwardSwapType},       {"ForwardDepth", &ForwardDepthType},
        {"ForwardRecord", &ForwardRecordType},   {"RootHooks", &RootHooksType},
        {"StageHooks", &StageHooksType},
    };
    size_t count = sizeof types / sizeof types[0];
    for (size_t i = 0; i < count; i++)
        if (PyType_Ready(types[i].type) < 0) return NULL;
    PyObject *module = PyModule_Create(&speedups);
    if (module == NULL) return NULL;
    for (size_t i = 0; i < count; i++) {
        if (PyModule_AddObjectRef(module, types[i].name, (PyObject *)types[i].type) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    return module;
}
