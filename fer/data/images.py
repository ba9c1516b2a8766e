"""The one image decoder: encoded image bytes -> 8-bit grayscale -> 48x48 faces.

Every data source (FER+ folders, class folders) and the served photo model
read images through here, so a face is the same array for training and for
serving whatever its format:

- `decode_face` / `read_face` (training): bytes or a file -> uint8 48x48, an
  optional face box cut out first;
- `decode_photo` (serving): bytes -> an upright `Photo`, grayscale, shrunk to
  at most WORK_MAX_SIDE a side for face finding; `face_from_gray` cuts and
  resizes its faces exactly as `decode_face` does;
- `open_image`: the upright PIL image itself (for drawing on it).

Grayscale is `to_gray8`: luma for colour, alpha and palette images; 16-bit and
32-bit images scaled to 8 bits (PIL's own "I;16" -> "L" clips at 255, so a
16-bit photo would come out white). Resizing is PIL's BILINEAR (`RESAMPLE`).

Limits for what a request may send (`decode_photo`, `open_image` by default):
MAX_IMAGE_BYTES encoded, MAX_IMAGE_PIXELS decoded, the latter checked from the
header before any pixel is decoded (a small file can unpack to gigabytes).

Every failure is an `ImageError` whose message says what is wrong and what to
send, never the image's bytes: a served model may be asked to read files on
its disk (FER_ALLOW_PATHS=1), and its error texts go back to the caller.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from fer.data.splits import IMAGE_SIZE

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000  # e.g. 8000 x 5000; phone photos are 12-50 MP

# A served photo is decoded to at most this many pixels a side (a JPEG at a
# reduced scale, straight from its DCT, so a 6000x6000 one costs about what a
# 1500x1500 one does). Twice fer.serving.faces.DETECT_MAX_SIDE: the smallest face the
# detector finds there (24 px) is then 48 px here, a crop that needs no enlarging.
WORK_MAX_SIDE = 1280

# Pillow's BILINEAR resize widens its kernel by the scale factor when it
# shrinks an image, so every source pixel contributes (area-like averaging, no
# aliasing, unlike OpenCV's INTER_LINEAR); when it enlarges a small face it
# interpolates smoothly, where BOX / AREA would give blocky pixels. One filter
# that is right in both directions.
RESAMPLE = Image.Resampling.BILINEAR

FORMATS_HINT = "send a JPEG, PNG, BMP, GIF, TIFF or WebP file"
MAX_QUOTED = 80  # characters of any input value or library message an error quotes

Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL's crop box)


class ImageError(ValueError):
    """An input that is not a usable image: the message says why and what to send instead."""


@dataclass(frozen=True)
class Photo:
    """A decoded photo: `gray` (uint8 H x W, upright, at most WORK_MAX_SIDE a side) and its real size.

    `size` is the photo's own (width, height) after EXIF rotation; `gray` may be
    smaller. `to_photo_pixels` maps a box in `gray` to the photo's pixels.
    """

    gray: np.ndarray
    size: tuple[int, int]

    def to_photo_pixels(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(x, y, w, h) in `gray` -> (x, y, w, h) in the photo's own pixels."""
        scale_x = self.size[0] / self.gray.shape[1]
        scale_y = self.size[1] / self.gray.shape[0]
        x, y, w, h = box
        return (round(x * scale_x), round(y * scale_y), round(w * scale_x), round(h * scale_y))


# ---------------------------------------------------------------------------
# Files


