"""The photo-capable served model: decoding and face finding, the pyfunc, a real scoring server, `fer predict`.

Photos are composed here: drawn faces (`make_faces`) scaled up and pasted on a
noisy background at known places, so detected boxes can be checked against
where the faces really are. The OpenCV Haar cascade finds these drawn faces
(their eyes, brows and mouth give the dark/light bands it looks for); the
tests that need it fail with the reason on an OpenCV without it (OpenCV 5).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from PIL import Image

from conftest import active_store, start_model_server, stop_process_group
from fer.serving import faces as fer_faces
from fer.data import images
from fer.serving import photo_service
from fer.data.splits import EMOTIONS
from fer.data.synthetic import faces_on_noise, make_faces
from fer.serving.photo_service import FaceEmotionModel, find_keras_file, log_service_model

# Where compose_photo pastes its two faces, as boxes: x, y, width, height.
PASTED = [(30, 60, 96, 96), (190, 50, 112, 112)]
PHOTO_SIZE = (320, 240)  # width, height


def compose_photo(seed: int = 7) -> np.ndarray:
    """A 320x240 grayscale "photo": noisy gray background, two drawn faces scaled up at PASTED."""
    drawn, _ = make_faces(len(PASTED), seed=seed)
    places = [(x, y, side) for x, y, side, _ in PASTED]
    return faces_on_noise(PHOTO_SIZE, drawn, places, np.random.default_rng(seed))


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def matches_pasted(boxes) -> bool:
    """Each pasted face has a found box overlapping it well, and nothing else was found."""
    return len(boxes) == len(PASTED) and all(max(iou(p, b) for b in boxes) > 0.5 for p in PASTED)


def require_detector():
    if not fer_faces.face_detector_available():
        try:
            fer_faces.detect_faces(np.zeros((100, 100), np.uint8))
        except fer_faces.FaceDetectorUnavailable as err:
            pytest.fail(f"face detection is required here: {err}")


# ---------------------------------------------------------------------------
# fer.serving.faces: no model needed


def test_bytes_base64_and_data_uri_decode_to_the_same_pixels():
    pixels = compose_photo()
    data = png_bytes(pixels)
    for value in (data, b64(data), "data:image/png;base64," + b64(data)):
        decoded = images.decode_photo(photo_service.image_bytes(value, allow_paths=False)).gray
        np.testing.assert_array_equal(decoded, pixels)


def test_strings_are_base64_or_paths_by_a_fixed_rule():
    assert photo_service.is_base64_text(b64(png_bytes(np.zeros((8, 8), np.uint8))))
    assert photo_service.is_base64_text("data:image/png;base64,AAAA")
    for path in ("photo.jpg", "/home/me/faces/a_1.png", "C:\\photos\\x.png", "shortNoDots"):
        assert not photo_service.is_base64_text(path), path


def test_paths_are_refused_unless_allowed(tmp_path):
    photo = tmp_path / "face.png"
    photo.write_bytes(png_bytes(compose_photo()))
    with pytest.raises(images.ImageError, match="reading file paths is switched off.*FER_ALLOW_PATHS"):
        photo_service.image_bytes(str(photo), allow_paths=False)
    assert photo_service.image_bytes(str(photo), allow_paths=True) == photo.read_bytes()
    with pytest.raises(images.ImageError, match="is not a file"):
        photo_service.image_bytes(str(tmp_path / "missing.png"), allow_paths=True)
    with pytest.raises(images.ImageError, match="is not a file"):
        photo_service.image_bytes(str(tmp_path), allow_paths=True)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"GIF89a but not really", "not an image file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image file|corrupt or truncated"),
        (png_bytes(compose_photo())[:300], "the PNG image is corrupt or truncated"),  # truncated after the header
    ],
)
def test_non_images_are_refused_clearly(data, message):
    with pytest.raises(images.ImageError, match=message):
        images.decode_photo(data)


def test_size_limits_are_checked_before_decoding():
    data = png_bytes(np.zeros((100, 120), np.uint8))
    with pytest.raises(images.ImageError, match="120 x 100 pixels; the limit is 11,999"):
        images.decode_photo(data, max_pixels=11_999)
    with pytest.raises(images.ImageError, match=f"{len(data):,} bytes; the limit is 10"):
        images.decode_photo(data, max_bytes=10)
    # An 8000x6000 black PNG is a small file but 48 MP: refused from its header.
    bomb = png_bytes(np.zeros((6000, 8000), np.uint8))
    assert len(bomb) < images.MAX_IMAGE_BYTES
    with pytest.raises(images.ImageError, match="8000 x 6000 pixels"):
        images.decode_photo(bomb)


def test_bad_base64_is_refused_clearly():
    with pytest.raises(images.ImageError, match="invalid base64"):
        photo_service.decode_base64("A" * 65)
    with pytest.raises(images.ImageError, match="the limit is 1,000"):
        photo_service.decode_base64("A" * 2000, max_bytes=1000)
    with pytest.raises(images.ImageError, match="data: URI must be"):
        photo_service.decode_base64("data:image/png," + "A" * 64)


def test_crop_faces_cuts_clips_and_resizes_as_training_does():
    gray = np.arange(200 * 300, dtype=np.int64).reshape(200, 300).astype(np.uint8)
    crops = fer_faces.crop_faces(gray, [(10, 20, 96, 96), (280, 180, 50, 50), (0, 0, 24, 24)])
    assert crops.shape == (3, 48, 48) and crops.dtype == np.uint8
    # Each crop is what training makes of that part of the image saved as a file; the
    # second box is clipped to the image's bottom-right corner first.
    for crop, (top, bottom, left, right) in zip(crops, [(20, 116, 10, 106), (180, 200, 280, 300), (0, 24, 0, 24)]):
        np.testing.assert_array_equal(crop, images.decode_face(png_bytes(gray[top:bottom, left:right])))
    with pytest.raises(ValueError, match="outside"):
        fer_faces.crop_faces(gray, [(400, 10, 20, 20)])


def test_small_image_without_a_face_is_one_face():
    noise = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    assert fer_faces.find_faces(noise) == [(0, 0, 48, 48)]


def test_haar_cascade_finds_the_pasted_faces():
    require_detector()
    boxes = fer_faces.detect_faces(compose_photo())
    assert matches_pasted(boxes), boxes


def test_no_face_in_plain_noise():
    require_detector()
    noise = np.clip(np.random.default_rng(1).normal(128, 20, (240, 320)), 0, 255).astype(np.uint8)
    assert fer_faces.detect_faces(noise) == []


# ---------------------------------------------------------------------------
# The logged service model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temporary SQLite tracking store, active for this module (MLFLOW_TRACKING_URI too)."""
    folder = tmp_path_factory.mktemp("serving")
    with active_store(folder) as uri:
        yield uri, folder


