"""Resumable training: checkpoints per run, the epoch history beside them, and gap repair.

A run's checkpoint lives in `$FER_CHECKPOINT_DIR/<run_id>/` (default
`~/.cache/fer/checkpoints/<run_id>/`): Keras's BackupAndRestore writes the
model and optimizer state (learning rate and step count included) after every
epoch, and `EpochHistory` writes the epoch's metrics just before it. Run ids
are unique, so one folder serves every project and working directory.

Callback order makes a killed run recoverable without duplicates: history
file, then checkpoint, then MLflow logging. A kill between any two leaves MLflow
with at most a gap (never an extra value) for epochs the checkpoint holds, and
`fill_metric_gaps` logs those from the history file on resume.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
from mlflow import MlflowClient

from fer.config import TrainConfig, from_dict
from fer.data.cache import default_cache_dir

PARAM_PREFIX = "config."


class ResumeError(RuntimeError):
    """The run cannot be resumed; the message says why and what to do."""


def checkpoint_dir(run_id: str) -> Path:
    root = os.environ.get("FER_CHECKPOINT_DIR") or default_cache_dir() / "checkpoints"
    return Path(root) / run_id


def epochs_done(directory: Path) -> int:
    """How many epochs the checkpoint in `directory` holds (0 when there is none)."""
    metadata = directory / "training_metadata.json"
    if not metadata.exists():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])


# Counters of callbacks that steer training, restored on resume so a plateau
# that was building up before the kill still counts. (EarlyStopping's best
# weights are not kept: after a resume it restores the best of the new sitting.)
CALLBACK_STATE = {
    keras.callbacks.ReduceLROnPlateau: ("best", "wait", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("best", "wait", "best_epoch"),
}


class EpochHistory(keras.callbacks.Callback):
    """Every finished epoch's logs (and the steering callbacks' counters), in `history.json`.

    Unlike Keras's History, it spans every sitting of a resumed run. It must
    come after the callbacks it restores, whose own on_train_begin resets them.
    """

    def __init__(self, path: Path, keep_epochs: int = 0, steering: list | None = None):
        super().__init__()
        self.path = Path(path)
        self.steering = [c for c in steering or [] if type(c) in CALLBACK_STATE]
        self.history: dict[str, list[float]] = {}
        self._saved_state: dict = {}
        if keep_epochs and self.path.exists():
            saved = json.loads(self.path.read_text())
            self.history = {key: values[:keep_epochs] for key, values in saved["history"].items()}
            self._saved_state = saved.get("callbacks", {})

    def on_train_begin(self, logs=None):
        for callback in self.steering:
            for name, value in self._saved_state.get(type(callback).__name__, {}).items():
                setattr(callback, name, value)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        state = {
            type(c).__name__: {name: _plain(getattr(c, name, None)) for name in CALLBACK_STATE[type(c)]}
            for c in self.steering
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"history": self.history, "callbacks": state}))
        os.replace(tmp, self.path)  # atomic: a kill never leaves half a file


def _plain(value):
    """Numbers as JSON takes them (counters can be numpy scalars or +/-inf)."""
    if value is None:
        return None
    value = float(value)
    return int(value) if value.is_integer() else value


def backup_callback(directory: Path) -> keras.callbacks.BackupAndRestore:
    # Kept after fit: fer.outbox.kept_until_logged deletes it once the run is logged
    # (a finished run needs no checkpoint), or keeps it if the tracking server went away.
    return keras.callbacks.BackupAndRestore(str(directory), save_freq="epoch", delete_checkpoint=False)


def config_of_run(client: MlflowClient, run_id: str) -> TrainConfig:
    """The configuration a run was started with, rebuilt from its `config.*` params."""
    params = client.get_run(run_id).data.params
    nested: dict = {}
    for key, value in params.items():
        if not key.startswith(PARAM_PREFIX):
            continue
        *sections, name = key[len(PARAM_PREFIX):].split(".")
        target = nested
        for section in sections:
            target = target.setdefault(section, {})
        target[name] = value
    if not nested:
        raise ResumeError(f"Run {run_id} has no config.* params: it is not a fer training run.")
    return from_dict(nested, origin=f"run {run_id}")


def check_resumable(client: MlflowClient, run_id: str) -> int:
    """Epochs already done for `run_id`; raises ResumeError when it cannot be resumed."""
    run = client.get_run(run_id)
    if run.info.status == "FINISHED":
        raise ResumeError(f"Run {run_id} already FINISHED; there is nothing to resume.")
    done = epochs_done(checkpoint_dir(run_id))
    logged = client.get_metric_history(run_id, "loss")
    if done == 0 and logged:
        raise ResumeError(
            f"Run {run_id} logged {len(logged)} epochs but no checkpoint is at {checkpoint_dir(run_id)} "
            "(another machine, or FER_CHECKPOINT_DIR changed). Resuming would repeat epochs; "
            "point FER_CHECKPOINT_DIR at the folder that holds it, or start a new run."
        )
    return done


def fill_metric_gaps(client: MlflowClient, run_id: str, history: dict[str, list[float]]) -> int:
    """Log the epochs the checkpoint holds that MLflow missed (killed mid-flush); returns how many values."""
    filled = 0
    for key, values in history.items():
        logged = {m.step for m in client.get_metric_history(run_id, key)}
        missing = [step for step in range(len(values)) if step not in logged]
        for step in missing:
            client.log_metric(run_id, key, values[step], step=step)
        filled += len(missing)
    return filled