def read_image_file(path: str | Path, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of the file at `path`, refusing anything but a regular file of at most `max_bytes`.

    >>> read_image_file("/no/such.png")
    Traceback (most recent call last):
    fer.data.images.ImageError: '/no/such.png' is not a file (missing, a folder, or not readable): give the path of a photo
    """
    shown = _quote(str(path))
    path = Path(path)
    try:
        if not path.is_file():
            raise ImageError(f"{shown} is not a file (missing, a folder, or not readable): give the path of a photo")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{shown} is {size:,} bytes; the limit for one image is {max_bytes:,}")
        return path.read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read {shown}: {err.strerror or type(err).__name__}") from None


def read_face(path: Path, *, box: Box | None = None, exif: bool = False) -> np.ndarray:
    """The image file at `path` as a uint8 48x48 grayscale face (`decode_face`); ImageError if it cannot be.

    Messages leave the file name out: the data loaders put it in front.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError("the image file is missing") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file") from None
    except OSError as err:
        raise ImageError(f"cannot read the file ({err.strerror or err})") from err
    return decode_face(data, box=box, exif=exif)


# ---------------------------------------------------------------------------
# Decoding


def decode_face(data: bytes, *, box: Box | None = None, exif: bool = False) -> np.ndarray:
    """Encoded image bytes -> uint8 48x48 grayscale; ImageError if they are not a usable image.

    Any size and mode (see `to_gray8`), then resized to 48x48 with RESAMPLE.
    `box` (left, top, right, bottom) is cut out first, where it is not the
    whole image; `exif` applies the EXIF orientation (phone photos). No byte
    or pixel limit beyond PIL's decompression-bomb check: this reads the
    user's own training data.

    >>> decode_face(b"not an image")
    Traceback (most recent call last):
    fer.data.images.ImageError: not an image file (unknown format or corrupt header): send a JPEG, PNG, BMP, GIF, TIFF or WebP file
    """
    image = _open(data, max_bytes=None, max_pixels=None)
    full = (0, 0, *image.size)
    whole = box is None or tuple(box) == full
    if image.mode == "L" and image.size == (IMAGE_SIZE, IMAGE_SIZE) and whole and not exif:
        return _guarded(image, lambda: np.asarray(_load(image)))  # the FER+ case: 48x48 8-bit grayscale PNG
    if not whole:
        _check_box(box, image.size)
    elif image.format == "JPEG" and min(image.size) > 2 * IMAGE_SIZE and not exif:
        image.draft("L", (IMAGE_SIZE, IMAGE_SIZE))  # decode big JPEGs at a reduced scale: much faster
    gray = _gray(image, exif)
    return face_from_gray(np.asarray(gray), None if whole else box)


def decode_photo(
    data: bytes,
    *,
    max_side: int = WORK_MAX_SIDE,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Photo:
    """A photo's upright grayscale pixels, shrunk to at most `max_side` a side; ImageError if unusable.

    A JPEG larger than that is decoded at a reduced scale (1/2, 1/4 or 1/8,
    never below `max_side`), then any image still larger is resized with
    RESAMPLE; `Photo.size` keeps the photo's own size for reporting boxes.
    Pixels and modes are as `decode_face` reads them, so a face cut from a
    photo no larger than `max_side` is the array training would get.
    """
    image = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    width, height = image.size
    if image.format == "JPEG" and max(width, height) > max_side:
        image.draft("L", _fit((width, height), max_side))
    gray = _gray(image, exif=True)
    size = _upright_size(image, (width, height))
    if max(gray.size) > max_side:
        gray = gray.resize(_fit(gray.size, max_side), RESAMPLE)
    return Photo(np.asarray(gray, dtype=np.uint8), size)


def open_image(
    data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """The image encoded in `data`, fully decoded and upright (EXIF orientation applied), in its own mode."""
    image = _open(data, max_bytes=max_bytes, max_pixels=max_pixels)
    return _guarded(image, lambda: ImageOps.exif_transpose(_load(image)))


def face_from_gray(gray: np.ndarray, box: Box | None = None) -> np.ndarray:
    """uint8 48x48: `box` (left, top, right, bottom; default the whole image) cut from `gray`, resized.

    The one place a face is resized, for training (`decode_face`) and serving
    (`fer.serving.faces.crop_faces`) alike.
    """
    face = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), "L")
    if box is not None:
        _check_box(box, face.size)
        face = face.crop(tuple(box))
    if face.size != (IMAGE_SIZE, IMAGE_SIZE):
        face = face.resize((IMAGE_SIZE, IMAGE_SIZE), RESAMPLE)
    return np.asarray(face, dtype=np.uint8)


def to_gray8(image: Image.Image) -> Image.Image:
    """8-bit grayscale ("L") of a loaded PIL image of any mode.

    16-bit ("I;16*") images are scaled from 0-65535; 32-bit integer ("I") ones
    from 0-65535 when any value is above 255 (else taken as 8-bit values);
    float ("F") ones from 0-1 when no value is above 1 (else taken as 0-255).
    Everything else is PIL's luma conversion.
    """
    if image.mode == "L":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.rint(np.clip(values, 0, top) * (255.0 / top)).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), posinf=255.0, neginf=0.0)
        scale = 255.0 if values.max(initial=0) <= 1.0 else 1.0
        return Image.fromarray(np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8), "L")
    return image.convert("L")


