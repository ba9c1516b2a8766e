"""Emotions over video: tracking and smoothing on hand-made boxes, then real videos written here with OpenCV.

The videos hold two drawn faces (`make_faces`, scaled up as tests/test_serving.py
does, which OpenCV's Haar cascade finds) moving across a noisy background, so
found boxes can be checked against where the faces really are. The I/O tests
classify with `brightness_probabilities`, a fixed function of the crop, so they
need no network; the `fer predict` tests at the end use real logged models.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import cv2
import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from conftest import ROOT, active_store

from fer.serving import faces as fer_faces
from fer.serving import video
from fer.data.splits import EMOTIONS
from fer.data.synthetic import faces_on_noise, make_faces
from fer.serving.predict import PredictError, VideoReader, predict_video
from fer.serving.video import FaceTracker, TrackedFace, csv_rows, ema_weight, iou, match_boxes, progress_text

FRAME_SIZE = (320, 240)  # width, height
FPS = 10.0
FRAMES = 20
FACE_SIDES = (96, 112)
PROBABILITY_COLUMNS = [f"smoothed_{name}" for name in EMOTIONS]


def one_hot(index: int) -> np.ndarray:
    return np.eye(len(EMOTIONS))[[index]]


# ---------------------------------------------------------------------------
# Overlap, matching, smoothing: hand-made boxes


def test_iou_of_same_shifted_nested_and_disjoint_boxes():
    assert iou((10, 10, 20, 20), (10, 10, 20, 20)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 20, 20), (5, 5, 10, 10)) == pytest.approx(100 / 400)
    assert iou((0, 0, 10, 10), (10, 0, 10, 10)) == 0.0  # touching edges share no pixel
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty boxes: no division by zero
    assert iou((3, 4, 20, 30), (8, 1, 25, 10)) == iou((8, 1, 25, 10), (3, 4, 20, 30))


def test_match_boxes_takes_the_best_overlap_first_and_each_box_once():
    previous = [(0, 0, 40, 40), (100, 0, 40, 40)]
    # Both new boxes overlap the first old one; the closer one gets it, the other starts a track.
    current = [(20, 0, 40, 40), (2, 0, 40, 40), (101, 1, 40, 40)]
    assert match_boxes(previous, current, 0.3) == [(0, 1), (1, 2)]
    assert match_boxes(previous, [(30, 0, 40, 40)], 0.3) == []  # overlap 1/7: too little
    assert match_boxes([], current, 0.3) == [] and match_boxes(previous, [], 0.3) == []


def test_two_faces_that_swap_order_in_the_list_keep_their_ids():
    tracker = FaceTracker(half_life=0.0)
    a, b = (10, 10, 50, 50), (200, 10, 50, 50)
    first = tracker.update(0.0, [a, b], np.vstack([one_hot(0), one_hot(1)]))
    # The detector lists faces largest first, so order changes from frame to frame.
    second = tracker.update(0.1, [(203, 12, 50, 50), (13, 11, 50, 50)], np.vstack([one_hot(1), one_hot(0)]))
    assert [f.track_id for f in first] == [1, 2]
    assert [f.track_id for f in second] == [2, 1]
    assert [f.emotion for f in second] == [EMOTIONS[1], EMOTIONS[0]]
    assert tracker.started == 2


def test_a_face_missed_up_to_max_missed_frames_keeps_its_id_and_one_missed_longer_gets_a_new_one():
    tracker = FaceTracker(half_life=0.0, max_missed=2)
    box, p = (10, 10, 50, 50), one_hot(0)
    assert tracker.update(0.0, [box], p)[0].track_id == 1
    for t in (0.1, 0.2):  # missed twice: the track waits
        assert tracker.update(t, [], p[:0]) == []
    assert tracker.update(0.3, [box], p)[0].track_id == 1
    for t in (0.4, 0.5, 0.6):  # missed three times: dropped
        tracker.update(t, [], p[:0])
    assert tracker.update(0.7, [box], p)[0].track_id == 2
    assert [t.track_id for t in tracker.tracks] == [2]


def test_a_new_face_far_from_every_track_gets_a_new_id():
    tracker = FaceTracker()
    tracker.update(0.0, [(0, 0, 40, 40)], one_hot(0))
    faces = tracker.update(0.1, [(1, 0, 40, 40), (150, 150, 40, 40)], np.vstack([one_hot(0), one_hot(3)]))
    assert [f.track_id for f in faces] == [1, 2]
    np.testing.assert_allclose(faces[1].probabilities, one_hot(3)[0])  # a new track starts at its own values


def test_ema_weight_halves_the_old_estimate_every_half_life():
    assert ema_weight(0.5, 0.5) == pytest.approx(0.5)
    assert ema_weight(1.0, 0.5) == pytest.approx(0.75)
    assert ema_weight(0.0, 0.5) == 0.0
    assert ema_weight(0.1, 0.0) == 1.0  # no smoothing


def test_smoothing_is_the_same_at_any_frame_stride():
    """A face that turns from neutral to happy: after one second the estimate is the same at 10 or 2 frames/s."""
    half_life = 0.4
    results = []
    for step in (0.1, 0.5):
        tracker = FaceTracker(half_life=half_life)
        tracker.update(0.0, [(0, 0, 40, 40)], one_hot(0))
        for t in np.arange(step, 1.0 + 1e-9, step):
            face = tracker.update(float(t), [(0, 0, 40, 40)], one_hot(1))[0]
        results.append(face.probabilities)
    stale = 0.5 ** (1.0 / half_life)  # what is left of the first frame after a second
    expected = stale * one_hot(0)[0] + (1 - stale) * one_hot(1)[0]
    for probabilities in results:
        np.testing.assert_allclose(probabilities, expected, atol=1e-12)
        assert probabilities.sum() == pytest.approx(1.0)


def test_one_step_of_smoothing_by_hand():
    tracker = FaceTracker(half_life=0.2)
    old, new = np.array([[0.7, 0.1, 0.1, 0.1, 0, 0, 0, 0]]), np.array([[0.1, 0.7, 0.1, 0.1, 0, 0, 0, 0]])
    tracker.update(1.0, [(0, 0, 40, 40)], old)
    face = tracker.update(1.2, [(2, 0, 40, 40)], new)[0]
    np.testing.assert_allclose(face.probabilities, 0.5 * old[0] + 0.5 * new[0])
    assert face.emotion == EMOTIONS[0]  # 0.4 against 0.4: argmax takes the first, as np.argmax does


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"half_life": -1}, "half_life must be a number of seconds >= 0"),
        ({"half_life": float("nan")}, "half_life must be"),
        ({"max_missed": -1}, "max_missed must be a whole number"),
        ({"max_missed": 1.5}, "max_missed must be a whole number"),
        ({"min_iou": 0}, "min_iou must be an overlap in"),
    ],
)
def test_tracker_settings_are_checked_at_the_door(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FaceTracker(**kwargs)


def test_tracker_refuses_mismatched_probabilities_and_time_going_back():
    tracker = FaceTracker()
    with pytest.raises(ValueError, match="2 boxes but 1 rows"):
        tracker.update(0.0, [(0, 0, 5, 5), (9, 9, 5, 5)], one_hot(0))
    tracker.update(1.0, [], one_hot(0)[:0])
    with pytest.raises(ValueError, match="before the previous frame"):
        tracker.update(0.5, [], one_hot(0)[:0])


def test_csv_rows_say_the_probabilities_are_smoothed_and_keep_frames_without_faces():
    assert video.CSV_COLUMNS[:8] == ("time_s", "frame", "face_id", "x", "y", "w", "h", "emotion")
    assert list(video.CSV_COLUMNS[8:]) == PROBABILITY_COLUMNS
    face = TrackedFace(4, (1, 2, 30, 31), np.array([0.1, 0.2, 0.3, 0.4, 0, 0, 0, 0]))
    (row,) = csv_rows(2.5, 25, [face])
    assert row[:8] == [2.5, 25, 4, 1, 2, 30, 31, "sadness"]
    assert [float(v) for v in row[8:]] == [0.1, 0.2, 0.3, 0.4, 0, 0, 0, 0]
    (empty,) = csv_rows(2.6, 26, [])
    assert len(empty) == len(video.CSV_COLUMNS) and empty[:2] == [2.6, 26] and set(empty[2:]) == {""}


def test_progress_text_with_and_without_a_known_total():
    assert progress_text("a.mp4", 50, 200, 5.0) == "a.mp4: 50/200 frames (25%), 10.0 frames/s, about 15 s left"
    assert progress_text("a.mp4", 200, 200, 5.0) == "a.mp4: 200/200 frames (100%), 40.0 frames/s"
    assert progress_text("a.webm", 50, None, 0.0) == "a.webm: 50 frames, 0.0 frames/s"
    assert progress_text("a.webm", 210, 200, 5.0) == "a.webm: 210 frames, 42.0 frames/s"  # an estimated total


# ---------------------------------------------------------------------------
# Real videos, written here


def require_detector():
    if not fer_faces.face_detector_available():
        pytest.fail("face detection is required here: OpenCV has no Haar cascade (see fer/serving/faces.py)")


def true_boxes(frame: int) -> list[tuple[int, int, int, int]]:
    """Where the two faces are in `frame`: the left one drifts right and down, the right one down."""
    return [(10 + 2 * frame, 30 + frame, FACE_SIDES[0], FACE_SIDES[0]), (190, 20 + 2 * frame, FACE_SIDES[1],
                                                                          FACE_SIDES[1])]


def compose_frame(frame: int, drawn: np.ndarray) -> np.ndarray:
    """A BGR frame: fresh noise every frame (as a camera's), the two drawn faces at `true_boxes(frame)`."""
    places = [(x, y, side) for x, y, side, _ in true_boxes(frame)]
    gray = faces_on_noise(FRAME_SIZE, drawn, places, np.random.default_rng(100 + frame))
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def write_video(path, frames: int = FRAMES, codec: str = "mp4v") -> None:
    drawn, _ = make_faces(2, seed=7)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), FPS, FRAME_SIZE)
    assert writer.isOpened(), f"OpenCV cannot write {path} with {codec}"
    for frame in range(frames):
        writer.write(compose_frame(frame, drawn))
    writer.release()


