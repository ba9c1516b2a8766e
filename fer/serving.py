"""The logged models: MLflow pyfuncs around the trained Keras network, for 48x48 faces and for photos.

Both carry the Keras model (`.keras` file) and this package's code, so
`mlflow.pyfunc.load_model` and `mlflow models serve` need nothing else, and
both are "models from code": rebuilt from source at load, never unpickled.

- `EmotionModel`, logged by training (`log_emotion_model`, entry file
  `pyfunc_model.py`): raw faces in, float32 N x 48 x 48 x 1 with pixel values
  0-255 (the network rescales internally); N x 8 emotion probabilities out,
  in `EMOTIONS` order.
- `FaceEmotionModel`, logged by promotion (`log_service_model`, entry file
  `pyfunc_service.py`), the one registered and served: 48x48 faces or whole
  photos, in which it finds the faces first (`fer.faces`); one row per face
  out. Its formats, limits and errors are in its docstring.

Why not `mlflow.keras.log_model`: with an input example it fails on a
directory it never creates (mlflow/mlflow#16183, open), and a logged model
without an input example is what we replace.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

from fer import faces as fer_faces
from fer.data.splits import EMOTIONS, IMAGE_SIZE, NUM_CLASSES

KERAS_ARTIFACT = "keras_model"
FACE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


def model_signature() -> ModelSignature:
    """Raw faces in (float32, N x 48 x 48 x 1, pixel values 0-255), 8 probabilities out."""
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *FACE_SHAPE))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]),
    )


# Faces per forward pass: bounds memory (the first convolution's output for 256 faces is
# ~150 MB in float32) while keeping the per-call cost amortized.
FORWARD_CHUNK = 256


def forward(network, faces: np.ndarray) -> np.ndarray:
    """The network's N x 8 probabilities (float32) for float32 faces N x 48 x 48 x 1, in chunks.

    `predict_on_batch`, not `predict`: Keras's `predict` builds a tf.data pipeline,
    two iterators and its callbacks on every call, about 100-150 ms whatever the
    number of faces, which made one face take 12x as long as the network's own
    work (benchmarks/inference.py, BENCHMARKS.md).
    """
    if not len(faces):
        return np.zeros((0, NUM_CLASSES), np.float32)
    chunks = (network.predict_on_batch(faces[i : i + FORWARD_CHUNK]) for i in range(0, len(faces), FORWARD_CHUNK))
    return np.concatenate([np.asarray(chunk, dtype=np.float32) for chunk in chunks])


def load_network(path: str):
    """The Keras network at `path`, traced once on a blank face so the first request is not the slow one."""
    import keras

    network = keras.saving.load_model(path, compile=False)
    forward(network, np.zeros((1, *FACE_SHAPE), np.float32))
    return network


class EmotionModel(mlflow.pyfunc.PythonModel):
    """Predicts the 8 emotion probabilities of 48x48 grayscale faces."""

    def load_context(self, context):
        self.network = load_network(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input, params=None):
        faces = np.asarray(model_input, dtype=np.float32)
        if faces.ndim == 3:  # N x 48 x 48: add the channel axis
            faces = faces[..., np.newaxis]
        if faces.shape[1:] != FACE_SHAPE:
            raise ValueError(f"expected faces of shape N x 48 x 48 x 1, got {faces.shape}")
        return forward(self.network, faces)


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


# ---------------------------------------------------------------------------
# The service model: faces or photos in, one row per face out.

PATHS_ENV = "FER_ALLOW_PATHS"
IMAGE_COLUMN = "image"
MAX_IMAGES_PER_REQUEST = 64
MAX_FACES_PER_REQUEST = 4096  # 48x48 arrays; about 38 MB as float32
OUTPUT_COLUMNS = ("image", "box", "emotion", *EMOTIONS)


class BadRequest(ValueError):
    """A request the service model cannot use; the message says what to send instead."""


def paths_allowed() -> bool:
    """Whether this process lets requests name image files (FER_ALLOW_PATHS=1)."""
    return os.environ.get(PATHS_ENV, "").strip().lower() in {"1", "true", "yes"}


class FaceEmotionModel(mlflow.pyfunc.PythonModel):
    """Finds faces and predicts their emotions; one output row per face.

    Input, one of:

    - faces already cropped: a numeric array N x 48 x 48 or N x 48 x 48 x 1,
      grayscale pixel values 0-255 (served: `{"inputs": [[[...]]]}`); each
      face's box is the whole 48x48 image, [0, 0, 48, 48];
    - photos: a DataFrame with one column `image`, one photo per row, as the
      image file's bytes or as standard base64 of them (a `data:image/...;base64,`
      URI works too); served: `{"dataframe_split": {"columns": ["image"],
      "data": [["<base64>"], ...]}}` or `{"dataframe_records": [{"image":
      "<base64>"}]}`. `{"inputs": ["<base64>", ...]}` and
      `{"inputs": {"image": [...]}}` are read the same way. A string is base64
      when it is a data: URI or at least 64 characters of the base64 alphabet
      (`fer.faces.is_base64_text`); any other string is a file path.

    Output: a DataFrame, one row per face, columns `image` (the input's row
    index), `box` ([x, y, w, h] in the photo's pixels, after EXIF rotation),
    `emotion` (the most probable name) and one column per name in `EMOTIONS`
    with its probability. A photo with no face gives one row with `box`,
    `emotion` and the probabilities null, so a caller can tell "no face" from
    "not sent". Probabilities are pandas' nullable Float64 and `emotion` is
    object, so the served JSON has `null` there rather than NaN.

    Security: file paths are read only when the serving process has
    FER_ALLOW_PATHS=1 in its environment (never from the request): otherwise
    anyone who can reach the server could make it open files on its disk, or
    find out which exist. `fer predict` reads files itself and sends bytes,
    so it needs no such switch. Every image is limited to
    `fer.faces.MAX_IMAGE_BYTES` encoded and `fer.faces.MAX_IMAGE_PIXELS`
    decoded (checked from the header, before decoding); a request to
    MAX_IMAGES_PER_REQUEST photos or MAX_FACES_PER_REQUEST arrays. The body
    as a whole is read by MLflow's server before any of this: put a
    size-limiting proxy in front of a server open to others.

    Errors: anything wrong with the request raises MlflowException with
    INVALID_PARAMETER_VALUE, naming the row and what to send instead (HTTP
    400 from the scoring server); one bad photo fails the whole request. An
    OpenCV without the Haar cascade (OpenCV 5) raises INTERNAL_ERROR (500)
    for photos that need detection: that is the server's fault, not the
    request's.
    """

    def load_context(self, context):
        self.network = load_network(context.artifacts[KERAS_ARTIFACT])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        try:
            photos = _photo_column(model_input)
            if photos is None:
                return _predict_arrays(self.network, _face_array(model_input))
            return _predict_photos(self.network, photos, paths_allowed())
        except (BadRequest, fer_faces.ImageError) as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        except fer_faces.FaceDetectorUnavailable as err:
            raise MlflowException(str(err), error_code=INTERNAL_ERROR) from None


def _photo_column(model_input) -> list | None:
    """The photos of a photo request, as a list; None for a face-array request."""
    if isinstance(model_input, dict):
        if set(model_input) != {IMAGE_COLUMN}:
            raise BadRequest(f"a dict input must have the one key {IMAGE_COLUMN!r}; got keys {sorted(model_input)}")
        model_input = pd.DataFrame({IMAGE_COLUMN: list(np.atleast_1d(model_input[IMAGE_COLUMN]))})
    if isinstance(model_input, pd.DataFrame):
        if list(model_input.columns) != [IMAGE_COLUMN]:
            raise BadRequest(
                f"a DataFrame input must have exactly one column {IMAGE_COLUMN!r} (a photo per row: its "
                f"file bytes or their base64); got columns {list(model_input.columns)}"
            )
        photos = model_input[IMAGE_COLUMN].tolist()
    elif isinstance(model_input, (list, tuple)) and all(isinstance(v, (str, bytes)) for v in model_input):
        photos = list(model_input)
    elif isinstance(model_input, np.ndarray) and model_input.ndim == 1 and model_input.dtype.kind in "OSU":
        photos = model_input.tolist()  # {"inputs": ["<base64>", ...]} arrives as an array of strings
    else:
        return None
    if len(photos) > MAX_IMAGES_PER_REQUEST:
        raise BadRequest(
            f"{len(photos)} photos in one request; the limit is {MAX_IMAGES_PER_REQUEST}: split the request"
        )
    return photos


def _face_array(model_input) -> np.ndarray:
    """float32 N x 48 x 48 x 1 from a face-array request, checked for shape, type and range."""
    try:
        faces = np.asarray(model_input)
    except ValueError as err:  # ragged nested lists
        raise BadRequest(f"the faces are not a rectangular array: {err}") from None
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
    if len(faces) > MAX_FACES_PER_REQUEST:
        raise BadRequest(f"{len(faces)} faces in one request; the limit is {MAX_FACES_PER_REQUEST}: split it")
    faces = faces.astype(np.float32)
    if not np.isfinite(faces).all() or faces.min(initial=0) < 0 or faces.max(initial=0) > 255:
        raise BadRequest("face pixel values must be finite and within 0-255 (raw grayscale, not rescaled)")
    return faces


def _predict_arrays(network, faces: np.ndarray) -> pd.DataFrame:
    boxes = [[0, 0, IMAGE_SIZE, IMAGE_SIZE]] * len(faces)
    return _result_frame(list(range(len(faces))), boxes, _probabilities(network, faces))


def _predict_photos(network, photos: list, allow_paths: bool) -> pd.DataFrame:
    image_index, boxes, crops = [], [], []
    for row, value in enumerate(photos):
        try:
            gray = fer_faces.decode_image(fer_faces.image_bytes(value, allow_paths))
            found = fer_faces.find_faces(gray)
        except fer_faces.ImageError as err:
            raise BadRequest(f"{IMAGE_COLUMN} row {row}: {err}") from None
        if not found:
            image_index.append(row)
            boxes.append(None)
            continue
        image_index += [row] * len(found)
        boxes += [list(box) for box in found]
        crops.append(fer_faces.crop_faces(gray, found))
    faces = np.concatenate(crops) if crops else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    probabilities = iter(_probabilities(network, faces[..., np.newaxis].astype(np.float32)))
    # Rows without a face get no probabilities; the others take theirs in order.
    per_row = [None if box is None else next(probabilities) for box in boxes]
    return _result_frame(image_index, boxes, per_row)


def _probabilities(network, faces: np.ndarray) -> np.ndarray:
    return forward(network, faces).astype(np.float64)


def _result_frame(image_index: list[int], boxes: list, probabilities) -> pd.DataFrame:
    """The output DataFrame; None in `boxes` / `probabilities` marks a photo with no face."""
    rows = len(image_index)
    frame = pd.DataFrame({
        "image": pd.Series(image_index, dtype="int64"),
        "box": pd.Series(boxes, dtype=object),
        "emotion": pd.Series(
            [None if p is None else EMOTIONS[int(np.argmax(p))] for p in probabilities], dtype=object
        ),
    })
    table = np.full((rows, NUM_CLASSES), np.nan)
    for i, p in enumerate(probabilities):
        if p is not None:
            table[i] = p
    for k, name in enumerate(EMOTIONS):
        # Nullable floats: a photo without a face serves as null, not NaN (invalid JSON).
        frame[name] = pd.array(table[:, k], dtype="Float64")
    return frame


def service_signature() -> ModelSignature:
    """Output columns only.

    An input schema would make MLflow reject one of the two input kinds before
    `predict` sees it (a tensor spec refuses photos, a column spec refuses
    arrays); `FaceEmotionModel` checks its input itself, with clearer messages.
    An input schema left out also keeps MLflow from inferring one from the
    input example.
    """
    optional_probability = [ColSpec(DataType.double, name, required=False) for name in EMOTIONS]
    return ModelSignature(
        outputs=Schema([
            ColSpec(DataType.long, "image"),
            ColSpec(Array(DataType.long), "box", required=False),
            ColSpec(DataType.string, "emotion", required=False),
            *optional_probability,
        ])
    )


def service_input_example() -> pd.DataFrame:
    """One photo, as base64 PNG: a drawn 48x48 face (needs no face detector, so it validates anywhere)."""
    from PIL import Image

    from fer.data.synthetic import make_faces

    faces, _ = make_faces(1, seed=0)
    buffer = io.BytesIO()
    Image.fromarray(faces[0]).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(buffer.getvalue()).decode("ascii")]})


def _service_requirements() -> list[str]:
    """The training pins, plus an OpenCV that has the Haar cascade.

    OpenCV is pinned to the installed version like the rest, except that an
    installed OpenCV 5 (no cascade) is not carried into the served model.
    """
    from importlib.metadata import version

    opencv = version("opencv-python-headless")
    pin = f"=={opencv}" if int(opencv.split(".")[0]) < 5 else ">=4.9,<5"
    return [*_requirements(), f"opencv-python-headless{pin}"]


def find_keras_file(model_dir: Path) -> Path:
    """The one `.keras` file in a downloaded model folder (a training run's pyfunc keeps it under artifacts/)."""
    model_dir = Path(model_dir)
    found = sorted(model_dir.rglob("*.keras"))
    if not found:
        raise FileNotFoundError(
            f"No .keras file under {model_dir}: is it a model logged by fer training (log_emotion_model)?"
        )
    if len(found) > 1:
        raise FileNotFoundError(
            f"{len(found)} .keras files under {model_dir} ({', '.join(str(p) for p in found)}): "
            "pass the one to serve to log_service_model"
        )
    return found[0]


def log_service_model(keras_model_path: str | Path, name: str = "model") -> ModelInfo:
    """Log the photo-capable `FaceEmotionModel` around a `.keras` file in the active run; returns ModelInfo."""
    import fer

    keras_model_path = Path(keras_model_path)
    if not keras_model_path.is_file():
        raise FileNotFoundError(f"No Keras model file at {keras_model_path}: give the path of a .keras file")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("pyfunc_service.py")),
        artifacts={KERAS_ARTIFACT: str(keras_model_path)},
        code_paths=[str(Path(fer.__file__).parent)],
        signature=service_signature(),
        input_example=service_input_example(),
        pip_requirements=_service_requirements(),
    )


