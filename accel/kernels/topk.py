"""Segmented exact top-k with the tie rule (topk.cu): one histogram pass over the most significant
digit, a second full pass that writes the mask and compacts the threshold bucket, then a few small
passes over the bucket only. One launch chain for every segment of a flat buffer, no host sync."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import loader as L
from . import tables as T

RADIX_BITS = 11               # must match topk.cu
RADIX = 1 << RADIX_BITS
KEY_BITS = {torch.float32: 32, torch.float64: 64}
VEC = {torch.float32: 4, torch.float64: 2}      # elements per 16-byte vector (topk.cu Tr<T>::VEC)
TOPK_CHUNK = 4096             # elements per chunk (<= 65536: offsets within a chunk are 16-bit)
BLOCKS_PER_SM = 4             # = TOPK_MIN_BLOCKS in topk.cu (__launch_bounds__): the persistent grid is resident
FILTER_BLOCKS_PER_SM = 3      # = TOPK_FILTER_MIN_BLOCKS (topk_filter_* needs more registers)


def radix_passes(dtype: torch.dtype) -> list[tuple[int, int]]:
    """(shift, width) of each radix digit, most significant first."""
    bits = KEY_BITS[dtype]
    out, hi = [], bits
    while hi > 0:
        width = min(RADIX_BITS, hi)
        out.append((hi - width, width))
        hi -= width
    return out


def kernel_names(dtype: torch.dtype) -> list[str]:
    """The launch chain of one selection, in order (the same for any number of segments)."""
    sfx = L.SUFFIX[dtype]
    return ([f"topk_hist_{sfx}", f"topk_filter_{sfx}"] + [f"topk_refine_{sfx}"] * (len(radix_passes(dtype)) - 2)
            + [f"topk_ties_{sfx}", f"topk_resolve_{sfx}"])


def chunk_len() -> int:
    """The chunk of the top-k kernels: TOPK_CHUNK, or the loader's CHUNK when that is smaller
    (tests shrink it to get many chunks at small sizes)."""
    return min(L.CHUNK, TOPK_CHUNK)


def _plan(sizes: Sequence[int], dev: torch.device) -> dict:
    """Device chunk table (cached): chunk c covers flat [start[c], end[c]) of segment seg[c];
    first[c] is the first chunk of that segment; seg_nch[s] the number of chunks of segment s."""
    chunk = chunk_len()
    if not 1 <= chunk <= 65536:
        raise ValueError(f"the top-k chunk must lie in [1, 65536] (16-bit offsets), got {chunk}")

    def build():
        h = T.chunk_plan_host(sizes, chunk)
        off = h["offsets"][h["seg"]] if h["seg"].size else np.zeros(0, np.int64)
        seg_nch = np.bincount(h["seg"], minlength=len(sizes)).astype(np.int64)
        dev_ = lambda a: T.upload_array(a, dev)  # noqa: E731
        return {"seg": dev_(h["seg"]), "start": dev_(h["start"] + off), "end": dev_(h["end"] + off),
                "first": dev_(h["first"]), "seg_nch": dev_(seg_nch), "n_chunks": int(h["seg"].size)}
    return T.cached_plan(("topk", tuple(int(s) for s in sizes), dev.index, L.backend().stream_key(dev), chunk), build)


def _ks_vector(ks, n_seg: int, dev: torch.device) -> torch.Tensor:
    """ks as an int64 vector on the device: a device tensor is used as it is (never read on the
    host); host ints are uploaded through pinned memory once per distinct list (cached)."""
    if isinstance(ks, torch.Tensor):
        v = ks.reshape(-1).to(device=dev, dtype=torch.int64).contiguous()
    else:
        vals = tuple(int(k) for k in ks)
        v = T.cached_table(("topk_ks", vals, dev.index, L.backend().stream_key(dev)),
                           lambda: T.upload(torch.tensor(vals, dtype=torch.int64), dev))
    if v.numel() != n_seg:
        raise ValueError(f"ks has {v.numel()} entries but there are {n_seg} segments")
    return v


def _aligned(t: Optional[torch.Tensor], nbytes: int) -> bool:
    return t is None or t.data_ptr() % nbytes == 0


def topk_select(flat_scores: torch.Tensor, sizes: Sequence[int], ks: Union[Sequence[int], torch.Tensor],
                candidates: Optional[torch.Tensor] = None, invert: bool = False,
                or_with: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Segmented exact top-k (topk.cu): for each consecutive segment of the 1-D ``flat_scores``,
    the ``ks[i]`` largest scores among the candidates (``candidates`` True, or False when
    ``invert``; every position when None), ties -> smaller index; OR-ed with ``or_with`` when
    given. ``ks`` may be an int64 device tensor (read only by the kernels). Inputs validated by the
    caller (0 <= k <= candidates of the segment, finite scores)."""
    L.check_usable("top-k", flat_scores, candidates, or_with)
    flat_scores = flat_scores.detach().reshape(-1).contiguous()
    candidates = None if candidates is None else candidates.reshape(-1).contiguous()
    or_with = None if or_with is None else or_with.reshape(-1).contiguous()
    dev, dtype, n = flat_scores.device, flat_scores.dtype, flat_scores.numel()
    out = torch.empty(n, dtype=torch.bool, device=dev)
    if n == 0:
        return out
    sfx = L.SUFFIX[dtype]
    passes = radix_passes(dtype)
    P = len(passes)
    plan = _plan(sizes, dev)
    nseg, nch = len(sizes), plan["n_chunks"]
    ks_vec = _ks_vector(ks, nseg, dev)
    # zeroed workspace: histograms (cleared again by each scan), one done-counter row per histogram
    # launch, and prefix / krem of levels 0..P (level 0 of krem is ks itself)
    ws = torch.zeros(nseg * RADIX + P * nseg + 2 * (P + 1) * nseg, dtype=torch.int64, device=dev)
    hist = ws[:nseg * RADIX]
    o = nseg * RADIX
    done = [ws[o + p * nseg: o + (p + 1) * nseg] for p in range(P)]
    o += P * nseg
    prefix = [ws[o + p * nseg: o + (p + 1) * nseg] for p in range(P + 1)]
    o += (P + 1) * nseg
    krem = [ws[o + p * nseg: o + (p + 1) * nseg] for p in range(P + 1)]
    per_chunk = torch.empty(2 * nch, dtype=torch.int32, device=dev)
    cnt, ties = per_chunk[:nch], per_chunk[nch:]
    kdt = torch.int32 if dtype == torch.float32 else torch.int64
    crange = torch.empty(2 * nch, dtype=kdt, device=dev)          # per chunk: smallest / largest bucket key
    cmin, cmax = crange[:nch], crange[nch:]
    ckeys = torch.empty(n, dtype=kdt, device=dev)
    coff = torch.empty(n, dtype=torch.int16, device=dev)
    v = VEC[dtype]
    vec = np.int32(1 if (_aligned(flat_scores, 16) and _aligned(candidates, v) and _aligned(or_with, v)
                         and _aligned(out, v)) else 0)
    grid = max(1, min(nch, L.sm_count(dev) * BLOCKS_PER_SM))
    grid_filter = max(1, min(nch, L.sm_count(dev) * FILTER_BLOCKS_PER_SM))
    a = L.arg
    S, C, O, OUT, H, CK, CO = a(flat_scores), a(candidates), a(or_with), a(out), a(hist), a(ckeys), a(coff)
    seg, start, end, first, seg_nch = (a(plan[k]) for k in ("seg", "start", "end", "first", "seg_nch"))
    N = np.int64(nch)
    inv = np.int32(1 if invert else 0)
    (s0, w0), (s1, w1) = passes[0], passes[1]
    L.launch("topk.cu", f"topk_hist_{sfx}", dev, grid,
             (S, C, inv, vec, seg, start, end, N, seg_nch, a(ks_vec), H, a(done[0]), a(prefix[1]), a(krem[1]),
              np.int32(s0), np.int32(w0)))
    L.launch("topk.cu", f"topk_filter_{sfx}", dev, grid_filter,
             (S, C, inv, O, vec, seg, start, end, N, seg_nch, H, a(done[1]), a(prefix[1]), a(krem[1]),
              a(prefix[2]), a(krem[2]), np.int32(s1), np.int32(w1), CK, CO, a(cnt), a(cmin), a(cmax), OUT))
    for p in range(2, P):
        sp, wp = passes[p]
        L.launch("topk.cu", f"topk_refine_{sfx}", dev, grid,
                 (seg, start, N, seg_nch, H, a(done[p]), a(prefix[p]), a(krem[p]), a(prefix[p + 1]),
                  a(krem[p + 1]), np.int32(sp), np.int32(wp), CK, a(cnt), a(cmin), a(cmax)))
    L.launch("topk.cu", f"topk_ties_{sfx}", dev, grid,
             (seg, start, N, a(prefix[P]), a(krem[P]), CK, a(cnt), a(cmin), a(cmax), a(ties)))
    L.launch("topk.cu", f"topk_resolve_{sfx}", dev, grid,
             (seg, start, first, N, a(prefix[P]), a(krem[P]), CK, CO, a(cnt), a(cmin), a(cmax), a(ties), OUT))
    return out


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    flat = scores.reshape(-1)
    return topk_select(flat, [flat.numel()], [k]).reshape(scores.shape)