def count_frames(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def brightness_probabilities(faces: np.ndarray) -> np.ndarray:
    """A fixed function of each crop (its mean brightness) in place of a network: the I/O tests need no model."""
    means = faces.reshape(len(faces), -1).mean(axis=1) / 255 * (len(EMOTIONS) - 1)
    scores = np.exp(-((means[:, None] - np.arange(len(EMOTIONS))) ** 2))
    return scores / scores.sum(axis=1, keepdims=True)


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".webm": "VP80"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    paths = {}
    for suffix, codec in CODECS.items():
        paths[suffix] = folder / f"two_faces{suffix}"
        write_video(paths[suffix], codec=codec)
    return paths


@pytest.mark.parametrize("suffix", list(CODECS))
def test_two_moving_faces_give_two_tracks_and_a_row_per_face_per_frame(videos, suffix):
    require_detector()
    out = io.StringIO()
    with VideoReader(videos[suffix]) as reader:
        assert (reader.fps, reader.size) == (FPS, FRAME_SIZE)
        summary = predict_video(brightness_probabilities, reader, out, tracker=FaceTracker(half_life=0.0))
    rows = read_csv(out.getvalue())
    assert (summary.frames, summary.processed, summary.faces, summary.tracks) == (FRAMES, FRAMES, 2 * FRAMES, 2)
    assert [int(r["frame"]) for r in rows] == [f for f in range(FRAMES) for _ in range(2)]
    assert [float(r["time_s"]) for r in rows[::2]] == pytest.approx([f / FPS for f in range(FRAMES)])
    for row in rows:
        frame, box = int(row["frame"]), tuple(int(row[k]) for k in "xywh")
        # Track 1 is the face found first (the larger, right one: detect_faces lists largest first).
        truth = true_boxes(frame)[1 if row["face_id"] == "1" else 0]
        assert iou(box, truth) > 0.6, (frame, box, truth)
        probabilities = np.array([float(row[c]) for c in PROBABILITY_COLUMNS])
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["emotion"] == EMOTIONS[int(np.argmax(probabilities))]
    assert {r["face_id"] for r in rows} == {"1", "2"}


def test_every_n_frames_are_processed_and_the_annotated_video_has_every_frame(videos, tmp_path):
    require_detector()
    out, annotated = io.StringIO(), tmp_path / "out" / "annotated.mp4"
    with VideoReader(videos[".mp4"]) as reader:
        summary = predict_video(brightness_probabilities, reader, out, every=3, annotate=annotated)
    rows = read_csv(out.getvalue())
    processed = list(range(0, FRAMES, 3))
    assert sorted({int(r["frame"]) for r in rows}) == processed
    assert (summary.frames, summary.processed, summary.tracks, summary.annotated) == (
        FRAMES, len(processed), 2, annotated)
    assert len(rows) == 2 * len(processed)
    # Every input frame is in the annotated copy, with the boxes of the last processed frame drawn in red.
    assert count_frames(annotated) == FRAMES
    boxes = {}
    for row in rows:
        boxes.setdefault(int(row["frame"]), []).append(tuple(int(row[k]) for k in "xywh"))
    capture = cv2.VideoCapture(str(annotated))
    for index in range(FRAMES):
        ok, frame = capture.read()
        assert ok and frame.shape == (*FRAME_SIZE[::-1], 3)
        for x, y, w, h in boxes[index - index % 3]:
            edge = frame[y + h // 4:y + 3 * h // 4, x:x + 2].astype(int)  # the box's left side (the label is on top)
            red = edge[..., 2] - edge[..., 1] > 60  # BGR: red well above green; the gray video has none
            assert red.any(axis=1).mean() > 0.8, (index, (x, y, w, h))
    capture.release()


@pytest.mark.slow  # a fresh Python process that imports TensorFlow, or seconds of work: not the fast lane
def test_the_readmes_video_example_is_made_by_its_script_with_three_faces_in_every_frame(tmp_path):
    # The README's `fer predict ... talk.mp4` runs on a fresh clone: its video comes from this script.
    require_detector()
    readme = (ROOT / "README.md").read_text()
    assert "python examples/make_faces_video.py" in readme and " talk.mp4 " in readme
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "make_faces_video.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Wrote talk.mp4 (40 frames, 4 s, 640x480" in result.stdout
    capture = cv2.VideoCapture(str(tmp_path / "talk.mp4"))
    found = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        found.append(len(fer_faces.find_faces(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))))
    capture.release()
    assert found == [3] * 40


def test_a_frame_without_faces_still_gets_its_row(tmp_path):
    require_detector()
    path = tmp_path / "noise.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, FRAME_SIZE)
    for frame in range(3):
        noise = np.random.default_rng(frame).integers(100, 140, (*FRAME_SIZE[::-1], 3), dtype=np.uint8)
        writer.write(noise)
    writer.release()
    out = io.StringIO()
    with VideoReader(path) as reader:
        summary = predict_video(brightness_probabilities, reader, out)
    rows = read_csv(out.getvalue())
    assert [r["frame"] for r in rows] == ["0", "1", "2"] and all(r["face_id"] == "" for r in rows)
    assert (summary.faces, summary.tracks) == (0, 0)


def truncate(source, target, keep: float) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, r"is not a file \(missing, a folder, or not readable\)"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_text("just some text, not a video\n" * 50), "cannot be read as a video"),
        (lambda p: p.write_bytes(make_png()), "is an image, not a video: give it its image suffix"),
    ],
    ids=["missing", "empty", "text", "png"],
)
def test_files_that_are_not_videos_are_refused_at_the_door(tmp_path, make, message):
    path = tmp_path / "clip.mp4"
    make(path)
    with pytest.raises(PredictError, match=message) as caught:
        VideoReader(path)
    assert str(path) in str(caught.value) and "give an mp4, avi or webm video file" in str(caught.value)


