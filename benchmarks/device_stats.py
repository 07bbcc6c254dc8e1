"""Peak memory and model-FLOPs utilisation for the benchmarks, on the CPU or a CUDA device.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` (reset before each measurement); on
the CPU the process's peak resident set (``VmHWM``), reset through ``/proc/self/clear_refs``
(Linux), reported above the resident set at the reset (after `malloc_trim`), so the model's weights
are not counted.
`tracemalloc` would not see torch's CPU tensors (they are not allocated through Python).

MFU: model FLOPs per second over the device's peak dense bf16 FLOPs: ``6 N`` FLOPs per token
read in a training step (forward and backward), ``2 N`` without gradient, N the model's
parameters (the PaLM convention: attention FLOPs and checkpointing's recomputation not
counted). Peaks are the vendors' dense bf16 tensor-core figures, looked up by device name.
"""

from __future__ import annotations

import ctypes
import os
import platform
from pathlib import Path

import torch

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


class PeakMemory:
    """``reset()`` before a measured call, ``read_mb()`` after: the peak above the reset."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._base = 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return
        # freed tensors stay resident in malloc's arenas: give them back first, or a
        # measurement after a larger one would reuse them unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current resident set
        self._base = _status_kb("VmRSS")

    def read_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        return (_status_kb("VmHWM") - self._base) / 1024


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak (TFLOP/s), None on the CPU or an unknown GPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def mfu(params: int, tokens_per_s: float, device: torch.device, training: bool) -> float | None:
    """Model FLOPs utilisation (0..1) or None where the peak is unknown."""
    peak = peak_tflops(device)
    if peak is None:
        return None
    return (6 if training else 2) * params * tokens_per_s / (peak * 1e12)


def describe(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"CPU {platform.machine()}, {os.cpu_count()} cores, {threads} torch thread(s), "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
