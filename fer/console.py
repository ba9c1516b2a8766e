"""A quiet console: TensorFlow's native start-up logging off unless asked for.

TensorFlow's C++ side logs as it loads, before any Python code of ours can
filter it: CPU-instruction notes, oneDNN notes and, on a machine without a
GPU, ``E0000 ... failed call to cuInit: ... CUDA error`` or ``Could not find
cuda drivers on your machine`` (which only say there is no GPU to use). Its
level is read once, from the environment, when TensorFlow loads; so
`quiet_native_logging` runs when the `fer` package is imported (the CLI,
``python -m fer.cli``, and a served model, whose entry file imports `fer`),
before anything imports TensorFlow.

TensorFlow 2.19 and later log through absl, and what its native libraries log
while they load comes before that level applies (tensorflow/tensorflow#100442):
``WARNING: All log messages before absl::InitializeLog() ...`` and INFO lines,
twice, whatever ``TF_CPP_MIN_LOG_LEVEL`` says. So the first import of
TensorFlow also runs with file descriptor 2 captured, and the level is applied
to those lines by hand (`native_line_severity`); every other line, Python-side
warnings and errors included, ours and TensorFlow's, is written on unchanged
once TensorFlow has loaded. A process that dies while TensorFlow loads (a CPU
without the instructions it was built for, say) loses what was captured: run
it again with ``FER_VERBOSE=1`` to see why.

MLflow's progress bars for artifact downloads are off
(``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``), and its UserWarning that a
data set's local path "can be interpreted in multiple ways" is dropped: a run
logs its data sets with their paths, and MLflow's choice is the right one.

Of TensorFlow's Python-side warnings one is dropped: TensorFlow's
"N out of the last N calls to <function ...> triggered tf.function retracing",
which a run prints at its end because each of its wrappers of the network
(flip averaging, logit adjustment, temperature) and the plain network traces
its own predict function once, as it must; the note is for code that retraces
in a loop.

To see the native lines, the bars and the warning: ``FER_VERBOSE=1`` in the
environment, or ``fer --verbose <command>``. A value the user set for a variable below is
always kept.

Example:
    FER_VERBOSE=1 fer train phase2 --data synthetic:200 --epochs 1
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

VERBOSE_ENV = "FER_VERBOSE"
QUIET_ENV = {
    # C++ messages below FATAL are dropped (the cuInit line is an ERROR).
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # MLflow's tqdm bars: logging a model downloads its own files back to check them, a
    # "Downloading artifacts" bar each time, redrawn dozens of times in a run's console.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# MLflow's note when a data set's source is a local path: it matches two registered kinds of
# source (both LocalArtifactDatasetSource) and MLflow takes the one it names, which is right.
_DATASET_SOURCE_NOTE = r"The specified dataset source can be interpreted in multiple ways"

_set_here: set[str] = set()

# absl / glog lines ("I0000 00:00:1796160958.665223    1895 port.cc:153] ...": before absl is initialized
# the date is 0000 and the seconds count from 1970) and TensorFlow's older
# own format ("2025-09-17 14:44:05.157831: I external/.../cudart_stub.cc:32] ...").
_NATIVE_LINE = re.compile(
    r"^(?:(?P<absl>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\]"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<tsl>[IWEF]) \S+:\d+\])"
)
_ABSL_NOT_INITIALIZED = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def verbose_requested() -> bool:
    """True when FER_VERBOSE asks for TensorFlow's native logging (1, true, yes)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes"}


class _DropRetracingNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_RETRACING_FILTER = _DropRetracingNotes()
def native_line_severity(line: str) -> int | None:
    """The severity of a line of TensorFlow's native logging (0 INFO ... 3 FATAL), None for any other line.

    absl's note that it is not initialized yet counts as INFO: it only announces the lines after it.

    Example:
        >>> native_line_severity("I0000 00:00:1796160958.665223    1895 cudart_stub.cc:31] Could not find cuda drivers")
        0
        >>> native_line_severity("UserWarning: something Python said") is None
        True
    """
    if line.rstrip("\r\n") == _ABSL_NOT_INITIALIZED:
        return 0
    match = _NATIVE_LINE.match(line)
    if match is None:
        return None
    return _SEVERITY[match.group("absl") or match.group("tsl")]


