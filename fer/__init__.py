"""fer: MLflow-tracked Keras models for facial expression recognition."""

from fer.console import quiet_native_logging

# First, before any import of TensorFlow (see fer.console): every entry into fer passes here.
quiet_native_logging()

from fer import _moved  # noqa: E402
from fer.data.splits import EMOTIONS, NUM_CLASSES  # noqa: E402

_moved.install()  # the flat layout's module names still import (see fer._moved)

__all__ = ["EMOTIONS", "NUM_CLASSES"]
__version__ = "0.1.0"
