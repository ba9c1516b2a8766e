"""Fault injection (issue #27): full disks, unwritable targets, concurrent sittings and kills, without root.

A full disk is a child process under `RLIMIT_FSIZE` with SIGXFSZ ignored (its
writes past the limit fail with EFBIG, as they would with ENOSPC on a full
disk), or a write patched to raise ENOSPC. An unwritable target is a path
under a regular file (we may run as root, to whom a chmod 0o500 folder is
writable) or a patched PermissionError. Each test reproduces a defect of the
issue first; the fix makes it pass.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT
from fer.utils.atomic import OutputError, atomic_output, write_atomic

# A child running `fer predict` with a fixed classifier (no model to load) under a file-size limit.
PREDICT_UNDER_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    import fer.serving.predict as predict, fer.tracking as tracking
    from fer.cli import main

    predict.load_face_model = lambda uri: (lambda faces: np.full((len(faces), 8), 1 / 8))
    tracking.configure_tracking = lambda *args, **kwargs: None
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of a kill
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    main(["predict", "-m", "any-model", *sys.argv[2:]])
""")


def run_child(code: str, *args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from test_video import write_video

    path = tmp_path_factory.mktemp("faults") / "faces.mp4"
    write_video(path, frames=20)
    return path


# 1. Atomic outputs -------------------------------------------------------------------------------------------------


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_and_says_disk_full(tmp_path):
    target = write_atomic(tmp_path / "report.csv", "old\n")

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"^Cannot write the CSV to .*report.csv: disk full"):
        with atomic_output(target, "the CSV") as temporary:
            temporary.write_text("half a new fi")
            full_disk()
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["report.csv"]


def test_a_write_through_a_link_replaces_the_file_it_names_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "out.csv").write_text("old")
    link = tmp_path / "out.csv"
    link.symlink_to(tmp_path / "real" / "out.csv")
    with atomic_output(link, "the CSV") as temporary:
        temporary.write_text("new")
    assert link.is_symlink() and (tmp_path / "real" / "out.csv").read_text() == "new"
    assert sorted(path.name for path in (tmp_path / "real").iterdir()) == ["out.csv"]


def test_a_target_under_a_regular_file_is_one_line_saying_so(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="a part of the path is a file, not a folder") as caught:
        write_atomic(tmp_path / "file" / "sub" / "out.onnx", b"model", "the exported model")
    assert "\n" not in str(caught.value) and str(tmp_path / "file" / "sub" / "out.onnx") in str(caught.value)


def test_permission_denied_and_interrupted_writes_leave_nothing(tmp_path, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "a.png") as temporary:
            temporary.write_bytes(b"half")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []

    def refused(source, target):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OutputError, match="permission denied"):
        write_atomic(tmp_path / "b.png", b"png")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # a child process that decodes and encodes a video
