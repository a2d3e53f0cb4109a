/* Declarations shared by the files of visiontel.torch._speedups (see module.c). */
#ifndef VISIONTEL_SPEEDUPS_H
#define VISIONTEL_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

/* Interned names and attribute keys, made once by PyInit__speedups. */
extern PyObject *str_value, *str_record, *str_stamps, *str_events, *str_layer_start, *str_layer_end;
extern PyObject *str_class, *str_call, *str_incomplete, *str_forward, *str_install,
    *str_uninstall;
extern PyObject *str_f_name, *str_f_context, *str_f_parent, *str_f_attributes, *str_f_start,
    *str_f_end;
extern PyObject *str_trace_id, *str_trace_state;
extern PyObject *deepcopy_function; /* copy.deepcopy */

/* perf_counter_ns() now, into *out; -1 with an exception set on failure. */
int clock_ns(long long *out);

/* A nanosecond count held as an int: PyLong_AsLongLong converts ints of more than one digit
 * through a byte array, PyLong_AsLong loops over the digits (both 64 bits on LP64). -1 with
 * an exception on failure. */
static inline long long nanoseconds_of(PyObject *value) {
#if LONG_MAX >= LLONG_MAX
    return PyLong_AsLong(value);
#else
    return PyLong_AsLongLong(value);
#endif
}

extern PyTypeObject ThreadRecordType, StampedForwardType, ForwardSwapType, RootHooksType,
    ForwardRecordType, ForwardDepthType, StageHooksType;

/* thread_record.c: add `change` to a ForwardDepth's (or a threading.local's) .value for
 * this thread; -1 with an exception on failure. */
int depth_add(PyObject *depth, long change);

/* record.c: ForwardRecord, _record.ForwardRecord's fields by index (its order). */
enum RecordField {
    F_TABLE, F_TRACER, F_SPAN, F_PERF_START, F_WALL_START, F_STAMPS, F_EVENTS, F_START_EVENT,
    F_END_EVENT, F_PERF_END, F_BATCH_SIZE, F_INPUTS, F_CONTEXT_TOKEN, F_CONTAINERS_OPEN,
    F_PROBES, F_PREVIOUS, RECORD_FIELDS
};
typedef struct {
    PyObject_HEAD
    PyObject *fields[RECORD_FIELDS]; /* NULL only once deleted */
} ForwardRecordObject;
int record_init_type(void);
/* A new record: table, tracer, span, perf_start_ns, wall_start_ns, stamps, then these
 * three; the other fields at their defaults. */
PyObject *record_create(PyObject *const required[6], PyObject *batch_size, PyObject *inputs,
                        PyObject *previous);
/* One field of a record (a new reference; NULL with an exception), or set it: by index for
 * a ForwardRecord, by name for any other object (the pure-Python dataclass). */
PyObject *record_get(PyObject *record, int field);
int record_set(PyObject *record, int field, PyObject *value);

/* roots.c and stage.c: their attribute names, made once by PyInit__speedups; -1 on failure. */
int roots_init_names(void);
int stage_init_names(void);

/* thread_record.c: this thread's record (borrowed), NULL without an exception for None. */
PyObject *thread_record_get(PyObject *state);

/* thread_record.c: `state.record` for a ThreadRecord or any object with .record (a
 * threading.local): a new reference, Py_None when none; NULL with an exception. */
PyObject *current_record(PyObject *state);

/* thread_record.c: `state.record = record` for either kind of state; -1 with an exception. */
int set_current_record(PyObject *state, PyObject *record);

/* swap.c and spans.c: module-level functions. */
PyObject *install_all(PyObject *module, PyObject *swaps);
PyObject *uninstall_all(PyObject *module, PyObject *swaps);
PyObject *layer_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