def make_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_truncated_mp4_is_refused_at_the_door(videos, tmp_path):
    path = tmp_path / "cut.mp4"
    truncate(videos[".mp4"], path, 0.5)  # OpenCV writes the index (moov) at the end: it is gone
    with pytest.raises(PredictError, match="cannot be read as a video") as caught:
        VideoReader(path)
    assert str(path) in str(caught.value)


def test_a_truncated_avi_gives_its_rows_then_an_error(videos, tmp_path):
    require_detector()
    path = tmp_path / "cut.avi"
    truncate(videos[".avi"], path, 0.5)
    out = io.StringIO()
    with VideoReader(path) as reader, pytest.raises(PredictError, match="ended after") as caught:
        predict_video(brightness_probabilities, reader, out)
    message = str(caught.value)
    assert str(path) in message and f"of the {FRAMES} frames its header states" in message
    read = len({r["frame"] for r in read_csv(out.getvalue())})
    assert 0 < read < FRAMES and f"the CSV holds the {read} frames processed" in message


def test_annotated_names_are_checked(videos, tmp_path):
    with VideoReader(videos[".mp4"]) as reader:
        with pytest.raises(PredictError, match="give a name ending in .mp4"):
            predict_video(brightness_probabilities, reader, io.StringIO(), annotate=tmp_path / "out.gif")
        with pytest.raises(PredictError, match="would overwrite the video being read"):
            predict_video(brightness_probabilities, reader, io.StringIO(), annotate=videos[".mp4"])
        with pytest.raises(ValueError, match="every must be a whole number"):
            predict_video(brightness_probabilities, reader, io.StringIO(), every=0)


