"""Choosing where tensors live: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device request into a :class:`torch.device`.

    Args:
        device: ``"auto"`` (the first CUDA device when one is present, else the CPU), or anything
            :class:`torch.device` accepts, such as ``"cpu"`` or ``"cuda:1"``.

    Returns:
        The device.

    Raises:
        ValueError: If the name is not a device, or CUDA is asked for but not available.

    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{device!r} is not a device; use 'auto', 'cpu' or 'cuda'.") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was asked for but CUDA is not available; use 'auto'.")
    return resolved
