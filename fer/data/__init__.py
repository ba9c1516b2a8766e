"""Data sources: FER+, fer2013.csv, class-per-folder trees and the embedded synthetic default.

Every source returns the same `Splits` (see `fer.data.splits`); `load` picks the
source from what the path holds.
"""

from fer.data.loading import describe_source, load
from fer.data.splits import (
    EMOTIONS,
    IMAGE_SIZE,
    NUM_CLASSES,
    BadItem,
    DataError,
    LabelMode,
    Split,
    Splits,
)

__all__ = [
    "EMOTIONS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "BadItem",
    "DataError",
    "LabelMode",
    "Split",
    "Splits",
    "describe_source",
    "load",
]
