"""Choosing where tensors live: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["available_memory", "check_memory", "resolve_device"]


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


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory that can still be allocated on a device.

    Args:
        device: A CUDA device (its free memory) or the CPU (``MemAvailable`` of
            ``/proc/meminfo``, else the free physical pages).

    Returns:
        The number of bytes, or None where the platform does not say.

    """
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needs: dict[torch.device, int], task: str, what: str, advice: str) -> None:
    """Refuse a task whose memory needs exceed what a device can still allocate.

    Args:
        needs: Bytes the task needs, by device.
        task: Who needs it, e.g. ``"extract"``.
        what: What the memory holds, e.g. ``"8 paths x 10 steps x 2 dimensions"``.
        advice: What to do instead.

    Raises:
        ValueError: Naming the need and the available memory in GiB, and the advice.

    """
    for device, need in needs.items():
        free = available_memory(device)
        if free is not None and need > free:
            raise ValueError(
                f"{task} would need about {need / 2**30:.1f} GiB of {device} memory for {what}, "
                f"but {free / 2**30:.1f} GiB are available. {advice}"
            )