def test_predict_annotate_on_a_full_disk_exits_1_with_one_line_and_keeps_the_old_video(video, tmp_path):
    old = tmp_path / "out.mp4"
    old.write_bytes(b"the old annotated video")
    result = run_child(PREDICT_UNDER_LIMIT, 30_000, video, "--annotate", old, "--csv", tmp_path / "rows.csv",
                       cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Cannot write the annotated video to" in error[0] and "incomplete" in error[0]
    assert "Traceback" not in result.stderr and "annotated:" not in result.stderr
    assert old.read_bytes() == b"the old annotated video"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow  # a child process that decodes a video
def test_predict_csv_on_a_full_disk_exits_1_with_one_line_and_no_torn_csv(video, tmp_path):
    result = run_child(PREDICT_UNDER_LIMIT, 2_000, video, "--csv", tmp_path / "rows.csv", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"Error: Cannot write the CSV to {tmp_path / 'rows.csv'}: file too large" in result.stderr
    assert not (tmp_path / "rows.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rows")] == []


def test_predict_csv_under_a_regular_file_is_a_one_line_error(video, tmp_path, monkeypatch):
    import numpy as np

    import fer.serving.predict as predict
    from fer.cli import main

    monkeypatch.setattr(predict, "load_face_model", lambda uri: (lambda faces: np.full((len(faces), 8), 1 / 8)))
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["predict", "-m", "m", str(video), "--csv", str(tmp_path / "file" / "rows.csv")])
    assert result.exit_code == 1 and "a part of the path is a file, not a folder" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_int8_copy_that_fails_on_a_full_disk_leaves_the_old_copy(tmp_path, monkeypatch):
    quantization = pytest.importorskip("onnxruntime.quantization")
    from fer.export.quantization import quantize

    def half_written(source, destination, **options):
        Path(destination).write_bytes(b"\x08\x01half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(quantization, "quant_pre_process", lambda source, target, **options: Path(target).write_bytes(b"m"))
    monkeypatch.setattr(quantization, "quantize_dynamic", half_written)
    source, destination = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    source.write_bytes(b"model")
    destination.write_bytes(b"the old int8 copy")
    with pytest.raises(OutputError, match=r"Cannot write the int8-dynamic copy to .*m.int8.onnx: disk full"):
        quantize(source, destination, "int8-dynamic")
    assert destination.read_bytes() == b"the old int8 copy" and sorted(os.listdir(tmp_path)) == ["m.int8.onnx", "m.onnx"]


@pytest.mark.slow  # trains a tiny network and exports it three times
def test_fer_export_twice_logs_one_value_per_export_and_bad_targets_are_one_line(in_process, tmp_path):
    import keras

    from fer.cli import main
    from fer.config import load_config
    from fer.training.train import train

    pytest.importorskip("onnxruntime")
    run_id = train(load_config("phase1", {"data": "synthetic:96", "epochs": 1, "batch_size": 32}), experiment="x")
    for _ in range(2):
        result = CliRunner().invoke(main, ["export", run_id, "-o", str(tmp_path / "m.onnx")])
        assert result.exit_code == 0, result.output
    history = in_process.get_metric_history(run_id, "export_onnx_val_accuracy")
    assert sorted(m.step for m in history) == [0, 1]  # not twice at step 0

    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["export", run_id, "--no-log", "-o", str(tmp_path / "file" / "m.onnx")])
    assert result.exit_code == 1 and "a part of the path is a file, not a folder" in result.output
    assert "Traceback" not in result.output

    folder = tmp_path / "not-a-face-model"
    folder.mkdir()
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(8)]).save(folder / "m.keras")
    result = CliRunner().invoke(main, ["export", str(folder), "--data", "synthetic:64", "--no-log"])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and "Traceback" not in result.output and len(errors) == 1
    assert "takes input (None, 32, 32, 3), not fer's faces (None, 48, 48, 1)" in errors[0]


# 2. One sitting at a time ------------------------------------------------------------------------------------------

