"""A tiny NumPy MLP with a hand-written backward pass (docs/methods.md §1.15).

Architecture (twin of ``accel.models.MLP``): for every hidden layer
``Linear -> BatchNorm1d (optional) -> ReLU``; the last ``Linear`` gives the logits.

Everything is a pure function: parameters and buffers are plain dicts of arrays, named and
ordered exactly like the torch module's ``named_parameters()`` / ``named_buffers()``
(``fc.0.weight, fc.0.bias, ..., bn.0.weight, bn.0.bias, ...``), so weights move one-to-one
between the twins. Inputs are never mutated. The dtype of the parameters (float64 or float32)
is the dtype of every float result.

BatchNorm follows Ioffe & Szegedy (2015), Alg. 1, with PyTorch's conventions: train mode
normalises with the biased batch variance and updates the running statistics with
``r <- (1 - momentum) * r + momentum * batch_stat`` where the running variance uses the
*unbiased* batch variance; eval mode normalises with the running statistics.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ._checks import check_finite

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------- naming / layout
def param_names(n_linear: int, batchnorm: bool) -> list[str]:
    """Parameter names in the order of ``accel.models.MLP.named_parameters()``."""
    names = [f"fc.{i}.{p}" for i in range(n_linear) for p in ("weight", "bias")]
    if batchnorm:
        names += [f"bn.{i}.{p}" for i in range(n_linear - 1) for p in ("weight", "bias")]
    return names


def buffer_names(n_linear: int, batchnorm: bool) -> list[str]:
    """Buffer names in the order of ``accel.models.MLP.named_buffers()``."""
    if not batchnorm:
        return []
    return [f"bn.{i}.{b}" for i in range(n_linear - 1)
            for b in ("running_mean", "running_var", "num_batches_tracked")]


def check_sizes(sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise TypeError(f"sizes must be a sequence of positive ints, got {sizes!r}") from None
    if len(sizes) < 2:
        raise ValueError(f"sizes={sizes!r} needs at least 2 entries (input width, number of classes)")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"sizes={sizes!r}: every entry must be a positive int, got {s!r}")
    return tuple(int(s) for s in sizes)


def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in _FLOATS:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _layout(params: Mapping) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Validate ``params`` and read off (sizes, batchnorm, dtype)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays (see init_mlp), got {type(params).__name__}")
    n = 0
    while f"fc.{n}.weight" in params:
        n += 1
    if n == 0:
        raise ValueError(f"params has no 'fc.0.weight'; expected the keys made by init_mlp, got {list(params)}")
    bn = "bn.0.weight" in params
    expected = param_names(n, bn)
    if sorted(params) != sorted(expected):
        raise ValueError(f"params keys {list(params)} do not describe an MLP; expected {expected}")
    dtype = _check_dtype(np.asarray(params["fc.0.weight"]).dtype)
    sizes = [np.shape(params["fc.0.weight"])[-1]]
    for i in range(n):
        w = np.shape(params[f"fc.{i}.weight"])
        if len(w) != 2 or w[1] != sizes[-1]:
            raise ValueError(f"fc.{i}.weight has shape {w}; expected (out, {sizes[-1]}) to follow the previous layer")
        sizes.append(w[0])
    for i in range(n):
        want = {f"fc.{i}.bias": (sizes[i + 1],)}
        if bn and i < n - 1:
            want.update({f"bn.{i}.weight": (sizes[i + 1],), f"bn.{i}.bias": (sizes[i + 1],)})
        for k, shp in want.items():
            if np.shape(params[k]) != shp:
                raise ValueError(f"{k} has shape {np.shape(params[k])}; expected {shp}")
    for k, v in params.items():
        if np.asarray(v).dtype != dtype:
            raise TypeError(f"{k} has dtype {np.asarray(v).dtype} but fc.0.weight has {dtype}; use one dtype")
        check_finite(v, f"params[{k!r}]")
    return tuple(sizes), bn, dtype


def _check_buffers(buffers: Mapping, sizes, bn: bool) -> None:
    if not isinstance(buffers, Mapping):
        raise TypeError(f"buffers must be a dict of arrays (see init_mlp), got {type(buffers).__name__}")
    expected = buffer_names(len(sizes) - 1, bn)
    if sorted(buffers) != sorted(expected):
        raise ValueError(f"buffers keys {list(buffers)} do not match the params; expected {expected}")
    for i in range(len(sizes) - 2 if bn else 0):
        for stat in ("running_mean", "running_var"):
            k = f"bn.{i}.{stat}"
            if np.shape(buffers[k]) != (sizes[i + 1],):
                raise ValueError(f"{k} has shape {np.shape(buffers[k])}; expected {(sizes[i + 1],)}")
            check_finite(buffers[k], f"buffers[{k!r}]")


def _as_batch(x, width: int, dtype: np.dtype) -> np.ndarray:
    """x as a [B, width] array of the parameter dtype; [B, C, H, W] inputs are flattened."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype == bool:
        raise TypeError(f"x must be a numeric array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape [B, {width}] (or [B, ...] flattening to it) with B >= 1, got {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != width:
        raise ValueError(f"x has shape {x.shape} ({flat.shape[1]} features per sample) but the MLP expects {width}")
    check_finite(flat, "x")
    return flat.astype(dtype, copy=False)


# ----------------------------------------------------------------------------- init
def init_mlp(sizes=(784, 300, 100, 10), batchnorm: bool = False, seed: int = 0, dtype=np.float64):
    """Parameters and buffers of a fresh MLP, distributed like torch's ``nn.Linear`` default.

    ``nn.Linear.reset_parameters`` draws weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Draw order with ``rng = np.random.default_rng(seed)``: for i = 0, 1, ...:
    ``fc.i.weight`` (shape [out, in], C order) then ``fc.i.bias`` ([out]), each drawn in float64
    and cast to ``dtype``. BatchNorm weights are 1, biases 0, running mean 0, running var 1,
    ``num_batches_tracked`` a 0-d int64 zero (as ``nn.BatchNorm1d``).
    """
    sizes = check_sizes(sizes)
    dt = _check_dtype(dtype)
    rng = np.random.default_rng(seed)
    n = len(sizes) - 1
    params = {}
    for i in range(n):
        bound = 1.0 / np.sqrt(sizes[i])
        params[f"fc.{i}.weight"] = rng.uniform(-bound, bound, (sizes[i + 1], sizes[i])).astype(dt)
        params[f"fc.{i}.bias"] = rng.uniform(-bound, bound, sizes[i + 1]).astype(dt)
    buffers = {}
    if batchnorm:
        for i in range(n - 1):
            params[f"bn.{i}.weight"] = np.ones(sizes[i + 1], dt)
            params[f"bn.{i}.bias"] = np.zeros(sizes[i + 1], dt)
            buffers[f"bn.{i}.running_mean"] = np.zeros(sizes[i + 1], dt)
            buffers[f"bn.{i}.running_var"] = np.ones(sizes[i + 1], dt)
            buffers[f"bn.{i}.num_batches_tracked"] = np.array(0, dtype=np.int64)
    return params, buffers


# ----------------------------------------------------------------------------- forward / backward
def mlp_forward(params, buffers, x, train: bool, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
    """Logits of the MLP, the cache for ``mlp_backward`` and the updated buffers (a new dict).

    Per hidden layer i: z = h W_i^T + b_i; with BatchNorm
    x_hat = (z - mu) / sqrt(var + eps), z <- gamma * x_hat + beta (Ioffe & Szegedy 2015, Alg. 1),
    where (mu, var) are the batch mean / biased variance in train mode and the running
    statistics in eval mode; then h = max(z, 0). Train mode also returns
    running_mean' = (1-m) running_mean + m mu, running_var' = (1-m) running_var + m var B/(B-1),
    num_batches_tracked' = num_batches_tracked + 1 (torch.nn.BatchNorm1d).
    ``bn_momentum=None`` is PyTorch's cumulative moving average: m = 1 / num_batches_tracked'
    (the count after incrementing), so the running statistics are the plain mean of the batch
    statistics seen since the last reset.
    """
    sizes, bn, dt = _layout(params)
    _check_buffers(buffers, sizes, bn)
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"train must be a bool, got {train!r}")
    if not (np.isfinite(bn_eps) and bn_eps > 0):
        raise ValueError(f"bn_eps={bn_eps!r} must be a finite number > 0")
    if bn_momentum is not None and not (0.0 <= bn_momentum <= 1.0):
        raise ValueError(f"bn_momentum={bn_momentum!r} is outside the allowed range [0, 1] "
                         f"(or None for a cumulative moving average)")
    h = _as_batch(x, sizes[0], dt)
    B, n = h.shape[0], len(sizes) - 1
    if bn and train and B < 2:
        raise ValueError(f"BatchNorm in train mode needs a batch of at least 2 samples, got B={B}")
    new_buffers = {k: np.array(v, copy=True) for k, v in buffers.items()}
    layers = []
    for i in range(n):
        rec = {"input": h}
        z = h @ params[f"fc.{i}.weight"].T + params[f"fc.{i}.bias"]
        if i == n - 1:
            layers.append(rec)
            break
        if bn:
            if train:
                mu = z.mean(axis=0)
                var = ((z - mu) ** 2).mean(axis=0)
                nbt = f"bn.{i}.num_batches_tracked"
                count = int(buffers[nbt]) + 1
                m = bn_momentum if bn_momentum is not None else 1.0 / count
                rm, rv = f"bn.{i}.running_mean", f"bn.{i}.running_var"
                new_buffers[rm] = ((1 - m) * buffers[rm] + m * mu).astype(dt)
                new_buffers[rv] = ((1 - m) * buffers[rv] + m * var * B / (B - 1)).astype(dt)
                new_buffers[nbt] = np.array(count, dtype=np.int64)
            else:
                mu = np.asarray(buffers[f"bn.{i}.running_mean"], dt)
                var = np.asarray(buffers[f"bn.{i}.running_var"], dt)
            inv_std = (1 / np.sqrt(var + bn_eps)).astype(dt)
            x_hat = (z - mu) * inv_std
            z = params[f"bn.{i}.weight"] * x_hat + params[f"bn.{i}.bias"]
            rec.update(x_hat=x_hat, inv_std=inv_std)
        rec["active"] = z > 0
        h = np.where(rec["active"], z, dt.type(0))
        layers.append(rec)
    cache = {"layers": layers, "sizes": sizes, "batchnorm": bn, "train": bool(train)}
    return z, cache, new_buffers


def mlp_backward(params, cache, dlogits) -> dict:
    """Gradients of the loss w.r.t. every parameter (same keys and order as ``params``).

    Linear: dW = g^T h, db = sum_b g, dh = g W. ReLU: g * [z > 0]. BatchNorm, with
    d_xhat = g * gamma: d_gamma = sum_b g x_hat, d_beta = sum_b g and
    train mode (batch statistics depend on z; Ioffe & Szegedy 2015, Sec. 3):
      dz = inv_std / B * (B d_xhat - sum_b d_xhat - x_hat * sum_b d_xhat x_hat);
    eval mode (running statistics are constants): dz = d_xhat * inv_std.
    """
    sizes, bn, dt = _layout(params)
    if not isinstance(cache, Mapping) or "layers" not in cache:
        raise TypeError("cache must be the second value returned by mlp_forward")
    if tuple(cache["sizes"]) != sizes or cache["batchnorm"] != bn:
        raise ValueError(f"cache was made for sizes={cache['sizes']}, batchnorm={cache['batchnorm']} "
                         f"but params describe sizes={sizes}, batchnorm={bn}")
    layers, n = cache["layers"], len(sizes) - 1
    B = layers[0]["input"].shape[0]
    g = np.asarray(dlogits)
    if g.shape != (B, sizes[-1]):
        raise ValueError(f"dlogits has shape {g.shape}; expected the logits shape {(B, sizes[-1])}")
    check_finite(g, "dlogits")
    g = g.astype(dt, copy=False)
    grads = {}
    for i in reversed(range(n)):
        rec = layers[i]
        if i < n - 1:
            g = g * rec["active"]
            if bn:
                x_hat, inv_std = rec["x_hat"], rec["inv_std"]
                grads[f"bn.{i}.weight"] = (g * x_hat).sum(axis=0)
                grads[f"bn.{i}.bias"] = g.sum(axis=0)
                d_xhat = g * params[f"bn.{i}.weight"]
                if cache["train"]:
                    g = inv_std / B * (B * d_xhat - d_xhat.sum(axis=0) - x_hat * (d_xhat * x_hat).sum(axis=0))
                else:
                    g = d_xhat * inv_std
        grads[f"fc.{i}.weight"] = g.T @ rec["input"]
        grads[f"fc.{i}.bias"] = g.sum(axis=0)
        g = g @ params[f"fc.{i}.weight"]
    return {k: grads[k].astype(dt, copy=False) for k in params}


# ----------------------------------------------------------------------------- softmax / loss
def _float_logits(logits) -> np.ndarray:
    z = np.asarray(logits)
    if z.dtype not in _FLOATS:
        raise TypeError(f"logits must be float32 or float64, got {z.dtype}")
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"logits must have shape [B, K] with B, K >= 1, got {z.shape}")
    check_finite(z, "logits")
    return z