@pytest.fixture(scope="module")
def served(store, trained_baseline):
    """(model URI, the Keras network, the loaded pyfunc): baseline trained one epoch, logged as a service model.

    One short epoch on drawn faces, so the weights are not just their initial values.
    """
    _, folder = store
    network = trained_baseline
    keras_path = folder / "network" / "model.keras"
    keras_path.parent.mkdir()
    network.save(keras_path)
    with mlflow.start_run():
        info = log_service_model(keras_path)
    return info.model_uri, network, mlflow.pyfunc.load_model(info.model_uri)


def network_probabilities(network, faces: np.ndarray) -> np.ndarray:
    return network.predict(faces.reshape(-1, 48, 48, 1).astype(np.float32), verbose=0)


@pytest.mark.slow
def test_model_is_logged_with_output_schema_and_photo_example(served):
    uri, _, model = served
    assert type(model.unwrap_python_model()).__name__ == FaceEmotionModel.__name__
    assert model.metadata.get_input_schema() is None  # both input kinds reach predict
    assert model.metadata.get_output_schema().input_names() == ["image", "box", "emotion", *EMOTIONS]
    example = model.metadata.load_input_example(mlflow.artifacts.download_artifacts(uri))
    assert list(example.columns) == ["image"] and photo_service.is_base64_text(example["image"][0])
    requirements = Path(mlflow.artifacts.download_artifacts(uri)) / "requirements.txt"
    assert "opencv-python-headless" in requirements.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("with_channel", [True, False])
