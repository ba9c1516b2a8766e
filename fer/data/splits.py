"""The one shape every data source returns: train / val / test splits of 48x48 faces."""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

# FER+ order. Every source maps its labels onto these indices, so index 3 is
# "sadness" whatever the data came from, and every model has 8 outputs.
EMOTIONS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
NUM_CLASSES = len(EMOTIONS)
IMAGE_SIZE = 48


class LabelMode(str, enum.Enum):
    """How vote counts become a training target.

    MAJORITY: the emotion with most votes (images whose top vote is "unknown"
    or "not a face" are dropped). PROBABILITY: the vote distribution over the
    8 emotions, as a soft target (Barsoum et al. 2016, "PLD").
    Sources with a single hard label per image give one-hot targets in both modes.
    """

    MAJORITY = "majority"
    PROBABILITY = "probability"

    @classmethod
    def parse(cls, value: str | LabelMode) -> LabelMode:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"label_mode must be one of {allowed}; got {value!r}") from None


class DataError(ValueError):
    """Bad or missing input data. The message names the file (and row) and what to do."""


@dataclasses.dataclass(frozen=True)
class BadItem:
    """One image or row that could not be used, and why."""

    location: str  # "path/to/file.png" or "fer2013.csv, line 12"
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Split:
    """Faces of one split.

    images: uint8, N x 48 x 48 (grayscale).
    labels: int64, N, an index into EMOTIONS (the majority / hard label).
    targets: float32, N x 8, the target distribution (one-hot or vote share).
    """

    images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray

    def __post_init__(self):
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be uint8 Nx48x48, got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (n,) or self.targets.shape != (n, NUM_CLASSES):
            raise ValueError(
                f"labels must be ({n},) and targets ({n}, {NUM_CLASSES}); "
                f"got {self.labels.shape} and {self.targets.shape}"
            )

    def __len__(self) -> int:
        return len(self.images)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.images[indices], self.labels[indices], self.targets[indices])

    @classmethod
    def from_labels(cls, images: np.ndarray, labels: np.ndarray) -> Split:
        """A split with hard labels: the target is the one-hot of the label."""
        labels = np.asarray(labels, dtype=np.int64)
        targets = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
        return cls(np.asarray(images, dtype=np.uint8), labels, targets)

    @classmethod
    def empty(cls) -> Split:
        return cls.from_labels(np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros(0, np.int64))


@dataclasses.dataclass(frozen=True)
class Splits:
    """What `fer.data.load` returns, whatever the source.

    test is None when the source has no test split (evaluation then uses val).
    dropped counts images left out by the label rule, per split (e.g. FER+
    images whose top vote is "unknown"); bad lists the unreadable items that
    `skip_bad=True` skipped.
    """

    train: Split
    val: Split
    test: Split | None
    source: str
    label_mode: LabelMode
    location: str
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    bad: tuple[BadItem, ...] = ()
    class_names: tuple[str, ...] = EMOTIONS

    @classmethod
    def from_named(cls, splits: dict[str, Split], **details) -> "Splits":
        """The Splits of a {"train", "val"[, "test"]} mapping, as every loader builds one.

        `details` are the other fields (source, label_mode, location, dropped, bad).

        Example:
        >>> one = Split(np.zeros((1, 48, 48, 1), np.uint8), np.zeros(1, np.int64), np.ones((1, 8), np.float32))
        >>> Splits.from_named({"train": one, "val": one}, source="s", label_mode=LabelMode.MAJORITY,
        ...                   location="here").test is None
        True
        """
        return cls(train=splits["train"], val=splits["val"], test=splits.get("test"), **details)

    def items(self):
        """(name, split) for each split that exists, in train, val, test order."""
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            if split is not None:
                yield name, split

    @property
    def eval_split_name(self) -> str:
        """The split a finished model is evaluated on: test, or val where there is none."""
        return "test" if self.test is not None and len(self.test) else "val"
