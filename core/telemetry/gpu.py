"""GPU utilisation from NVML (``inferq_gpu_utilisation_ratio{gpu}``), sampled in the worker
processes that run models, and whether this process counts as a GPU worker (for cost).

NVML comes from nvidia-ml-py (imported as ``pynvml``, NVIDIA's own binding): it reads the
driver's counters without CUDA, so sampling never initialises CUDA. It is imported on first
use, never at import time, and a host without the package, the driver or a GPU gets no thread
and no metric: the gauge stays empty instead of reporting a misleading 0.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from functools import lru_cache
from types import ModuleType

import structlog

from core.telemetry.metrics import GPU_UTILISATION

log = structlog.get_logger(__name__)

SAMPLE_SECONDS = 5.0
THREAD_NAME = "inferq-gpu-sampler"

_lock = threading.Lock()
_sampling: dict[int, bool] = {}  # pid -> whether a sampler runs there (a fork needs its own)


@lru_cache(maxsize=1)
def _nvml() -> ModuleType | None:
    """NVML initialised, or None where it cannot be (no package, no driver)."""
    try:
        pynvml = importlib.import_module("pynvml")  # nvidia-ml-py: in GPU images only
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # the package without a driver: a CPU host
        log.debug("nvml_unavailable", error=str(exc))
        return None
    return pynvml


def gpu_count() -> int:
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError:
        return 0


def on_gpu(device: str) -> bool:
    """Whether a worker whose engine was given ``device`` runs its models on a GPU: "cuda…",
    or "auto" on a host with one (the transformer tiers resolve "auto" the same way)."""
    return device.startswith("cuda") or (device == "auto" and gpu_count() > 0)


def start_sampling(interval_seconds: float = SAMPLE_SECONDS) -> bool:
    """Start this process's sampler thread once (a no-op after the first call). Returns
    whether one runs: False on a host without a GPU."""
    pid = os.getpid()
    with _lock:
        if pid not in _sampling:
            count = gpu_count()
            _sampling[pid] = count > 0
            if count:
                thread = threading.Thread(
                    target=_sample_forever,
                    args=(count, interval_seconds),
                    name=THREAD_NAME,
                    daemon=True,
                )
                thread.start()
        return _sampling[pid]


def sample_once(count: int) -> None:
    """Set the gauge for each of the ``count`` GPUs; NVML's utilisation is the share of its
    last sample period (1/6 s to 1 s, by product) a kernel was running, in percent."""
    nvml = _nvml()
    if nvml is None:
        return
    for index in range(count):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        GPU_UTILISATION.labels(str(index)).set(rates.gpu / 100)


def _sample_forever(count: int, interval_seconds: float) -> None:
    failing = False
    while True:
        try:
            sample_once(count)
            failing = False
        except Exception as exc:  # a GPU fallen off the bus must not end the sampler silently
            if not failing:
                log.warning("gpu_sample_failed", error=str(exc), error_type=type(exc).__name__)
            failing = True
        time.sleep(interval_seconds)
