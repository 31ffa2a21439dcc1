"""The one check of a ``device`` setting (``--device`` of train, evaluate, inpaint, inpaint-demo and
the flows' ``device`` fields): :func:`require_device` turns ``cpu`` / ``cuda`` / ``cuda:N`` into a
``torch.device`` this machine has, or raises :class:`DeviceError` (a ``ValueError``: the CLI prints
it as one ``error: ...`` line, exit code 2) naming what is wrong, before any work starts."""
from __future__ import annotations

import re

import torch

_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceError(ValueError):
    """The device asked for does not exist here (or is not a device edgefill runs on)."""


def require_device(name: str | torch.device) -> torch.device:
    """``name`` as a usable ``torch.device``: ``cpu``, ``cuda`` (the current GPU) or ``cuda:N``."""
    text = str(name).strip().lower()
    match = _DEVICE.match(text)
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise DeviceError(f"{str(name)!r} is not a device edgefill runs on: use cpu, cuda or cuda:N")
    if match.group(1) == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {text!r} asked for but CUDA is not available here; use --device cpu")
    index = None if match.group(2) is None else int(match.group(2))
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise DeviceError(f"device {text!r} asked for but this machine has {count} CUDA device(s) "
                          f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index) if index is not None else torch.device("cuda")
