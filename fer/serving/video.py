"""Emotions over video, the pure part: faces tracked across frames, probabilities smoothed over time.

`fer predict VIDEO` (`fer.serving.predict.predict_video`) reads the frames with OpenCV,
finds and classifies the faces in each processed frame, and hands the boxes
and probabilities to a `FaceTracker`, which

- matches each face to a track from earlier frames by box overlap
  (intersection over union, `match_boxes`: greedy, highest overlap first);
- starts a new track, with a new id, for a face that matches none;
- drops a track that has gone unmatched for more than `max_missed`
  processed frames in a row;
- smooths each track's probabilities with an exponential moving average whose
  weight depends on the time since the track was last seen (`ema_weight`), so
  that the smoothing means the same at any frame rate and any `--every` stride:
  after `half_life` seconds an observation counts half as much as a new one.

Nothing here reads files or imports OpenCV or TensorFlow; the CSV layout
(`CSV_COLUMNS`, `csv_rows`) and the progress line (`progress_text`) are here
too, so that all of it is tested on hand-made boxes.

>>> tracker = FaceTracker(half_life=1.0)
>>> first = tracker.update(0.0, [(10, 10, 50, 50)], np.array([[1.0, 0, 0, 0, 0, 0, 0, 0]]))
>>> later = tracker.update(1.0, [(12, 11, 50, 50)], np.array([[0.0, 1, 0, 0, 0, 0, 0, 0]]))
>>> later[0].track_id == first[0].track_id, later[0].probabilities[:2].tolist()
(True, [0.5, 0.5])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fer.data.splits import EMOTIONS, NUM_CLASSES

Box = tuple[int, int, int, int]  # x, y, width, height in frame pixels (as fer.serving.faces returns them)

DEFAULT_HALF_LIFE = 0.5  # seconds: expressions change over about a second; one flickering frame should not
DEFAULT_MAX_MISSED = 10  # processed frames: the Haar cascade misses a face now and then, then finds it again
DEFAULT_MIN_IOU = 0.3  # a face moves less than this between frames at any usual frame rate and stride


# ---------------------------------------------------------------------------
# Overlap and matching


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes: 1.0 for the same box, 0.0 for disjoint ones.

    >>> iou((0, 0, 10, 10), (5, 0, 10, 10))
    0.3333333333333333
    >>> iou((0, 0, 10, 10), (20, 20, 5, 5))
    0.0
    """
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def match_boxes(previous: Sequence[Box], current: Sequence[Box], min_iou: float) -> list[tuple[int, int]]:
    """Pairs (index in `previous`, index in `current`) of boxes that are the same face, greedily.

    Every pair overlapping by at least `min_iou` is a candidate; the best
    overlapping pair is taken first, then the best among the boxes still free,
    and so on. Each box is in at most one pair. Ties go to the lower indices,
    so the result does not depend on anything but the boxes.

    >>> match_boxes([(0, 0, 10, 10), (50, 0, 10, 10)], [(52, 0, 10, 10), (100, 0, 9, 9)], 0.3)
    [(1, 0)]
    """
    candidates = [
        (overlap, i, j)
        for i, old in enumerate(previous)
        for j, new in enumerate(current)
        if (overlap := iou(old, new)) >= min_iou
    ]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    taken_old, taken_new, pairs = set(), set(), []
    for _, i, j in candidates:
        if i not in taken_old and j not in taken_new:
            taken_old.add(i)
            taken_new.add(j)
            pairs.append((i, j))
    return sorted(pairs)


# ---------------------------------------------------------------------------
# Smoothing


def ema_weight(elapsed: float, half_life: float) -> float:
    """The weight of a new observation `elapsed` seconds after the last: 1 - 0.5 ** (elapsed / half_life).

    `half_life` 0 switches smoothing off (weight 1). A track seen again after
    a gap of several half-lives takes almost only the new value: its old
    estimate is stale.

    >>> ema_weight(1.0, 1.0), ema_weight(2.0, 1.0), ema_weight(0.04, 0.0)
    (0.5, 0.75, 1.0)
    """
    if half_life <= 0:
        return 1.0
    return 1.0 - 0.5 ** (max(elapsed, 0.0) / half_life)


# ---------------------------------------------------------------------------
# Tracks


@dataclass
class Track:
    """One face followed across frames: its last box, smoothed probabilities, and how long it has been unseen."""

    track_id: int
    box: Box
    probabilities: np.ndarray  # smoothed, NUM_CLASSES
    last_seen: float  # seconds
    missed: int = 0  # processed frames in a row without a match


@dataclass(frozen=True)
class TrackedFace:
    """A face in one frame: its track id, its box in this frame, and the track's smoothed probabilities."""

    track_id: int
    box: Box
    probabilities: np.ndarray

    @property
    def emotion(self) -> str:
        """The most probable emotion after smoothing."""
        return EMOTIONS[int(np.argmax(self.probabilities))]


