"""Atomic checkpoint files (shared by both backends; pure I/O logic).

A checkpoint is written to a temporary file in the same folder, flushed to disk, and renamed over
the old one (``os.replace`` is atomic on POSIX), so a crash while saving never leaves a corrupt
latest checkpoint: the previous one stays intact until the new one is complete.
"""
from __future__ import annotations

import os
import pickle
import tempfile

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, or from another run."""


def write_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_config(saved: dict, current: dict, path: str) -> None:
    """A checkpoint resumes only the run it was written by (same resolved config)."""
    if saved.get("procedure", "train") != current.get("procedure", "train"):
        raise CheckpointError(f"checkpoint {path} was written by procedure={saved.get('procedure', 'train')!r}, "
                              f"this run is procedure={current.get('procedure', 'train')!r}")
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} in the checkpoint vs {current.get(k)!r} now" for k in diff[:5])
        raise CheckpointError(f"checkpoint {path} is from another run ({details})")


def save_reference(path: str, payload: dict) -> None:
    write_atomic(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


KIND = "twinsparse-reference"


def save_tagged(path: str, payload: dict) -> None:
    """``save_reference`` with the reference ``kind`` tag added (every reference checkpoint)."""
    save_reference(path, {"kind": KIND, **payload})


def load_reference(path: str) -> dict:
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise CheckpointError(f"{path} is not a twinsparse reference checkpoint (it is a torch zip file, "
                                  f"e.g. an accel checkpoint: use --backend accel)")
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)
    except (EOFError, pickle.UnpicklingError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a twinsparse reference checkpoint")
    return payload


IO = (save_tagged, load_reference)  # (save, load) of the reference backend, for reference.stages


def arrays_equal(a, b) -> bool:
    """Deep equality of nested dicts/lists of arrays (used by tests of resume)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(arrays_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(arrays_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool(np.array_equal(a, b))
    return a == b
