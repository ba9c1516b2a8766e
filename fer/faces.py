"""Faces from photos: decode image bytes, base64 or files to grayscale, find faces, crop them to 48x48.

Used by the photo-capable served model (`fer.serving.FaceEmotionModel`) and by
`fer predict`. Everything a request can send passes through here first, so the
limits live here too:

- MAX_IMAGE_BYTES: an encoded image (file, bytes or decoded base64) larger
  than this is refused before it is decoded;
- MAX_IMAGE_PIXELS: an image whose header announces more pixels than this is
  refused before its pixels are decoded (a small file can unpack to gigabytes:
  a "decompression bomb").

Faces are found with OpenCV's frontal-face Haar cascade, on a copy shrunk to
DETECT_MAX_SIDE so a large photo costs no more than a small one; boxes come
back in the photo's own pixels. An image of at most SMALL_IMAGE pixels a side
in which no face is found is taken to be a face already cropped, and its box
is the whole image.

The Haar cascade needs OpenCV 4: OpenCV 5 moved `CascadeClassifier` to
opencv-contrib and its wheels ship no cascade files (opencv/opencv#25198,
opencv/opencv-python#1244). Under OpenCV 5 `detect_faces` raises
`FaceDetectorUnavailable`; crops, small images and 48x48 arrays still work.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer.data.splits import IMAGE_SIZE

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # e.g. 8000 x 5000; phone photos are 12-50 MP
SMALL_IMAGE = 64
DETECT_MAX_SIDE = 1024
CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Standard base64 (RFC 4648 section 4, what base64.b64encode writes), whitespace allowed.
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")
# The smallest real image files are some tens of bytes; a path is rarely this
# long with no '.', '_', '-' or space in it.
MIN_BASE64_CHARS = 64

Box = tuple[int, int, int, int]  # x, y, width, height in image pixels


class ImageError(ValueError):
    """An input that is not a usable image: the message says which and what to send instead."""


class FaceDetectorUnavailable(RuntimeError):
    """This OpenCV cannot run the Haar cascade (see the module docstring)."""


# ---------------------------------------------------------------------------
# Decoding


def is_base64_text(text: str) -> bool:
    """True when `text` is to be read as base64 rather than as a file path.

    That is: a `data:` URI, or at least MIN_BASE64_CHARS characters all from the
    standard base64 alphabet (whitespace ignored). Any other string is a path.
    """
    text = text.strip()
    if text.startswith("data:"):
        return True
    return len(text) >= MIN_BASE64_CHARS and _BASE64_TEXT.fullmatch(text) is not None


def decode_base64(text: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes `text` encodes (standard base64, or a `data:...;base64,` URI), checked for size first."""
    text = text.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ImageError("a data: URI must be 'data:<type>;base64,<base64 of the image file>'")
    text = "".join(text.split())
    if len(text) // 4 * 3 > max_bytes:  # refuse before allocating the decoded copy
        raise ImageError(f"the base64 image encodes about {len(text) // 4 * 3:,} bytes; the limit is {max_bytes:,}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(
            f"invalid base64 ({err}): send the image file's bytes encoded with standard base64 "
            "(base64.b64encode), not URL-safe base64, and not truncated"
        ) from None


def read_image_file(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of the file at `path`, refusing anything but a regular file of at most `max_bytes`."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageError(f"{path} is not a file (missing, a folder, or not readable): give the path of a photo")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{path} is {size:,} bytes; the limit for one image is {max_bytes:,}")
        return path.read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read {path}: {err.strerror or err}") from None


def open_image(data: bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The image encoded in `data`, upright (EXIF orientation applied) and fully decoded.

    Only the header is read before the size check, so an oversized image is
    refused without decoding its pixels.
    """
    if len(data) > max_bytes:
        raise ImageError(f"the image is {len(data):,} bytes; the limit is {max_bytes:,}")
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"not an image file ({len(data):,} bytes starting {data[:8]!r}): send a JPEG, PNG, BMP, GIF, "
            "TIFF or WebP file's bytes"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"not a readable image: {err}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"the image is {width} x {height} pixels; the limit is {max_pixels:,} pixels: shrink it first")
    try:
        image.load()
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # truncated or corrupt
        raise ImageError(f"the {image.format or ''} image cannot be decoded: {err}") from None


def to_gray(image: Image.Image) -> np.ndarray:
    """uint8 H x W grayscale pixels of a PIL image."""
    return np.asarray(image.convert("L"), dtype=np.uint8)


def decode_image(data: bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Grayscale uint8 H x W pixels of the image file in `data` (see `open_image` for the checks)."""
    return to_gray(open_image(data, max_bytes, max_pixels))


def image_bytes(value, allow_paths: bool) -> bytes:
    """The encoded image a request gave: raw bytes, base64 text, or (when allowed) a file path."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        # None, NaN and pd.NA are how DataFrames spell an empty cell.
        empty = value is None or isinstance(value, float) or type(value).__name__ == "NAType"
        raise ImageError(
            "expected image bytes, a base64 string or a file path, got "
            + ("an empty cell" if empty else type(value).__name__)
        )
    if is_base64_text(value):
        return decode_base64(value)
    if not allow_paths:
        raise ImageError(
            f"{_preview(value)} is not base64 (base64 text is at least {MIN_BASE64_CHARS} characters of "
            "A-Z a-z 0-9 + / =) and reading file paths is switched off here; send the image as "
            "base64 of its file bytes (the server operator can allow paths with FER_ALLOW_PATHS=1)"
        )
    return read_image_file(value)


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


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


def detect_faces(gray: np.ndarray, min_size: int = 24) -> list[Box]:
    """Frontal faces in a uint8 grayscale image, as (x, y, w, h) in its pixels, largest first.

    Raises FaceDetectorUnavailable when OpenCV cannot run the cascade.
    """
    import cv2

    classifier = _cascade()
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    with _cascade_lock:
        found = classifier.detectMultiScale(
            small, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size)
        )
    boxes = [tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)]
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
    """The faces in `boxes`, each cut from `gray` and resized to uint8 48x48: N x 48 x 48.

    Boxes are clipped to the image; one that falls wholly outside is an error.
    """
    import cv2

    crops = np.empty((len(boxes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    height, width = gray.shape
    for i, (x, y, w, h) in enumerate(boxes):
        x0, y0 = max(int(x), 0), max(int(y), 0)
        x1, y1 = min(int(x + w), width), min(int(y + h), height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {(x, y, w, h)} lies outside the {width} x {height} image")
        face = gray[y0:y1, x0:x1]
        # Area averaging when shrinking avoids aliasing; it is no good for enlarging.
        shrink = min(face.shape) >= IMAGE_SIZE
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        crops[i] = cv2.resize(face, (IMAGE_SIZE, IMAGE_SIZE), interpolation=interpolation)
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
