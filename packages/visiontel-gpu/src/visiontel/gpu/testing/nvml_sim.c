/*
 * A scripted stand-in for libnvidia-ml.so.1, for testing NVML consumers without a GPU.
 *
 * Every value comes from a plain "key=value" script file named by the environment
 * variable NVML_SIM_SCRIPT (see visiontel/gpu/testing/__init__.py for the keys). The script
 * is read at nvmlInit and again whenever it changes (checked at most every 20 ms, or at once
 * through nvmlSimReload), so a test can change values, break a GPU or queue an XID event
 * while the consumer runs. A value the script does not set reads as NVML_ERROR_NOT_SUPPORTED,
 * which is what a real driver answers for a field the board lacks.
 *
 * Only the entry points that the real nvidia-ml-py bindings call for visiontel-gpu (and its
 * benchmark baselines) are implemented; the struct layouts follow nvml.h. A build may hide
 * entry points (NvmlSimulator.build(..., hide=[...]) links with a version script that makes
 * them local), so a lookup fails as it does on a driver branch that predates them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    OK = 0, E_UNINIT = 1, E_INVALID = 2, E_NOT_SUPPORTED = 3, E_NOT_FOUND = 6,
    E_INSUFFICIENT = 7, E_DRIVER = 9, E_TIMEOUT = 10, E_LOST = 15, E_UNKNOWN = 999
};

#define MAX_GPUS 16
#define MAX_MIG 7
#define MAX_PROCS 32
#define MAX_FIELDS 48
#define MAX_ERRS 32
#define MAX_EVENTS 64
/* delay.<fn>=hang: the call blocks until nvmlSimRelease(), at most HANG_CAP_MS so that a
   test which fails before releasing it cannot wedge the whole run. */
#define HANG_UNTIL_RELEASED 0xFFFFFFFFu
#define HANG_CAP_MS 120000u

/* Scalar values a device may have; a bit in `has` says whether the script set it. */
enum {
    V_MEM_TOTAL, V_MEM_USED, V_UTIL_GPU, V_UTIL_MEM, V_ENCODER, V_DECODER, V_TEMP, V_POWER_MW,
    V_ENERGY_MJ, V_CLOCK_SM, V_CLOCK_MEM, V_REASONS, V_ECC_CORRECTED, V_ECC_UNCORRECTED,
    V_PCIE_TX, V_PCIE_RX, V_PCIE_REPLAY, V_COUNT
};
static const char *VALUE_KEYS[V_COUNT] = {
    "memory.total", "memory.used", "utilization.gpu", "utilization.memory", "encoder",
    "decoder", "temperature", "power_mw", "energy_mj", "clock.sm", "clock.mem",
    "clocks_event_reasons", "ecc.corrected", "ecc.uncorrected", "pcie.tx_kbps", "pcie.rx_kbps",
    "pcie.replay"};

typedef struct { unsigned id; unsigned long long value; int ret; unsigned type; } field_t;
typedef struct { char fn[64]; int code; } err_t;
typedef struct { char fn[64]; unsigned ms; } delay_t;
typedef struct { unsigned pid; unsigned long long used; unsigned gi, ci; } proc_t;
typedef struct { unsigned pid; unsigned sm, mem, enc, dec; } putil_t;

typedef struct sim_device {
    int index, is_mig, parent;
    char uuid[96], name[96];
    unsigned long long values[V_COUNT];
    unsigned has;
    field_t fields[MAX_FIELDS]; int nfields;
    err_t errs[MAX_ERRS]; int nerrs;
    delay_t delays[MAX_ERRS]; int ndelays;
    proc_t procs[MAX_PROCS]; int nprocs;
    putil_t putil[MAX_PROCS]; int nputil;
    int mig_count;
    unsigned long long events_registered;
} sim_device;

typedef struct { int gpu; unsigned long long type, data; int delivered; } event_t;

typedef struct { unsigned long long mask; } sim_event_set;

typedef struct {
    unsigned long long device; /* pointer to the device */
    unsigned long long eventType, eventData;
    unsigned gpuInstanceId, computeInstanceId;
} nvmlEventData_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned gpu, memory; } nvmlUtilization_t;
/* nvmlDeviceGetComputeRunningProcesses (v1) fills nvmlProcessInfo_v1_t; _v2 and _v3 fill the
   larger nvmlProcessInfo_t (same layout as nvmlProcessInfo_v2_t). */
