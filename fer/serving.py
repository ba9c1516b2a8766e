"""The logged model: an MLflow pyfunc around the trained Keras network.

The pyfunc carries the Keras model (`.keras` file) and this package's code,
so `mlflow.pyfunc.load_model` and `mlflow models serve` need nothing else.
Input: raw faces, float32 N x 48 x 48 x 1 with pixel values 0-255 (the
network rescales internally). Output: N x 8 emotion probabilities in
`EMOTIONS` order.

Why not `mlflow.keras.log_model`: with an input example it fails on a
directory it never creates (mlflow/mlflow#16183, open), and a logged model
without an input example is what we replace.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from fer.data.splits import IMAGE_SIZE, NUM_CLASSES

KERAS_ARTIFACT = "keras_model"
FACE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


def model_signature() -> ModelSignature:
    """Raw faces in (float32, N x 48 x 48 x 1, pixel values 0-255), 8 probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *FACE_SHAPE))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]),
    )


class EmotionModel(mlflow.pyfunc.PythonModel):
    """Predicts the 8 emotion probabilities of 48x48 grayscale faces."""

    def load_context(self, context):
        import keras

        self.network = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    def predict(self, context, model_input, params=None):
        faces = np.asarray(model_input, dtype=np.float32)
        if faces.ndim == 3:  # N x 48 x 48: add the channel axis
            faces = faces[..., np.newaxis]
        if faces.shape[1:] != FACE_SHAPE:
            raise ValueError(f"expected faces of shape N x 48 x 48 x 1, got {faces.shape}")
        return self.network.predict(faces, verbose=0)


def _requirements() -> list[str]:
    """Pinned to what trained the model, so a served model runs the same code."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "tensorflow", "keras", "numpy", "pillow")]


def log_emotion_model(network, input_example: np.ndarray, name: str = "model"):
    """Log `network` as a pyfunc model in the active run; returns MLflow's ModelInfo."""
    import fer

    with tempfile.TemporaryDirectory() as tmp:
        keras_path = Path(tmp) / "model.keras"
        network.save(keras_path)
        return mlflow.pyfunc.log_model(
            name=name,
            # "Models from code": the model is rebuilt from source at load, never unpickled.
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={KERAS_ARTIFACT: str(keras_path)},
            code_paths=[str(Path(fer.__file__).parent)],
            signature=model_signature(),
            input_example=np.asarray(input_example, dtype=np.float32),
            pip_requirements=_requirements(),
        )