# ---------------------------------------------------------------------------
# `fer predict`: photos on disk through a loaded service model.


class PredictError(RuntimeError):
    """`fer predict` cannot go on; the message names the model or file and what to do."""


def load_service_model(model_uri: str):
    """`mlflow.pyfunc.load_model(model_uri)`, checked to be a FaceEmotionModel."""
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as err:
        raise PredictError(f"Cannot load model {model_uri}: {_first_line(err)}") from None
    try:
        kind = type(model.unwrap_python_model()).__name__
    except MlflowException:  # not a Python-model pyfunc at all
        kind = "a model of flavors " + ", ".join(model.metadata.flavors)
    # By name: the model's own copy of this package may be a different module object.
    if kind != FaceEmotionModel.__name__:
        raise PredictError(
            f"{model_uri} is not the photo model (it is {kind}): give the registered model, e.g. "
            "models:/fer-emotion@champion, or one logged by `fer promote`; a training run's `model` takes "
            "48x48 faces only"
        )
    return model


def predict_file(model, path: str | Path) -> pd.DataFrame:
    """The service model's rows for the photo at `path` (read here, sent as bytes)."""
    try:
        data = fer_faces.read_image_file(path)
        return model.predict(pd.DataFrame({IMAGE_COLUMN: [data]}))
    except fer_faces.ImageError as err:
        raise PredictError(str(err)) from None
    except MlflowException as err:
        raise PredictError(f"{path}: {err.message.removeprefix(f'{IMAGE_COLUMN} row 0: ')}") from None