def test_arrays_give_the_networks_probabilities(served, with_channel):
    _, network, model = served
    faces, _ = make_faces(6, seed=2)
    expected = network_probabilities(network, faces)
    result = model.predict(faces[..., np.newaxis] if with_channel else faces.astype(np.float64))
    assert list(result.columns) == ["image", "box", "emotion", *EMOTIONS]
    assert result["image"].tolist() == list(range(6))
    assert result["box"].tolist() == [[0, 0, 48, 48]] * 6
    np.testing.assert_allclose(result[list(EMOTIONS)].to_numpy(dtype=float), expected, atol=1e-5)
    assert result["emotion"].tolist() == [EMOTIONS[i] for i in expected.argmax(axis=1)]
    # Faces get different outputs, so agreeing to 1e-5 means the same faces went through the same network.
    assert np.ptp(expected, axis=0).max() > 0.01


@pytest.mark.slow
def test_photo_faces_are_found_cropped_and_classified(served):
    require_detector()
    _, network, model = served
    photo = compose_photo()
    result = model.predict(pd.DataFrame({"image": [png_bytes(photo)]}))
    assert result["image"].tolist() == [0, 0]
    boxes = result["box"].tolist()
    assert matches_pasted(boxes), boxes
    expected = network_probabilities(network, fer_faces.crop_faces(photo, [tuple(b) for b in boxes]))
    np.testing.assert_allclose(result[list(EMOTIONS)].to_numpy(dtype=float), expected, atol=1e-5)


@pytest.mark.slow
def test_bytes_base64_and_path_give_the_same_result(served, tmp_path, monkeypatch):
    require_detector()
    _, _, model = served
    data = png_bytes(compose_photo())
    photo = tmp_path / "photo.png"
    photo.write_bytes(data)
    monkeypatch.setenv("FER_ALLOW_PATHS", "1")
    results = [model.predict(pd.DataFrame({"image": [value]})) for value in (data, b64(data), str(photo))]
    for other in results[1:]:
        pd.testing.assert_frame_equal(other, results[0])
    # Several photos in one request: row indices say which photo each face is from.
    both = model.predict(pd.DataFrame({"image": [b64(data), data]}))
    assert both["image"].tolist() == [0, 0, 1, 1]
    monkeypatch.delenv("FER_ALLOW_PATHS")
    with pytest.raises(MlflowException, match="reading file paths is switched off"):
        model.predict(pd.DataFrame({"image": [str(photo)]}))


@pytest.mark.slow
def test_photo_without_face_gives_a_null_row(served):
    require_detector()
    _, _, model = served
    noise = np.clip(np.random.default_rng(1).normal(128, 20, (240, 320)), 0, 255).astype(np.uint8)
    small_face = make_faces(1, seed=3)[0][0]
    result = model.predict(pd.DataFrame({"image": [png_bytes(noise), png_bytes(small_face)]}))
    assert result["image"].tolist() == [0, 1]
    assert result["box"][0] is None and result["emotion"][0] is None
    assert result[list(EMOTIONS)].iloc[0].isna().all()
    assert result["box"][1] == [0, 0, 48, 48] and result["emotion"][1] in EMOTIONS


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.slow
def test_strip_photos_give_a_no_face_row_not_an_error(served):
    # A 3000x1 or 1x5000 photo made OpenCV fail (cv2.error) inside face detection.
    require_detector()
    _, _, model = served
    strips = [png_bytes(np.full((1, 3000), 100, np.uint8)), png_bytes(np.full((5000, 1), 100, np.uint8))]
    result = model.predict(pd.DataFrame({"image": strips}))
    assert result["image"].tolist() == [0, 1]
    assert result["box"].tolist() == [None, None] and result["emotion"].tolist() == [None, None]


