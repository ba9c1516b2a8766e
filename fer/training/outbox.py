"""A run the tracking server stopped receiving: kept on disk, with a record of how to send it.

MLflow retries every HTTP request to the tracking server (by default 7 times
with exponential back-off, about 4 minutes in all; `MLFLOW_HTTP_REQUEST_*`),
so a server that goes away and comes back within that time loses nothing, and
per-epoch metrics that autologging's background logger gave up on are logged
again from the run's history file after training (`fill_metric_gaps`).

When the server stays away longer, `kept_until_logged` keeps the results: the
run's checkpoint folder (`fer.training.checkpoints.checkpoint_dir`: model and optimizer
state, every epoch's metrics) stays where it is, an `unsent.json` record is written
beside it, and the error says which command sends everything once the server
answers again: `fer train <phase> --resume <run id>`. Resuming a run whose
checkpoint holds all its epochs trains no further epoch; it logs the missing
metrics, history, evaluation, diagnostics and model, and ends the run FINISHED.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import mlflow

from fer.tracking import TrackingServerError, server_unreachable
from fer.utils.atomic import write_atomic

RECORD_NAME = "unsent.json"


def resend_command(phase: str, run_id: str) -> str:
    """The command that sends a kept run to the tracking server, e.g. `fer train phase1 --resume 0a1b...`."""
    return f"fer train {phase} --resume {run_id}"


@contextlib.contextmanager
def kept_until_logged(run_id: str, directory: Path, phase: str, history: dict[str, list[float]]):
    """Around the logging that follows training: the checkpoint folder goes only once it is all logged.

    Run the block inside the run's `mlflow.start_run`, after `model.fit`, with
    the run's checkpoint folder (`fer.training.checkpoints.RunCheckpoint`'s)
    and its live epoch history. On success the folder is removed: a logged run
    needs no checkpoint. If the tracking server cannot be reached (after
    MLflow's retries), the folder stays, `unsent.json` is written into it, the
    run is ended here without asking the server again, and TrackingServerError
    says how many epochs are kept where and the command that sends them. Any
    other error passes through unchanged.

    Example:
        with kept_until_logged(run_id, checkpoint_dir(run_id), "phase1", recorder.history):
            log_everything()
    """
    if not run_id:
        raise ValueError(f"run_id must be a run's id; got {run_id!r}")
    directory = Path(directory)
    try:
        yield
    except Exception as err:
        if not server_unreachable(err):
            raise
        raise _keep(err, run_id, directory, phase, history) from err
    shutil.rmtree(directory, ignore_errors=True)


def _keep(err: Exception, run_id: str, directory: Path, phase: str, history: dict) -> TrackingServerError:
    """Record the unsent run, stop waiting on the server, and return the error that tells the user."""
    uri = mlflow.get_tracking_uri()
    epochs = len(history.get("loss", []))
    # MLflow already spent its retries on one request: the rest of this process
    # (the run's end, queued metrics) tries once each, so the command ends soon.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    with contextlib.suppress(Exception):  # ends the run in this process; the store keeps it RUNNING
        mlflow.end_run("FAILED")
    reason = (str(err).splitlines() or [type(err).__name__])[0][:300]
    record = write_record(directory, run_id=run_id, tracking_uri=uri, phase=phase, epochs=epochs, reason=reason)
    return TrackingServerError(
        f"The MLflow tracking server at {uri} stopped answering after training ({reason}). "
        f"The {epochs} trained epochs of run {run_id} are kept in {directory} (checkpoint with every "
        f"epoch's metrics, {record.name}). When the server answers again, send them with: {resend_command(phase, run_id)}"
    )


def write_record(directory: Path, *, run_id: str, tracking_uri: str, phase: str, epochs: int, reason: str) -> Path:
    """Write `directory/unsent.json`: which run, which server, how many epochs, why, and the re-send command."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "phase": phase,
        "epochs_trained": epochs,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reason": reason,
        "resend": resend_command(phase, run_id),
    }
    path = directory / RECORD_NAME
    write_atomic(path, json.dumps(record, indent=2) + "\n", "the outbox record")
    return path

