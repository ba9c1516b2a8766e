"""Where a benchmark ran, as every script in benchmarks/ prints it: date, cores, CPU, load, versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path


def describe(*packages: str) -> str:
    """One line: UTC date, cores and CPU model, load average, Python and the given packages' versions."""
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    versions = "".join(f", {name} {importlib.metadata.version(name)}" for name in packages)
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores "
            f"(nproc {len(os.sched_getaffinity(0))}), CPU {cpu_model()}; load average {load}; "
            f"Python {platform.python_version()}{versions}")


def load_note() -> str:
    """The 1-minute load average against the usable cores; a warning when other processes share the CPU.

    Example:
        print(load_note())  # 'load average 0.12 on 16 cores'
    """
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    if load >= 0.5 * cores:
        return (f"note: load average {load:.2f} on {cores} cores: other processes (a training job?) share the "
                "CPU; absolute figures are low, the ratios measured in the same run still hold")
    return f"load average {load:.2f} on {cores} cores"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, e.g. '1.52 1.40 1.38' (printed at a run's start and end)."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> str:
    """Which of the instruction sets that matter to matmul and convolution kernels the CPU reports (Linux).

    Example: 'avx2 fma avx512f avx512_bf16 ... amx_bf16 (missing: none)'.
    """
    try:
        line = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown (no /proc/cpuinfo)"
    present = set(line.split(":", 1)[1].split())
    missing = [flag for flag in SPEED_FLAGS if flag not in present]
    return " ".join(flag for flag in SPEED_FLAGS if flag in present) + f" (missing: {' '.join(missing) or 'none'})"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