def describe_faces(name: str, frame: pd.DataFrame) -> list[str]:
    """One line per face: file, box, emotion and its probability, then all 8 probabilities."""
    lines = []
    for row in frame.itertuples(index=False):
        if row.box is None:
            lines.append(f"{name}\tno face found")
            continue
        values = {emotion: float(getattr(row, emotion)) for emotion in EMOTIONS}
        box = ",".join(str(v) for v in row.box)
        spread = " ".join(f"{emotion}={value:.2f}" for emotion, value in values.items())
        lines.append(f"{name}\tbox={box}\t{row.emotion} {values[row.emotion]:.2f}\t{spread}")
    return lines


def annotate_file(path: str | Path, frame: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write the photo at `path` with its faces boxed and labelled to OUT_DIR/<name>.annotated.png."""
    path, out_dir = Path(path), Path(out_dir)
    try:
        image = fer_faces.open_image(fer_faces.read_image_file(path))
    except fer_faces.ImageError as err:
        raise PredictError(str(err)) from None
    faces = [
        (tuple(row.box), f"{row.emotion} {float(getattr(row, row.emotion)):.2f}")
        for row in frame.itertuples(index=False)
        if row.box is not None
    ]
    target = out_dir / f"{path.stem}.annotated.png"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fer_faces.draw_faces(image, faces).save(target)
    except OSError as err:
        raise PredictError(f"Cannot write {target}: {err.strerror or err}") from None
    return target


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
