"""Pick the torch device: ``auto`` uses CUDA when present, else CPU."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N``, ... as torch
    spells them. ``ValueError`` (one line) for a name torch does not know or CUDA that is not
    there: the CLIs turn it into an input error, never a traceback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but CUDA is not available")
    return device
