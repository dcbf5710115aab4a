"""Data-parallel training with torch.distributed (DDP) (DESIGN.md "Multi-GPU", issue #7).

Every rank holds the same masks without any broadcast. A mask decision is a deterministic function
of the gradients, which DDP all-reduces so that every rank holds the same values, and of random
streams indexed by (seed, step) (``reference.schedules.step_seed``). ``verify_masks`` is a debug
check: it all-gathers a checksum of every rank's masks and fails loudly if they differ.

Each rank takes a contiguous slice of the same global batch (``shard``). The loss is the rank's
sum of per-sample losses times world / global batch size, so DDP's gradient average is the
global-batch mean: the run equals a single-process run with the same global batch (up to float
summation order).
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist


_TIMEOUT_S = None


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def init_from_env(backend: str = "gloo", timeout_s: float = 60.0) -> bool:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1); returns whether
    training is distributed. A peer that dies makes collectives fail after ``timeout_s``."""
    global _TIMEOUT_S
    if dist.is_initialized():
        return active()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
    _TIMEOUT_S = float(timeout_s)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return active()


def shard(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """This rank's contiguous slice of the global batch (np.array_split: sizes differ by at most 1)."""
    if not active():
        return x, y
    idx = np.array_split(np.arange(len(x)), world())[rank()]
    return x[idx], y[idx]


def loss_scale(global_batch: int) -> float:
    """Multiply the rank's summed loss by this so DDP's average is the global-batch mean."""
    return world() / global_batch


def mask_checksum(masks: dict) -> torch.Tensor:
    """Two int64 numbers per layer (active count, sum of active flat indices modulo 2^61-1)."""
    out = []
    for m in masks.values():
        flat = m.reshape(-1)
        idx = torch.nonzero(flat).reshape(-1).to(torch.int64)
        out.append(torch.stack([flat.sum().to(torch.int64), (idx % (2 ** 61 - 1)).sum()]))
    return torch.stack(out).cpu()


def verify_masks(masks: dict, t: int) -> None:
    """All-gather every rank's mask checksum; raise if any rank disagrees (debug option)."""
    if not active():
        return
    mine = mask_checksum(masks)
    gathered = [torch.zeros_like(mine) for _ in range(world())]
    dist.all_gather(gathered, mine)
    bad = [r for r, c in enumerate(gathered) if not torch.equal(c, gathered[0])]
    if bad:
        raise RuntimeError(f"masks differ across ranks after the update at iteration {t}: ranks {bad} disagree "
                           f"with rank 0 (mask decisions must depend only on all-reduced gradients and "
                           f"step-indexed random streams)")


@contextmanager
def peer_failures_explained():
    """Turn a collective failure (gloo/NCCL errors subclass RuntimeError) into an error that says a
    peer died or timed out, instead of a bare transport message."""
    if not active():
        yield
        return
    try:
        yield
    except RuntimeError as e:
        raise RuntimeError(f"rank {rank()}: distributed training failed: a peer process died or a collective "
                           f"timed out (timeout {_TIMEOUT_S} s): {e}") from e
