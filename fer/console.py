"""A quiet console: TensorFlow's native start-up logging off unless asked for.

TensorFlow's C++ side logs as it loads, before any Python code of ours can
filter it: CPU-instruction notes, oneDNN notes and, on a machine without a
GPU, ``E0000 ... failed call to cuInit: ... CUDA error`` (an "error" that only
says there is no GPU to use). Its level is read once, from the environment, when
TensorFlow loads; so `quiet_native_logging` runs when the `fer` package is
imported (the CLI, ``python -m fer.cli``, and a served model, whose entry file
imports `fer`), before anything imports TensorFlow. Python-side warnings and
errors, ours and TensorFlow's, are not touched, but for one: TensorFlow's
"N out of the last N calls to <function ...> triggered tf.function retracing",
which a run prints at its end because each of its wrappers of the network
(flip averaging, logit adjustment, temperature) and the plain network traces
its own predict function once, as it must; the note is for code that retraces
in a loop.

To see the native lines: ``FER_VERBOSE=1`` in the environment, or
``fer --verbose <command>``. A value the user set for a variable below is
always kept.

Example:
    FER_VERBOSE=1 fer train phase2 --data synthetic:200 --epochs 1
"""

from __future__ import annotations

import logging
import os
import sys

VERBOSE_ENV = "FER_VERBOSE"
# TF_CPP_MIN_LOG_LEVEL 3: C++ messages below FATAL are dropped (the cuInit line is an ERROR).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}

_set_here: set[str] = set()


def verbose_requested() -> bool:
    """True when FER_VERBOSE asks for TensorFlow's native logging (1, true, yes)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes"}


class _DropRetracingNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


_RETRACING_FILTER = _DropRetracingNotes()


def quiet_native_logging() -> None:
    """Set TensorFlow's native log level to quiet, unless FER_VERBOSE is set or the user chose a level.

    Also drops TensorFlow's Python-side retracing note (see the module's docstring).
    """
    if verbose_requested():
        return
    logging.getLogger("tensorflow").addFilter(_RETRACING_FILTER)  # the same object twice is added once
    for name, value in QUIET_ENV.items():
        if name not in os.environ:
            os.environ[name] = value
            _set_here.add(name)


def allow_native_logging() -> bool:
    """Undo `quiet_native_logging` for this process and its children (`fer --verbose`).

    Returns False when TensorFlow was already imported: its level is fixed then.
    """
    os.environ[VERBOSE_ENV] = "1"  # processes started from here (mlflow's) keep the choice
    logging.getLogger("tensorflow").removeFilter(_RETRACING_FILTER)
    for name in _set_here:
        os.environ.pop(name, None)
    _set_here.clear()
    return "tensorflow" not in sys.modules