def _min_log_level() -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it: a number 0-3, 0 when unset or not a number."""
    try:
        return min(max(int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")), 0), 3)
    except ValueError:
        return 0


@contextlib.contextmanager
def native_stderr_filtered():
    """Run the block with file descriptor 2 captured; then write on every line but native ones below the level.

    The level is TF_CPP_MIN_LOG_LEVEL's when the block ends. Where descriptor 2 cannot be
    duplicated (closed, say) the block runs unfiltered.

    Example:
        >>> with native_stderr_filtered():
        ...     import tensorflow  # doctest: +SKIP
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            level = _min_log_level()
            kept = [line for line in text.splitlines(keepends=True)
                    if (severity := native_line_severity(line)) is None or severity >= level]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Finds MODULE with the finders after it, and has that spec load under `native_stderr_filtered`.

    It leaves `sys.meta_path` when MODULE is loaded, not when it is found: libraries ask
    `importlib.util.find_spec("tensorflow")` only to learn whether it is installed.
    """

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module:
            return None
        for finder in list(sys.meta_path):
            if isinstance(finder, _QuietFirstImport) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        load = loader.exec_module
        module_name = self.module

        def exec_module(module):
            uninstall_quiet_import(module_name)  # once: later imports find it in sys.modules
            with native_stderr_filtered():
                load(module)

        loader.exec_module = exec_module  # this spec's own loader object: nothing else sees the change
        return spec


def install_quiet_import(module: str = "tensorflow") -> None:
    """Have the first import of MODULE run under `native_stderr_filtered` (nothing when it is loaded already).

    Example:
        >>> install_quiet_import("tensorflow")  # then: import tensorflow  (quiet at TF_CPP_MIN_LOG_LEVEL=3)
    """
    if module in sys.modules or any(isinstance(f, _QuietFirstImport) and f.module == module for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFirstImport(module))


def uninstall_quiet_import(module: str = "tensorflow") -> None:
    """Undo `install_quiet_import` for MODULE."""
    sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _QuietFirstImport) and f.module == module)]


def quiet_native_logging() -> None:
    """Set TensorFlow's native log level to quiet, unless FER_VERBOSE is set or the user chose a level.

    Also turns MLflow's artifact progress bars off (unless the user set the variable), and drops
    TensorFlow's retracing note and MLflow's dataset-source warning (see the module's docstring).
    The level then also applies to what TensorFlow's libraries log while they load (`install_quiet_import`).
    """
    if verbose_requested():
        return
    logging.getLogger("tensorflow").addFilter(_RETRACING_FILTER)  # the same object twice is added once
    warnings.filterwarnings("ignore", message=_DATASET_SOURCE_NOTE, category=UserWarning)  # added once, too
    for name, value in QUIET_ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            _set_here.add(name)
    install_quiet_import("tensorflow")


def allow_native_logging() -> bool:
    """Undo `quiet_native_logging` for this process and its children (`fer --verbose`).

    Returns False when TensorFlow was already imported: its level is fixed then.
    """
    os.environ[VERBOSE_ENV] = "1"  # processes started from here (mlflow's) keep the choice
    logging.getLogger("tensorflow").removeFilter(_RETRACING_FILTER)
    # Ahead of the "ignore": Python's own handling again (filters are tried first to last).
    warnings.filterwarnings("default", message=_DATASET_SOURCE_NOTE, category=UserWarning)
    uninstall_quiet_import("tensorflow")
    for name in _set_here:
        os.environ.pop(name, None)
    _set_here.clear()
    return "tensorflow" not in sys.modules
