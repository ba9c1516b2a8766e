"""System metrics of a training run: CPU, memory, disk, network and, with a GPU, its figures.

MLflow samples them in a thread of its own while the run is active and logs
them as `system/...` metrics (`system/cpu_utilization_percentage`,
`system/system_memory_usage_megabytes`, `system/gpu_0_utilization_percentage`,
...), shown in the run's *System metrics* tab. What MLflow needs: `psutil` for
everything but the GPU (a dependency of this project), and `nvidia-ml-py` for
NVIDIA GPUs (the `gpu` extra: `pip install "fer-mlflow[gpu]"`; AMD GPUs need
`pyrsmi`). A run turns them off with `system_metrics: false` (phase file,
`--set`, `--system-metrics false`, `mlflow run -P system_metrics=false`).
"""

from __future__ import annotations

import importlib.util
import sys

import mlflow
from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

from fer.tracking import environment_set


def start_run(
    *, enabled: bool, interval_seconds: float, run_id: str | None = None, run_name: str | None = None, **start_run_args
) -> mlflow.ActiveRun:
    """`mlflow.start_run(run_id=..., run_name=..., **start_run_args)`, sampling system metrics every `interval_seconds`
    if `enabled`.

    A resumed run (`run_id` given) continues the `system/` metrics after their
    last step. Without psutil the run starts all the same, without system
    metrics, and says so on stderr (MLflow itself would refuse to start it).

    Example:
        with start_run(enabled=True, interval_seconds=10, run_name="phase2") as run:
            ...  # train; system/cpu_utilization_percentage etc. are logged every 10 s
    """
    enabled = enabled and _psutil_installed()
    if enabled:
        _hint_if_gpu_figures_are_missing()
    # MLflow reads the interval from the environment once, when it starts the monitor.
    with environment_set({MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name: str(interval_seconds)}):
        return mlflow.start_run(run_id=run_id, run_name=run_name, log_system_metrics=enabled, **start_run_args)


def _psutil_installed() -> bool:
    if importlib.util.find_spec("psutil") is not None:
        return True
    print("System metrics are off for this run: psutil is not installed (pip install psutil; "
          "fer-mlflow depends on it, so reinstalling the project brings it).", file=sys.stderr)
    return False


def _hint_if_gpu_figures_are_missing() -> None:
    """MLflow skips GPU figures silently without nvidia-ml-py; say so when there is a GPU to measure."""
    if importlib.util.find_spec("pynvml") is not None or "tensorflow" not in sys.modules:
        return
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        print('System metrics: no GPU figures without nvidia-ml-py (pip install "fer-mlflow[gpu]").',
              file=sys.stderr)
