"""Leaving autocast for the parts that must run in fp32 (the NDC update, DTC's sampling positions)."""
from contextlib import nullcontext

import torch

__all__ = ["autocast_disabled"]


def autocast_disabled(device_type: str):
    """A context in which autocast is off on ``device_type``; a no-op where autocast does not exist
    (``meta`` tensors for cost counting). Works on torch releases without ``torch.amp.is_autocast_available``."""
    available = getattr(torch.amp, "is_autocast_available", None)
    supported = available(device_type) if available is not None else device_type != "meta"
    return torch.autocast(device_type, enabled=False) if supported else nullcontext()
