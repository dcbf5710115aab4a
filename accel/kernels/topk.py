"""Segmented exact top-k with the tie rule (topk.cu): radix select, one launch chain for every
segment of a flat buffer."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import loader as L

RADIX_BITS = 11               # must match topk.cu
KEY_BITS = {torch.float32: 32, torch.float64: 64}


def radix_passes(dtype: torch.dtype) -> list[tuple[int, int]]:
    """(shift, width) of each radix-select pass, most significant digit first."""
    bits = KEY_BITS[dtype]
    out, hi = [], bits
    while hi > 0:
        width = min(RADIX_BITS, hi)
        out.append((hi - width, width))
        hi -= width
    return out


def topk_select(flat_scores: torch.Tensor, sizes: Sequence[int], ks: Union[Sequence[int], torch.Tensor],
                candidates: Optional[torch.Tensor] = None, invert: bool = False,
                or_with: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Segmented exact top-k (topk.cu): for each consecutive segment of the 1-D ``flat_scores``,
    the ``ks[i]`` largest scores among the candidates (``candidates`` True, or False when
    ``invert``; every position when None), ties -> smaller index; OR-ed with ``or_with`` when
    given. ``ks`` may be a device tensor (it is copied: the kernels count it down). Inputs
    validated by the caller (0 <= k <= candidates of the segment, finite scores)."""
    if not L.usable(flat_scores, candidates, or_with):
        raise RuntimeError(f"the CUDA top-k kernel cannot run: {L.unavailable_reason() or 'unsupported tensors'}")
    flat_scores = flat_scores.reshape(-1).contiguous()
    candidates = None if candidates is None else candidates.reshape(-1).contiguous()
    or_with = None if or_with is None else or_with.reshape(-1).contiguous()
    dev, dtype, n = flat_scores.device, flat_scores.dtype, flat_scores.numel()
    out = torch.empty(n, dtype=torch.bool, device=dev)
    if n == 0:
        return out
    sfx = L.SUFFIX[dtype]
    plan = L.chunk_plan(sizes, dev, flat=True)
    nseg, nch = len(sizes), plan["n_chunks"]
    hist = torch.zeros(nseg << RADIX_BITS, dtype=torch.int64, device=dev)   # u64 bins, re-zeroed by topk_scan
    prefix = torch.zeros(nseg, dtype=torch.int64, device=dev)
    if isinstance(ks, torch.Tensor):
        krem = ks.to(device=dev, dtype=torch.int64).clone()
    else:
        krem = L.upload(torch.tensor([int(k) for k in ks], dtype=torch.int64), dev)
    s, c, o = L.arg(flat_scores), L.arg(candidates), L.arg(or_with)
    tab = (L.arg(plan["seg"]), L.arg(plan["start"]), L.arg(plan["end"]), np.int64(nch))
    P, K, H = L.arg(prefix), L.arg(krem), L.arg(hist)
    inv = np.int32(1 if invert else 0)
    for shift, width in radix_passes(dtype):
        L.launch("topk.cu", f"topk_hist_{sfx}", dev, nch, (s, c, inv, *tab, P, K, H, np.int32(shift), np.int32(width)))
        L.launch("topk.cu", "topk_scan", dev, nseg, (H, P, K, np.int32(nseg), np.int32(shift)))
    ties = torch.empty(nch, dtype=torch.int64, device=dev)
    L.launch("topk.cu", f"topk_tie_count_{sfx}", dev, nch, (s, c, inv, *tab, P, K, L.arg(ties)))
    excl = torch.cumsum(ties, 0) - ties                      # ties in earlier chunks (all segments)
    base = (excl - excl[plan["first"]]).contiguous()         # ... of the same segment only
    L.launch("topk.cu", f"topk_select_{sfx}", dev, nch, (s, c, inv, o, *tab, P, K, L.arg(base), L.arg(out)))
    return out


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    flat = scores.reshape(-1)
    return topk_select(flat, [flat.numel()], [k]).reshape(scores.shape)
