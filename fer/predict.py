"""`fer predict`: photos on disk through a loaded photo model (`fer.photo_service.FaceEmotionModel`).

The photos are read here and sent as bytes, so no FER_ALLOW_PATHS is needed.
A photo that cannot be used is reported and the rest still go through
(`predict_files`); the command fails at the end if any did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from fer import faces as fer_faces
from fer import images
from fer.data.splits import EMOTIONS
from fer.photo_service import FaceEmotionModel
from fer.serving import IMAGE_COLUMN


class PredictError(RuntimeError):
    """`fer predict` cannot use a model or a photo; the message names it and says what to do."""


def load_service_model(model_uri: str):
    """`mlflow.pyfunc.load_model(model_uri)`, checked to be a FaceEmotionModel; PredictError if not."""
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
    """The service model's rows for the photo at `path` (read here, sent as bytes); PredictError if unusable."""
    try:
        data = images.read_image_file(path)
        return model.predict(pd.DataFrame({IMAGE_COLUMN: [data]}))
    except images.ImageError as err:
        raise PredictError(str(err)) from None
    except MlflowException as err:
        raise PredictError(f"{path}: {_first_line(err).removeprefix(f'{IMAGE_COLUMN} row 0: ')}") from None


def predict_files(
    model, paths: Iterable[str | Path], annotate_dir: str | Path | None, echo: Callable[[str], None],
    echo_error: Callable[[str], None],
) -> int:
    """Predict each photo in `paths`, echoing its face lines (and annotated file); the number that failed.

    A photo that fails is reported through `echo_error` and the next one is
    tried: one bad photo should not hide the others' results.
    """
    failed = 0
    for path in paths:
        try:
            frame = predict_file(model, path)
            for line in describe_faces(str(path), frame):
                echo(line)
            if annotate_dir:
                echo(f"{path}\tannotated: {annotate_file(path, frame, annotate_dir)}")
        except PredictError as err:
            echo_error(f"Error: {err}")
            failed += 1
    return failed


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
        image = images.open_image(images.read_image_file(path))
    except images.ImageError as err:
        raise PredictError(f"{path}: {err}") from None
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
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__
