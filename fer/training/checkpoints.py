"""Resumable training: one checkpoint per run, written so that a kill at any instant leaves one usable.

A run's checkpoint lives in `$FER_CHECKPOINT_DIR/<run_id>/` (default
`~/.cache/fer/checkpoints/<run_id>/`). After every epoch, `RunCheckpoint` saves

- the weights with the optimizer's state (learning rate and step count
  included) to a new file, `epoch-NNNN.weights.h5`;
- then `training_metadata.json`: the epoch, that file's name and SHA-256, the
  run's whole epoch history and the counters of the callbacks that steer
  training (a plateau that was building up before a kill still counts).

Each file is written under a temporary name and renamed into place, and the
previous epoch's pair is kept (`training_metadata.prev.json`) until the new
one is complete, so a kill, a full disk or a corrupted file costs at most one
epoch: `load_checkpoint` falls back to the previous pair and says so.

Callback order makes a killed run recoverable without duplicates: checkpoint
(history included), then MLflow logging. A kill between the two leaves MLflow
with at most a gap for epochs the checkpoint holds, and `fill_metric_gaps`
logs those from the checkpoint's history on resume.

A run that fails or is killed uploads its checkpoint as the artifact
`checkpoint/` (and every `checkpoint_upload_every` epochs when set, since
SIGKILL leaves no chance to), so `fetch_checkpoint` can resume it on any
machine that reaches the tracking server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import keras
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fer.config import TrainConfig, from_dict
from fer.data.cache import default_cache_dir
from fer.utils.atomic import atomic_output, write_atomic
from fer.utils.locks import LockHeld, SittingLock

PARAM_PREFIX = "config."
METADATA = "training_metadata.json"
PREVIOUS_METADATA = "training_metadata.prev.json"
ARTIFACT_PATH = "checkpoint"


class ResumeError(RuntimeError):
    """The run cannot be resumed; the message says why and what to do."""


def checkpoint_dir(run_id: str) -> Path:
    root = os.environ.get("FER_CHECKPOINT_DIR") or default_cache_dir() / "checkpoints"
    return Path(root) / run_id


@contextlib.contextmanager
def resume_lock(run_id: str):
    """Hold run `run_id`'s resume lock for the block: one sitting of a run at a time, on this machine's checkpoints.

    A second `fer train --resume <id>` (a re-send of the outbox included) while
    one is going would log a second model and every metric twice: it fails at
    once with a ResumeError naming the holder ("run <id> is being resumed by pid
    N on host H since ..."). The lock is a file beside the checkpoint folder;
    the kernel releases it when its holder dies, so a killed sitting never blocks.

    Example:
        with resume_lock(run_id):
            train(config, resume=run_id)
    """
    lock = SittingLock(checkpoint_dir(run_id).with_name(f".{run_id}.lock"), f"run {run_id} is being resumed")
    try:
        lock.acquire()
    except LockHeld as err:
        raise ResumeError(str(err)) from None
    try:
        yield
    finally:
        lock.release()


@dataclasses.dataclass(frozen=True)
class SavedCheckpoint:
    """One complete checkpoint: after `epoch` epochs, its weights file, history and callback counters."""

    epoch: int
    weights: Path
    history: dict[str, list[float]]
    callbacks: dict


def load_checkpoint(directory: Path) -> SavedCheckpoint | None:
    """The newest usable checkpoint in `directory`, or None when there is none at all.

    A newest checkpoint that cannot be used (unreadable metadata, a weights file
    missing or not matching its digest) is skipped with a warning for the
    previous one; ResumeError when checkpoint files are there but none is usable.
    """
    directory = Path(directory)
    problems = []
    for name in (METADATA, PREVIOUS_METADATA):
        path = directory / name
        if not path.exists():
            continue
        try:
            saved = _read_metadata(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{path}: {_first_line(err)}")
            continue
        if problems:
            warnings.warn(f"Checkpoint {problems[-1]}; using the one of epoch {saved.epoch} instead.", stacklevel=2)
        return saved
    if problems:
        raise ResumeError(
            f"No usable checkpoint in {directory}: " + "; ".join(problems) + "; start a new run with the same "
            "configuration instead (fer train <phase> with the run's settings), or restore the folder from a backup."
        )
    return None


def _read_metadata(path: Path) -> SavedCheckpoint:
    metadata = json.loads(path.read_text())
    weights = path.parent / metadata["weights"]
    if Path(metadata["weights"]).name != metadata["weights"]:
        raise ValueError(f"weights file name {metadata['weights'][:80]!r} is not a plain file name")
    if not weights.is_file():
        raise ValueError(f"its weights file {weights.name} is missing")
    if _sha256(weights) != metadata["sha256"]:
        raise ValueError(f"its weights file {weights.name} does not match its digest (truncated or changed)")
    return SavedCheckpoint(int(metadata["epoch"]), weights, metadata["history"], metadata.get("callbacks", {}))


def restore(model: keras.Model, saved: SavedCheckpoint) -> None:
    """Load `saved`'s weights and optimizer state into a compiled, built `model`."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)  # its variables must exist to be loaded
    try:
        model.load_weights(saved.weights)
    except (OSError, ValueError) as err:
        raise ResumeError(
            f"The checkpoint {saved.weights} does not fit this model ({_first_line(err)}). "
            "Was the run's model or code changed since? Resume with the code it was trained with."
        ) from None


# Counters of Keras's callbacks that steer training, restored on resume. (EarlyStopping's
# best weights are not kept: after a resume it restores the best of the new sitting.)
# The project's own steering callbacks name theirs in a STATE class attribute.
CALLBACK_STATE = {
    keras.callbacks.ReduceLROnPlateau: ("best", "wait", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("best", "wait", "best_epoch"),
}


def _state_attributes(callback: keras.callbacks.Callback) -> tuple[str, ...]:
    return getattr(callback, "STATE", None) or CALLBACK_STATE.get(type(callback), ())


class RunCheckpoint(keras.callbacks.Callback):
    """Saves the weights, the run's epoch history and the steering callbacks' counters after every epoch.

    `history` spans every sitting of a resumed run (unlike Keras's History).
    Restoring counters happens in on_train_begin, so it must come after the
    callbacks it restores, whose own on_train_begin resets them. The folder
    stays after fit: `fer.training.outbox.kept_until_logged` removes it once the run is
    logged, or keeps it when the tracking server went away.

    Args:
        directory: the run's checkpoint folder.
        resumed: the checkpoint this sitting starts from, if any.
        steering: the callbacks whose counters are saved (see CALLBACK_STATE); others are ignored.

    Example:
        checkpoint = RunCheckpoint(checkpoint_dir(run_id), steering=callbacks)
        model.fit(ds, epochs=10, callbacks=[*callbacks, checkpoint])
    """

    def __init__(self, directory: Path, resumed: SavedCheckpoint | None = None, steering: list | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.steering = [c for c in steering or [] if _state_attributes(c)]
        self.history = {key: list(values[: resumed.epoch]) for key, values in resumed.history.items()} if resumed else {}
        self._saved_state = resumed.callbacks if resumed else {}

    def on_train_begin(self, logs=None):
        for callback in self.steering:
            for name, value in self._saved_state.get(type(callback).__name__, {}).items():
                setattr(callback, name, value)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        state = {
            type(c).__name__: {name: _plain(getattr(c, name, None)) for name in _state_attributes(c)}
            for c in self.steering
        }
        save_checkpoint(self.model, self.directory, epoch + 1, self.history, state)


def save_checkpoint(model: keras.Model, directory: Path, epoch: int, history: dict, callbacks: dict) -> None:
    """Write the checkpoint of `epoch`; the previous one stays usable until this one is complete."""
    weights_name = f"epoch-{epoch:04d}.weights.h5"
    with atomic_output(directory / weights_name, "the checkpoint's weights") as partial:
        model.save_weights(partial, overwrite=True)
    metadata = {
        "epoch": epoch,
        "weights": weights_name,
        "sha256": _sha256(directory / weights_name),
        "history": history,
        "callbacks": callbacks,
    }
    current = directory / METADATA
    if current.exists():
        os.replace(current, directory / PREVIOUS_METADATA)
    write_atomic(current, json.dumps(metadata), "the checkpoint's metadata")
    _remove_unreferenced_weights(directory)


def _remove_unreferenced_weights(directory: Path) -> None:
    keep = set()
    for name in (METADATA, PREVIOUS_METADATA):
        try:
            keep.add(json.loads((directory / name).read_text())["weights"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    for path in directory.glob("*.weights.h5"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _plain(value):
    """Numbers as JSON takes them (counters can be numpy scalars or +/-inf)."""
    if value is None:
        return None
    value = float(value)
    return int(value) if value.is_integer() else value


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def upload_checkpoint(directory: Path) -> bool:
    """Log the newest checkpoint of `directory` to the active run as `checkpoint/`; False when there is none.

    The run holds two weights slots, `slot-a` and `slot-b`. An upload writes the
    slot that the run's current metadata does not name, then the current
    metadata as `training_metadata.prev.json`, then the new metadata: an upload
    cut off at any point leaves a usable checkpoint in the run (see
    `fetch_checkpoint`), and repeated uploads never pile up files.
    """
    try:
        saved = load_checkpoint(directory)
    except ResumeError:
        saved = None
    if saved is None:
        return False
    current = _uploaded_metadata(mlflow.active_run().info.run_id)
    slot = "slot-b.weights.h5" if current and current.get("weights") == "slot-a.weights.h5" else "slot-a.weights.h5"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        shutil.copyfile(saved.weights, staged / slot)
        metadata = {"epoch": saved.epoch, "weights": slot, "sha256": _sha256(staged / slot),
                    "history": saved.history, "callbacks": saved.callbacks}
        (staged / METADATA).write_text(json.dumps(metadata))
        mlflow.log_artifact(str(staged / slot), artifact_path=ARTIFACT_PATH)
        if current:
            (staged / PREVIOUS_METADATA).write_text(json.dumps(current))
            mlflow.log_artifact(str(staged / PREVIOUS_METADATA), artifact_path=ARTIFACT_PATH)
        mlflow.log_artifact(str(staged / METADATA), artifact_path=ARTIFACT_PATH)
    return True


def _uploaded_metadata(run_id: str) -> dict | None:
    """The metadata of the checkpoint the run holds now, or None (none uploaded, or unreadable)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = MlflowClient().download_artifacts(run_id, f"{ARTIFACT_PATH}/{METADATA}", tmp)
            return json.loads(Path(path).read_text())
        except (MlflowException, OSError, ValueError):
            return None


class CheckpointUpload(keras.callbacks.Callback):
    """Uploads the run's checkpoint every `every` epochs (after `RunCheckpoint` has written it).

    Example:
        callbacks = [..., RunCheckpoint(directory), CheckpointUpload(directory, every=5)]
    """

    def __init__(self, directory: Path, every: int):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be a positive number of epochs; got {every!r}")
        self.directory, self.every = Path(directory), every

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            upload_checkpoint(self.directory)


def fetch_checkpoint(client: MlflowClient, run_id: str, directory: Path) -> bool:
    """Download run `run_id`'s uploaded checkpoint into `directory`; False when it has none.

    `load_checkpoint(directory)` then picks the newest usable one of the two it holds.
    """
    try:
        names = [Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACT_PATH)]
    except (MlflowException, OSError):
        return False
    if METADATA not in names:
        return False
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(run_id, ARTIFACT_PATH, tmp))
        for name in sorted(names, key=lambda n: n.endswith(".json")):  # metadata last: it names weights
            with atomic_output(directory / name, "the downloaded checkpoint") as copy:
                shutil.copyfile(local / name, copy)
    return True


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


def find_run(client: MlflowClient, run_id: str):
    """The run to resume, or ResumeError naming the id and where it was looked for."""
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ResumeError(
            f"No run {run_id[:80]!r} in the tracking store {mlflow.get_tracking_uri()}. Check the id "
            "(mlflow runs list --experiment-id <id>) and MLFLOW_TRACKING_URI."
        ) from None


def resumable_checkpoint(client: MlflowClient, run_id: str) -> SavedCheckpoint | None:
    """The checkpoint to resume `run_id` from (fetched from the run when not here); ResumeError when it cannot be.

    None means the run has no epochs yet, so it starts from the beginning.
    """
    run = find_run(client, run_id)
    if run.info.status == "FINISHED":
        raise ResumeError(f"Run {run_id} already FINISHED; there is nothing to resume.")
    directory = checkpoint_dir(run_id)
    logged = client.get_metric_history(run_id, "loss")
    try:
        saved = load_checkpoint(directory)
        if saved is None and fetch_checkpoint(client, run_id, directory):
            print(f"Fetched run {run_id}'s checkpoint from the tracking server into {directory}.")
            saved = load_checkpoint(directory)
    except ResumeError as err:
        raise ResumeError(_unusable(err, run_id, len(logged), directory)) from None
    if saved is not None and len(logged) > saved.epoch:
        warnings.warn(
            f"Run {run_id} logged {len(logged)} epochs but its checkpoint holds {saved.epoch} (an upload every "
            f"few epochs, or a damaged newest checkpoint): epochs {saved.epoch + 1}-{len(logged)} are trained "
            "again and their metrics are logged a second time.",
            stacklevel=2,
        )
    if saved is None and logged:
        raise ResumeError(
            f"Run {run_id} logged {len(logged)} epochs but no checkpoint is at {directory}, nor uploaded "
            "with the run (a run killed with SIGKILL uploads none unless checkpoint_upload_every is set). "
            "Resuming would repeat epochs; point FER_CHECKPOINT_DIR at the folder that holds it, "
            "or start a new run."
        )
    return saved


def _unusable(err: ResumeError, run_id: str, logged: int, directory: Path) -> str:
    """Why a resume without a usable checkpoint is refused: it would repeat logged epochs, or there are none."""
    problems = str(err).split("; start a new run")[0]
    if logged:
        return (f"{problems}. Run {run_id} logged {logged} epochs: resuming without its checkpoint would repeat "
                "them; start a new run with the same configuration (fer train <phase> with the run's settings), or "
                "restore the folder from a backup.")
    return (f"{problems}. No epoch of run {run_id} reached the tracking server, so nothing would be repeated: "
            f"remove {directory} and resume again to train it from its first epoch, or start a new run.")


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
