"""Writes the models `tests/test_layout_compat.py` loads: logged by fer's flat layout (before 0.2).

Run once, at commit e99f6ae (the last flat layout), from the project root:

    python tests/golden/old_layout/make.py

It logs a tiny network wrapped the way training wraps it (flip averaging, logit
adjustment, temperature) as both pyfunc models fer logs (the training one,
entry file pyfunc_model.py, and the photo service, pyfunc_service.py), packs
each model's folder here as a .tar.gz and stores what each gives on fixed faces
(the models themselves, loaded through MLflow, at that commit). Each folder carries that commit's whole `fer` package (MLflow's code_paths), which is
what a model registered before the move carries too.
"""

import shutil
import tarfile
import tempfile
from pathlib import Path

import keras
import mlflow
import numpy as np

from fer import EMOTIONS, models
from fer.photo_service import log_service_model
from fer.serving import log_emotion_model

HERE = Path(__file__).parent


def tiny_network() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(8, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tiny")


def faces() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 48, 48, 1)).astype(np.float32)


def main() -> None:
    network = models.with_flip_averaging(tiny_network())
    network = models.with_logit_adjustment(network, [0.1, -0.2, 0.3, 0.0, 0.05, 0.4, -0.1, 0.2])
    network = models.with_temperature(network, 1.5)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run():
            faces_info = log_emotion_model(network, faces()[:1])
            keras_file = Path(tmp) / "model.keras"
            network.save(keras_file)
            photo_info = log_service_model(keras_file, name="photo_model")
        for info, folder in ((faces_info, "faces_model"), (photo_info, "photo_model")):
            local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(Path(tmp) / folder)))
            for cache in local.rglob("__pycache__"):
                shutil.rmtree(cache)
            with tarfile.open(HERE / f"{folder}.tar.gz", "w:gz") as archive:
                archive.add(local, arcname=folder)
            outputs = mlflow.pyfunc.load_model(str(local)).predict(faces())
            if folder == "photo_model":  # a row per face: its box, emotion and 8 probabilities
                outputs = outputs[list(EMOTIONS)].to_numpy()
            np.save(HERE / f"{folder}.probabilities.npy", np.asarray(outputs, np.float32))
    np.save(HERE / "faces.npy", faces())


if __name__ == "__main__":
    main()
