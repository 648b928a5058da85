"""Choosing the torch device and the number of CPU threads."""

from __future__ import annotations

import os

import torch

from elit.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """Return True when a CUDA device can be used."""
    try:
        return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
    except Exception:  # a broken driver reads as "no CUDA"
        return False


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or str or torch.device
        ``"auto"`` (or None) picks CUDA when available, else the CPU.  Names such as
        ``"cuda:1"`` are accepted.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        When CUDA is asked for but not available, or the name is unknown.
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        name = "auto" if device is None else str(device).strip().lower()
        if name == "auto":
            return torch.device("cuda") if cuda_available() else torch.device("cpu")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}") from None
    if dev.type == "cuda" and not cuda_available():
        raise ConfigError(f"device {str(device)!r} asked for, but CUDA is not available here; use device 'cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device type {dev.type!r} is not supported; use one of {', '.join(DEVICE_CHOICES)}")
    return dev


def prefers_channels_last(dev: torch.device) -> bool:
    """Whether networks on ``dev`` run in channels-last memory format by default: on the CPU,
    where training and inference were measured faster so (docs/training.md)."""
    return dev.type == "cpu"


def default_threads() -> int:
    """Return the number of CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op CPU threads and return the number in use.

    Parameters
    ----------
    n : int, optional
        Threads to use; None or 0 keeps torch's current setting.  On these
        machines one thread instead of two makes a training step 1.6-1.7x slower,
        so use every core you have.
    """
    if n is not None and n > 0 and n != torch.get_num_threads():
        torch.set_num_threads(int(n))
    return torch.get_num_threads()