HOLD_RESUME_LOCK = textwrap.dedent("""
    import sys, time
    from fer.training.checkpoints import resume_lock

    with resume_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_resume_of_a_run_being_resumed_exits_1_naming_the_holder(tmp_path, monkeypatch):
    from fer.cli import main

    monkeypatch.setenv("FER_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.chdir(tmp_path)
    run_id = "0123456789abcdef0123456789abcdef"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RESUME_LOCK, run_id], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = CliRunner().invoke(main, ["train", "phase1", "--resume", run_id])
        assert result.exit_code == 1, result.output
        assert f"run {run_id} is being resumed by pid {holder.pid} on host" in result.output
        assert "Traceback" not in result.output
    finally:
        holder.kill()
        holder.wait()
    # Its holder dead (SIGKILL), the lock is free at once: no stale lock to clear by hand.
    from fer.training.checkpoints import resume_lock

    with resume_lock(run_id):
        pass


# 3-4. Sweeps: Ctrl-C while a trial logs, two sittings at once, a sitting killed outright --------------------------


def tiny_sweep(folder: Path, epochs: int = 1) -> Path:
    from test_sweep import write_sweep

    return write_sweep(folder, settings={"data": "synthetic:64", "batch_size": 32, "epochs": epochs})


@pytest.mark.slow  # trains one sweep trial
def test_ctrl_c_while_a_trial_logs_its_results_ends_trial_and_parent_killed_without_traceback(
        in_process, tmp_path, monkeypatch, capfd):
    import optuna

    import fer.training.train as training
    from fer.sweep import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_log_history", interrupted)  # after the epochs, while results are logged
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(runner.load_sweep(str(tiny_sweep(tmp_path)), trials=1), experiment="faults")
    parent = in_process.search_runs([in_process.get_experiment_by_name("faults").experiment_id],
                                    filter_string=f"tags.`{runner.TAG_ROLE}` = 'parent'")[0]
    trial = in_process.search_runs([parent.info.experiment_id],
                                   filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")[0]
    assert (parent.info.status, trial.info.status) == ("KILLED", "KILLED")
    assert trial.data.tags[runner.TAG_TRIAL_STATE] == "FAIL"
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]
    assert "Traceback" not in capfd.readouterr().err
    assert not (tmp_path / "cache" / "checkpoints" / trial.info.run_id).exists()  # a failed trial is not resumed


SWEEP_COMMAND = ["-m", "fer.cli", "sweep", "--name", "same", "--trials", "1"]


def running_trial_with_an_epoch(client, experiment: str):
    try:  # this client takes no lock: on a new store it may collide with the sitting creating the tables
        found = client.get_experiment_by_name(experiment)
    except Exception:
        return None
    if found is None:
        return None
    for run in client.search_runs([found.experiment_id], filter_string="tags.`fer.sweep_role` = 'trial'"):
        if run.info.status == "RUNNING" and "loss" in run.data.metrics:
            return run
    return None


@pytest.mark.slow  # real sittings as processes: one SIGKILLed mid-trial, one refused, one that cleans up
def test_a_second_sitting_is_refused_and_a_sigkilled_sitting_s_trial_is_killed_and_cleaned_on_rerun(tmp_path):
    import time

    import optuna
    from mlflow import MlflowClient

    path = tiny_sweep(tmp_path, epochs=40)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri,
           "FER_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), "FER_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, *SWEEP_COMMAND, str(path), "--experiment", "faults"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    client = MlflowClient(uri)
    try:
        deadline = time.monotonic() + 240
        while (trial := running_trial_with_an_epoch(client, "faults")) is None:
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(1)
        second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert second.returncode == 1, second.stderr
        assert f"sweep 'same' is being run by pid {first.pid} on host" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / "checkpoints" / trial.info.run_id).is_dir()  # what the killed trial left

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    killed = client.get_run(trial.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["fer.sweep_trial_state"] == "FAIL"
    assert not (tmp_path / "checkpoints" / trial.info.run_id).exists()
    study = optuna.load_study(study_name="same", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    parent = client.search_runs([killed.info.experiment_id], filter_string="tags.`fer.sweep_role` = 'parent'")[0]
    assert parent.info.status == "FINISHED"


# 6. A new tracking store, created by several processes at once ---------------------------------------------------

FER_PROCESS = "from fer.tracking import configure_tracking; configure_tracking('x'); import mlflow; mlflow.search_runs()"


@pytest.mark.slow  # starts three Python processes, twice
@pytest.mark.parametrize("attempt", [1, 2])
def test_processes_started_together_on_a_new_store_all_find_it_ready(tmp_path, attempt):
    # fer's processes create a new store one at a time (a lock beside mlflow.db). A process outside fer
    # (`mlflow ui`, a notebook) takes no lock: one that races a creation can leave MLflow's half-done
    # migration behind (a stray _alembic_tmp_ table), which no retry repairs, so none is started here.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri}
    started = [subprocess.Popen([sys.executable, "-c", FER_PROCESS], cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                                text=True) for _ in range(3)]
    errors = [process.communicate(timeout=240)[1] for process in started]
    for process, error in zip(started, errors):
        assert process.returncode == 0, error


def test_on_a_shared_study_a_dead_sitting_s_trial_fails_and_a_live_one_s_counts_against_the_budget(in_process):
    """What `reconcile` does on a server database (no lock): by host and pid; a live trial is left running."""
    import socket

    import optuna

    from fer.sweep import runner

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for pid in (int(dead.stdout), os.getpid()):  # a sitting that is gone, and this one (alive)
        trial = study.ask()
        trial.set_user_attr(runner.SITTING_ATTR, f"{socket.gethostname()}/{pid}")
    parent = in_process.create_run(in_process.get_experiment_by_name("Default").experiment_id).info.run_id

    assert runner.reconcile(study, in_process, parent, local=False) == 1
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]
    assert "is gone" in study.trials[0].user_attrs["fer.failed_because"]
