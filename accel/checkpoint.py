"""Checkpoints of an accel run: model, optimizer, Sparsifier (masks, method state, counters,
ITOP bookkeeping), history and the resolved config; written atomically and verified on load
(a SHA-256 digest per tensor, ``reference.checkpoint``)."""
from __future__ import annotations

import io

import torch

from twinsparse.reference.checkpoint import (ArrayCodec, CheckpointError, check_config, seal, verify,  # noqa: F401 (re-export)
                                  write_atomic)

KIND = "twinsparse-accel"


class TorchCodec(ArrayCodec):
    """The checksum's view of torch tensors (and NumPy arrays, which stage results may hold)."""

    def raw(self, obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu()
            if t.is_sparse:
                t = t.to_dense()
            if t.is_quantized:
                t = t.int_repr()
            t = t.contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            return "tensor", str(obj.dtype), tuple(t.shape), data
        return super().raw(obj)

    def nonfinite(self, obj) -> int:
        if isinstance(obj, torch.Tensor):
            if obj.is_quantized or not (obj.is_floating_point() or obj.is_complex()):
                return 0
            t = obj.coalesce().values() if obj.is_sparse else obj
            return int(t.numel() - int(torch.isfinite(t).sum()))
        return super().nonfinite(obj)


CODEC = TorchCodec()


def save(path: str, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(seal({"kind": KIND, **payload}, CODEC), buf)
    write_atomic(path, buf.getvalue())


def load(path: str, map_location="cpu") -> dict:
    with open(path, "rb") as f:   # an error reading the file is an OSError naming it; what follows parses bytes
        data = f.read()
    if data[:1] == b"\x80":  # a raw pickle: what reference.checkpoint writes
        raise CheckpointError(f"{path} is not a twinsparse accel checkpoint (it is a pickle file, e.g. a reference "
                              f"checkpoint: use --backend reference)")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - damaged bytes make the zip reader or unpickler fail in many ways
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a twinsparse accel checkpoint")
    return verify(payload, path, CODEC)


def io_for(device) -> tuple:
    """(save, load) for ``reference.stages``: procedure checkpoints, tensors loaded onto ``device``."""
    return save, lambda path: load(path, map_location=device)
