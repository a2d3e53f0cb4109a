"""The NVML entry points visiontel-gpu calls, by their C names: the one list of them.

Only the first group is required: without it NVML cannot start or name a GPU, and the
backend reports itself unavailable. Every other entry point may be missing from an older
driver branch (FUNCTION_NOT_FOUND: the library does not export it) or answer NOT_SUPPORTED;
then only what needs it goes away, the loss is counted once per device and entry point in
visiontel.gpu.collection.errors, and it is not asked for again. The tests hide each name of
OPTIONAL in turn from the simulator, so a call added here is covered by them.
"""

from __future__ import annotations

REQUIRED = (
    "nvmlInitWithFlags",
    "nvmlShutdown",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetName",
    "nvmlDeviceGetUUID",
)

# System: the resource attributes and hw.driver_version ("unknown" without it).
DRIVER_VERSION = "nvmlSystemGetDriverVersion"
CUDA_VERSION = "nvmlSystemGetCudaDriverVersion"
# MIG layout, read once at start: without these a GPU is collected as a whole.
MIG_MODE = "nvmlDeviceGetMigMode"
MIG_COUNT = "nvmlDeviceGetMaxMigDeviceCount"
MIG_HANDLE = "nvmlDeviceGetMigDeviceHandleByIndex"
# Scalar readings, one call each per sweep.
MEMORY = "nvmlDeviceGetMemoryInfo"
UTILIZATION = "nvmlDeviceGetUtilizationRates"
ENCODER = "nvmlDeviceGetEncoderUtilization"
DECODER = "nvmlDeviceGetDecoderUtilization"
TEMPERATURE = "nvmlDeviceGetTemperature"
CLOCK = "nvmlDeviceGetClockInfo"
# The same bits under their R535 name, and under the older one drivers before it export.
CLOCK_REASONS = (
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)
# The field-value batch, and the per-reading calls it replaces on drivers without it.
FIELD_VALUES = "nvmlDeviceGetFieldValues"
POWER = "nvmlDeviceGetPowerUsage"
ENERGY = "nvmlDeviceGetTotalEnergyConsumption"
ECC = "nvmlDeviceGetTotalEccErrors"
PCIE_REPLAYS = "nvmlDeviceGetPcieReplayCounter"
# Running processes, newest generation first: each has its own element layout.
PROCESSES = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
PROCESS_UTILIZATION = "nvmlDeviceGetProcessUtilization"
# XID and other events (their own thread): without them, events are off, metrics unchanged.
EVENT_SET_CREATE = "nvmlEventSetCreate"
EVENT_TYPES = "nvmlDeviceGetSupportedEventTypes"
EVENT_REGISTER = "nvmlDeviceRegisterEvents"
EVENT_WAIT = "nvmlEventSetWait_v2"
EVENT_SET_FREE = "nvmlEventSetFree"

METRICS = (
    DRIVER_VERSION,
    CUDA_VERSION,
    MIG_MODE,
    MIG_COUNT,
    MIG_HANDLE,
    MEMORY,
    UTILIZATION,
    ENCODER,
    DECODER,
    TEMPERATURE,
    CLOCK,
    *CLOCK_REASONS,
    FIELD_VALUES,
    POWER,
    ENERGY,
    ECC,
    PCIE_REPLAYS,
    *PROCESSES,
    PROCESS_UTILIZATION,
)
EVENTS = (EVENT_SET_CREATE, EVENT_TYPES, EVENT_REGISTER, EVENT_WAIT, EVENT_SET_FREE)
OPTIONAL = METRICS + EVENTS
