"""fer.data.images, the one decoder: training and serving read the same bytes to the same faces; hostile bytes.

The property tests feed arbitrary bytes, truncated files and files with bytes
changed to the decoders training and serving use, and to the whole serving
path (decode, find faces, crop); each must give a result or the project's
own error, never another exception, and finish well within the deadline.
"""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fer.serving import faces as fer_faces
from fer.data import images
from fer.serving import photo_service
from fer.data.synthetic import make_faces
from fer.data.images import ImageError

# Small and deterministic so CI stays fast; the deadline is what "never hangs" means here.
HOSTILE = settings(
    max_examples=60,
    deadline=timedelta(seconds=5),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def encode(pixels: np.ndarray, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def face_pixels(height: int = 48, width: int = 48, seed: int = 0) -> np.ndarray:
    """A drawn face (uint8), resized to width x height."""
    face = make_faces(1, seed=seed)[0][0]
    return np.asarray(Image.fromarray(face).resize((width, height), Image.Resampling.BICUBIC))


def served_face(data: bytes) -> np.ndarray:
    """What the photo service makes of a photo taken as one whole face: decode, then crop its full box."""
    photo = images.decode_photo(data)
    height, width = photo.gray.shape
    return fer_faces.crop_faces(photo.gray, [(0, 0, width, height)])[0]


def sixteen_bit_png(pixels: np.ndarray) -> bytes:
    """`pixels` (uint8) as a 16-bit grayscale PNG of the same brightness (v -> v * 257)."""
    data = encode(pixels.astype(np.uint16) * 257, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    return data


SAMPLES = {
    "png 48x48": lambda: encode(face_pixels(), "PNG"),
    "png 80x60": lambda: encode(face_pixels(60, 80), "PNG"),
    "rgb png 70x50": lambda: encode(np.repeat(face_pixels(50, 70)[..., None], 3, axis=2), "PNG"),
    "jpeg 80x60": lambda: encode(face_pixels(60, 80), "JPEG", quality=90),
    "16-bit png 48x48": lambda: sixteen_bit_png(face_pixels()),
    "16-bit png 90x64": lambda: sixteen_bit_png(face_pixels(64, 90)),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_training_and_serving_decode_the_same_bytes_to_the_same_face(name):
    data = SAMPLES[name]()
    trained_on = images.decode_face(data)
    assert trained_on.shape == (48, 48) and trained_on.dtype == np.uint8
    np.testing.assert_array_equal(served_face(data), trained_on)


def test_a_16_bit_image_is_as_bright_as_its_8_bit_original():
    # PIL's own I;16 -> L conversion clips at 255: the photo service saw such a face as white.
    pixels = face_pixels(64, 64)
    eight, sixteen = encode(pixels, "PNG"), sixteen_bit_png(pixels)
    np.testing.assert_array_equal(images.decode_photo(sixteen).gray, pixels)
    np.testing.assert_array_equal(images.decode_face(sixteen), images.decode_face(eight))
    assert 60 < served_face(sixteen).mean() < 200


def test_a_large_jpeg_is_decoded_shrunk_with_its_real_size_kept():
    pixels = face_pixels(3000, 4000)  # width 4000, height 3000
    photo = images.decode_photo(encode(pixels, "JPEG", quality=85))
    assert max(photo.gray.shape) <= images.WORK_MAX_SIDE
    assert photo.gray.shape == (images.WORK_MAX_SIDE * 3 // 4, images.WORK_MAX_SIDE)
    assert photo.size == (4000, 3000)
    assert photo.to_photo_pixels((32, 64, 320, 320)) == (100, 200, 1000, 1000)
    # Shrunk, not mangled: the same picture as the original scaled down.
    expected = np.asarray(Image.fromarray(pixels).resize(photo.gray.shape[::-1], Image.Resampling.BILINEAR))
    assert np.abs(photo.gray.astype(int) - expected).mean() < 3


def test_exif_rotation_turns_the_photo_and_its_size():
    pixels = face_pixels(60, 100)  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif)
    photo = images.decode_photo(buffer.getvalue())
    assert photo.size == (60, 100) and photo.gray.shape == (100, 60)


@pytest.mark.parametrize("shape", [(1, 3000), (5000, 1), (1, 1), (2, 3000), (23, 6000), (6000, 30)])
def test_no_image_shape_crashes_face_finding(shape):
    # A 3000x1 photo made OpenCV resize to a 0-pixel side (cv2.error) before.
    gray = np.full(shape, 128, np.uint8)
    boxes = fer_faces.find_faces(gray)
    small = max(shape) <= fer_faces.SMALL_IMAGE
    assert boxes == ([(0, 0, shape[1], shape[0])] if small else [])


@pytest.mark.parametrize("shape", [(1, 3000), (5000, 1)])
def test_a_strip_photo_decodes_and_has_no_face(shape):
    photo = images.decode_photo(encode(np.full(shape, 90, np.uint8), "PNG"))
    assert photo.gray.shape[::-1] == images._fit(shape[::-1], images.WORK_MAX_SIDE)
    assert fer_faces.find_faces(photo.gray) == []
    assert images.decode_face(encode(np.full(shape, 90, np.uint8), "PNG")).shape == (48, 48)


@pytest.mark.parametrize(
    "data",
    [
        b"root:x:0:0:SECRET-PASSWORD-LINE:/root:/bin/bash\n" * 20,
        b"II*\x00SECRET-PASSWORD-LINE" + b"\x00" * 40,  # a TIFF header: PIL quotes its first bytes
        b"\x89PNG\r\n\x1a\nSECRET-PASSWORD-LINE" + b"\x00" * 40,
    ],
)
def test_errors_never_quote_the_bytes_or_size_of_what_was_read(data):
    for decode in (images.decode_photo, images.decode_face):
        with pytest.raises(ImageError) as caught:
            decode(data)
        message = str(caught.value)
        assert "SECRET" not in message and "root:" not in message and f"{len(data):,}" not in message, message
        assert len(message) < 400 and "\n" not in message


def test_read_image_file_names_the_file_clipped(tmp_path):
    with pytest.raises(ImageError, match=r"^'/no/such/place/x+\.\.\.' is not a file") as caught:
        images.read_image_file("/no/such/place/" + "x" * 200)
    assert len(str(caught.value).split("'")[1]) <= images.MAX_QUOTED


# ---------------------------------------------------------------------------
# Property tests: hostile bytes


def valid_files() -> dict[str, bytes]:
    pixels = face_pixels(40, 56, seed=3)
    files = {fmt: encode(pixels, fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}
    files["PNG16"] = sixteen_bit_png(pixels)
    return files


VALID = valid_files()


def serve_decode(data: bytes) -> np.ndarray | None:
    """The photo service's whole path for one photo's bytes: decode, find faces, cut them at 48x48."""
    photo = images.decode_photo(data)
    boxes = fer_faces.find_faces(photo.gray)
    crops = fer_faces.crop_faces(photo.gray, boxes)
    assert crops.shape == (len(boxes), 48, 48)
    return crops


def result_or_image_error(decode, data: bytes) -> None:
    """`decode(data)` gives 8-bit 48x48 faces (one, or N x 48 x 48), or an ImageError of one line: nothing else."""
    try:
        faces = decode(data)
    except ImageError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert faces.dtype == np.uint8 and faces.shape[-2:] == (48, 48) and faces.ndim in (2, 3), faces.shape


mutated = st.builds(
    lambda name, edits: _mutate(VALID[name], edits),
    st.sampled_from(sorted(VALID)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
)


def _mutate(data: bytes, edits: list[tuple[float, int]]) -> bytes:
    changed = bytearray(data)
    for where, value in edits:
        changed[int(where * len(changed))] = value
    return bytes(changed)


truncated = st.builds(
    lambda name, fraction: VALID[name][: int(fraction * len(VALID[name]))],
    st.sampled_from(sorted(VALID)),
    st.floats(0, 1, exclude_max=True),
)
hostile_bytes = st.one_of(st.binary(max_size=4096), truncated, mutated)


@HOSTILE
@given(hostile_bytes)
def test_serving_path_gives_faces_or_an_image_error(data):
    result_or_image_error(serve_decode, data)


@HOSTILE
@given(hostile_bytes)
def test_training_decoder_gives_a_face_or_an_image_error(data):
    result_or_image_error(images.decode_face, data)


@HOSTILE
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_any_request_text_is_bytes_or_an_image_error(text):
    try:
        data = photo_service.image_bytes(text, allow_paths=False)
    except ImageError as err:
        assert len(str(err)) < 400
    else:
        result_or_image_error(serve_decode, data)


@HOSTILE
@given(st.integers(1, 5000), st.integers(1, 5000))
def test_face_finding_takes_any_shape(height, width):
    boxes = fer_faces.find_faces(np.zeros((height, width), np.uint8))
    assert all(0 <= x and 0 <= y and x + w <= width + 1 and y + h <= height + 1 for x, y, w, h in boxes)
