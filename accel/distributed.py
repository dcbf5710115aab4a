"""Data-parallel training with torch.distributed (DDP) (docs/methods.md §9).

Every rank holds the same masks without any broadcast. A mask decision is a deterministic function
of the gradients, which DDP all-reduces so that every rank holds the same values, and of random
streams indexed by (seed, step) (``reference.schedules.step_seed``). ``verify_masks`` is a debug
check: it all-gathers a checksum of every rank's masks and fails loudly if they differ.

Each rank takes a contiguous slice of the same global batch (``shard``). The loss is the rank's
sum of per-sample losses times world / global batch size, so DDP's gradient average is the
global-batch mean: the run equals a single-process run with the same global batch (up to float
summation order).

BatchNorm: on CUDA with NCCL (the backend chosen when CUDA is available, as in the papers' multi-GPU
runs) every BatchNorm layer is converted to ``torch.nn.SyncBatchNorm``, so the batch statistics are
those of the global batch, as in a single process. SyncBatchNorm needs CUDA, so on CPU/gloo each
rank normalises with its own shard's statistics (a warning says so) and such runs differ from a
single process. ``TWINSPARSE_DDP_BACKEND`` overrides the backend (e.g. gloo for a CPU run on a GPU
machine).
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
import warnings


_TIMEOUT_S = None


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


BACKENDS = ("gloo", "nccl")


def default_backend() -> str:
    """``TWINSPARSE_DDP_BACKEND`` when set, else NCCL when CUDA is available, else gloo."""
    b = os.environ.get("TWINSPARSE_DDP_BACKEND")
    if b is not None:
        if b not in BACKENDS:
            raise ValueError(f"TWINSPARSE_DDP_BACKEND={b!r} is not allowed; choose one of {list(BACKENDS)}")
        return b
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None, timeout_s: float = 60.0) -> bool:
    """Join the process group described by torchrun's environment (WORLD_SIZE > 1); returns whether
    training is distributed. ``backend`` None: ``default_backend()``; with NCCL each rank uses the
    GPU LOCAL_RANK (so device 'cuda' is the rank's own GPU). A peer that dies makes collectives fail
    after ``timeout_s``."""
    global _TIMEOUT_S
    if dist.is_initialized():
        return active()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not timeout_s > 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be > 0 seconds")
    backend = default_backend() if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed; choose one of {list(BACKENDS)}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _TIMEOUT_S = float(timeout_s)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return active()


def uses_sync_batchnorm(device: str, backend: str) -> bool:
    """SyncBatchNorm applies on CUDA devices with the NCCL backend (it has no CPU implementation)."""
    return str(device).startswith("cuda") and backend == "nccl"


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm layer of ``model`` by ``torch.nn.SyncBatchNorm`` in place, keeping its
    parameter and buffer tensors (so an optimizer or a Sparsifier built on the model still holds
    them); returns ``model``. The top-level module itself must not be a BatchNorm layer."""
    if isinstance(model, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError("sync_batchnorm converts the BatchNorm layers inside a model, not a bare BatchNorm layer")
    out = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert out is model
    return model


def wrap(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """``model`` in DistributedDataParallel: BatchNorm synchronised on CUDA/NCCL (``sync_batchnorm``);
    on CPU/gloo per-rank shard statistics, with a warning."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and uses_sync_batchnorm(device, dist.get_backend()):
        sync_batchnorm(model)
    elif has_bn:
        warnings.warn(f"BatchNorm under DDP with backend {dist.get_backend()!r} on {device!r} uses each rank's shard "
                      f"statistics (SyncBatchNorm needs CUDA and NCCL); runs differ from a single process with the "
                      f"same global batch")
    if str(device).startswith("cuda"):
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    return torch.nn.parallel.DistributedDataParallel(model)


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
