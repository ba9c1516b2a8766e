"""The training pyfunc (`EmotionModel`) and what both logged models share.

Both logged models carry the Keras model (`.keras` file) and this package's
code, so `mlflow.pyfunc.load_model` and `mlflow models serve` need nothing
else, and both are "models from code": rebuilt from source at load, never
unpickled. Both are logged by `log_pyfunc` and check face arrays with
`face_array`. Either can also be logged with an ONNX file instead of the
`.keras` one (engine onnx, `fer export --pyfunc`): it then runs in ONNX
Runtime and never imports TensorFlow (`load_engine`).

- `EmotionModel`, logged by training (`log_emotion_model`, entry file
  `pyfunc_model.py`): raw faces in, float32 N x 48 x 48 x 1 with pixel values
  0-255 (the network rescales internally); N x 8 emotion probabilities out,
  in `EMOTIONS` order.
- `fer.serving.photo_service.FaceEmotionModel`, logged by promotion (entry file
  `pyfunc_service.py`), the one registered and served: 48x48 faces or whole
  photos.
- `fer.serving.predict`: the `fer predict` client of the latter.

Why not `mlflow.keras.log_model`: with an input example it fails on a
directory it never creates (mlflow/mlflow#16183, open), and a logged model
without an input example is what we replace.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Schema, TensorSpec

from fer.data.splits import NUM_CLASSES
from fer.serving.engines import FACE_SHAPE, OnnxRuntimeNetwork, forward

KERAS_ARTIFACT = "keras_model"
ONNX_MODEL_ARTIFACT = "onnx_model"  # a model logged with ONNX Runtime as its engine carries this instead
IMAGE_COLUMN = "image"  # the photo service's input column, named in messages about arrays too


def model_signature() -> ModelSignature:
    """Raw faces in (float32, N x 48 x 48 x 1, pixel values 0-255), 8 probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *FACE_SHAPE))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]),
    )


def load_network(path: str):
    """The Keras network at `path`, traced once on a blank face so the first request is not the slow one."""
    import keras

    from fer import models  # noqa: F401  registers the layers a flip-TTA network is saved with

    network = keras.saving.load_model(path, compile=False)
    forward(network, np.zeros((1, *FACE_SHAPE), np.float32))
    return network


def load_engine(artifacts: dict):
    """The network a logged model runs: its ONNX file in ONNX Runtime (engine onnx: TensorFlow is never
    imported), else its Keras network; either traced once on a blank face and used through `forward`."""
    if ONNX_MODEL_ARTIFACT not in artifacts:
        return load_network(artifacts[KERAS_ARTIFACT])
    network = OnnxRuntimeNetwork(artifacts[ONNX_MODEL_ARTIFACT])
    forward(network, np.zeros((1, *FACE_SHAPE), np.float32))
    return network


# ---------------------------------------------------------------------------
# Requests: the one input check, the one way to refuse


class BadRequest(ValueError):
    """A request a logged model cannot use; the message says what to send instead."""


