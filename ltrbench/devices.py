"""Which device a stage computes on, decided in the process that runs it, and how it is described.

A stage never picks its device from the driver's view of the machine: the executor says what the
stage may use through the environment of the process that runs it (``LTRBENCH_DEVICE``, not part of
any stage key), and :func:`stage_device` reads it there:

* ``cpu``: the CPU, whatever the machine has (``--device cpu``; and every stage that asked the
  scheduler for no GPU, so it never uses a GPU it did not reserve);
* ``cuda``: a CUDA device, and an error naming the host when the process sees none;
* ``auto`` (or unset): CUDA where the process sees a device, else the CPU.

Under Ray the GPUs a process sees are the ones Ray assigned to its task (``CUDA_VISIBLE_DEVICES``).
"""
from __future__ import annotations

import os
import platform
import socket

import torch

from .errors import LtrBenchError

#: The environment variable through which an executor tells a stage its device.
DEVICE_ENV = "LTRBENCH_DEVICE"
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def stage_device() -> torch.device:
    """The device of the stage running in this process (see the module's docstring)."""
    mode = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if mode not in DEVICE_CHOICES:
        raise LtrBenchError(f"{DEVICE_ENV}={mode!r} is not a device choice; use one of {', '.join(DEVICE_CHOICES)}.")
    if mode == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mode == "cuda":
        raise LtrBenchError(
            f"--device cuda, but this process on host {socket.gethostname()} sees no CUDA device "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Run on a machine with a GPU, "
            f"or pass --device auto (CUDA where there is one) or --device cpu.")
    return torch.device("cpu")


def describe(dev: torch.device) -> str:
    """A short name of ``dev`` for records: ``cuda (NVIDIA H200)`` or ``cpu (x86_64, 4 threads)``."""
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    n = torch.get_num_threads()
    return f"cpu ({platform.machine() or platform.processor()}, {n} thread{'s' * (n != 1)})"


def machine() -> str:
    """This machine's compute, for records made where no stage recorded its own device."""
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