# ---------------------------------------------------------------------------
# Helpers


def _open(data: bytes, *, max_bytes: int | None, max_pixels: int | None) -> Image.Image:
    """The image in `data`, header read and checked against the limits, pixels not yet decoded."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected the image file's bytes, got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageError(f"the image is {len(data):,} bytes; the limit is {max_bytes:,}")
    if not len(data):
        raise ImageError("the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        # Neither the size nor the first bytes: they may be a server-side file's contents.
        raise ImageError(f"not an image file (unknown format or corrupt header): {FORMATS_HINT}") from None
    except Exception as err:  # PIL raises many kinds on corrupt headers (see _guarded)
        raise _unreadable(None, err) from err
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"the image is {width} x {height} pixels; the limit is {max_pixels:,} pixels: shrink it first")
    return image


def _gray(image: Image.Image, exif: bool) -> Image.Image:
    """The opened image decoded, upright when `exif`, as 8-bit grayscale."""

    def decode():
        loaded = _load(image)
        return to_gray8(ImageOps.exif_transpose(loaded) if exif else loaded)

    return _guarded(image, decode)


def _load(image: Image.Image) -> Image.Image:
    image.load()
    return image


def _guarded(image: Image.Image, decode):
    """decode(), with whatever PIL raises on corrupt or truncated data turned into an ImageError.

    PIL raises OSError, SyntaxError, ValueError, EOFError, struct.error,
    IndexError, ZeroDivisionError ... depending on the format plugin, so the net
    is wide; MemoryError is not bad input and passes through.
    """
    try:
        return decode()
    except MemoryError:
        raise
    except ImageError:
        raise
    except Exception as err:
        raise _unreadable(image.format, err) from err


def _unreadable(image_format: str | None, err: Exception) -> ImageError:
    kind = f"the {image_format} image" if image_format else "the image"
    return ImageError(f"{kind} is corrupt or truncated ({type(err).__name__}: {_library_reason(err)}): {FORMATS_HINT}")


# b'...' / b"..." in a library's message: bytes of the input (PIL's TIFF reader quotes its header).
_BYTES_LITERAL = re.compile(r"""b(['"]).*?(?<!\\)\1""")


def _library_reason(err: Exception) -> str:
    """A library's error text, without any bytes it quotes, clipped to MAX_QUOTED characters."""
    text = _BYTES_LITERAL.sub("<bytes>", " ".join(str(err).split())) or type(err).__name__
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def _quote(text: str) -> str:
    """repr of `text`, clipped to about MAX_QUOTED characters."""
    return repr(text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "...")


def _check_box(box: Box, size: tuple[int, int]) -> None:
    width, height = size
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ImageError(f"face box {tuple(box)} does not lie inside the {width}x{height} image")


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """`size` scaled to at most `max_side` a side, aspect kept, never below 1 pixel."""
    width, height = size
    scale = max_side / max(width, height)
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _upright_size(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """`size` as the photo shows it: swapped when its EXIF orientation turns it a quarter."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # an unreadable EXIF block is one exif_transpose has ignored too
        return size
    return size[::-1] if orientation in (5, 6, 7, 8) else size
