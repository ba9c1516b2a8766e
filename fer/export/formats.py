"""Exported network files: written by Keras's own exporter, run by ONNX Runtime or LiteRT, checked against Keras.

A file is only as good as its agreement with the network it came from:

- `export_network`: the file (`model.export(path, format="onnx" | "litert")`;
  ONNX goes through tf2onnx), from a float32 copy of a mixed-precision network;
- `OnnxRuntimeNetwork`, `LiteRTNetwork` (`load_exported` picks by suffix): an
  exported file run with `fer.serving.pyfunc.forward`'s contract (raw faces in, float32
  N x 48 x 48 x 1 with pixel values 0-255; N x 8 probabilities out);
- `measure_parity`: the largest probability difference and the share of faces
  whose most probable emotion differs.

`fer.export.quantization` makes int8 copies of these files; `fer.export.runs` is what a
training run (`model.onnx`) and `fer export` do with them. onnx, onnxruntime and
tf2onnx are an optional extra (`pip install ".[onnx]"`); LiteRT uses
TensorFlow's own `tf.lite`.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path

import numpy as np

from fer.data.splits import NUM_CLASSES
from fer.serving.engines import FACE_SHAPE, LiteRTNetwork, OnnxRuntimeNetwork, forward

FORMATS = ("onnx", "litert")
SUFFIXES = {"onnx": ".onnx", "litert": ".tflite"}
REQUIRED_MODULES = {"onnx": ("tf2onnx", "onnx", "onnxruntime"), "litert": ("tensorflow.lite",)}
INSTALL_HINT = {"onnx": 'pip install "fer-mlflow[onnx]" (onnx, onnxruntime, tf2onnx)', "litert": "pip install tensorflow"}

# An export whose probabilities differ from Keras's by more than this is not kept. Float32
# round-off gives ~1e-7 (the phase-2 network: 2e-8); anything near 1e-4 is a wrong operation.
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """A network could not be exported, checked or measured; the message says why and what to do."""


class ConverterMissing(ExportError):
    """What a format needs is not installed; the message names the packages and the pip command."""


# ---------------------------------------------------------------------------
# Writing the file


def require_converter(format: str) -> None:
    """Raise ConverterMissing unless the modules `format` needs import.

    >>> require_converter("litert")  # TensorFlow's tf.lite: always there with TensorFlow
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    _require(REQUIRED_MODULES[format], f"{format} export", INSTALL_HINT[format])


def _require(modules: tuple[str, ...], what: str, hint: str) -> None:
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            missing.append(f"{name} ({first_line(err)})")
    if missing:
        raise ConverterMissing(f"{what} needs {', '.join(missing)}, which could not be imported: {hint}")