typedef struct { unsigned pid; unsigned long long used; } nvmlProcessInfo_v1_t;
typedef struct { unsigned pid; unsigned long long used; unsigned gi, ci; } nvmlProcessInfo_t;
typedef struct { unsigned pid; unsigned long long ts; unsigned sm, mem, enc, dec; } nvmlProcUtil_t;
typedef union { double d; unsigned ui; unsigned long ul; unsigned long long ull; long long sll; int si; unsigned short us; } nvmlValue_t;
typedef struct {
    unsigned fieldId, scopeId; long long timestamp, latencyUsec;
    unsigned valueType; int nvmlReturn; nvmlValue_t value;
} nvmlFieldValue_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static sim_device gpus[MAX_GPUS];
static sim_device migs[MAX_GPUS][MAX_MIG];
static int gpu_count, init_error, initialized;
static char driver_version[80] = "550.54.15";
static int cuda_version = 12040, has_cuda_version = 1;
static event_t events[MAX_EVENTS];
static int nevents;
static struct timespec last_check;
static time_t script_mtime; static long script_mtime_ns; static off_t script_size;
static unsigned long long calls;
/* Read and written without the library lock: a hung call holds that lock, and the tests
   watch and end hangs from other threads while it does. */
static int hung_now;   /* calls inside an injected delay right now */
static int released;   /* nvmlSimRelease() ended the delays; cleared when a script loads */
static unsigned event_wait_delay;  /* delay.nvmlEventSetWait: ms, or HANG_UNTIL_RELEASED */

static void set_device_key(sim_device *d, const char *key, const char *val) {
    for (int i = 0; i < V_COUNT; i++) {
        if (strcmp(key, VALUE_KEYS[i]) == 0) {
            d->values[i] = strtoull(val, NULL, 10);
            d->has |= 1u << i;
            return;
        }
    }
    if (strcmp(key, "uuid") == 0) { snprintf(d->uuid, sizeof d->uuid, "%s", val); return; }
    if (strcmp(key, "name") == 0) { snprintf(d->name, sizeof d->name, "%s", val); return; }
    if (strcmp(key, "mig.count") == 0) { d->mig_count = atoi(val); return; }
    if (strncmp(key, "field.", 6) == 0 && d->nfields < MAX_FIELDS) {
        /* field.<id>=<value> or field.<id>=!<nvml error code> */
        field_t *f = &d->fields[d->nfields++];
        f->id = (unsigned)atoi(key + 6);
        /* value, !<error code>, d:<double>, i:<signed 64-bit> or u:<unsigned 32-bit> */
        f->ret = OK; f->type = 3;
        if (val[0] == '!') { f->ret = atoi(val + 1); f->value = 0; }
        else if (strncmp(val, "d:", 2) == 0) {
            double x = strtod(val + 2, NULL); f->type = 0; memcpy(&f->value, &x, sizeof x);
        } else if (strncmp(val, "i:", 2) == 0) {
            long long x = strtoll(val + 2, NULL, 10); f->type = 4; memcpy(&f->value, &x, sizeof x);
        } else if (strncmp(val, "u:", 2) == 0) {
            f->type = 1; f->value = (unsigned)strtoul(val + 2, NULL, 10);
        } else f->value = strtoull(val, NULL, 10);
        return;
    }
    if (strncmp(key, "error.", 6) == 0 && d->nerrs < MAX_ERRS) {
        err_t *e = &d->errs[d->nerrs++];
        snprintf(e->fn, sizeof e->fn, "%s", key + 6);
        e->code = atoi(val);
        return;
    }
    if (strncmp(key, "delay.", 6) == 0 && d->ndelays < MAX_ERRS) {
        delay_t *e = &d->delays[d->ndelays++];
        snprintf(e->fn, sizeof e->fn, "%s", key + 6);
        e->ms = strcmp(val, "hang") == 0 ? HANG_UNTIL_RELEASED : (unsigned)atoi(val);
        return;
    }
    if (strncmp(key, "process.", 8) == 0 && d->nprocs < MAX_PROCS) {
        proc_t *p = &d->procs[d->nprocs++];
        sscanf(val, "%u,%llu,%u,%u", &p->pid, &p->used, &p->gi, &p->ci);
        return;
    }
    if (strncmp(key, "process_utilization.", 20) == 0 && d->nputil < MAX_PROCS) {
        putil_t *p = &d->putil[d->nputil++];
        sscanf(val, "%u,%u,%u,%u,%u", &p->pid, &p->sm, &p->mem, &p->enc, &p->dec);
        return;
    }
}

