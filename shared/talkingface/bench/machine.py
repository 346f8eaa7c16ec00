"""What every benchmark reports about the machine it ran on: CPU model, device names, torch
version and threads, and the 1-minute load average before and after (other work on the
machine makes CPU figures meaningless)."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def sync(device: str) -> None:
    """Wait for queued CUDA work before reading a clock."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def environment(devices: Sequence[str], load_before: float | None) -> dict[str, Any]:
    """The machine fields of a benchmark report (`device` is the last device measured)."""
    return {
        "device": devices[-1],
        "devices": {d: device_name(d) for d in devices},
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": load_average()},
    }
