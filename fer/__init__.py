"""fer: MLflow-tracked Keras models for facial expression recognition."""

from fer.data.splits import EMOTIONS, NUM_CLASSES

__all__ = ["EMOTIONS", "NUM_CLASSES"]
__version__ = "0.1.0"