static void load_script(void) {
    const char *path = getenv("NVML_SIM_SCRIPT");
    /* Event registrations belong to the consumer, and an event already handed out stays
       delivered while its script line is unchanged: keep both across reloads. */
    unsigned long long registered[MAX_GPUS];
    event_t old_events[MAX_EVENTS];
    int old_nevents = nevents;
    for (int i = 0; i < MAX_GPUS; i++) registered[i] = gpus[i].events_registered;
    memcpy(old_events, events, sizeof events);
    memset(gpus, 0, sizeof gpus);
    memset(migs, 0, sizeof migs);
    gpu_count = 0; init_error = 0; nevents = 0; event_wait_delay = 0;
    __atomic_store_n(&released, 0, __ATOMIC_SEQ_CST);
    snprintf(driver_version, sizeof driver_version, "550.54.15");
    has_cuda_version = 1; cuda_version = 12040;
    for (int i = 0; i < MAX_GPUS; i++) {
        gpus[i].index = i; gpus[i].parent = -1;
        snprintf(gpus[i].uuid, sizeof gpus[i].uuid, "GPU-00000000-0000-0000-0000-%012d", i);
        snprintf(gpus[i].name, sizeof gpus[i].name, "NVIDIA Simulated GPU");
        for (int j = 0; j < MAX_MIG; j++) {
            migs[i][j].index = j; migs[i][j].is_mig = 1; migs[i][j].parent = i;
            snprintf(migs[i][j].uuid, sizeof migs[i][j].uuid, "MIG-00000000-0000-0000-%04d-%012d", i, j);
            snprintf(migs[i][j].name, sizeof migs[i][j].name, "NVIDIA Simulated GPU MIG 1g.10gb");
        }
    }
    if (!path) goto done;
    struct stat st;
    if (stat(path, &st) == 0) {
        script_mtime = st.st_mtim.tv_sec; script_mtime_ns = st.st_mtim.tv_nsec; script_size = st.st_size;
    }
    FILE *fp = fopen(path, "r");
    if (!fp) goto done;
    char line[512];
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == '#' || line[0] == 0) continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = 0;
        const char *key = line, *val = eq + 1;
        if (strcmp(key, "device_count") == 0) gpu_count = atoi(val);
        else if (strcmp(key, "init_error") == 0) init_error = atoi(val);
        else if (strcmp(key, "delay.nvmlEventSetWait") == 0)
            event_wait_delay = strcmp(val, "hang") == 0 ? HANG_UNTIL_RELEASED : (unsigned)atoi(val);
        else if (strcmp(key, "driver_version") == 0) snprintf(driver_version, sizeof driver_version, "%s", val);
        else if (strcmp(key, "cuda_version") == 0) {
            if (val[0] == '!') has_cuda_version = 0; else cuda_version = atoi(val);
        } else if (strncmp(key, "event.", 6) == 0 && nevents < MAX_EVENTS) {
            event_t *e = &events[nevents++];
            e->delivered = 0;
            sscanf(val, "%d,%llu,%llu", &e->gpu, &e->type, &e->data);
        } else if (strncmp(key, "gpu.", 4) == 0) {
            char *rest; int g = (int)strtol(key + 4, &rest, 10);
            if (g < 0 || g >= MAX_GPUS || *rest != '.') continue;
            rest++;
            if (strncmp(rest, "mig.", 4) == 0 && rest[4] >= '0' && rest[4] <= '9') {
                char *mrest; int m = (int)strtol(rest + 4, &mrest, 10);
                if (m < 0 || m >= MAX_MIG || *mrest != '.') continue;
                set_device_key(&migs[g][m], mrest + 1, val);
            } else {
                set_device_key(&gpus[g], rest, val);
            }
        }
    }
    fclose(fp);
done:
    if (gpu_count > MAX_GPUS) gpu_count = MAX_GPUS;
    for (int i = 0; i < MAX_GPUS; i++) gpus[i].events_registered = registered[i];
    for (int i = 0; i < nevents && i < old_nevents; i++) {
        const event_t *o = &old_events[i];
        if (o->gpu == events[i].gpu && o->type == events[i].type && o->data == events[i].data)
            events[i].delivered = o->delivered;
    }
}

