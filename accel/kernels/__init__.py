"""CUDA C kernels for the accel hot paths, loaded with CuPy, run on PyTorch tensors (issue 6).

The sources are the ``*.cu`` files next to this module; each file's header comment says what its
kernels compute and why they are correct. They are compiled once per process and device with
``cupy.RawModule`` (NVRTC; CuPy also keeps its on-disk kernel cache), and launched

* on PyTorch tensors without copies: every tensor is passed as its raw ``data_ptr()`` (8 bytes
  by value), tables of many tensors as device arrays of those pointers (uploaded from pinned
  memory without blocking, cached by the pointer values);
* on PyTorch's current CUDA stream (``torch.cuda.current_stream().cuda_stream`` wrapped as a
  ``cupy.cuda.ExternalStream``), so they are ordered with the surrounding torch work and nothing
  synchronizes.

They are used automatically when the tensors are on CUDA, of a supported dtype (float32 /
float64), and CuPy is importable; otherwise the accel operators keep their torch implementation,
which is the CPU path and the fallback. ``TWINSPARSE_NO_CUDA_KERNELS=1`` switches them off.
Every call site guards the kernel branch with ``kernels.on_device(tensor)`` (``tensor.is_cuda``)
first, so on CPU nothing here runs and CuPy is never imported. A test can swap the backend
(``use_backend``): ``accel.kernels.simt`` runs these same sources on the CPU under a SIMT emulator,
through this same host code.

Layout: ``loader.py`` (backends, compilation, launches), ``tables.py`` (pointer and chunk
tables, multi-tensor launches) and one small wrapper module per source (``topk.py``, ``nm.py``, ``optim.py``, ``dst.py``, ``merge.py``). The
functions they export take inputs that the accel operators have already validated (shapes, counts,
finiteness); they are not a public API of their own. ``require()`` turns a silent fallback into an
error (the conformance registry's kernel entries use it to prove the kernel path ran).

Hot paths (the file, its kernels, the accel call site):

=====================  ==================================  =========================================
masked_sgd.cu          masked_sgd_{f32,f64}                accel.optim.masked_sgd_step(_all),
                                                           Sparsifier step with torch.optim.SGD
masked_adam.cu         masked_adam_{f32,f64}               accel.optim.masked_adam_step,
                                                           Sparsifier step with Adam / AdamW
guard.cu               nonfinite_check_{f32,f64}           the Sparsifier's NaN/inf guard
topk.cu                topk_{hist,filter,refine,ties,      accel.topk (topk_mask, per-layer,
                       resolve}_*                          global, select_within),
                                                           accel.dst drop / grow / drop_and_grow
nm_mask.cu             nm_masks_*                          accel.masks.nm_mask, nm_masks (all layers)
dst.cu                 dst_ee_scores_*                     accel.dst.dst_ee_scores
merge.cu               superpose_cia_*,                    accel.merge.superpose_cia,
                       umg_channel_scores_*                accel.cocktail_ops.umg_channel_scores(_all),
                                                           umg_channel_masks
=====================  ==================================  =========================================

Every launch chain is independent of the number of layers: multi-tensor tables or one flat
segmented buffer, one launch per dtype (top-k: a fixed chain of 5 kernels for float32, 8 for
float64). accel/kernels/NOTES.md has the byte budget, the predicted and measured times and the
resource report of each kernel.
"""
from __future__ import annotations

from . import loader
from .dst import dst_ee_scores
from .loader import (CHUNK, DISABLE_ENV, DTYPES, KERNEL_DIR, KERNELS, MAX_BLOCKS, SUFFIX, THREADS, CupyBackend,  # noqa: F401
                     available, backend, launches, on_device, require, source,
                     unavailable_reason, usable, use_backend)
from .tables import chunk_plan, chunk_plan_host  # noqa: F401
from .merge import superpose_cia, umg_channel_scores, umg_channel_scores_all
from .nm import nm_mask, nm_masks
from .optim import adam_step, masked_adam_step, masked_sgd_step, masked_sgd_step_all, nonfinite_check, sgd_step
from .topk import RADIX_BITS, radix_passes, topk_mask, topk_select

__all__ = ["available", "usable", "on_device", "use_backend", "backend", "CupyBackend", "require",
           "unavailable_reason", "radix_passes", "chunk_plan", "chunk_plan_host", "source", "loader", "launches",
           "topk_select", "topk_mask", "nm_mask", "nm_masks", "sgd_step", "adam_step", "nonfinite_check", "masked_sgd_step",
           "masked_sgd_step_all", "masked_adam_step", "dst_ee_scores", "superpose_cia", "umg_channel_scores",
           "umg_channel_scores_all",
           "KERNELS", "KERNEL_DIR", "DISABLE_ENV", "DTYPES", "SUFFIX", "THREADS", "CHUNK", "MAX_BLOCKS", "RADIX_BITS"]
