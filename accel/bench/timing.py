"""Timing that cannot flatter: CUDA events on a GPU, inputs rotated through more memory than the
L2 cache holds, medians, and the copy bandwidth of the same device as the floor."""
from __future__ import annotations

import math
import platform
import statistics
import time
from typing import Callable, Optional

import torch

__all__ = ["Clock", "copy_bandwidth", "copies_beyond_l2", "device_name", "cpu_model"]


class Clock:
    """``time(fn, repeats)``: the median seconds of ``fn()``; ``before(i)`` runs untimed before the
    i-th call (rotating inputs). On CUDA, events recorded on the current stream around the call
    measure from the moment the host issues the first operation to the moment the device finishes
    the last (host-bound code is measured as such)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable, repeats: int, warmup: int = 2, before: Optional[Callable] = None) -> float:
        for i in range(warmup):
            if before is not None:
                before(i)
            fn()
        self.sync()
        out = []
        for i in range(repeats):
            if before is not None:
                before(warmup + i)
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return statistics.median(out)


def l2_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20))
    return 32 << 20


def copies_beyond_l2(nbytes: int, device: torch.device, budget: int = 2 << 30) -> int:
    """How many copies of an input of ``nbytes`` to rotate so that consecutive calls never find
    their input in the L2 cache (at least 4x the cache together), within a memory budget."""
    need = math.ceil(4 * l2_bytes(device) / max(1, nbytes))
    return int(max(1, min(need, budget // max(1, nbytes))))


def copy_bandwidth(clock: Clock, nbytes: int, repeats: int) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=clock.device).uniform_()
    dst = torch.empty_like(src)
    t = clock.time(lambda: dst.copy_(src), repeats)
    return 2 * src.numel() * 4 / t


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_model()}"