/* Re-read the script when it changed; stat at most every 20 ms so calls stay cheap. */
static void maybe_reload(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long ms = (now.tv_sec - last_check.tv_sec) * 1000LL + (now.tv_nsec - last_check.tv_nsec) / 1000000;
    if (ms < 20) return;
    last_check = now;
    const char *path = getenv("NVML_SIM_SCRIPT");
    struct stat st;
    if (!path || stat(path, &st) != 0) return;
    if (st.st_mtim.tv_sec != script_mtime || st.st_mtim.tv_nsec != script_mtime_ns || st.st_size != script_size)
        load_script();
}

/* An injected delay, counted in hung_now while it lasts; nvmlSimRelease() ends it early. */
static void hang(unsigned ms) {
    __atomic_add_fetch(&hung_now, 1, __ATOMIC_SEQ_CST);
    long long limit = ms == HANG_UNTIL_RELEASED ? HANG_CAP_MS : ms;
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (__atomic_load_n(&released, __ATOMIC_SEQ_CST)) break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long us = (now.tv_sec - start.tv_sec) * 1000000LL + (now.tv_nsec - start.tv_nsec) / 1000;
        if (us >= limit * 1000) break;
        usleep(limit * 1000 - us < 1000 ? (useconds_t)(limit * 1000 - us) : 1000u);
    }
    __atomic_sub_fetch(&hung_now, 1, __ATOMIC_SEQ_CST);
}

/* Common prologue of every device call: counts it, checks init and injected errors. */
static nvmlReturn_t enter(const sim_device *d, const char *fn) {
    calls++;
    if (!initialized) return E_UNINIT;
    maybe_reload();
    if (!d) return E_INVALID;
    /* A hung driver call: sleeps with the library lock held, as a stuck ioctl would. */
    for (int i = 0; i < d->ndelays; i++)
        if (strcmp(d->delays[i].fn, fn) == 0) hang(d->delays[i].ms);
    for (int i = 0; i < d->nerrs; i++)
        if (strcmp(d->errs[i].fn, fn) == 0 || strcmp(d->errs[i].fn, "all") == 0) return d->errs[i].code;
    if (d->is_mig) {
        const sim_device *p = &gpus[d->parent];
        for (int i = 0; i < p->nerrs; i++)
            if (strcmp(p->errs[i].fn, "all") == 0) return p->errs[i].code;
    }
    return OK;
}

#define HAS(d, v) ((d)->has & (1u << (v)))
#define GUARD(d, fn) do { nvmlReturn_t r_ = enter((d), (fn)); if (r_ != OK) { pthread_mutex_unlock(&lock); return r_; } } while (0)
#define VALUE_OR_UNSUPPORTED(d, v) do { if (!HAS((d), (v))) { pthread_mutex_unlock(&lock); return E_NOT_SUPPORTED; } } while (0)

/* ---- simulator controls (not part of NVML) ---- */
void nvmlSimReload(void) { pthread_mutex_lock(&lock); load_script(); pthread_mutex_unlock(&lock); }
unsigned long long nvmlSimCallCount(void) { return calls; }
int nvmlSimHungCount(void) { return __atomic_load_n(&hung_now, __ATOMIC_SEQ_CST); }
/* Ends every injected delay in progress, and skips them, until the script is next loaded. */
void nvmlSimRelease(void) { __atomic_store_n(&released, 1, __ATOMIC_SEQ_CST); }