class RequestRefused(MlflowException):
    """A 400 whose message stays ours: one line, as `BadRequest` or `ImageError` wrote it.

    MLflow's scoring server rewrites a model's MlflowException message to
    "Failed to predict data '<the whole input, repr'd>'. \nError: <message>"
    before sending it (mlflow/pyfunc/scoring_server, `invocations`), echoing
    the request into the error; this keeps the message it was made with.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._fixed_message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_fixed_message"):  # set once, by MlflowException.__init__
            self._fixed_message = value


def face_array(model_input, max_faces: int | None = None) -> np.ndarray:
    """float32 N x 48 x 48 x 1 from a face-array request; BadRequest unless shape, type and range are right.

    Takes N x 48 x 48 or N x 48 x 48 x 1 numbers, grayscale values 0-255 (raw,
    not rescaled), at most `max_faces` of them when given.

    >>> face_array(np.zeros((2, 48, 48))).shape
    (2, 48, 48, 1)
    """
    try:
        faces = np.asarray(model_input)
    except ValueError as err:  # ragged nested lists
        raise BadRequest(f"the faces are not a rectangular array: {str(err)[:80]}") from None
    if faces.dtype.kind not in "uif":
        raise BadRequest(
            f"expected a numeric array of faces (N x 48 x 48 or N x 48 x 48 x 1, values 0-255) or a DataFrame "
            f"with a column {IMAGE_COLUMN!r} of photos; got {type(model_input).__name__} of {faces.dtype}"
        )
    shape = faces.shape
    if faces.ndim == 3:  # N x 48 x 48: add the channel axis
        faces = faces[..., np.newaxis]
    if faces.ndim != 4 or faces.shape[1:] != FACE_SHAPE:
        raise BadRequest(
            f"expected faces of shape N x 48 x 48 or N x 48 x 48 x 1 (grayscale, values 0-255), got shape "
            f"{shape}; to send photos of any size, send a DataFrame with a column {IMAGE_COLUMN!r} instead"
        )
    if max_faces is not None and len(faces) > max_faces:
        raise BadRequest(f"{len(faces)} faces in one request; the limit is {max_faces}: split it")
    faces = faces.astype(np.float32)
    if not np.isfinite(faces).all() or faces.min(initial=0) < 0 or faces.max(initial=0) > 255:
        raise BadRequest("face pixel values must be finite and within 0-255 (raw grayscale, not rescaled)")
    return faces


# ---------------------------------------------------------------------------
# The training pyfunc


class EmotionModel(mlflow.pyfunc.PythonModel):
    """Predicts the 8 emotion probabilities of 48x48 grayscale faces (`face_array` says what it takes)."""

    def load_context(self, context):
        self.network = load_engine(context.artifacts)

    # The hint is one MLflow 3 reads as "no schema from hints, no validation": the signature
    # (`model_signature`) and `face_array` keep the contract; without a hint MLflow warns at import.
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        try:
            faces = face_array(model_input)
        except BadRequest as err:
            raise RequestRefused(str(err)) from None
        return forward(self.network, faces)


# ---------------------------------------------------------------------------
# Logging


def requirements(*extra: str, engine: str = "keras") -> list[str]:
    """Pinned to what trained the model, so a served model runs the same code; `extra` appended as given.

    engine "onnx": ONNX Runtime instead of TensorFlow and Keras.
    """
    from importlib.metadata import version

    runtime = ("tensorflow", "keras") if engine == "keras" else ("onnxruntime",)
    pinned = [f"{name}=={version(name)}" for name in ("mlflow", *runtime, "numpy", "pillow")]
    return [*pinned, *extra]


def log_pyfunc(
    entry_file: str,
    network_path: str | Path,
    *,
    name: str,
    signature: ModelSignature,
    input_example,
    pip_requirements,
    model_id: str | None = None,
    step: int = 0,
) -> ModelInfo:
    """Log a models-from-code pyfunc (`entry_file` beside this module) around a network file; its ModelInfo.

    The network file is a `.keras` file, or a `.onnx` one for a model whose
    engine is ONNX Runtime (`load_engine`). The model carries this whole
    package (`code_paths`), so it loads with nothing of ours installed. It goes
    to the active run, or into the logged model `model_id` when given (one made
    with `mlflow.initialize_logged_model`). It is the
    run's output at `step`: MLflow links the run's metrics already logged at
    that step to the model.
    """
    import fer

    entry = Path(__file__).with_name(entry_file)
    if not entry.is_file():
        raise FileNotFoundError(f"No model entry file {entry}: give the name of one of fer's pyfunc_*.py files")
    artifact = ONNX_MODEL_ARTIFACT if Path(network_path).suffix == ".onnx" else KERAS_ARTIFACT
    return mlflow.pyfunc.log_model(
        name=name,
        # "Models from code": the model is rebuilt from source at load, never unpickled.
        python_model=str(entry),
        artifacts={artifact: str(network_path)},
        code_paths=[str(Path(fer.__file__).parent)],
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
        model_id=model_id,
        step=step,
    )


def servable_copy(network):
    """An uncompiled copy of `network`, the same layers and weights: what serving needs and no more.

    A `.keras` file holds a compiled model's optimizer state (Adam: two slots per
    weight, so three times the weights), which a served model never uses. Keras 3
    has no switch for it (`include_optimizer` applies to `.h5` only) and
    `keras.models.clone_model` compiles its copy again, so the copy is built from
    the network's config with every `compile_config` taken out (a network nested
    in a wrapper, such as flip averaging, carries its own), then given the
    weights. Training-only layers become the Keras layers they compute as at
    inference (`fer.models.plain_keras_config`), so the copy loads without fer. Training checkpoints (`fer.training.checkpoints`) keep the state:
    resuming needs it.

    Example:
        >>> servable_copy(network).save("model.keras")  # doctest: +SKIP
        >>> keras.saving.load_model("model.keras").predict(faces)  # the same as network.predict(faces)  # doctest: +SKIP
    """
    from fer.models import plain_keras_config

    copy = type(network).from_config(plain_keras_config(_without_compile_config(network.get_config())))
    copy.set_weights(network.get_weights())
    return copy


def _without_compile_config(config):
    """`config` (nested dicts and lists) without its "compile_config" entries, at any depth."""
    if isinstance(config, dict):
        return {key: _without_compile_config(value) for key, value in config.items() if key != "compile_config"}
    if isinstance(config, list):
        return [_without_compile_config(value) for value in config]
    return config


def save_servable(network, path: str | Path) -> Path:
    """Save `servable_copy(network)` as the `.keras` file `path` (no optimizer state); the path.

    Example:
        >>> save_servable(network, "model.keras")  # doctest: +SKIP
        PosixPath('model.keras')
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"save_servable writes a .keras file; got the path {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    servable_copy(network).save(path)
    return path


def log_emotion_model(network, input_example: np.ndarray, name: str = "model", step: int = 0) -> ModelInfo:
    """Log `network` as the training pyfunc (`EmotionModel`) in the active run, its output at `step`; its ModelInfo.

    The logged `.keras` file holds the network without its optimizer state (`servable_copy`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        keras_path = save_servable(network, Path(tmp) / "model.keras")
        return log_pyfunc(
            "pyfunc_model.py",
            keras_path,
            name=name,
            signature=model_signature(),
            input_example=np.asarray(input_example, dtype=np.float32),
            pip_requirements=requirements(),
            step=step,
        )


def log_model_metrics(metrics: dict[str, float], model_id: str | None) -> None:
    """Log `metrics` to the active run and, given `model_id`, link them to that logged model.

    Linked metrics show on the model's page in the MLflow UI, in
    `mlflow.get_logged_model(model_id).metrics`, and with a registered version
    made from the model (`fer.registry` links the training model's to the one
    it registers). The run is read afresh (`run_id`), so that MLflow sees the
    model among the run's outputs whatever its cached view of the active run
    holds (else it would also list the model among the run's inputs).

    Example:
        with mlflow.start_run() as run:
            info = log_emotion_model(network, faces)
            log_model_metrics({"eval_accuracy": 0.81}, info.model_id)
    """
    if metrics:
        mlflow.log_metrics(metrics, model_id=model_id, run_id=mlflow.active_run().info.run_id)
