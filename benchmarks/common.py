"""What every benchmark records beside its numbers: the machine it ran on.

Scripts here run as ``python benchmarks/NAME.py``, which puts this folder on ``sys.path``, so
they import it as ``from common import machine``.
"""

from __future__ import annotations

import os
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Platform, CPU model and count, torch threads and versions, and the GPU if there is one."""
    import numpy as np
    import torch

    info = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def describe(info: dict, load_average: tuple[float, ...]) -> str:
    """One line for a results table: the machine, and how busy it was at the end."""
    load = tuple(round(x, 2) for x in load_average)
    return (
        f"Machine: {info['processor']}, {info['cpus']} CPUs, torch {info['torch']}, python "
        f"{info['python']}; load average at the end {load}."
    )