/* ---- system ---- */
nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    load_script();
    clock_gettime(CLOCK_MONOTONIC, &last_check);
    nvmlReturn_t r = init_error;
    if (r == OK) initialized++;
    pthread_mutex_unlock(&lock);
    return r;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    nvmlReturn_t r = initialized ? OK : E_UNINIT;
    if (initialized) initialized--;
    pthread_mutex_unlock(&lock);
    return r;
}

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case OK: return "Success";
    case E_UNINIT: return "Uninitialized";
    case E_NOT_SUPPORTED: return "Not Supported";
    case E_DRIVER: return "Driver Not Loaded";
    case E_TIMEOUT: return "Timeout";
    case E_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *buf, unsigned len) {
    calls++;
    if (!initialized) return E_UNINIT;
    if (strlen(driver_version) + 1 > len) return E_INSUFFICIENT;
    strcpy(buf, driver_version);
    return OK;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v) {
    calls++;
    if (!initialized) return E_UNINIT;
    if (!has_cuda_version) return E_NOT_SUPPORTED;
    *v = cuda_version;
    return OK;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v) { return nvmlSystemGetCudaDriverVersion(v); }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *count) {
    calls++;
    if (!initialized) return E_UNINIT;
    pthread_mutex_lock(&lock); maybe_reload(); *count = (unsigned)gpu_count; pthread_mutex_unlock(&lock);
    return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, sim_device **out) {
    calls++;
    if (!initialized) return E_UNINIT;
    if ((int)index >= gpu_count) return E_INVALID;
    *out = &gpus[index];
    return OK;
}

/* ---- identity ---- */
static nvmlReturn_t copy_str(const char *src, char *buf, unsigned len) {
    if (strlen(src) + 1 > len) return E_INSUFFICIENT;
    strcpy(buf, src);
    return OK;
}
nvmlReturn_t nvmlDeviceGetUUID(sim_device *d, char *buf, unsigned len) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetUUID");
    nvmlReturn_t r = copy_str(d->uuid, buf, len); pthread_mutex_unlock(&lock); return r;
}
nvmlReturn_t nvmlDeviceGetName(sim_device *d, char *buf, unsigned len) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetName");
    nvmlReturn_t r = copy_str(d->name, buf, len); pthread_mutex_unlock(&lock); return r;
}
nvmlReturn_t nvmlDeviceGetIndex(sim_device *d, unsigned *index) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetIndex");
    *index = (unsigned)d->index; pthread_mutex_unlock(&lock); return OK;
}

