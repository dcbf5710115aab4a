"""Moving conformance inputs to accel (torch) and results back to NumPy, recursively."""
from __future__ import annotations

import numpy as np
import torch


def to_torch(obj, device):
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy(order="C")).to(device)  # copy keeps 0-d arrays 0-d
    if isinstance(obj, dict):
        return {k: to_torch(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_torch(v, device) for v in obj)
    return obj


def to_numpy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj)
    return obj