# ---------------------------------------------------------------------------
# `fer predict VIDEO`


def invoke(*args):
    from fer.cli import main

    return CliRunner().invoke(main, ["predict", *map(str, args)])


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 20])
def test_cli_reports_a_bad_video_without_loading_a_model_or_a_traceback(tmp_path, content):
    path = tmp_path / "clip.webm"
    path.write_bytes(content)
    # The model is never loaded: the video is checked first, so a model URI that exists nowhere is fine.
    result = invoke("--model-uri", "models:/not-loaded/1", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: '{path}'" in result.stderr and "give an mp4, avi or webm video file" in result.stderr
    assert "not-loaded" not in result.output


def test_cli_refuses_video_options_for_photos_and_several_videos(videos, tmp_path):
    photo = tmp_path / "face.png"
    photo.write_bytes(make_png())
    result = invoke("--model-uri", "models:/x/1", photo, "--every", "2", "--csv", tmp_path / "a.csv")
    assert result.exit_code == 2 and "--csv, --every: for a video only" in result.stderr
    result = invoke("--model-uri", "models:/x/1", videos[".mp4"], photo)
    assert result.exit_code == 2 and "give one video at a time, or only photos" in result.stderr
    result = invoke("--model-uri", "models:/x/1", videos[".mp4"], "--every", "0")
    assert result.exit_code == 2 and "--every" in result.stderr
    size = videos[".mp4"].stat().st_size
    result = invoke("--model-uri", "models:/x/1", videos[".mp4"], "--csv", videos[".mp4"])
    assert result.exit_code == 2 and "is the video, or the annotated video" in result.stderr
    assert videos[".mp4"].stat().st_size == size  # not opened for writing
    result = invoke("--model-uri", "models:/x/1", videos[".mp4"], "--annotate", tmp_path / "out.gif")
    assert result.exit_code == 1 and "give a name ending in .mp4" in result.stderr


@pytest.fixture(scope="module")
def store(tmp_path_factory, trained_baseline):
    """A temporary SQLite tracking store for this module (MLFLOW_TRACKING_URI too), and a trained baseline network."""
    folder = tmp_path_factory.mktemp("video-store")
    with active_store(folder):
        yield folder, trained_baseline


def network_rows(network, path, every: int = 1) -> dict[int, list[tuple[tuple, np.ndarray]]]:
    """Per processed frame, each found face's box and the network's own probabilities, computed independently."""
    capture, found, index = cv2.VideoCapture(str(path)), {}, 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if index % every == 0:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            boxes = fer_faces.detect_faces(gray)
            crops = fer_faces.crop_faces(gray, boxes)[..., np.newaxis].astype(np.float32)
            found[index] = list(zip(boxes, network.predict_on_batch(crops)))
        index += 1
    capture.release()
    return found


@pytest.mark.slow
def test_cli_predict_video_with_the_photo_model_writes_the_networks_probabilities(store, videos, tmp_path):
    require_detector()
    from fer.serving.photo_service import log_service_model

    folder, network = store
    keras_path = folder / "model.keras"
    network.save(keras_path)
    with mlflow.start_run():
        uri = log_service_model(keras_path).model_uri
    table, annotated = tmp_path / "emotions.csv", tmp_path / "annotated.avi"
    result = invoke("--model-uri", uri, videos[".mp4"], "--csv", table, "--annotate", annotated, "--every", "2",
                    "--half-life", "0")
    assert result.exit_code == 0, result.output
    assert f"{FRAMES}/{FRAMES} frames (100%)" in result.stderr  # the progress line, on stderr
    assert f"{FRAMES} frames, {FRAMES // 2} processed, {FRAMES} face rows, 2 face ids" in result.stderr
    assert result.stdout == ""  # the CSV went to its file
    rows = read_csv(table.read_text())
    expected = network_rows(network, videos[".mp4"], every=2)
    assert sorted({int(r["frame"]) for r in rows}) == sorted(expected) == list(range(0, FRAMES, 2))
    for row in rows:
        box = tuple(int(row[k]) for k in "xywh")
        (probabilities,) = [p for b, p in expected[int(row["frame"])] if b == box]
        # --half-life 0: each row is that frame's own network output, to the CSV's 6 decimals.
        np.testing.assert_allclose([float(row[c]) for c in PROBABILITY_COLUMNS], probabilities, atol=2e-6)
    assert count_frames(annotated) == FRAMES


@pytest.mark.slow
def test_cli_predict_video_with_a_training_runs_model_smooths_over_time(store, videos):
    require_detector()
    from fer.serving.pyfunc import log_emotion_model

    _, network = store
    faces, _ = make_faces(1, seed=0)
    with mlflow.start_run() as run:
        log_emotion_model(network, faces[..., np.newaxis].astype(np.float32))
    result = invoke("--model-uri", f"runs:/{run.info.run_id}/model", videos[".avi"], "--half-life", "0.3")
    assert result.exit_code == 0, result.output
    rows = read_csv(result.stdout)  # no --csv: the CSV is standard output, progress is not in it
    assert len(rows) == 2 * FRAMES and {r["face_id"] for r in rows} == {"1", "2"}
    expected = network_rows(network, videos[".avi"])
    weight = ema_weight(1 / FPS, 0.3)
    for face_id in ("1", "2"):
        track = [r for r in rows if r["face_id"] == face_id]
        smoothed = None
        for row in track:
            box = tuple(int(row[k]) for k in "xywh")
            (raw,) = [p for b, p in expected[int(row["frame"])] if b == box]
            smoothed = raw if smoothed is None else weight * raw + (1 - weight) * smoothed
            np.testing.assert_allclose([float(row[c]) for c in PROBABILITY_COLUMNS], smoothed, atol=2e-6)