def log_softmax(logits) -> np.ndarray:
    """log softmax over the last axis, stable form: s - log sum exp s with s = z - max z."""
    z = _float_logits(logits)
    s = z - z.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def softmax(logits) -> np.ndarray:
    """softmax over the last axis, exp(log_softmax)."""
    return np.exp(log_softmax(logits))


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy over the batch and its gradient w.r.t. the logits.

    loss = -(1/B) sum_b sum_k y_bk log softmax(z_b)_k, with y the one-hot of int labels [B]
    or soft labels [B, K] (non-negative rows summing to 1). The gradient is
    dz_b = (softmax(z_b) * sum_k y_bk - y_b) / B, the same formula as torch's
    ``F.cross_entropy`` (which also accepts class probabilities).
    """
    logp = log_softmax(logits)
    B, K = logp.shape
    y = np.asarray(y)
    if y.ndim == 1 and y.dtype.kind in "iu":
        if y.shape != (B,):
            raise ValueError(f"int labels have shape {y.shape}; expected ({B},) to match logits {logp.shape}")
        if y.size and (y.min() < 0 or y.max() >= K):
            raise ValueError(f"labels must lie in [0, {K - 1}], got values in [{y.min()}, {y.max()}]")
        target = np.zeros_like(logp)
        target[np.arange(B), y] = 1
    elif y.ndim == 2 and y.dtype.kind == "f":
        if y.shape != logp.shape:
            raise ValueError(f"soft labels have shape {y.shape}; expected the logits shape {logp.shape}")
        check_finite(y, "soft labels")
        target = y.astype(logp.dtype, copy=False)
        tol = np.sqrt(np.finfo(logp.dtype).eps) * max(K, 1)
        sums = target.sum(axis=1, dtype=np.float64)
        if np.any(target < 0) or np.any(np.abs(sums - 1) > tol):
            raise ValueError(f"soft labels must be non-negative with rows summing to 1, got row sums {sums}")
    else:
        raise TypeError(f"y must be int labels [B] or float soft labels [B, K]; got dtype {y.dtype}, shape {y.shape}")
    loss = -(target * logp).sum() / B
    dlogits = (np.exp(logp) * target.sum(axis=1, keepdims=True) - target) / B
    return loss.astype(logp.dtype)[()], dlogits.astype(logp.dtype, copy=False)


def mlp_loss_and_grads(params, buffers, x, y, train: bool = True, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
    """(loss, grads, new_buffers, logits) of one forward + cross-entropy + backward pass."""
    logits, cache, new_buffers = mlp_forward(params, buffers, x, train, bn_eps=bn_eps, bn_momentum=bn_momentum)
    loss, dlogits = softmax_cross_entropy(logits, y)
    return loss, mlp_backward(params, cache, dlogits), new_buffers, logits
