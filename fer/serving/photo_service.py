"""The photo service: the served model (`FaceEmotionModel`) and how it is logged from a training run's network.

Faces or photos in, one row per face out. Photos are decoded by
`fer.data.images.decode_photo` (the decoder training data goes through) and their
faces found and cut by `fer.serving.faces`. Logged by `log_service_model` (promotion,
`fer.registry`), entry file `pyfunc_service.py`; `fer predict` is its client
(`fer.serving.predict`).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Schema

from fer.serving import faces as fer_faces
from fer.data import images
from fer.data.splits import EMOTIONS, IMAGE_SIZE, NUM_CLASSES
from fer.data.images import ImageError
from fer.serving.pyfunc import (
    IMAGE_COLUMN,
    BadRequest,
    RequestRefused,
    face_array,
    forward,
    load_engine,
    log_pyfunc,
    requirements,
)

PATHS_ENV = "FER_ALLOW_PATHS"
MAX_IMAGES_PER_REQUEST = 64
MAX_FACES_PER_REQUEST = 4096  # 48x48 arrays; about 38 MB as float32
OUTPUT_COLUMNS = ("image", "box", "emotion", *EMOTIONS)

# Standard base64 (RFC 4648 section 4, what base64.b64encode writes), whitespace allowed.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")
# The smallest real image files are some tens of bytes; a path is rarely this
# long with no '.', '_', '-' or space in it.
MIN_BASE64_CHARS = 64


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
      (`is_base64_text`); any other string is a file path.

    Output: a DataFrame, one row per face, columns `image` (the input's row
    index), `box` ([x, y, w, h] in the photo's pixels, after EXIF rotation),
    `emotion` (the most probable name) and one column per name in `EMOTIONS`
    with its probability. A photo with no face gives one row with `box`,
    `emotion` and the probabilities null, so a caller can tell "no face" from
    "not sent". Probabilities are pandas' nullable Float64 and `emotion` is
    object, so the served JSON has `null` there rather than NaN.

    Photos of any shape are taken; a large one is decoded shrunk to
    `fer.data.images.WORK_MAX_SIDE` a side before faces are looked for, so a
    6000x6000 photo costs about what a 1280x1280 one does.

    Security: file paths are read only when the serving process has
    FER_ALLOW_PATHS=1 in its environment (never from the request): otherwise
    anyone who can reach the server could make it open files on its disk, or
    find out which exist; error messages never quote a file's contents.
    `fer predict` reads files itself and sends bytes, so it needs no such
    switch. Every image is limited to `fer.data.images.MAX_IMAGE_BYTES` encoded
    and `fer.data.images.MAX_IMAGE_PIXELS` decoded (checked from the header, before
    decoding); a request to MAX_IMAGES_PER_REQUEST photos or
    MAX_FACES_PER_REQUEST arrays. The body as a whole is read by MLflow's
    server before any of this: put a size-limiting proxy in front of a
    server open to others.

    Errors: anything wrong with the request raises MlflowException with
    INVALID_PARAMETER_VALUE and a one-line message naming the row and what to
    send instead (HTTP 400 from the scoring server, that message as its
    body's `message`); one bad photo fails the whole request. An OpenCV
    without the Haar cascade (OpenCV 5) raises INTERNAL_ERROR (500) for
    photos that need detection: that is the server's fault, not the request's.
    """

    def load_context(self, context):
        self.network = load_engine(context.artifacts)

    # pd.DataFrame is the hint MLflow 3 takes as "infer no schema, validate nothing, convert
    # nothing" (mlflow.types.type_hints.type_hints_no_signature_inference): arrays and dicts still
    # arrive as they are and are checked below; without a hint MLflow warns on every import.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            photos = _photo_column(model_input)
            if photos is None:
                return _predict_arrays(self.network, face_array(model_input, MAX_FACES_PER_REQUEST))
            return _predict_photos(self.network, photos, paths_allowed())
        except (BadRequest, ImageError) as err:
            raise RequestRefused(str(err)) from None
        except fer_faces.FaceDetectorUnavailable as err:
            raise MlflowException(str(err), error_code=INTERNAL_ERROR) from None


# ---------------------------------------------------------------------------
# Reading a request


def is_base64_text(text: str) -> bool:
    """True when `text` is to be read as base64 rather than as a file path.

    That is: a `data:` URI, or at least MIN_BASE64_CHARS characters all from the
    standard base64 alphabet (whitespace ignored). Any other string is a path.

    >>> is_base64_text("photo.jpg"), is_base64_text("data:image/png;base64,AAAA")
    (False, True)
    """
    text = text.strip()
    if text.startswith("data:"):
        return True
    return len(text) >= MIN_BASE64_CHARS and _BASE64_TEXT.fullmatch(text) is not None