@pytest.mark.slow
def test_a_large_photo_is_searched_shrunk_and_boxes_are_in_its_own_pixels(served):
    require_detector()
    _, _, model = served
    scale = 10  # 3200 x 2400: decoded at a reduced scale, searched at 640 px a side
    large = np.asarray(Image.fromarray(compose_photo()).resize(
        (PHOTO_SIZE[0] * scale, PHOTO_SIZE[1] * scale), Image.Resampling.BICUBIC
    ))
    result = model.predict(pd.DataFrame({"image": [jpeg_bytes(large)]}))
    boxes = [[v / scale for v in box] for box in result["box"]]
    assert matches_pasted(boxes), result["box"].tolist()


@pytest.mark.slow
def test_a_16_bit_face_gets_the_same_answer_as_its_8_bit_original(served):
    # PIL's own 16-bit -> 8-bit conversion clips: the service saw a 16-bit face as white.
    _, _, model = served
    face = make_faces(1, seed=5)[0][0]
    eight, sixteen = png_bytes(face), png_bytes(face.astype(np.uint16) * 257)
    result = model.predict(pd.DataFrame({"image": [eight, sixteen]}))
    assert result["image"].tolist() == [0, 1] and result["emotion"][0] is not None
    first, second = result.iloc[[0]].reset_index(drop=True), result.iloc[[1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(second.drop(columns="image"), first.drop(columns="image"))


@pytest.mark.slow
def test_a_path_to_a_non_image_file_is_refused_without_its_contents(served, tmp_path, monkeypatch):
    _, _, model = served
    secret = tmp_path / "credentials.txt"
    secret.write_text("db_password=SECRET-VALUE-1234\n" * 40)
    monkeypatch.setenv("FER_ALLOW_PATHS", "1")
    with pytest.raises(MlflowException) as caught:
        model.predict(pd.DataFrame({"image": [str(secret)]}))
    message = caught.value.message
    assert message.startswith("image row 0: not an image file"), message
    assert "SECRET" not in message and "db_password" not in message and f"{secret.stat().st_size:,}" not in message


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_input, message",
    [
        (np.zeros((2, 40, 40)), r"N x 48 x 48 .* got shape \(2, 40, 40\)"),
        (np.zeros((2, 48, 48, 3)), r"got shape \(2, 48, 48, 3\)"),
        (np.full((1, 48, 48), np.nan), "finite and within 0-255"),
        (np.full((1, 48, 48), 300.0), "finite and within 0-255"),
        (pd.DataFrame({"image": [b"\x00garbage bytes"]}), "image row 0: not an image file"),
        (pd.DataFrame({"image": ["A" * 65]}), "image row 0: invalid base64"),
        (pd.DataFrame({"image": ["not base64 at all!"]}), "is not base64 .* switched off"),
        (pd.DataFrame({"image": ["A" * (images.MAX_IMAGE_BYTES // 3 * 4 + 400)]}), "the limit is 10,485,760"),
        (pd.DataFrame({"image": [None]}), "expected image bytes, a base64 string or a file path, got an empty"),
        (pd.DataFrame({"image": pd.array([pd.NA], dtype="string")}), "got an empty cell"),
        (pd.DataFrame({"path": ["x"]}), "exactly one column 'image'"),
        (pd.DataFrame({"image": ["x"] * 65}), "65 photos in one request; the limit is 64"),
        ({"pixels": [1, 2]}, "one key 'image'"),
    ],
)
def test_bad_inputs_raise_invalid_parameter_value(served, model_input, message):
    _, _, model = served
    with pytest.raises(MlflowException, match=message) as caught:
        model.predict(model_input)
    assert caught.value.get_http_status_code() == 400


def test_find_keras_file(tmp_path):
    (tmp_path / "artifacts").mkdir()
    with pytest.raises(FileNotFoundError, match="No .keras file"):
        find_keras_file(tmp_path)
    (tmp_path / "artifacts" / "model.keras").write_bytes(b"zip")
    assert find_keras_file(tmp_path) == tmp_path / "artifacts" / "model.keras"
    (tmp_path / "other.keras").write_bytes(b"zip")
    with pytest.raises(FileNotFoundError, match="2 .keras files"):
        find_keras_file(tmp_path)


# ---------------------------------------------------------------------------
# A real scoring server



def http(url: str, body: bytes | None = None, content_type: str = "application/json", timeout: float = 120):
    """(status, body text) of a GET (no body) or POST, HTTP errors included."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def server(served, store, tmp_path_factory):
    """`mlflow models serve` of the service model on 127.0.0.1; yields its base URL; always stopped."""
    uri, _, _ = served
    tracking_uri, _ = store
    process, base = start_model_server(uri, tracking_uri, tmp_path_factory.mktemp("server") / "server.log")
    try:
        yield base
    finally:
        stop_process_group(process)  # its own session: uvicorn's workers go too


def invoke(base: str, payload) -> tuple[int, dict | str]:
    status, text = http(f"{base}/invocations", json.dumps(payload).encode())
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@pytest.mark.slow
@pytest.mark.parametrize("orient", ["dataframe_split", "dataframe_records"])
def test_server_predicts_a_base64_photo(server, orient):
    require_detector()
    photo = b64(png_bytes(compose_photo()))
    payload = (
        {"dataframe_split": {"columns": ["image"], "data": [[photo]]}}
        if orient == "dataframe_split"
        else {"dataframe_records": [{"image": photo}]}
    )
    status, body = invoke(server, payload)
    assert status == 200, body
    predictions = body["predictions"]
    assert [set(p) for p in predictions] == [{"image", "box", "emotion", *EMOTIONS}] * 2
    assert matches_pasted([p["box"] for p in predictions])
    for p in predictions:
        assert p["image"] == 0 and p["emotion"] in EMOTIONS
        assert abs(sum(p[name] for name in EMOTIONS) - 1) < 1e-4


@pytest.mark.slow
def test_server_takes_face_arrays_and_reports_no_face_as_null(server):
    faces, _ = make_faces(2, seed=4)
    status, body = invoke(server, {"inputs": faces.tolist()})
    assert status == 200, body
    assert [p["box"] for p in body["predictions"]] == [[0, 0, 48, 48]] * 2
    require_detector()
    noise = np.clip(np.random.default_rng(1).normal(128, 20, (240, 320)), 0, 255).astype(np.uint8)
    status, text = http(
        f"{server}/invocations", json.dumps({"dataframe_records": [{"image": b64(png_bytes(noise))}]}).encode()
    )
    assert status == 200 and "NaN" not in text, text  # strict JSON: null, not NaN
    assert json.loads(text)["predictions"] == [{"image": 0, "box": None, "emotion": None, **dict.fromkeys(EMOTIONS)}]


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload, message",
    [
        ({"dataframe_split": {"columns": ["image"], "data": [["A" * 65]]}}, "invalid base64"),
        ({"dataframe_records": [{"image": b64(b"this is not an image file at all, just some text")}]},
         "not an image file"),
        ({"dataframe_records": [{"image": "/etc/passwd"}]}, "reading file paths is switched off"),
        ({"inputs": np.zeros((1, 40, 40)).tolist()}, "got shape \\(1, 40, 40\\)"),
        ({"inputs": [[1, 2], [3]]}, ""),  # ragged: MLflow's own parser refuses it
        ({"dataframe_split": {"columns": ["photo"], "data": [["x"]]}}, "exactly one column 'image'"),
        ({"dataframe_records": [{"image": b64(png_bytes(compose_photo())[:300])}]},
         "^image row 0: the PNG image is corrupt or truncated"),
    ],
)
def test_server_answers_bad_requests_with_400_and_a_message(server, payload, message):
    status, body = invoke(server, payload)
    assert status == 400, (status, body)
    assert isinstance(body, dict) and body.get("error_code") in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST"), body
    assert re.search(message, body["message"]), body["message"][:500]
    assert "stack_trace" not in body, body["stack_trace"][:300]
    if message:  # ours, as the model wrote it: one line, not MLflow's "Failed to predict data '<input>'"
        assert body["message"].startswith(("image row 0: ", "expected ", "a DataFrame")), body["message"][:300]
        assert "\n" not in body["message"] and len(body["message"]) < 500, body["message"][:300]


@pytest.mark.slow
def test_server_answers_a_strip_photo_with_no_face(server):
    require_detector()
    strip = b64(png_bytes(np.full((1, 3000), 100, np.uint8)))
    status, body = invoke(server, {"dataframe_records": [{"image": strip}]})
    assert status == 200, body
    assert body["predictions"] == [{"image": 0, "box": None, "emotion": None, **dict.fromkeys(EMOTIONS)}]


@pytest.mark.slow
def test_server_refuses_non_json_with_400(server):
    status, _ = http(f"{server}/invocations", b"{not json")
    assert status == 400


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_curl_recipe() -> str:
    """The README's shell lines that build request.json from a photo and post it, from `photo=` to `curl`."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "request.json" in b and "curl " in b]
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("photo="))
    end = next(i for i, line in enumerate(lines) if line.startswith("curl "))
    return "\n".join(lines[start:end + 1])


def large_photo() -> np.ndarray:
    """compose_photo three times as large, fresh noise on the background: a PNG well over 200 KB."""
    small = compose_photo()
    photo = np.asarray(Image.fromarray(small).resize((PHOTO_SIZE[0] * 3, PHOTO_SIZE[1] * 3), Image.Resampling.BICUBIC))
    noise = np.clip(np.random.default_rng(3).normal(128, 20, photo.shape), 0, 255).astype(np.uint8)
    background = np.ones(photo.shape, bool)
    for x, y, w, h in PASTED:
        background[3 * y:3 * (y + h), 3 * x:3 * (x + w)] = False
    return np.where(background, noise, photo)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("base64"), reason="needs curl and base64")
def test_readmes_curl_recipe_works_verbatim_for_a_large_photo(server, tmp_path):
    require_detector()
    recipe = readme_curl_recipe()
    assert "base64" in recipe and "-d @request.json" in recipe  # the body from a file, not the command line
    photo = tmp_path / "holiday photo.png"  # a space in the name, as photos have
    photo.write_bytes(png_bytes(large_photo()))
    assert photo.stat().st_size > 200_000  # over ~96 KB, the old recipe's base64 overflowed the argument list
    port = server.rsplit(":", 1)[1]
    script = re.sub(r"^photo=.*$", f"photo={shlex.quote(str(photo))}", recipe, flags=re.M).replace(":5001/", f":{port}/")
    assert script != recipe and f":{port}/invocations" in script
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)["predictions"]
    boxes = [[v / 3 for v in p["box"]] for p in predictions]  # back to compose_photo's scale
    assert matches_pasted(boxes), predictions
    assert all(p["emotion"] in EMOTIONS for p in predictions)


# ---------------------------------------------------------------------------
# fer predict


@pytest.mark.slow
def test_cli_predict_prints_faces_and_writes_annotated_photos(served, tmp_path):
    require_detector()
    from fer.cli import main

    uri, _, _ = served
    photo = tmp_path / "group.png"
    photo.write_bytes(png_bytes(compose_photo()))
    out_dir = tmp_path / "annotated"
    result = CliRunner().invoke(main, ["predict", "--model-uri", uri, str(photo), "--annotate", str(out_dir)])
    assert result.exit_code == 0, result.output
    face_lines = [line for line in result.output.splitlines() if "box=" in line]
    assert len(face_lines) == 2, result.output
    for line in face_lines:
        assert line.startswith(str(photo)) and any(f"\t{name} " in line for name in EMOTIONS), line
        assert all(f"{name}=" in line for name in EMOTIONS), line
    annotated = out_dir / "group.annotated.png"
    assert f"annotated: {annotated}" in result.output
    with Image.open(annotated) as image:
        assert image.size == PHOTO_SIZE and image.mode == "RGB"
        pixels = np.asarray(image)
    assert (pixels[..., 0] > 200).any() and (pixels[..., 1] < 100).any()  # red boxes and labels drawn


def test_the_photos_the_readme_names_come_with_the_project():
    named = set(re.findall(r"\bexamples/[\w.-]+\.(?:png|jpg)\b", README.read_text()))
    assert "examples/faces.png" in named
    for path in named:
        assert (README.parent / path).is_file(), f"README.md names {path}, which is not in the repository"


@pytest.mark.slow
def test_cli_predict_on_the_readmes_example_photo_finds_its_three_faces(served):
    require_detector()
    from fer.cli import main

    uri, _, _ = served
    photo = README.parent / "examples" / "faces.png"
    result = CliRunner().invoke(main, ["predict", "--model-uri", uri, str(photo)])
    assert result.exit_code == 0, result.output
    assert len([line for line in result.output.splitlines() if "box=" in line]) == 3, result.output


@pytest.mark.slow
def test_cli_predict_reports_bad_model_and_bad_file_without_traceback(served, tmp_path):
    from fer.cli import main

    uri, _, _ = served
    missing = CliRunner().invoke(main, ["predict", "--model-uri", "models:/no-such-model/1", __file__])
    assert missing.exit_code == 1 and "Cannot load model models:/no-such-model/1" in missing.output
    assert "Traceback" not in missing.output
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    bad = CliRunner().invoke(main, ["predict", "--model-uri", uri, str(junk)])
    assert bad.exit_code == 1 and f"{junk}: not an image file" in bad.output, bad.output
    assert "1 of 1 images could not be used" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_cli_predict_reports_a_bad_photo_and_goes_on_with_the_rest(served, tmp_path):
    require_detector()
    from fer.cli import main

    uri, _, _ = served
    strip, junk, group = tmp_path / "strip.png", tmp_path / "junk.jpg", tmp_path / "group.png"
    strip.write_bytes(png_bytes(np.full((1, 3000), 100, np.uint8)))
    junk.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    group.write_bytes(png_bytes(compose_photo()))
    result = CliRunner().invoke(main, ["predict", "--model-uri", uri, str(strip), str(junk), str(group)])
    assert result.exit_code == 1, result.output
    assert f"{strip}\tno face found" in result.output
    assert re.search(f"Error: {re.escape(str(junk))}: (not an image file|the image is corrupt)", result.output)
    assert len([line for line in result.output.splitlines() if line.startswith(f"{group}\tbox=")]) == 2
    assert "1 of 3 images could not be used" in result.output and "Traceback" not in result.output


def test_forward_in_chunks_matches_keras_predict_for_any_number_of_faces():
    from fer.models import build_model
    from fer.serving.engines import FORWARD_CHUNK, forward

    network = build_model("baseline")
    faces = np.random.default_rng(1).integers(0, 256, (FORWARD_CHUNK + 44, 48, 48, 1)).astype(np.float32)
    expected = network.predict(faces, verbose=0)
    for count in (1, FORWARD_CHUNK, len(faces)):  # one chunk, exactly one, and a partial second
        probabilities = forward(network, faces[:count])
        assert probabilities.dtype == np.float32 and probabilities.shape == (count, 8)
        np.testing.assert_allclose(probabilities, expected[:count], rtol=1e-4, atol=1e-6)
    assert forward(network, faces[:0]).shape == (0, 8)


@pytest.mark.slow
def test_training_pyfunc_refuses_bad_faces_with_the_service_models_check(store):
    from fer.models import build_model
    from fer.serving.pyfunc import log_emotion_model

    faces, _ = make_faces(3, seed=6)
    with mlflow.start_run():
        info = log_emotion_model(build_model("baseline"), faces[:1, ..., np.newaxis].astype(np.float32))
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert model.predict(faces[..., np.newaxis].astype(np.float32)).shape == (3, 8)
    for bad, message in [
        (np.full((1, 48, 48, 1), 300.0, np.float32), "finite and within 0-255"),
        (np.full((1, 48, 48, 1), np.nan, np.float32), "finite and within 0-255"),
    ]:
        with pytest.raises(MlflowException, match=message) as caught:
            model.predict(bad)
        assert caught.value.get_http_status_code() == 400
