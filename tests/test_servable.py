"""A logged model holds the network and its weights, not the optimizer state training left in it."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from conftest import active_store
from fer.data.synthetic import make_faces
from fer.models import with_flip_averaging, with_temperature
from fer.serving.photo_service import find_keras_file
from fer.serving.pyfunc import log_emotion_model, save_servable, servable_copy

# A .keras file is a zip of the config, a little metadata and the weights (HDF5): a few percent over them.
MAX_FILE_OVER_WEIGHTS = 1.1


def _weight_bytes(network) -> int:
    return sum(weights.nbytes for weights in network.get_weights())


def _faces(count: int = 16) -> np.ndarray:
    faces, _ = make_faces(count, seed=7)
    return faces[..., np.newaxis].astype(np.float32)


@pytest.fixture(scope="module")
def trained(trained_baseline):
    """The compiled baseline after one epoch of Adam: its optimizer holds two slots per weight."""
    return trained_baseline


def test_a_compiled_networks_own_save_carries_the_optimizer(trained, tmp_path):
    """The guard for the tests below: without `servable_copy` the file is about 3x the weights."""
    trained.save(tmp_path / "full.keras")
    assert (tmp_path / "full.keras").stat().st_size > 2.5 * _weight_bytes(trained)


def test_the_logged_model_file_is_the_weights_and_predicts_the_same(trained, tmp_path):
    faces = _faces()
    with active_store(tmp_path), mlflow.start_run():
        info = log_emotion_model(trained, faces[:2])
        model_dir = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "model")))
        served = mlflow.pyfunc.load_model(info.model_uri).predict(faces)
    keras_file = find_keras_file(model_dir)
    size, weights = keras_file.stat().st_size, _weight_bytes(trained)
    assert size <= MAX_FILE_OVER_WEIGHTS * weights, f"{size} bytes for {weights} bytes of weights"
    loaded = keras.saving.load_model(keras_file, compile=False)
    np.testing.assert_array_equal(loaded.predict(faces, verbose=0), trained.predict(faces, verbose=0))
    np.testing.assert_allclose(served, trained.predict(faces, verbose=0), rtol=0, atol=1e-6)


def test_a_wrapped_network_sheds_the_optimizer_of_the_network_inside(trained, tmp_path):
    """Flip averaging nests the trained (compiled) network; its config carries its own compile config."""
    wrapped = with_temperature(with_flip_averaging(trained), 1.5)
    path = save_servable(wrapped, tmp_path / "nested" / "model.keras")
    assert path.stat().st_size <= MAX_FILE_OVER_WEIGHTS * _weight_bytes(wrapped)
    faces = _faces()
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(loaded.predict(faces, verbose=0), wrapped.predict(faces, verbose=0))
    assert loaded.name == wrapped.name


def test_the_copy_is_uncompiled_and_leaves_the_original_trainable(trained):
    copy = servable_copy(trained)
    assert not copy.compiled and getattr(copy, "optimizer", None) is None
    assert trained.compiled and trained.optimizer.variables  # training (and its checkpoints) keep the state


def test_save_servable_writes_keras_files_only(trained, tmp_path):
    with pytest.raises(ValueError, match=r"\.keras file; got the path '.*model\.h5'"):
        save_servable(trained, tmp_path / "model.h5")