class FaceTracker:
    """Follows faces across processed frames and smooths each one's emotion probabilities.

    Args:
        half_life: seconds after which an observation weighs half as much as a
            new one (`ema_weight`); 0 reports each frame's own probabilities.
        max_missed: a track unmatched in more than this many processed frames
            in a row is dropped, and a face that comes back later gets a new id.
        min_iou: the least box overlap (intersection over union) for a face to
            continue a track.

    Call `update` once per processed frame, in time order, with every face
    found in it (none is fine). Track ids start at 1 and are never reused.

    >>> tracker = FaceTracker(half_life=0.0, max_missed=0)
    >>> p = np.full((1, 8), 1 / 8)
    >>> [f.track_id for f in tracker.update(0.0, [(0, 0, 20, 20)], p)]
    [1]
    >>> tracker.update(0.1, [], p[:0])  # the face is missed once: with max_missed=0 its track ends
    []
    >>> [f.track_id for f in tracker.update(0.2, [(1, 0, 20, 20)], p)]
    [2]
    """

    def __init__(
        self, half_life: float = DEFAULT_HALF_LIFE, max_missed: int = DEFAULT_MAX_MISSED,
        min_iou: float = DEFAULT_MIN_IOU,
    ):
        if not (isinstance(half_life, (int, float)) and math.isfinite(half_life) and half_life >= 0):
            raise ValueError(f"half_life must be a number of seconds >= 0 (0: no smoothing), got {half_life!r}")
        if isinstance(max_missed, bool) or not isinstance(max_missed, int) or max_missed < 0:
            raise ValueError(f"max_missed must be a whole number of frames >= 0, got {max_missed!r}")
        if not (isinstance(min_iou, (int, float)) and 0 < min_iou <= 1):
            raise ValueError(f"min_iou must be an overlap in (0, 1], got {min_iou!r}")
        self.half_life = float(half_life)
        self.max_missed = max_missed
        self.min_iou = float(min_iou)
        self.tracks: list[Track] = []
        self._next_id = 1
        self._last_time: float | None = None

    @property
    def started(self) -> int:
        """How many tracks have been started so far (the highest id given)."""
        return self._next_id - 1

    def update(self, time: float, boxes: Sequence[Box], probabilities: np.ndarray) -> list[TrackedFace]:
        """The faces of the frame at `time` seconds, in the order of `boxes`, with track ids and smoothed probabilities.

        `probabilities` is len(boxes) x 8, row i for boxes[i]. Times must not
        go backwards: smoothing depends on the time between frames.
        """
        probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1, NUM_CLASSES)
        if len(probabilities) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(probabilities)} rows of probabilities")
        if self._last_time is not None and time < self._last_time:
            raise ValueError(f"frame time {time} s is before the previous frame's {self._last_time} s")
        self._last_time = time
        boxes = [tuple(int(v) for v in box) for box in boxes]
        earlier = self.tracks
        track_of = {j: i for i, j in match_boxes([t.box for t in earlier], boxes, self.min_iou)}
        faces, started = [], []
        for j, (box, observed) in enumerate(zip(boxes, probabilities)):
            if j in track_of:
                track = earlier[track_of[j]]
                weight = ema_weight(time - track.last_seen, self.half_life)
                track.probabilities = weight * observed + (1.0 - weight) * track.probabilities
                track.box, track.last_seen, track.missed = box, time, 0
            else:
                track = Track(self._next_id, box, observed.copy(), time)
                self._next_id += 1
                started.append(track)
            faces.append(TrackedFace(track.track_id, box, track.probabilities.copy()))
        continued = set(track_of.values())
        for i, track in enumerate(earlier):
            if i not in continued:
                track.missed += 1
        self.tracks = [t for t in earlier if t.missed <= self.max_missed] + started
        return faces


# ---------------------------------------------------------------------------
# The CSV and the progress line

CSV_COLUMNS = (
    "time_s", "frame", "face_id", "x", "y", "w", "h", "emotion",
    # Named so, because they are the track's moving average, not this frame's own network output.
    *(f"smoothed_{name}" for name in EMOTIONS),
)


def csv_rows(time: float, frame: int, faces: Sequence[TrackedFace]) -> list[list]:
    """The CSV rows (`CSV_COLUMNS`) of one processed frame: one per face, or one with blanks when there is none.

    A frame without a face still gets its row, so that "no face" can be told
    from "frame not processed" (`--every`).

    >>> csv_rows(0.5, 12, [])
    [[0.5, 12, '', '', '', '', '', '', '', '', '', '', '', '', '', '']]
    >>> face = TrackedFace(3, (1, 2, 30, 30), np.eye(8)[1])
    >>> csv_rows(0.5, 12, [face])[0][:10]
    [0.5, 12, 3, 1, 2, 30, 30, 'happiness', '0.000000', '1.000000']
    """
    if not faces:
        return [[round(time, 6), frame, *[""] * (len(CSV_COLUMNS) - 2)]]
    return [
        [round(time, 6), frame, face.track_id, *face.box, face.emotion, *(f"{p:.6f}" for p in face.probabilities)]
        for face in faces
    ]


def progress_text(name: str, done: int, total: int | None, elapsed: float) -> str:
    """`name: done/total frames (percent), rate frames/s, about N s left`; the total is left out when unknown.

    >>> progress_text("talk.mp4", 150, 600, 10.0)
    'talk.mp4: 150/600 frames (25%), 15.0 frames/s, about 30 s left'
    >>> progress_text("talk.webm", 150, None, 10.0)
    'talk.webm: 150 frames, 15.0 frames/s'
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    if not total or done > total:  # a container's count can be an estimate
        return f"{name}: {done} frames, {rate:.1f} frames/s"
    text = f"{name}: {done}/{total} frames ({100 * done // total}%), {rate:.1f} frames/s"
    if rate > 0 and done < total:
        text += f", about {math.ceil((total - done) / rate)} s left"
    return text