/* ---- scalar readings ---- */
static nvmlReturn_t read_uint(sim_device *d, const char *fn, int v, unsigned *out) {
    pthread_mutex_lock(&lock); GUARD(d, fn); VALUE_OR_UNSUPPORTED(d, v);
    *out = (unsigned)d->values[v]; pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(sim_device *d, nvmlMemory_t *m) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetMemoryInfo"); VALUE_OR_UNSUPPORTED(d, V_MEM_TOTAL);
    m->total = d->values[V_MEM_TOTAL];
    m->used = HAS(d, V_MEM_USED) ? d->values[V_MEM_USED] : 0;
    m->free = m->total - m->used;
    pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(sim_device *d, nvmlMemory_v2_t *m) {
    nvmlMemory_t v1;
    nvmlReturn_t r = nvmlDeviceGetMemoryInfo(d, &v1);
    if (r != OK) return r;
    m->total = v1.total; m->used = v1.used; m->free = v1.free; m->reserved = 0;
    return OK;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(sim_device *d, nvmlUtilization_t *u) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetUtilizationRates"); VALUE_OR_UNSUPPORTED(d, V_UTIL_GPU);
    u->gpu = (unsigned)d->values[V_UTIL_GPU];
    u->memory = (unsigned)d->values[V_UTIL_MEM];
    pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetEncoderUtilization(sim_device *d, unsigned *u, unsigned *period) {
    *period = 167000; return read_uint(d, "nvmlDeviceGetEncoderUtilization", V_ENCODER, u);
}
nvmlReturn_t nvmlDeviceGetDecoderUtilization(sim_device *d, unsigned *u, unsigned *period) {
    *period = 167000; return read_uint(d, "nvmlDeviceGetDecoderUtilization", V_DECODER, u);
}
nvmlReturn_t nvmlDeviceGetTemperature(sim_device *d, unsigned sensor, unsigned *t) {
    if (sensor != 0) return E_INVALID;
    return read_uint(d, "nvmlDeviceGetTemperature", V_TEMP, t);
}
nvmlReturn_t nvmlDeviceGetPowerUsage(sim_device *d, unsigned *mw) {
    return read_uint(d, "nvmlDeviceGetPowerUsage", V_POWER_MW, mw);
}
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(sim_device *d, unsigned long long *mj) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetTotalEnergyConsumption"); VALUE_OR_UNSUPPORTED(d, V_ENERGY_MJ);
    *mj = d->values[V_ENERGY_MJ]; pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetClockInfo(sim_device *d, unsigned type, unsigned *mhz) {
    if (type == 1) return read_uint(d, "nvmlDeviceGetClockInfo", V_CLOCK_SM, mhz);
    if (type == 2) return read_uint(d, "nvmlDeviceGetClockInfo", V_CLOCK_MEM, mhz);
    return E_NOT_SUPPORTED;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(sim_device *d, unsigned long long *r) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetCurrentClocksEventReasons"); VALUE_OR_UNSUPPORTED(d, V_REASONS);
    *r = d->values[V_REASONS]; pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(sim_device *d, unsigned long long *r) {
    return nvmlDeviceGetCurrentClocksEventReasons(d, r);
}
nvmlReturn_t nvmlDeviceGetTotalEccErrors(sim_device *d, unsigned type, unsigned counter, unsigned long long *n) {
    (void)counter;
    int v = type == 0 ? V_ECC_CORRECTED : V_ECC_UNCORRECTED;
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetTotalEccErrors"); VALUE_OR_UNSUPPORTED(d, v);
    *n = d->values[v]; pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetPcieThroughput(sim_device *d, unsigned counter, unsigned *kbps) {
    return read_uint(d, "nvmlDeviceGetPcieThroughput", counter == 0 ? V_PCIE_TX : V_PCIE_RX, kbps);
}
nvmlReturn_t nvmlDeviceGetPcieReplayCounter(sim_device *d, unsigned *n) {
    return read_uint(d, "nvmlDeviceGetPcieReplayCounter", V_PCIE_REPLAY, n);
}

/* Batched fields: each requested id answers from field.<id> with its own status. */
nvmlReturn_t nvmlDeviceGetFieldValues(sim_device *d, int count, nvmlFieldValue_t *values) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetFieldValues");
    struct timespec now; clock_gettime(CLOCK_REALTIME, &now);
    for (int i = 0; i < count; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->nvmlReturn = E_NOT_SUPPORTED;
        v->timestamp = (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000;
        v->latencyUsec = 0;
        for (int j = 0; j < d->nfields; j++) {
            if (d->fields[j].id != v->fieldId) continue;
            v->nvmlReturn = d->fields[j].ret;
            v->valueType = d->fields[j].type;
            v->value.ull = d->fields[j].value;
            break;
        }
    }
    pthread_mutex_unlock(&lock); return OK;
}

/* ---- processes ---- */
/* One implementation for the three generations; `v1` selects the short element. Every
   generation answers the same script keys and the same injected error key. */
static nvmlReturn_t running_processes(sim_device *d, unsigned *count, void *infos, int v1) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetComputeRunningProcesses");
    unsigned n = (unsigned)d->nprocs;
    if (infos == NULL || *count < n) {
        *count = n; pthread_mutex_unlock(&lock); return n == 0 ? OK : E_INSUFFICIENT;
    }
    for (unsigned i = 0; i < n; i++) {
        if (v1) {
            nvmlProcessInfo_v1_t *p = (nvmlProcessInfo_v1_t *)infos + i;
            p->pid = d->procs[i].pid; p->used = d->procs[i].used;
        } else {
            nvmlProcessInfo_t *p = (nvmlProcessInfo_t *)infos + i;
            p->pid = d->procs[i].pid; p->used = d->procs[i].used;
            p->gi = d->procs[i].gi; p->ci = d->procs[i].ci;
        }
    }
    *count = n; pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(sim_device *d, unsigned *count, nvmlProcessInfo_t *infos) {
    return running_processes(d, count, infos, 0);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(sim_device *d, unsigned *count, nvmlProcessInfo_t *infos) {
    return running_processes(d, count, infos, 0);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(sim_device *d, unsigned *count, nvmlProcessInfo_v1_t *infos) {
    return running_processes(d, count, infos, 1);
}
nvmlReturn_t nvmlDeviceGetProcessUtilization(sim_device *d, nvmlProcUtil_t *samples, unsigned *count, unsigned long long since) {
    (void)since;
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetProcessUtilization");
    unsigned n = (unsigned)d->nputil;
    if (n == 0) { *count = 0; pthread_mutex_unlock(&lock); return E_NOT_FOUND; }
    if (samples == NULL || *count < n) { *count = n; pthread_mutex_unlock(&lock); return E_INSUFFICIENT; }
    struct timespec now; clock_gettime(CLOCK_REALTIME, &now);
    for (unsigned i = 0; i < n; i++) {
        samples[i].pid = d->putil[i].pid;
        samples[i].ts = (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000;
        samples[i].sm = d->putil[i].sm; samples[i].mem = d->putil[i].mem;
        samples[i].enc = d->putil[i].enc; samples[i].dec = d->putil[i].dec;
    }
    *count = n; pthread_mutex_unlock(&lock); return OK;
}

/* ---- MIG ---- */
nvmlReturn_t nvmlDeviceGetMigMode(sim_device *d, unsigned *current, unsigned *pending) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetMigMode");
    if (d->is_mig) { pthread_mutex_unlock(&lock); return E_NOT_SUPPORTED; }
    *current = *pending = d->mig_count > 0 ? 1 : 0;
    pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(sim_device *d, unsigned *count) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetMaxMigDeviceCount");
    *count = MAX_MIG; pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(sim_device *d, unsigned index, sim_device **out) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetMigDeviceHandleByIndex");
    nvmlReturn_t r = E_NOT_FOUND;
    if (!d->is_mig && (int)index < d->mig_count && index < MAX_MIG) { *out = &migs[d->index][index]; r = OK; }
    pthread_mutex_unlock(&lock); return r;
}
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(sim_device *d, unsigned *is_mig) {
    calls++; if (!d) return E_INVALID; *is_mig = (unsigned)d->is_mig; return OK;
}
nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(sim_device *d, sim_device **out) {
    calls++; if (!d || !d->is_mig) return E_INVALID; *out = &gpus[d->parent]; return OK;
}

/* ---- events ---- */
nvmlReturn_t nvmlEventSetCreate(sim_event_set **out) {
    calls++; if (!initialized) return E_UNINIT;
    *out = calloc(1, sizeof(sim_event_set));
    return *out ? OK : E_UNKNOWN;
}
nvmlReturn_t nvmlEventSetFree(sim_event_set *set) { calls++; free(set); return OK; }
nvmlReturn_t nvmlDeviceGetSupportedEventTypes(sim_device *d, unsigned long long *types) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceGetSupportedEventTypes");
    *types = 0x1 | 0x2 | 0x8 | 0x10; pthread_mutex_unlock(&lock); return OK;
}
nvmlReturn_t nvmlDeviceRegisterEvents(sim_device *d, unsigned long long types, sim_event_set *set) {
    pthread_mutex_lock(&lock); GUARD(d, "nvmlDeviceRegisterEvents");
    d->events_registered |= types; set->mask |= types;
    pthread_mutex_unlock(&lock); return OK;
}
/* Hands out each scripted event once, in order; otherwise waits up to the timeout. */
nvmlReturn_t nvmlEventSetWait_v2(sim_event_set *set, nvmlEventData_t *data, unsigned timeout_ms) {
    calls++;
    (void)set;
    /* Unlike a device call's delay, a stuck event wait holds no lock: the driver's wait
       is a poll on its own file descriptor. */
    pthread_mutex_lock(&lock); maybe_reload(); unsigned delay = event_wait_delay; pthread_mutex_unlock(&lock);
    if (delay && !__atomic_load_n(&released, __ATOMIC_SEQ_CST)) hang(delay);
    for (unsigned waited = 0;; waited += 5) {
        pthread_mutex_lock(&lock);
        if (!initialized) { pthread_mutex_unlock(&lock); return E_UNINIT; }
        maybe_reload();
        for (int i = 0; i < nevents; i++) {
            event_t *e = &events[i];
            if (e->delivered) continue;
            e->delivered = 1;
            if (e->gpu < 0 || e->gpu >= gpu_count) continue;
            if (!(gpus[e->gpu].events_registered & e->type)) continue;
            data->device = (unsigned long long)(size_t)&gpus[e->gpu];
            data->eventType = e->type; data->eventData = e->data;
            data->gpuInstanceId = 0xFFFFFFFFu; data->computeInstanceId = 0xFFFFFFFFu;
            pthread_mutex_unlock(&lock);
            return OK;
        }
        pthread_mutex_unlock(&lock);
        if (waited >= timeout_ms) return E_TIMEOUT;
        usleep(5000);
    }
}
nvmlReturn_t nvmlEventSetWait(sim_event_set *set, nvmlEventData_t *data, unsigned timeout_ms) {
    return nvmlEventSetWait_v2(set, data, timeout_ms);
}
