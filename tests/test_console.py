"""A quiet console: no TensorFlow C++ start-up lines, no MLflow type-hint warning, no raw colour codes."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from fer import console

# What a CPU-only machine printed on every command before: TensorFlow's failed GPU probe
# (`E0000 ... failed call to cuInit: INTERNAL: CUDA error`) and MLflow's yellow warning.
# And TensorFlow's retracing note, printed at the end of a run whose wrappers each traced once.
NOISE = ("cuInit", "E0000", "Add type hints to the `predict` method", "\x1b[", "retracing")


def fer_process(args, tmp_path, **extra_env) -> subprocess.CompletedProcess:
    """`python -m fer.cli ARGS` as a user runs it: a fresh process, nothing of TensorFlow's set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV, "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        FER_CACHE_DIR=str(tmp_path / "cache"),
        FER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        PYTHONPATH=str(ROOT),
        **extra_env,
    )
    return subprocess.run([sys.executable, "-m", "fer.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def assert_quiet(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    noisy = [line for line in (result.stdout + result.stderr).splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy


@pytest.fixture
def unset(monkeypatch):
    """Neither variable set, both restored afterwards (set first: monkeypatch restores only what it saw)."""
    for name in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch


def test_importing_fer_quiets_tensorflow_unless_the_user_chose(unset):
    monkeypatch = unset
    console.quiet_native_logging()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's own choice stays
    console.quiet_native_logging()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"

    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    console.quiet_native_logging()
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ


def test_verbose_gives_the_native_lines_back(unset):
    console.quiet_native_logging()
    console.allow_native_logging()
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and os.environ[console.VERBOSE_ENV] == "1"


def test_a_fresh_process_has_the_quiet_level_before_tensorflow_loads(tmp_path):
    code = "import os, sys, fer.cli; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV)}
    result = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.stdout.split() == ["3", "False"], result.stderr


def test_train_help_is_quiet(tmp_path):
    result = fer_process(["train", "--help"], tmp_path)
    assert_quiet(result)
    assert "Train PHASE" in result.stdout


def test_the_served_models_import_without_mlflows_type_hint_warning(tmp_path):
    code = "import warnings; warnings.simplefilter('always'); import fer.serving, fer.photo_service"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "type hints" not in result.stderr and "\x1b[" not in result.stderr, result.stderr


@pytest.mark.slow  # trains one epoch
def test_a_one_epoch_run_prints_no_gpu_probe_or_colour_codes(tmp_path):
    # every wrapper a run may log (each traces its own predict function): what printed the retracing note
    result = fer_process(["train", "phase1", "--data", "synthetic:64", "--epochs", "1", "--batch-size", "32",
                          "--tta", "flip", "--logit-adjustment", "fit", "--calibration", "temperature"], tmp_path)
    assert_quiet(result)
    assert "Best performance over 1 epochs" in result.stdout
