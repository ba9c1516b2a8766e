"""Checkpoints that survive a kill at any instant, fall back when damaged, and travel with the run."""

import json
import shutil

import keras
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from fer.training.checkpoints import (
    METADATA,
    PREVIOUS_METADATA,
    ResumeError,
    fetch_checkpoint,
    load_checkpoint,
    restore,
    resumable_checkpoint,
    save_checkpoint,
    upload_checkpoint,
)


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    model.fit(np.ones((4, 4), np.float32), np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], verbose=0)
    return model


def assert_restores(saved, expected_weights):
    """Restoring `saved` into a differently initialised model gives exactly `expected_weights`."""
    fresh = tiny_model(seed=1)
    restore(fresh, saved)
    for got, expected in zip(fresh.get_weights(), expected_weights):
        np.testing.assert_array_equal(got, expected)


def two_epochs_saved(directory):
    """A checkpoint of epoch 1, then one of epoch 2 with other weights; returns both models' weights."""
    model = tiny_model()
    save_checkpoint(model, directory, 1, {"loss": [0.9]}, {})
    first = [w.copy() for w in model.get_weights()]
    model.layers[0].kernel.assign(model.layers[0].kernel + 1.0)
    save_checkpoint(model, directory, 2, {"loss": [0.9, 0.8]}, {"ReduceLROnPlateau": {"wait": 1}})
    return first, model.get_weights()


def test_the_newest_checkpoint_is_loaded_with_its_history_and_counters(tmp_path):
    first, second = two_epochs_saved(tmp_path)
    saved = load_checkpoint(tmp_path)
    assert saved.epoch == 2 and saved.history == {"loss": [0.9, 0.8]}
    assert saved.callbacks == {"ReduceLROnPlateau": {"wait": 1}}
    assert_restores(saved, second)
    # Only the two newest weights files are kept.
    assert sorted(p.name for p in tmp_path.glob("*.weights.h5")) == ["epoch-0001.weights.h5", "epoch-0002.weights.h5"]


