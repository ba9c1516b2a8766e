"""Faces in photos: find them, cut them out at 48x48, draw them.

Used by the photo-capable served model (`fer.serving.photo_service.FaceEmotionModel`)
and by `fer predict`, on photos decoded by `fer.data.images.decode_photo`.

Faces are found with OpenCV's frontal-face Haar cascade, on a copy shrunk to
DETECT_MAX_SIDE a side, whatever the image's shape (a 3000x1 strip included);
boxes come back in the image's own pixels. An image of at most SMALL_IMAGE
pixels a side in which no face is found is taken to be a face already cropped,
and its box is the whole image. Crops are resized by `fer.data.images.face_from_gray`,
the very function training data goes through.

The Haar cascade needs OpenCV 4: OpenCV 5 moved `CascadeClassifier` to
opencv-contrib and its wheels ship no cascade files (opencv/opencv#25198,
opencv/opencv-python#1244). Under OpenCV 5 `detect_faces` raises
`FaceDetectorUnavailable`; crops, small images and 48x48 arrays still work.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from fer.data.splits import IMAGE_SIZE
from fer.data.images import face_from_gray

SMALL_IMAGE = 64
# The cascade's cost grows with the pixels it scans: 640 px a side (VGA, what the
# cascade was made for) costs about 0.4x of 1024 (benchmarks/serving_load.py
# --detection), and a face a tenth of the photo's side still measures 64 px there.
DETECT_MAX_SIDE = 640
MIN_FACE = 24  # pixels a side, in the image the cascade scans
CASCADE_FILE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]  # x, y, width, height in image pixels


class FaceDetectorUnavailable(RuntimeError):
    """This OpenCV cannot run the Haar cascade (see the module docstring)."""


# ---------------------------------------------------------------------------
# Detection and cropping


@functools.lru_cache(maxsize=1)
def _cascade():
    import cv2

    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise FaceDetectorUnavailable(
            f"OpenCV {cv2.__version__} has no Haar cascade face detector (OpenCV 5 moved it to "
            "opencv-contrib and ships no cascade files): install opencv-python-headless<5, e.g. "
            "pip install 'opencv-python-headless>=4.9,<5'. Faces already cropped (images of at most "
            f"{SMALL_IMAGE} px a side, or 48x48 arrays) still work."
        )
    path = Path(cv2.data.haarcascades) / CASCADE_FILE
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise FaceDetectorUnavailable(
            f"OpenCV {cv2.__version__} could not load {path}: reinstall opencv-python-headless (>=4.9,<5)"
        )
    return classifier


# Calls into one CascadeClassifier from several threads (the scoring server
# predicts in worker threads) are not safe; detection is short, so serialize it.
_cascade_lock = threading.Lock()


def face_detector_available() -> bool:
    """Whether `detect_faces` can run with the installed OpenCV."""
    try:
        _cascade()
    except FaceDetectorUnavailable:
        return False
    return True


def detect_faces(gray: np.ndarray, min_size: int = MIN_FACE) -> list[Box]:
    """Frontal faces in a uint8 grayscale H x W image, as (x, y, w, h) in its pixels, largest first.

    Any shape works: the cascade scans a copy of at most DETECT_MAX_SIDE a
    side, and an image (or copy) narrower than `min_size` has no face to find.
    Raises FaceDetectorUnavailable when OpenCV cannot run the cascade.
    """
    import cv2

    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"detect_faces needs a uint8 H x W grayscale image, got {gray.dtype} of shape {gray.shape}")
    classifier = _cascade()
    height, width = gray.shape
    scale = min(1.0, DETECT_MAX_SIDE / max(height, width, 1))
    # Rounded and at least 1: a 3000x1 strip would otherwise ask OpenCV for a 0-pixel side.
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(size) < min_size:
        return []
    small = gray if size == (width, height) else cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    scale_x, scale_y = width / size[0], height / size[1]
    with _cascade_lock:
        found = classifier.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
    boxes = [
        (round(x * scale_x), round(y * scale_y), round(w * scale_x), round(h * scale_y))
        for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist()
    ]
    return _drop_nested(sorted(boxes, key=lambda b: b[2] * b[3], reverse=True))


def _drop_nested(boxes: list[Box]) -> list[Box]:
    """Drop boxes mostly inside a larger one: the cascade sometimes fires again on part of a face."""
    kept: list[Box] = []
    for box in boxes:  # largest first
        if all(_overlap_area(box, big) < 0.5 * box[2] * box[3] for big in kept):
            kept.append(box)
    return kept


def _overlap_area(a: Box, b: Box) -> int:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0)


def find_faces(gray: np.ndarray) -> list[Box]:
    """`detect_faces`, except that a small image (<= SMALL_IMAGE a side) with no face found is one face.

    A small image is usually a face someone already cropped, too small for the
    cascade to be sure of; the detector is not even needed for it.
    """
    height, width = gray.shape
    small = max(height, width) <= SMALL_IMAGE
    try:
        boxes = detect_faces(gray)
    except FaceDetectorUnavailable:
        if not small:
            raise
        boxes = []
    if not boxes and small:
        return [(0, 0, width, height)]
    return boxes


def crop_faces(gray: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """The faces in `boxes` (x, y, w, h), each cut from `gray` and resized to uint8 48x48: N x 48 x 48.

    Boxes are clipped to the image; one that falls wholly outside is a
    ValueError. Resizing is `fer.data.images.face_from_gray`, as for training data.
    """
    crops = np.empty((len(boxes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    height, width = gray.shape
    for i, (x, y, w, h) in enumerate(boxes):
        x0, y0 = max(int(x), 0), max(int(y), 0)
        x1, y1 = min(int(x + w), width), min(int(y + h), height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {(x, y, w, h)} lies outside the {width} x {height} image")
        crops[i] = face_from_gray(gray, (x0, y0, x1, y1))
    return crops


def draw_faces(image: Image.Image, faces: list[tuple[Box, str]]) -> Image.Image:
    """A colour copy of `image` with each (box, label) drawn: a rectangle, the label above it."""
    from PIL import ImageDraw, ImageFont

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    # Lines and text grow with the photo, so labels stay legible on large ones.
    line = max(2, round(max(out.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 40)))
    for (x, y, w, h), label in faces:
        draw.rectangle((x, y, x + w - 1, y + h - 1), outline=(255, 64, 64), width=line)
        left, top, right, bottom = draw.textbbox((x, y), label, font=font)
        height = bottom - top
        text_y = y - height - 2 * line if y - height - 2 * line >= 0 else y + h  # below the box at the top edge
        draw.rectangle((x, text_y, x + (right - left) + 2 * line, text_y + height + 2 * line), fill=(255, 64, 64))
        draw.text((x + line, text_y + line - (top - y)), label, fill=(255, 255, 255), font=font)
    return out
