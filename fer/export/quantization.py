"""int8 copies of exported network files, checked by the caller like the float ones.

- ONNX: ONNX Runtime's static quantization (QDQ, activation ranges calibrated on
  training faces) or its dynamic one (`quantize`);
- LiteRT: the converter's full-integer or dynamic-range quantization, made
  while it converts the Keras network;
- `calibration_sample`: the training faces static quantization calibrates on.

Example:
    quantize("model.onnx", "model.int8.onnx", "int8", calibration_sample(splits.train.images, 500, seed=0))
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from fer.export.formats import SUFFIXES, ExportError, as_faces, float32_copy, require_converter
from fer.serving.engines import OnnxRuntimeNetwork
from fer.utils.atomic import atomic_output

# int8: weights and activations in int8, activation ranges calibrated on training faces (static);
# int8-dynamic: int8 weights, activation ranges measured on each input as it runs.
QUANTIZATIONS = ("int8", "int8-dynamic")
DEFAULT_CALIBRATION_FACES = 500


class _FaceBatches:
    """Calibration input for ONNX Runtime's static quantization: the faces in batches (a CalibrationDataReader)."""

    def __init__(self, input_name: str, faces: np.ndarray, batch: int = 32):
        self.batches = iter([{input_name: faces[i : i + batch]} for i in range(0, len(faces), batch)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def quantize(source: str | Path, destination: str | Path, method: str = "int8",
             calibration_faces: np.ndarray | None = None, network=None) -> Path:
    """An int8 copy of the exported file `source` at `destination`; the destination.

    ONNX (`source` a .onnx file): "int8" is ONNX Runtime's static quantization
    in QDQ form (uint8 activations, int8 per-channel weights, the activation
    ranges calibrated on `calibration_faces`, raw training faces N x 48 x 48 x 1),
    after its pre-processing (shape inference, graph optimization);
    "int8-dynamic" quantizes the weights only and measures activation ranges at
    run time (no calibration).

    LiteRT (a .tflite `source`): the converter quantizes while it converts, so
    give the Keras `network` too; "int8" is full-integer quantization calibrated
    on `calibration_faces` (float input and output kept), "int8-dynamic" its
    dynamic-range quantization.

    Example:
        quantize("model.onnx", "model.int8.onnx", "int8", training_faces[:500])
    """
    source, destination = Path(source), Path(destination)
    if method not in QUANTIZATIONS:
        raise ExportError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {method!r}")
    if method == "int8" and (calibration_faces is None or not len(calibration_faces)):
        raise ExportError("static int8 quantization needs calibration faces (a sample of the training split)")
    calibration = None if calibration_faces is None else as_faces(calibration_faces)
    if source.suffix == SUFFIXES["litert"]:
        if network is None:
            raise ExportError("LiteRT quantizes while converting: give the Keras network")
        return _quantize_litert(network, destination, method, calibration)
    require_converter("onnx")
    with atomic_output(destination, f"the {method} copy") as temporary:  # whole, or the old file stays
        _quantize_onnx(source, temporary, method, calibration)
    return destination


def _quantize_onnx(source: Path, destination: Path, method: str, calibration: np.ndarray | None) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX Runtime's pre-processing (shape inference, graph optimization) before either method. Symbolic
        # shape inference is for transformers and needs sympy; a CNN's shapes are static.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        if method == "int8-dynamic":
            # uint8 weights: ONNX Runtime's CPU ConvInteger has no int8-weight kernel.
            quantize_dynamic(str(prepared), str(destination), weight_type=QuantType.QUInt8)
            return destination
        input_name = OnnxRuntimeNetwork(prepared).input_name
        quantize_static(
            str(prepared),
            str(destination),
            _FaceBatches(input_name, calibration),
            quant_format=QuantFormat.QDQ,  # what ONNX Runtime's CPU kernels are optimized for
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=_from_softmax_on(prepared),
        )
    return destination


def _from_softmax_on(path: Path) -> list[str]:
    """The names of the graph's Softmax nodes and of every node downstream of them (unnamed nodes named).

    They stay float in a static int8 copy: a uint8 softmax output moves in steps of
    1/255, and its rows stopped summing to 1 (0.988 on FER+), which a served model's
    probabilities must; the flip average, logit adjustment and temperature after it
    are a few element-wise operations on 8 numbers, not worth quantizing.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    unnamed = [(index, node) for index, node in enumerate(graph.node) if not node.name]
    for index, node in unnamed:  # the quantizer excludes nodes by name: give every node one, in the file too
        node.name = f"{node.op_type}_{index}"
    if unnamed:
        onnx.save(model, str(path))
    excluded, tainted = [], set()
    for node in graph.node:  # topologically sorted, as ONNX requires
        if node.op_type == "Softmax" or tainted.intersection(node.input):
            excluded.append(node.name)
            tainted.update(node.output)
    return excluded


def _quantize_litert(network, destination: Path, method: str, calibration: np.ndarray | None) -> Path:
    import tensorflow as tf

    if destination.suffix != SUFFIXES["litert"]:
        raise ExportError(f"a litert file must end in .tflite; got {destination}")
    options = {"optimizations": [tf.lite.Optimize.DEFAULT]}
    if method == "int8":
        options["representative_dataset"] = lambda: ([face[np.newaxis]] for face in calibration)
    with atomic_output(destination, f"the {method} copy") as temporary:
        float32_copy(network).export(str(temporary), format="litert", verbose=False, **options)
    return destination


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` training faces drawn without replacement (all of them when there are fewer)."""
    if count < 1:
        raise ExportError(f"calibration needs at least one face; got {count}")
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]
    return as_faces(images[np.sort(chosen)])
