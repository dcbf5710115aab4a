"""Checkpoint files of both backends (pure I/O logic): atomic, self-verifying.

Writing: a checkpoint is written with ``reference.safeio.write_atomic`` (a temporary file in the
same folder, flushed to disk and renamed over the old one), so a crash while saving never leaves
a corrupt latest checkpoint: the previous one stays intact until the new one is complete.

Verifying: every checkpoint carries a ``checksum`` entry, a SHA-256 digest of each part of its
payload (each array or tensor on its own, everything else per top-level part). Loading recomputes
the digests and raises a ``CheckpointError`` naming the file and the first entry whose bytes
changed (a flipped bit in a weight, a damaged record). A checkpoint whose floating-point arrays
hold NaN or inf is rejected as well: resuming from it could only fail later, far from the cause.
"""
from __future__ import annotations

import hashlib
import pickle
import struct
import warnings

import numpy as np

from .safeio import write_atomic  # noqa: F401 (re-exported: the writer of every checkpoint)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, truncated, corrupt, or from another run."""


CHECKSUM_KEY = "checksum"
CHECKSUM_ALGORITHM = "sha256"


class ArrayCodec:
    """How the checksum sees arrays: NumPy here; ``accel.checkpoint`` adds torch tensors."""

    def raw(self, obj):
        """(type tag, dtype name, shape, bytes) of an array, or None for anything else."""
        if isinstance(obj, np.ndarray) and obj.dtype.kind != "O":
            return "ndarray", obj.dtype.str, tuple(obj.shape), np.ascontiguousarray(obj).tobytes()
        return None

    def nonfinite(self, obj) -> int:
        """How many NaN / inf values the array ``obj`` holds (0 for non-float arrays)."""
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "fc":
            return int(obj.size - np.count_nonzero(np.isfinite(obj)))
        return 0


NUMPY_CODEC = ArrayCodec()


def _has_array(obj, codec) -> bool:
    if codec.raw(obj) is not None:
        return True
    if isinstance(obj, dict):
        return any(_has_array(v, codec) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_array(v, codec) for v in obj)
    return False


def _key_name(k) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, tuple) and all(isinstance(x, str) for x in k):
        return ":".join(k)
    return repr(k)


def _entries(obj, path: str, codec, out: list) -> None:
    """(entry name, value) pairs: every array alone, every array-free subtree as one entry."""
    if codec.raw(obj) is None and _has_array(obj, codec):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            _entries(v, f"{path}/{_key_name(k)}" if path else _key_name(k), codec, out)
    else:
        out.append((path, obj))


def _feed(h, obj, codec) -> None:
    """A canonical byte stream of ``obj`` (equal values give equal bytes, whatever their history)."""
    raw = codec.raw(obj)
    if raw is not None:
        tag, dtype, shape, data = raw
        h.update(f"A{tag}|{dtype}|{shape}|{len(data)}|".encode())
        h.update(data)
    elif obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"T" if obj else b"F")
    elif isinstance(obj, int):
        h.update(f"i{obj};".encode())
    elif isinstance(obj, float):
        h.update(b"f" + struct.pack("<d", obj))
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(f"s{len(b)}:".encode())
        h.update(b)
    elif isinstance(obj, bytes):
        h.update(f"b{len(obj)}:".encode())
        h.update(obj)
    elif isinstance(obj, np.generic):
        h.update(f"g{obj.dtype.str}:".encode())
        h.update(obj.tobytes())
    elif isinstance(obj, dict):
        h.update(f"d{len(obj)}{{".encode())
        for k, v in obj.items():
            _feed(h, k, codec)
            _feed(h, v, codec)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'l' if isinstance(obj, list) else 't'}{len(obj)}[".encode())
        for v in obj:
            _feed(h, v, codec)
        h.update(b"]")
    else:  # anything else (a torch dtype, a small dataclass): its pickle
        h.update(b"p")
        h.update(pickle.dumps(obj, protocol=4))


def checksum_entries(payload: dict, codec: ArrayCodec = NUMPY_CODEC) -> dict:
    """Entry name -> SHA-256 hex digest over the whole payload (its checksum entry excluded)."""
    pairs: list = []
    _entries({k: v for k, v in payload.items() if k != CHECKSUM_KEY}, "", codec, pairs)
    out = {}
    for name, value in pairs:
        h = hashlib.sha256()
        _feed(h, value, codec)
        out[name] = h.hexdigest()
    return out


def seal(payload: dict, codec: ArrayCodec = NUMPY_CODEC) -> dict:
    """``payload`` with its checksum entry added (what is written to disk)."""
    return {**payload, CHECKSUM_KEY: {"algorithm": CHECKSUM_ALGORITHM, "entries": checksum_entries(payload, codec)}}


def verify(payload: dict, path: str, codec: ArrayCodec = NUMPY_CODEC) -> dict:
    """Check a loaded payload against its checksum and for non-finite arrays; returns it without
    the checksum entry. Raises ``CheckpointError`` naming ``path`` and the first bad entry."""
    stored = payload.get(CHECKSUM_KEY)
    body = {k: v for k, v in payload.items() if k != CHECKSUM_KEY}
    if stored is None:
        warnings.warn(f"checkpoint {path} carries no checksum (written by an older twinsparse): its content "
                      f"cannot be verified", RuntimeWarning, stacklevel=3)
    else:
        if not (isinstance(stored, dict) and stored.get("algorithm") == CHECKSUM_ALGORITHM
                and isinstance(stored.get("entries"), dict)):
            raise CheckpointError(f"checkpoint {path} is corrupt: its checksum entry is damaged")
        now = checksum_entries(body, codec)
        for name, digest in stored["entries"].items():
            if name not in now:
                raise CheckpointError(f"checkpoint {path} is corrupt: entry {name!r} is missing")
            if now[name] != digest:
                raise CheckpointError(f"checkpoint {path} is corrupt: entry {name!r} does not match the checksum "
                                      f"written with it (damaged bytes on disk or in transfer)")
        extra = [n for n in now if n not in stored["entries"]]
        if extra:
            raise CheckpointError(f"checkpoint {path} is corrupt: entry {extra[0]!r} is not covered by its checksum")
    pairs: list = []
    _entries(body, "", codec, pairs)
    for name, value in pairs:
        bad = codec.nonfinite(value) if codec.raw(value) is not None else 0
        if bad:
            raise CheckpointError(f"checkpoint {path} holds {bad} non-finite value(s) (NaN or inf) in entry {name!r}: "
                                  f"the run had diverged when it was saved; resume from an earlier checkpoint or "
                                  f"start afresh")
    return body


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
    write_atomic(path, pickle.dumps(seal(payload), protocol=pickle.HIGHEST_PROTOCOL))


KIND = "twinsparse-reference"


def save_tagged(path: str, payload: dict) -> None:
    """``save_reference`` with the reference ``kind`` tag added (every reference checkpoint)."""
    save_reference(path, {"kind": KIND, **payload})


def load_reference(path: str) -> dict:
    with open(path, "rb") as f:   # an error reading the file is an OSError naming it; what follows parses bytes
        data = f.read()
    if data[:4] == b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a twinsparse reference checkpoint (it is a torch zip file, "
                              f"e.g. an accel checkpoint: use --backend accel)")
    try:
        payload = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - damaged bytes make unpickling fail in many ways
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a twinsparse reference checkpoint")
    return verify(payload, path)


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
