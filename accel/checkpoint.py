"""Checkpoints of an accel run: model, optimizer, Sparsifier (masks, method state, counters,
ITOP bookkeeping), history and the resolved config; written atomically."""
from __future__ import annotations

import io
import pickle
import zipfile

import torch

from reference.checkpoint import CheckpointError, check_config, write_atomic  # noqa: F401 (re-export)

KIND = "twinsparse-accel"


def save(path: str, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save({"kind": KIND, **payload}, buf)
    write_atomic(path, buf.getvalue())


def load(path: str, map_location="cpu") -> dict:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":  # a raw pickle: what reference.checkpoint writes
        raise CheckpointError(f"{path} is not a twinsparse accel checkpoint (it is a pickle file, e.g. a reference "
                              f"checkpoint: use --backend reference)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a twinsparse accel checkpoint")
    return payload


def io_for(device) -> tuple:
    """(save, load) for ``reference.stages``: procedure checkpoints, tensors loaded onto ``device``."""
    return save, lambda path: load(path, map_location=device)
