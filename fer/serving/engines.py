"""The engines a logged model runs on: a Keras network, ONNX Runtime or LiteRT, all used through `forward`.

Every engine takes raw faces (float32 N x 48 x 48 x 1, pixel values 0-255)
and gives N x 8 emotion probabilities from `predict_on_batch`; `forward`
feeds it in chunks. `fer.export.formats` writes the files the last two run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fer.data.splits import IMAGE_SIZE, NUM_CLASSES

FACE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


class EngineMissing(RuntimeError):
    """The runtime an exported file needs is not installed; the message says what to install."""


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


class OnnxRuntimeNetwork:
    """An ONNX file run by ONNX Runtime on the CPU; use it with `fer.serving.pyfunc.forward` like a Keras network.

    Example:
        probabilities = forward(OnnxRuntimeNetwork("model.onnx"), faces)  # N x 8, float32
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as err:
            raise EngineMissing(f"running an ONNX file needs onnxruntime ({err}): pip install onnxruntime") from err

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def predict_on_batch(self, faces: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.asarray(faces, np.float32)})[0]


class LiteRTNetwork:
    """A `.tflite` file run by TensorFlow's LiteRT interpreter; use it with `fer.serving.pyfunc.forward`."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import tensorflow as tf

        with warnings.catch_warnings():  # tf.lite.Interpreter says it moves to ai_edge_litert; it still runs
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = None

    def predict_on_batch(self, faces: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces, np.float32)
        if self.batch != len(faces):  # the file allows any batch; the interpreter sizes its tensors for one
            self.interpreter.resize_tensor_input(self.input, faces.shape)
            self.interpreter.allocate_tensors()
            self.batch = len(faces)
        self.interpreter.set_tensor(self.input, faces)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()
