"""System metrics: sampled while a run is active when asked for, never otherwise, and a run without psutil still starts.

Real runs in a SQLite store in tmp_path; no training (tests/test_run_tracking.py
checks a training run's own).
"""

import sys
import time

import mlflow
import pytest

from fer.training import system_metrics

CPU = "system/cpu_utilization_percentage"
MEMORY = "system/system_memory_usage_megabytes"


@pytest.fixture
def client(in_process):
    """conftest's `in_process` store, with experiment "system-metrics" active; its client."""
    mlflow.set_experiment("system-metrics")
    return in_process


def a_run(enabled: bool, seconds: float, run_id: str | None = None) -> str:
    with system_metrics.start_run(enabled=enabled, interval_seconds=0.1, run_id=run_id) as run:
        time.sleep(seconds)
    return run.info.run_id


def steps(client, run_id, key) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_switched_off_a_run_has_no_system_metrics(client):
    run_id = a_run(enabled=False, seconds=0.6)
    assert not [key for key in client.get_run(run_id).data.metrics if key.startswith("system/")]


def test_without_psutil_the_run_starts_without_them_and_says_so(client, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psutil", None)  # what `import psutil` finds when it is not installed
    run_id = a_run(enabled=True, seconds=0.3)
    assert "System metrics are off for this run: psutil is not installed" in capsys.readouterr().err
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert not [key for key in run.data.metrics if key.startswith("system/")]


def test_the_sampling_interval_applies_to_the_run_and_leaves_the_environment_as_it_was(monkeypatch):
    from mlflow.environment_variables import MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL

    monkeypatch.setenv(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.name, "30")
    seen = []
    monkeypatch.setattr(mlflow, "start_run", lambda **kwargs: seen.append(
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get()))
    system_metrics.start_run(enabled=False, interval_seconds=0.25)
    assert seen == [0.25]
    assert MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL.get() == 30.0


def test_switched_on_cpu_and_memory_are_sampled_and_a_resumed_run_continues_them(client):
    pytest.importorskip("psutil", reason="MLflow's system metrics need psutil (a dependency of fer-mlflow)")
    run_id = a_run(enabled=True, seconds=1.5)
    first = steps(client, run_id, CPU)
    assert len(first) >= 3 and first == list(range(len(first)))  # every 0.1 s, one step each
    assert steps(client, run_id, MEMORY) == first
    assert client.get_run(run_id).data.metrics[MEMORY] > 0

    a_run(enabled=True, seconds=0.6, run_id=run_id)  # a resumed sitting
    both = steps(client, run_id, CPU)
    assert both[: len(first)] == first and len(both) > len(first)
    assert both == list(range(len(both)))  # no step logged twice
