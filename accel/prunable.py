"""Discovery of the prunable set of a torch model: Linear/Conv weights (SPEC §0.2), then the
include/exclude name rules of ``reference.prunable``."""
from __future__ import annotations

import torch.nn as nn

from reference.prunable import select_prunable

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def discover_prunable(model: nn.Module, include=None, exclude=None) -> dict:
    """Ordered dict name -> Parameter of the weights to prune."""
    pool = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_TYPES) and mod.weight is not None and mod.weight.requires_grad:
            pool[f"{mname}.weight" if mname else "weight"] = mod.weight
    return {n: pool[n] for n in select_prunable(list(pool), include, exclude)}