def export_network(network, path: str | Path, format: str = "onnx") -> Path:
    """Write `network` (a Keras model taking N x 48 x 48 x 1 faces) to `path` as ONNX or LiteRT; the path.

    Keras's exporter traces the inference graph (dropout off, batch-norm moving
    statistics), any batch size. A network under a mixed-precision policy is
    exported as a float32 copy: Keras's ONNX exporter needs float32, and CPUs
    run it faster anyway.

    Example:
        export_network(build_model("baseline"), "baseline.onnx")
        probabilities = forward(OnnxRuntimeNetwork("baseline.onnx"), faces)
    """
    require_converter(format)
    path = Path(path)
    if path.suffix != SUFFIXES[format]:
        raise ExportError(f"a {format} file must end in {SUFFIXES[format]}; got {path}")
    check_face_input(network)
    network = float32_copy(network)
    # Keras exports only a network that has run (it reads the input signature from the call);
    # a freshly built or loaded one, like the flip-TTA wrapper, runs once here on a blank face.
    forward(network, np.zeros((1, *FACE_SHAPE), np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_converter():
        network.export(str(path), format=format, verbose=False)
    if not path.is_file():
        raise ExportError(f"Keras's {format} exporter wrote nothing at {path}")
    return path


def check_face_input(network) -> None:
    """ExportError unless `network` takes faces as fer's networks do: N x 48 x 48 x 1 (one input).

    >>> import keras
    >>> check_face_input(keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten()]))
    Traceback (most recent call last):
    fer.export.formats.ExportError: the network takes input (None, 32, 32, 3), not fer's faces (None, 48, 48, 1): export a fer model (a training run's or a registered version's)
    """
    shape = getattr(network, "input_shape", None)
    if isinstance(shape, list) or shape is None or tuple(shape[1:]) != tuple(FACE_SHAPE):
        raise ExportError(f"the network takes input {shape}, not fer's faces (None, {', '.join(map(str, FACE_SHAPE))})"
                          ": export a fer model (a training run's or a registered version's)")


def float32_copy(network):
    """`network` itself when all its layers compute in float32, else a float32 copy with the same weights."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in _all_layers(network)):
        return network
    config = _float32_config(keras.saving.serialize_keras_object(network))
    from fer import models  # noqa: F401  registers the layers a flip-TTA network is built from

    copy = keras.saving.deserialize_keras_object(config)
    copy.set_weights(network.get_weights())
    return copy


def _all_layers(network):
    for layer in network.layers:
        yield layer
        if hasattr(layer, "layers"):  # a network nested in the flip-TTA wrapper
            yield from _all_layers(layer)


def _float32_config(config):
    """A serialized model with every dtype policy replaced by float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return {**config, "config": {**config.get("config", {}), "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


class _quiet_converter:
    """tf2onnx logs every conversion step at INFO; keep its warnings and errors only."""

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("tf2onnx")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        # Keras's numpy-2 patch of tf2onnx (keras/src/export/tf2onnx_lib.py) trips numpy's own notice.
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.logger.setLevel(self.level)


# ---------------------------------------------------------------------------
# Running the file


def load_exported(path: str | Path, threads: int | None = None):
    """The runtime for an exported file, by its suffix (.onnx: ONNX Runtime, .tflite: LiteRT)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"No exported model at {path}")
    if path.suffix == SUFFIXES["onnx"]:
        return OnnxRuntimeNetwork(path, threads)
    if path.suffix == SUFFIXES["litert"]:
        return LiteRTNetwork(path, threads)
    raise ExportError(f"{path}: expected a .onnx or .tflite file")


# ---------------------------------------------------------------------------
# Checking it


@dataclasses.dataclass(frozen=True)
class Parity:
    """How far an exported network's probabilities are from the Keras network's on the same faces."""

    max_abs_diff: float  # the largest |p_keras - p_exported| over every face and emotion
    class_mismatch: float  # the share of faces whose most probable emotion differs
    faces: int

    def holds(self, tolerance: float = PARITY_TOLERANCE) -> bool:
        return self.max_abs_diff <= tolerance

    def metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_max_abs_diff": self.max_abs_diff, f"{prefix}_class_mismatch": self.class_mismatch}

    def describe(self) -> str:
        return (f"max |p_keras - p_exported| {self.max_abs_diff:.2e}, predicted emotion differs on "
                f"{self.class_mismatch:.2%} of {self.faces:,} faces")


def measure_parity(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    """Parity of `candidate` probabilities (N x 8) against `reference` (N x 8, the Keras network's).

    >>> parity = measure_parity(np.eye(8)[:2], np.eye(8)[:2] * 0.9)
    >>> round(parity.max_abs_diff, 6), parity.class_mismatch
    (0.1, 0.0)
    """
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2 or reference.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected two N x {NUM_CLASSES} arrays; got {reference.shape} and {candidate.shape}")
    if not len(reference):
        raise ValueError("parity needs at least one face")
    return Parity(
        max_abs_diff=float(np.abs(reference - candidate).max()),
        class_mismatch=float(np.mean(reference.argmax(axis=1) != candidate.argmax(axis=1))),
        faces=len(reference),
    )


def as_faces(images: np.ndarray) -> np.ndarray:
    """float32 N x 48 x 48 x 1 from uint8 N x 48 x 48 split images (or faces already shaped so)."""
    faces = np.asarray(images, np.float32)
    if faces.ndim == 3:
        faces = faces[..., np.newaxis]
    if faces.shape[1:] != FACE_SHAPE:
        raise ValueError(f"expected faces N x 48 x 48 (x 1); got shape {np.shape(images)}")
    return faces


def first_line(err: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__
