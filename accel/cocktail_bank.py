"""A trained Sparse Cocktail as a PyTorch object ([SC] §3.2 ③, §4: "24 networks at once"): ONE shared
weight set, a mask bank (``accel.export.mask_bank.save_mask_bank`` format) and one BN-statistics set per
subnetwork; ``select`` switches a model to any subnetwork in place.

    from twinsparse.accel.cocktail_bank import train_cocktail, Cocktail
    ck = train_cocktail(cfg)                      # cfg.procedure == "cocktail" (reference.cocktail_procedure)
    ck.names()                                    # ['dense', 'unstructured-1', ..., 'channel-10', 'nm-1:2', 'nm-2:4', 'nm-4:8']
    model = ck.select("nm", "2:4")                # shared weights ⊙ the 2:4 mask, its own BN statistics
    model = ck.select("unstructured", 3); model = ck.select("channel", 10); model = ck.select("dense")
    ck.save("runs/cocktail"); ck = Cocktail.load("runs/cocktail", model)
"""
from __future__ import annotations

import os
from typing import Mapping

import torch
import torch.nn as nn

from twinsparse.reference.cocktail_procedure import UnknownSubnetworkError, resolve_subnetwork, subnetwork_name  # noqa: F401
from .export.mask_bank import MaskBank, load_mask_bank, save_mask_bank

__all__ = ["Cocktail", "train_cocktail", "UnknownSubnetworkError"]
WEIGHTS_FILE, MASKS_FILE = "cocktail_weights.pt", "cocktail_masks.npz"


class Cocktail:
    """``weights``: the shared state dict (parameters and buffers); ``masks``: a ``MaskBank`` or a dict
    name -> {parameter name -> bool tensor}; ``bn``: name -> {BN buffer name -> tensor}."""

    def __init__(self, model: nn.Module, weights: Mapping, masks, bn: Mapping, meta: dict | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        own = model.state_dict()
        if set(weights) != set(own):
            raise ValueError(f"the shared weights name {sorted(weights)} but the model has {sorted(own)}")
        bad = [n for n, v in own.items() if tuple(weights[n].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f"shared weights {bad} do not match the model's shapes")
        self.model, self.meta = model, dict(meta or {})
        dev = next(iter(own.values())).device
        self.weights = {n: torch.as_tensor(v).detach().to(dev).clone() for n, v in weights.items()}
        names = masks.names() if isinstance(masks, MaskBank) else list(masks)
        get = masks.masks if isinstance(masks, MaskBank) else (lambda n: masks[n])
        self.masks = {n: {p: torch.as_tensor(m).to(dev, torch.bool) for p, m in get(n).items()} for n in names}
        if set(bn) != set(self.masks):
            raise ValueError(f"BN statistics are given for {sorted(bn)} but the masks for {sorted(self.masks)}")
        for name, ms in self.masks.items():
            for p, m in ms.items():
                if p not in own or tuple(m.shape) != tuple(own[p].shape):
                    raise ValueError(f"mask set {name!r}: {p!r} {tuple(m.shape)} does not fit the model")
            extra = [b for b in bn[name] if b not in own]
            if extra:
                raise ValueError(f"BN statistics of {name!r} name {extra} that the model does not have")
        self.bn = {n: {b: torch.as_tensor(v).to(dev).clone() for b, v in bn[n].items()} for n in names}
        self.current = None

    @classmethod
    def from_result(cls, model: nn.Module, result: dict, meta: dict | None = None) -> "Cocktail":
        """From ``reference.cocktail_procedure.run_cocktail`` on the accel engine."""
        return cls(model, result["net"], result["masks"], result["bn"], meta)

    def names(self) -> list:
        return list(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def name_of(self, pattern: str, level=None) -> str:
        return resolve_subnetwork(self.masks, pattern, level)

    def density(self, pattern: str, level=None) -> float:
        """Kept fraction of the pruning range under the subnetwork's mask."""
        ms = self.masks[self.name_of(pattern, level)]
        return sum(int(m.sum()) for m in ms.values()) / sum(m.numel() for m in ms.values())

    @torch.no_grad()
    def select(self, pattern: str, level=None) -> nn.Module:
        """Load the shared weights ⊙ the subnetwork's mask and its BN statistics into the model (in
        place) and return it. An unknown subnetwork raises UnknownSubnetworkError (a KeyError and a
        ValueError) listing the available ones, before the model is touched."""
        name = self.name_of(pattern, level)
        state = dict(self.weights)
        for p, m in self.masks[name].items():
            state[p] = self.weights[p] * m
        state.update(self.bn[name])
        self.model.load_state_dict(state)
        self.current = name
        return self.model

    def save(self, folder: str) -> None:
        """``folder/cocktail_weights.pt`` (shared weights, BN sets, meta) and ``folder/cocktail_masks.npz``."""
        os.makedirs(folder, exist_ok=True)
        save_mask_bank(os.path.join(folder, MASKS_FILE), self.masks, meta={"kind": "sparse-cocktail", **self.meta})
        torch.save({"weights": self.weights, "bn": self.bn, "meta": self.meta}, os.path.join(folder, WEIGHTS_FILE))

    @classmethod
    def load(cls, folder: str, model: nn.Module) -> "Cocktail":
        payload = torch.load(os.path.join(folder, WEIGHTS_FILE), map_location="cpu", weights_only=True)
        bank = load_mask_bank(os.path.join(folder, MASKS_FILE))
        return cls(model, payload["weights"], bank, payload["bn"], payload.get("meta"))

    def __repr__(self) -> str:
        return f"Cocktail({len(self)} subnetworks: {self.names()}, current={self.current!r})"


def train_cocktail(cfg, split=None, on_record=None) -> Cocktail:
    """Run Sparse Cocktail (``reference.cocktail_procedure.run_cocktail``) on the accel engine; a Cocktail on a
    fresh model of ``cfg``. ``split`` defaults to the run's MNIST-5k split."""
    from twinsparse.reference.cocktail_procedure import run_cocktail
    from .engine import AccelEngine
    from .runner import load_split
    from .train import build_model_for
    if cfg.procedure != "cocktail":
        raise ValueError(f"train_cocktail needs procedure='cocktail', got procedure={cfg.procedure!r}")
    split = load_split(cfg) if split is None else split
    result = run_cocktail(AccelEngine(cfg, split), cfg, on_record=on_record)
    model = build_model_for(cfg, split.x_train.shape[1:], int(split.y_train.max()) + 1)
    meta = {"alphas": result["alphas"], "range": result["range"], "iterations": cfg.cocktail_iterations}
    return Cocktail.from_result(model, result, meta)