def decode_base64(text: str, max_bytes: int = images.MAX_IMAGE_BYTES) -> bytes:
    """The bytes `text` encodes (standard base64, or a `data:...;base64,` URI), checked for size first."""
    text = text.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ImageError("a data: URI must be 'data:<type>;base64,<base64 of the image file>'")
    text = "".join(text.split())
    if len(text) // 4 * 3 > max_bytes:  # refuse before allocating the decoded copy
        raise ImageError(f"the base64 image encodes about {len(text) // 4 * 3:,} bytes; the limit is {max_bytes:,}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(
            f"invalid base64 ({err}): send the image file's bytes encoded with standard base64 "
            "(base64.b64encode), not URL-safe base64, and not truncated"
        ) from None


def image_bytes(value, allow_paths: bool) -> bytes:
    """The encoded image a request gave: raw bytes, base64 text, or (when allowed) a file path."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        # None, NaN and pd.NA are how DataFrames spell an empty cell.
        empty = value is None or isinstance(value, float) or type(value).__name__ == "NAType"
        raise ImageError(
            "expected image bytes, a base64 string or a file path, got "
            + ("an empty cell" if empty else type(value).__name__)
        )
    if is_base64_text(value):
        return decode_base64(value)
    if not allow_paths:
        raise ImageError(
            f"{_preview(value)} is not base64 (base64 text is at least {MIN_BASE64_CHARS} characters of "
            "A-Z a-z 0-9 + / =) and reading file paths is switched off here; send the image as "
            "base64 of its file bytes (the server operator can allow paths with FER_ALLOW_PATHS=1)"
        )
    return images.read_image_file(value)


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _photo_column(model_input) -> list | None:
    """The photos of a photo request, as a list; None for a face-array request."""
    if isinstance(model_input, dict):
        if set(model_input) != {IMAGE_COLUMN}:
            keys = _preview(str(sorted(map(str, model_input))), 80)
            raise BadRequest(f"a dict input must have the one key {IMAGE_COLUMN!r}; got keys {keys}")
        model_input = pd.DataFrame({IMAGE_COLUMN: list(np.atleast_1d(model_input[IMAGE_COLUMN]))})
    if isinstance(model_input, pd.DataFrame):
        if list(model_input.columns) != [IMAGE_COLUMN]:
            raise BadRequest(
                f"a DataFrame input must have exactly one column {IMAGE_COLUMN!r} (a photo per row: its "
                f"file bytes or their base64); got columns {_preview(str(list(model_input.columns)), 80)}"
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


# ---------------------------------------------------------------------------
# Predicting


def _predict_arrays(network, faces: np.ndarray) -> pd.DataFrame:
    boxes = [[0, 0, IMAGE_SIZE, IMAGE_SIZE]] * len(faces)
    return _result_frame(list(range(len(faces))), boxes, _probabilities(network, faces))


def _predict_photos(network, photos: list, allow_paths: bool) -> pd.DataFrame:
    image_index, boxes, crops = [], [], []
    for row, value in enumerate(photos):
        try:
            photo = images.decode_photo(image_bytes(value, allow_paths))
        except ImageError as err:
            raise BadRequest(f"{IMAGE_COLUMN} row {row}: {err}") from None
        found = fer_faces.find_faces(photo.gray)
        if not found:
            image_index.append(row)
            boxes.append(None)
            continue
        image_index += [row] * len(found)
        boxes += [list(photo.to_photo_pixels(box)) for box in found]
        crops.append(fer_faces.crop_faces(photo.gray, found))
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


# ---------------------------------------------------------------------------
# Logging


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


def service_requirements(engine: str = "keras") -> list[str]:
    """The training pins (`fer.serving.pyfunc.requirements`), plus an OpenCV that has the Haar cascade.

    OpenCV is pinned to the installed version like the rest, except that an
    installed OpenCV 5 (no cascade) is not carried into the served model.
    """
    from importlib.metadata import version

    opencv = version("opencv-python-headless")
    pin = f"=={opencv}" if int(opencv.split(".")[0]) < 5 else ">=4.9,<5"
    return requirements(f"opencv-python-headless{pin}", engine=engine)


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


def log_service_model(keras_model_path: str | Path, name: str = "model", model_id: str | None = None) -> ModelInfo:
    """Log the photo-capable `FaceEmotionModel` around a `.keras` file; returns ModelInfo.

    It goes to the active run, or into the logged model `model_id` when given
    (promotion logs it that way into the training run, `fer.registry`).
    """
    keras_model_path = Path(keras_model_path)
    if not keras_model_path.is_file():
        raise FileNotFoundError(f"No Keras model file at {keras_model_path}: give the path of a .keras file")
    return log_pyfunc(
        "pyfunc_service.py",
        keras_model_path,
        name=name,
        signature=service_signature(),
        input_example=service_input_example(),
        pip_requirements=service_requirements(),
        model_id=model_id,
    )
