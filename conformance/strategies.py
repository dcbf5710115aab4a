"""Hypothesis building blocks shared by the registry entries."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


def shapes(min_dims=1, max_dims=4, min_side=1, max_side=7):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def tied_scores(shape, dtype, levels: int = 4):
    """Scores drawn from a few distinct levels, so ties at the k-th value are common (adversarial)."""
    n = int(np.prod(shape)) if len(shape) else 1
    return st.lists(st.integers(0, levels - 1), min_size=n, max_size=n).map(
        lambda v: (np.array(v, dtype=np.float64).reshape(shape) / levels - 0.3).astype(dtype))


def spread_scores(shape, dtype):
    """Well-separated values (a random permutation scaled), for ops whose arithmetic may round."""
    n = int(np.prod(shape)) if len(shape) else 1
    return st.permutations(list(range(n))).map(
        lambda p: (np.array(p, dtype=np.float64).reshape(shape) - n / 2).astype(dtype))


def scores(shape, dtype):
    return st.one_of(tied_scores(shape, dtype), spread_scores(shape, dtype),
                     hnp.arrays(dtype, shape, elements=st.floats(-4, 4, width=np.dtype(dtype).itemsize * 8,
                                                                  allow_nan=False, allow_infinity=False)))


def layer_dict(dtype, max_layers=3, draw_array=scores, ranks=(2, 4)):
    """Dict of 1..max_layers named tensors of random shapes: 2-D or 4-D like linear/conv weights
    by default, or any of ``ranks`` (3-D Conv1d, 5-D Conv3d, ...)."""
    @st.composite
    def build(draw):
        n = draw(st.integers(1, max_layers))
        out = {}
        for i in range(n):
            rank = draw(st.sampled_from(ranks))
            shp = draw(shapes(2, 2, 1, 9) if rank == 2 else shapes(rank, rank, 1, 4))
            out[f"layer{i}.weight"] = draw(draw_array(shp, dtype))
        return out
    return build()
