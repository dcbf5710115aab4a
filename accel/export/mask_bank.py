"""The mask bank file (issue 7): one file, many named mask sets (``"unstructured/0.2"``, ``"nm/2:4"``,
``"channel/0.1"``), bit-packed, written atomically (``save_mask_bank``); ``load_mask_bank`` reads it
as a ``MaskBank``, whose ``apply(model, name)`` masks a model with one set.
"""
from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from twinsparse.reference.checkpoint import write_atomic
from .masking import apply_masks

__all__ = ["save_mask_bank", "load_mask_bank", "MaskBank", "MaskBankError", "UnknownMaskSetError",
           "MASK_BANK_FORMAT", "MASK_BANK_VERSION"]


MASK_BANK_FORMAT = "twinsparse-maskbank"
MASK_BANK_VERSION = 1
_HEADER = "__maskbank__"


class MaskBankError(ValueError):
    """A mask bank file or request that cannot be used (corrupt file, wrong shapes, ...)."""


class UnknownMaskSetError(MaskBankError, KeyError):
    """A mask set name that the bank does not hold (a KeyError too)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _mask_to_numpy(m, where: str) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        t = m.detach().cpu()
        if t.dtype != torch.bool:
            if t.is_complex() or not bool(((t == 0) | (t == 1)).all()):
                raise ValueError(f"{where} must be boolean or 0/1 valued (dtype {t.dtype})")
            t = t != 0
        return t.numpy()
    if isinstance(m, np.ndarray):
        if m.dtype != np.bool_:
            if m.dtype.kind not in "biuf" or not np.all((m == 0) | (m == 1)):
                raise ValueError(f"{where} must be boolean or 0/1 valued (dtype {m.dtype})")
            m = m != 0
        return m
    raise TypeError(f"{where} must be a boolean torch.Tensor or NumPy array, got {type(m).__name__}")


def save_mask_bank(path: str, bank: Mapping[str, Mapping[str, torch.Tensor]], meta: Optional[dict] = None) -> None:
    """Write many named mask sets (name -> {param name -> bool tensor}) to one file, atomically.

    Format (``MASK_BANK_FORMAT`` version ``MASK_BANK_VERSION``): a compressed ``.npz`` archive with
    a JSON header (format tag, version, ``meta``, per set the parameter names and shapes) and one
    ``np.packbits`` array per mask (8 mask entries per byte, C order). Everything is validated first.
    """
    if not isinstance(bank, Mapping) or not bank:
        raise ValueError("bank must be a non-empty dict of set name -> {parameter name -> mask}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (JSON-serializable) or None, got {type(meta).__name__}")
    sets, arrays = [], {}
    for i, (name, masks) in enumerate(bank.items()):
        if not isinstance(name, str) or not name:
            raise TypeError(f"mask set names must be non-empty strings, got {name!r}")
        if not isinstance(masks, Mapping) or not masks:
            raise ValueError(f"mask set {name!r} must be a non-empty dict of parameter name -> mask")
        layers = []
        for j, (pname, m) in enumerate(masks.items()):
            if not isinstance(pname, str):
                raise TypeError(f"mask set {name!r}: parameter names must be strings, got {pname!r}")
            a = _mask_to_numpy(m, f"mask set {name!r}, mask {pname!r}")
            arrays[f"m{i}_{j}"] = np.packbits(a.reshape(-1))
            layers.append([pname, list(a.shape)])
        sets.append({"name": name, "layers": layers})
    header = {"format": MASK_BANK_FORMAT, "version": MASK_BANK_VERSION, "meta": meta if meta is not None else {},
              "sets": sets}
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta must be JSON-serializable: {e}") from None
    buf = io.BytesIO()
    np.savez_compressed(buf, **{_HEADER: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}, **arrays)
    write_atomic(path, buf.getvalue())


class MaskBank:
    """The mask sets of one mask bank file (see ``load_mask_bank``); masks are kept bit-packed."""

    def __init__(self, path: str, meta: dict, sets: dict, packed: dict):
        self.path, self.meta = path, meta
        self._sets, self._packed = sets, packed          # name -> [(param, shape)], name -> [packed]

    def names(self) -> list:
        return list(self._sets)

    def __contains__(self, name) -> bool:
        return name in self._sets

    def __len__(self) -> int:
        return len(self._sets)

    def _check_name(self, name) -> None:
        if name not in self._sets:
            raise UnknownMaskSetError(f"mask bank {self.path} has no mask set {name!r}; available: {self.names()}")

    def shapes(self, name: str) -> dict:
        self._check_name(name)
        return {p: tuple(s) for p, s in self._sets[name]}

    def masks(self, name: str, device=None) -> dict:
        """The mask set ``name`` as dict parameter name -> bool tensor."""
        self._check_name(name)
        out = {}
        for (p, shape), packed in zip(self._sets[name], self._packed[name]):
            n = math.prod(shape)
            out[p] = torch.from_numpy(np.unpackbits(packed, count=n).astype(bool).reshape(shape)).to(device or "cpu")
        return out

    def density(self, name: str) -> float:
        masks = self.masks(name)
        total = sum(m.numel() for m in masks.values())
        return float(sum(int(m.sum()) for m in masks.values())) / total if total else 1.0

    def apply(self, model: nn.Module, name: str) -> dict:
        """Multiply the named weights of ``model`` by mask set ``name`` in place; every name and shape
        is checked before any weight changes. Returns the masks (e.g. for ``Sparsifier.set_masks``)."""
        masks = self.masks(name)
        params = dict(model.named_parameters())
        missing = [p for p in masks if p not in params]
        if missing:
            raise MaskBankError(f"mask set {name!r} names parameter(s) {missing} that the model "
                                f"({type(model).__name__}) does not have; its parameters are {list(params)}")
        for p, m in masks.items():
            if tuple(m.shape) != tuple(params[p].shape):
                raise MaskBankError(f"mask set {name!r}: {p!r} has shape {tuple(m.shape)} in the bank but "
                                    f"{tuple(params[p].shape)} in the model")
        apply_masks(model, masks)
        return masks

    def __repr__(self) -> str:
        return f"MaskBank({self.path!r}, sets={self.names()})"


def load_mask_bank(path: str) -> MaskBank:
    """Read a mask bank written by ``save_mask_bank``; a clear ``MaskBankError`` for a file that is
    not a mask bank, is truncated or corrupt, or was written by a newer format version."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(b"PK"):
        raise MaskBankError(f"{path} is not a mask bank file (expected a {MASK_BANK_FORMAT} .npz archive)")
    corrupt = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, UnicodeDecodeError, KeyError)
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        files = set(npz.files)
    except corrupt as e:
        raise MaskBankError(f"mask bank {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    if _HEADER not in files:
        raise MaskBankError(f"{path} is not a mask bank file (a zip archive without a {MASK_BANK_FORMAT} header)")
    try:
        header = json.loads(npz[_HEADER].tobytes().decode("utf-8"))
        arrays = {k: npz[k] for k in files if k != _HEADER}
    except corrupt as e:
        raise MaskBankError(f"mask bank {path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != MASK_BANK_FORMAT:
        raise MaskBankError(f"{path} is not a mask bank file (format tag {header.get('format') if isinstance(header, dict) else None!r})")
    if header.get("version") != MASK_BANK_VERSION:
        raise MaskBankError(f"mask bank {path} has format version {header.get('version')!r}; this twinsparse "
                            f"reads version {MASK_BANK_VERSION}")
    sets, packed = {}, {}
    try:
        for i, s in enumerate(header["sets"]):
            layers = [(str(p), tuple(int(d) for d in shape)) for p, shape in s["layers"]]
            arrs = [arrays[f"m{i}_{j}"] for j in range(len(layers))]
            for (p, shape), a in zip(layers, arrs):
                if a.dtype != np.uint8 or a.ndim != 1 or a.size != -(-math.prod(shape) // 8):
                    raise ValueError(f"packed mask {p!r} of set {s['name']!r} does not hold {math.prod(shape)} bits")
            sets[str(s["name"])], packed[str(s["name"])] = layers, arrs
    except (KeyError, TypeError, ValueError) as e:
        raise MaskBankError(f"mask bank {path} is corrupt ({type(e).__name__}: {e})") from None
    return MaskBank(path, header.get("meta", {}), sets, packed)
