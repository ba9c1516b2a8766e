"""A quiet console: no TensorFlow C++ start-up lines, no MLflow type-hint warning, no raw colour codes."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from fer import console

# What a CPU-only machine printed on every command before: TensorFlow's failed GPU probe
# (`E0000 ... failed call to cuInit: INTERNAL: CUDA error`; TensorFlow 2.21: absl's note and
# `I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine`, twice) and MLflow's yellow warning.
NOISE = ("cuInit", "E0000", "I0000", "absl::InitializeLog", "Could not find cuda drivers",
         "Add type hints to the `predict` method", "\x1b[",
         "retracing")  # and the retracing note of a run whose wrappers each traced once


def fer_process(args, tmp_path, **extra_env) -> subprocess.CompletedProcess:
    """`python -m fer.cli ARGS` as a user runs it: a fresh process, nothing of TensorFlow's set."""
    env = {k: v for k, v in os.environ.items()
           if k not in (*console.QUIET_ENV, console.VERBOSE_ENV, "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        FER_CACHE_DIR=str(tmp_path / "cache"),
        FER_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        PYTHONPATH=str(ROOT),
        **extra_env,
    )
    return subprocess.run([sys.executable, "-m", "fer.cli", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


def python_process(code: str, tmp_path, with_fer: bool = True, **extra_env) -> subprocess.CompletedProcess:
    """`python -c CODE` in a fresh process, nothing of TensorFlow's set; `fer` importable when `with_fer`."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", console.VERBOSE_ENV)}
    env.update({"PYTHONPATH": str(ROOT)} if with_fer else {}, **extra_env)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)


def assert_quiet(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    noisy = [line for line in (result.stdout + result.stderr).splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy


@pytest.fixture
def unset(monkeypatch):
    """None of the variables set, all restored afterwards (set first: monkeypatch restores only what it saw)."""
    for name in (*console.QUIET_ENV, console.VERBOSE_ENV):
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


@pytest.mark.slow  # a fresh Python process that imports TensorFlow, or seconds of work: not the fast lane
def test_a_fresh_process_has_the_quiet_level_before_tensorflow_loads(tmp_path):
    code = "import os, sys, fer.cli; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)"
    result = python_process(code, tmp_path)
    assert result.stdout.split() == ["3", "False"], result.stderr


# As TensorFlow 2.21 wrote them on a CPU-only machine, whatever TF_CPP_MIN_LOG_LEVEL said.
ABSL_NOTE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = ("I0000 00:00:1796160958.665223    1895 port.cc:153] oneDNN custom operations are on. You may see "
          "slightly different numerical results due to floating-point round-off errors.")
NO_CUDA = "I0000 00:00:1796160958.666244    1895 cudart_stub.cc:31] Could not find cuda drivers on your machine."
CUINIT = "E0000 00:00:1796160958.7    1895 cuda_executor.cc:1] failed call to cuInit: INTERNAL: CUDA error"
FATAL = "F0000 00:00:1796160958.8    1895 main.cc:1] a fatal one"
OLD_FORMAT = "2025-09-17 14:44:05.157831: W external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] no GPU"


def test_native_lines_are_told_from_everything_else():
    assert [console.native_line_severity(line) for line in (ABSL_NOTE, ONEDNN, NO_CUDA, CUINIT, FATAL, OLD_FORMAT)] \
        == [0, 0, 0, 2, 3, 1]
    for other in ("UserWarning: I0000 in a message", "Traceback (most recent call last):", "Epoch 1/4",
                  "2026/12/01 21:36:05 INFO mlflow.system_metrics: Started", ""):
        assert console.native_line_severity(other) is None, other


def noisy_first_import(tmp_path, level: str) -> subprocess.CompletedProcess:
    """A module whose loading writes TensorFlow's native lines to descriptor 2, as its libraries do, imported quietly."""
    native = "\n".join((ABSL_NOTE, ONEDNN, NO_CUDA, CUINIT, FATAL, OLD_FORMAT)) + "\n"
    (tmp_path / "noisy_native.py").write_text(
        f"import os, sys\nos.write(2, {native.encode()!r})\nprint('Python says this', file=sys.stderr)\n")
    code = ("import importlib.util, sys; from fer import console; console.install_quiet_import('noisy_native'); "
            "importlib.util.find_spec('noisy_native'); import noisy_native; import noisy_native; "
            "print(any(getattr(f, 'module', None) == 'noisy_native' for f in sys.meta_path))")
    env = {k: v for k, v in os.environ.items() if k != console.VERBOSE_ENV}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, "TF_CPP_MIN_LOG_LEVEL": level, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"})


def test_the_first_import_drops_native_lines_below_the_level_and_keeps_the_rest(tmp_path):
    # find_spec alone (libraries ask whether TensorFlow is installed) must not use the filter up.
    quiet = noisy_first_import(tmp_path, "3")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["False"]  # the finder left once the module was loaded
    assert quiet.stderr.splitlines() == [FATAL, "Python says this"]

    some = noisy_first_import(tmp_path, "1")
    assert some.stderr.splitlines() == [CUINIT, FATAL, OLD_FORMAT, "Python says this"]

    everything = noisy_first_import(tmp_path, "0")
    assert everything.stderr.splitlines() == [ABSL_NOTE, ONEDNN, NO_CUDA, CUINIT, FATAL, OLD_FORMAT,
                                              "Python says this"]


@pytest.mark.slow  # a fresh Python process that imports TensorFlow, or seconds of work: not the fast lane
def test_tensorflow_imported_after_fer_prints_no_native_lines_and_verbose_gives_them_back(tmp_path):
    code = "import fer, tensorflow"
    quiet = python_process(code, tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert [line for line in quiet.stderr.splitlines() if console.native_line_severity(line) is not None] == []

    verbose = python_process(code, tmp_path, **{console.VERBOSE_ENV: "1"})
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    unfiltered = python_process("import tensorflow", tmp_path, with_fer=False)
    assert verbose.stderr.count("\n") == unfiltered.stderr.count("\n")  # whatever this TensorFlow prints


@pytest.mark.slow  # a fresh Python process that imports TensorFlow, or seconds of work: not the fast lane
def test_train_help_is_quiet(tmp_path):
    result = fer_process(["train", "--help"], tmp_path)
    assert_quiet(result)
    assert "Train PHASE" in result.stdout


@pytest.mark.slow  # a fresh Python process that imports TensorFlow, or seconds of work: not the fast lane
def test_the_served_models_import_without_mlflows_type_hint_warning(tmp_path):
    code = "import warnings; warnings.simplefilter('always'); import fer.serving.pyfunc, fer.serving.photo_service"
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


MLFLOW_NOISE = ("Downloading artifacts", "can be interpreted in multiple ways")


def _write_fer2013_csv(path) -> str:
    """A small fer2013.csv of drawn faces: a data set with a local path, whose source MLflow warned about."""
    from fer.data.synthetic import make_faces

    faces, _ = make_faces(84, seed=3)
    usages = ["Training"] * 56 + ["PublicTest"] * 14 + ["PrivateTest"] * 14
    rows = [f"{i % 7},{' '.join(map(str, face.ravel()))},{usage}" for i, (face, usage) in enumerate(zip(faces, usages))]
    path.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    return str(path)


@pytest.mark.slow  # trains one epoch, twice
def test_a_run_on_local_data_shows_no_mlflow_bars_or_dataset_warning_unless_verbose(tmp_path):
    data = _write_fer2013_csv(tmp_path / "fer2013.csv")
    args = ["train", "phase1", "--data", data, "--epochs", "1", "--batch-size", "32", "--system-metrics", "false"]
    quiet = fer_process(args, tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    noisy = [line for line in (quiet.stdout + quiet.stderr).splitlines() if any(n in line for n in MLFLOW_NOISE)]
    assert not noisy, noisy

    verbose = fer_process(args, tmp_path, **{console.VERBOSE_ENV: "1"})
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert all(n in verbose.stderr for n in MLFLOW_NOISE), verbose.stderr[-3000:]


def test_the_progress_bar_variable_is_set_only_when_the_user_left_it(unset):
    monkeypatch = unset
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    console.quiet_native_logging()
    assert os.environ[name] == "false"
    console.allow_native_logging()  # fer --verbose
    assert name not in os.environ

    monkeypatch.setenv(name, "true")  # the user's own choice stays
    monkeypatch.delenv(console.VERBOSE_ENV)
    console.quiet_native_logging()
    assert os.environ[name] == "true"


def test_verbose_gives_the_dataset_source_warning_back(unset):
    import warnings

    def warned() -> bool:
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn("The specified dataset source can be interpreted in multiple ways: A, A.", UserWarning)
        return bool(caught)

    with warnings.catch_warnings():
        console.quiet_native_logging()
        assert not warned()
        console.allow_native_logging()
        assert warned()