@pytest.mark.parametrize("damage", ["truncate weights", "empty weights", "flip a byte", "truncate metadata",
                                    "metadata without a key", "delete weights"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, damage):
    first, _ = two_epochs_saved(tmp_path)
    weights = tmp_path / "epoch-0002.weights.h5"
    metadata = tmp_path / METADATA
    if damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "empty weights":
        weights.write_bytes(b"")
    elif damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate metadata":
        metadata.write_text(metadata.read_text()[:20])
    elif damage == "metadata without a key":
        metadata.write_text(json.dumps({"epoch": 2}))
    else:
        weights.unlink()
    with pytest.warns(UserWarning, match="using the one of epoch 1 instead"):
        saved = load_checkpoint(tmp_path)
    assert saved.epoch == 1 and saved.history == {"loss": [0.9]}
    assert_restores(saved, first)


def test_a_kill_while_the_next_checkpoint_is_written_leaves_the_last_one_usable(tmp_path):
    two_epochs_saved(tmp_path)
    # What a kill in the middle of save_checkpoint leaves: a partial weights file, and a half-written
    # metadata under its temporary name. Neither is read.
    (tmp_path / "partial-epoch-0003.weights.h5").write_bytes(b"\x89HDF\r\n")
    (tmp_path / f".{METADATA}.tmp").write_text('{"epoch": 3, "wei')
    assert load_checkpoint(tmp_path).epoch == 2


def test_when_no_checkpoint_is_usable_resume_is_refused_with_what_is_wrong_and_what_to_do(tmp_path):
    two_epochs_saved(tmp_path)
    (tmp_path / METADATA).write_text("{")
    (tmp_path / PREVIOUS_METADATA).write_text("")
    with pytest.raises(ResumeError, match=r"No usable checkpoint in .*training_metadata.json.*start a new run"):
        load_checkpoint(tmp_path)


def test_an_empty_folder_has_no_checkpoint(tmp_path):
    assert load_checkpoint(tmp_path) is None and load_checkpoint(tmp_path / "absent") is None


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A SQLite store with its artifacts in tmp_path (the working folder), checkpoints in tmp_path/checkpoints."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FER_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield MlflowClient()
    mlflow.set_tracking_uri(None)


def test_an_uploaded_checkpoint_is_fetched_on_a_machine_without_one(tmp_path, store):
    """What `--resume` does on another machine: the run's artifact replaces the missing local folder."""
    client = store
    local = tmp_path / "here"
    _, second = two_epochs_saved(local)
    with mlflow.start_run() as run:
        assert upload_checkpoint(local)
        mlflow.log_metric("loss", 0.9, step=0)
        mlflow.log_metric("loss", 0.8, step=1)
    client.set_terminated(run.info.run_id, "KILLED")
    shutil.rmtree(local)

    saved = resumable_checkpoint(client, run.info.run_id)  # fetched into FER_CHECKPOINT_DIR/<run_id>
    assert saved.epoch == 2 and saved.history == {"loss": [0.9, 0.8]}
    assert_restores(saved, second)


def test_an_upload_cut_off_midway_leaves_the_previous_upload_usable(tmp_path, store):
    local = tmp_path / "here"
    first, _ = two_epochs_saved(local)
    with mlflow.start_run() as run:
        (local / METADATA).unlink()  # upload epoch 1's checkpoint first ...
        assert upload_checkpoint(local)
        two_epochs_saved(local)  # ... then epoch 2's, into the other slot
        assert upload_checkpoint(local)
        # A cut-off upload of the newest metadata: the run's copy is half a file.
        half = tmp_path / "cut" / METADATA
        half.parent.mkdir()
        half.write_text((local / METADATA).read_text()[:30])
        mlflow.log_artifact(str(half), artifact_path="checkpoint")
    stored = {a.path for a in store.list_artifacts(run.info.run_id, "checkpoint")}
    assert stored == {f"checkpoint/{n}" for n in ("slot-a.weights.h5", "slot-b.weights.h5", METADATA,
                                                  PREVIOUS_METADATA)}
    assert fetch_checkpoint(store, run.info.run_id, tmp_path / "fetched")
    with pytest.warns(UserWarning, match="using the one of epoch 1 instead"):
        saved = load_checkpoint(tmp_path / "fetched")
    assert_restores(saved, first)


def test_a_run_without_an_uploaded_checkpoint_has_nothing_to_fetch(tmp_path, store):
    with mlflow.start_run() as run:
        pass
    assert not fetch_checkpoint(store, run.info.run_id, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_an_unusable_checkpoint_of_a_run_with_no_logged_epoch_does_not_claim_epochs_would_repeat(tmp_path, store):
    with mlflow.start_run() as run:
        pass
    store.set_terminated(run.info.run_id, "KILLED")
    folder = tmp_path / "checkpoints" / run.info.run_id
    two_epochs_saved(folder)
    (folder / METADATA).write_text("{")
    (folder / PREVIOUS_METADATA).write_text("")
    with pytest.raises(ResumeError) as caught:
        resumable_checkpoint(store, run.info.run_id)
    assert "No epoch of run" in str(caught.value) and "would repeat" not in str(caught.value)
    assert f"remove {folder}" in str(caught.value)
    store.log_metric(run.info.run_id, "loss", 0.9, step=0)
    with pytest.raises(ResumeError, match="logged 1 epochs: resuming without its checkpoint would repeat them"):
        resumable_checkpoint(store, run.info.run_id)


def test_resuming_an_unknown_run_says_which_id_and_which_store(store):
    with pytest.raises(ResumeError, match=r"No run 'deadbeef' in the tracking store sqlite:///.*MLFLOW_TRACKING_URI"):
        resumable_checkpoint(store, "deadbeef")
