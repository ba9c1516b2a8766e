"""`fer predict`: photos and videos on disk through a model logged by this project.

Photos go through the photo model (`fer.serving.photo_service.FaceEmotionModel`); they
are read here and sent as bytes, so no FER_ALLOW_PATHS is needed. A photo that
cannot be used is reported and the rest still go through (`predict_files`);
the command fails at the end if any did.

A video (`predict_video`) is read frame by frame with OpenCV; faces are found
and cut here (`fer.serving.faces`) and classified by the photo model or a training
run's model (`load_face_model`), then followed and smoothed over time by
`fer.serving.video.FaceTracker`. This module only reads and writes: the tracking and
smoothing are in `fer.serving.video`.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from fer.serving import faces as fer_faces
from fer.data import images
from fer.serving import video as fer_video
from fer.data.splits import EMOTIONS
from fer.serving.photo_service import FaceEmotionModel
from fer.serving.pyfunc import IMAGE_COLUMN, EmotionModel
from fer.utils.atomic import AtomicOutput, OutputError, atomic_output


class PredictError(RuntimeError):
    """`fer predict` cannot use a model or a photo; the message names it and says what to do."""


class VideoTruncated(PredictError):
    """The video ended before the frame count its header states; the rows (and frames) read so far are written."""


def load_service_model(model_uri: str):
    """`mlflow.pyfunc.load_model(model_uri)`, checked to be a FaceEmotionModel; PredictError if not."""
    model = _load_pyfunc(model_uri)
    kind = _model_kind(model)
    if kind != FaceEmotionModel.__name__:
        raise PredictError(
            f"{model_uri} is not the photo model (it is {kind}): give the registered model, e.g. "
            "models:/fer-emotion@champion, or one logged by `fer promote`; a training run's `model` takes "
            "48x48 faces only"
        )
    return model


def load_face_model(model_uri: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function from uint8 faces (N x 48 x 48) to their N x 8 probabilities, through the model at `model_uri`.

    Either of the project's models will do, since the faces are cut here: the
    photo model (registered, e.g. models:/fer-emotion@champion) or a training
    run's `model` (runs:/<run id>/model). PredictError for anything else.

    >>> classify = load_face_model("models:/fer-emotion@champion")  # doctest: +SKIP
    >>> classify(np.zeros((2, 48, 48), np.uint8)).shape  # doctest: +SKIP
    (2, 8)
    """
    model = _load_pyfunc(model_uri)
    kind = _model_kind(model)
    if kind == FaceEmotionModel.__name__:
        def classify(faces):  # one row per face array, its probabilities under the emotion names
            return model.predict(_face_batch(faces))[list(EMOTIONS)].to_numpy(dtype=np.float64)
    elif kind == EmotionModel.__name__:
        def classify(faces):
            return np.asarray(model.predict(_face_batch(faces)), dtype=np.float64)
    else:
        raise PredictError(
            f"{model_uri} is not a model of this project (it is {kind}): give the registered model, e.g. "
            "models:/fer-emotion@champion, or a training run's model, runs:/<run id>/model"
        )
    return classify


def _face_batch(faces: np.ndarray) -> np.ndarray:
    return np.asarray(faces, dtype=np.float32)[..., np.newaxis]


def _load_pyfunc(model_uri: str):
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as err:
        raise PredictError(f"Cannot load model {model_uri}: {_first_line(err)}") from None


def _model_kind(model) -> str:
    """The class name of a pyfunc's Python model (by name: the model's own copy of this package may be
    a different module object), or its flavors when it is no Python model at all."""
    try:
        return type(model.unwrap_python_model()).__name__
    except MlflowException:
        return "a model of flavors " + ", ".join(model.metadata.flavors)


def predict_file(model, path: str | Path) -> pd.DataFrame:
    """The service model's rows for the photo at `path` (read here, sent as bytes); PredictError if unusable."""
    try:
        data = images.read_image_file(path)
        return model.predict(pd.DataFrame({IMAGE_COLUMN: [data]}))
    except images.ImageError as err:
        raise PredictError(str(err)) from None
    except MlflowException as err:
        raise PredictError(f"{path}: {_first_line(err).removeprefix(f'{IMAGE_COLUMN} row 0: ')}") from None


def predict_files(
    model, paths: Iterable[str | Path], annotate_dir: str | Path | None, echo: Callable[[str], None],
    echo_error: Callable[[str], None],
) -> int:
    """Predict each photo in `paths`, echoing its face lines (and annotated file); the number that failed.

    A photo that fails is reported through `echo_error` and the next one is
    tried: one bad photo should not hide the others' results.
    """
    failed = 0
    for path in paths:
        try:
            frame = predict_file(model, path)
            for line in describe_faces(str(path), frame):
                echo(line)
            if annotate_dir:
                echo(f"{path}\tannotated: {annotate_file(path, frame, annotate_dir)}")
        except PredictError as err:
            echo_error(f"Error: {err}")
            failed += 1
    return failed


def describe_faces(name: str, frame: pd.DataFrame) -> list[str]:
    """One line per face: file, box, emotion and its probability, then all 8 probabilities."""
    lines = []
    for row in frame.itertuples(index=False):
        if row.box is None:
            lines.append(f"{name}\tno face found")
            continue
        values = {emotion: float(getattr(row, emotion)) for emotion in EMOTIONS}
        box = ",".join(str(v) for v in row.box)
        spread = " ".join(f"{emotion}={value:.2f}" for emotion, value in values.items())
        lines.append(f"{name}\tbox={box}\t{row.emotion} {values[row.emotion]:.2f}\t{spread}")
    return lines


def annotate_file(path: str | Path, frame: pd.DataFrame, out_dir: str | Path) -> Path:
    """Write the photo at `path` with its faces boxed and labelled to OUT_DIR/<name>.annotated.png."""
    path, out_dir = Path(path), Path(out_dir)
    try:
        image = images.open_image(images.read_image_file(path))
    except images.ImageError as err:
        raise PredictError(f"{path}: {err}") from None
    faces = [
        (tuple(row.box), f"{row.emotion} {float(getattr(row, row.emotion)):.2f}")
        for row in frame.itertuples(index=False)
        if row.box is not None
    ]
    target = out_dir / f"{path.stem}.annotated.png"
    try:
        with atomic_output(target, "the annotated photo") as temporary:
            fer_faces.draw_faces(image, faces).save(temporary, format="PNG")
    except OutputError as err:
        raise PredictError(str(err)) from None
    return target


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------
# Videos: OpenCV reads and writes, fer.serving.video tracks and smooths

# Told by the name, as OpenCV (FFmpeg) would read any of them; a file with one of
# these suffixes that holds no video is reported as such by `VideoReader`.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".webm", ".mkv")
# What an annotated video is written as, by its suffix: OpenCV's FFmpeg writer encoders.
ANNOTATE_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".webm": "VP80"}
ASSUMED_FPS = 30.0  # for a video whose container states no frame rate
VIDEO_HINT = "give an mp4, avi or webm video file"


def is_video_path(path: str | Path) -> bool:
    """Whether `fer predict` reads the file at `path` as a video (by its suffix, `VIDEO_SUFFIXES`).

    >>> is_video_path("talk.MP4"), is_video_path("face.png")
    (True, False)
    """
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoSummary:
    """What `predict_video` did: frames read, frames processed, face rows written, tracks started, seconds."""

    frames: int
    processed: int
    faces: int
    tracks: int
    seconds: float
    annotated: Path | None = None


class VideoReader:
    """An opened video: its frames one at a time, their rate and count; checked at the door.

    Opening reads the first frame, so a file OpenCV cannot decode fails here,
    before a model is loaded, with a PredictError that names the file and says
    what is wrong: missing, empty, not a video, or no frame decodable
    (truncated or damaged). Use as a context manager.

    >>> with VideoReader("talk.mp4") as video:  # doctest: +SKIP
    ...     print(video.fps, video.frame_count, video.size)
    25.0 250 (640, 480)
    """

    def __init__(self, path: str | Path):
        import cv2

        self.path = Path(path)
        shown = _shown(self.path)
        if not self.path.is_file():
            raise PredictError(f"{shown} is not a file (missing, a folder, or not readable): {VIDEO_HINT}")
        size = self.path.stat().st_size
        if size == 0:
            raise PredictError(f"{shown} is empty (0 bytes): {VIDEO_HINT}")
        if _is_image_file(self.path):  # FFmpeg would read a photo as a one-frame video
            raise PredictError(
                f"{shown} is an image, not a video: give it its image suffix (.png, .jpg ...) to find the faces "
                f"in it as a photo, or {VIDEO_HINT}"
            )
        # FFmpeg only: left to choose, OpenCV would also try its image-sequence reader on any file.
        self._capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._capture.isOpened():
            self._capture.release()
            raise PredictError(
                f"{shown} ({size:,} bytes) cannot be read as a video: not a video file, or one damaged or cut "
                f"short before its index; {VIDEO_HINT}"
            )
        ok, first = self._capture.read()
        if not ok or first is None:
            self._capture.release()
            raise PredictError(
                f"{shown} opens as a video but no frame in it can be decoded (truncated or damaged?): {VIDEO_HINT}"
            )
        self._first = first
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps_assumed = not (math.isfinite(fps) and fps > 0)
        self.fps = ASSUMED_FPS if self.fps_assumed else float(fps)
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None  # None: not stated
        self.size = (first.shape[1], first.shape[0])  # width, height

    def frames(self, decode: Callable[[int], bool]) -> Iterable[tuple[int, np.ndarray | None]]:
        """(index, BGR frame) for every frame in order; the frame is None where `decode(index)` is false.

        Frames not decoded are only skipped over (OpenCV's `grab`), which
        saves converting them.
        """
        index, frame = 0, self._first  # decoded when opening; index 0 is always wanted
        self._first = None
        while True:
            yield index, frame
            index += 1
            if decode(index):
                ok, frame = self._capture.read()
            else:
                ok, frame = self._capture.grab(), None
            if not ok:
                return

    def close(self) -> None:
        self._capture.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_annotate_path(path: str | Path, video_path: str | Path) -> Path:
    """`path` as an annotated video's name: a suffix OpenCV can write (`ANNOTATE_CODECS`), not the video read.

    >>> check_annotate_path("out.gif", "talk.mp4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fer.serving.predict.PredictError: cannot write an annotated video to out.gif: give a name ending in .mp4, ...
    """
    path = Path(path)
    if path.suffix.lower() not in ANNOTATE_CODECS:
        raise PredictError(
            f"cannot write an annotated video to {path}: give a name ending in {', '.join(ANNOTATE_CODECS)}"
        )
    if path.resolve() == Path(video_path).resolve():
        raise PredictError(f"the annotated video {path} would overwrite the video being read: give another name")
    return path


class AnnotatedVideo:
    """An annotated copy of a video being written: every frame, its faces boxed with track id and emotion.

    The encoder follows the suffix (`ANNOTATE_CODECS`; check the name with
    `check_annotate_path` first); PredictError when OpenCV cannot write there
    or has no such encoder. Frames go to a temporary file beside `path`
    (`fer.utils.atomic.AtomicOutput`): `close()` checks the encoder's file
    holds every frame written and only then renames it to `path`;
    `close(failed=True)` removes it. OpenCV's encoder reports no write error
    (a full disk leaves a file cut short, without its index): that check is
    how a failed write is found, an OutputError naming the file.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        import cv2

        self.path = Path(path)
        codec = ANNOTATE_CODECS[self.path.suffix.lower()]  # checked by check_annotate_path
        self._output = AtomicOutput(self.path, "the annotated video")
        self._writer = cv2.VideoWriter(str(self._output.temporary), cv2.VideoWriter_fourcc(*codec), fps, size)
        self.frames = 0
        if not self._writer.isOpened():
            self._writer.release()
            self._output.discard()
            raise PredictError(
                f"OpenCV cannot write {self.path} (encoder {codec}): check the folder is writable, or try "
                "another suffix (.mp4, .avi)"
            )

    def write(self, frame: np.ndarray, faces: list[fer_video.TrackedFace]) -> None:
        """Append `frame` (BGR) with `faces` drawn as `fer.serving.faces.draw_faces` draws them on photos."""
        from PIL import Image

        if faces:
            labels = [
                (face.box, f"{face.track_id}: {face.emotion} {face.probabilities.max():.2f}") for face in faces
            ]
            drawn = fer_faces.draw_faces(Image.fromarray(frame[..., ::-1]), labels)
            frame = np.ascontiguousarray(np.asarray(drawn)[..., ::-1])
        self._writer.write(frame)
        self.frames += 1

    def close(self, failed: bool = False) -> None:
        """Finish the file: renamed into place when whole, else removed (always when `failed`)."""
        self._writer.release()
        if failed:
            self._output.discard()
            return
        readable = _readable_frames(self._output.temporary)
        if readable < self.frames:
            raise self._output.fail(f"the encoder's file is incomplete ({readable} of {self.frames} frames "
                                    f"readable): {_likely_cause(self.path.parent)}")
        self._output.commit()


def _readable_frames(path: Path) -> int:
    """How many frames a written video holds, by its index (0 when it cannot be opened: no index written)."""
    import cv2

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not capture.isOpened():
            return 0
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        if math.isfinite(count) and count > 0:
            return int(count)
        frames = 0  # no count in the header (webm): read them
        while capture.grab():
            frames += 1
        return frames
    finally:
        capture.release()


def _likely_cause(folder: Path) -> str:
    try:
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    except OSError:
        return "is the disk full?"
    if free < 64 * 1024 * 1024:
        return f"disk full ({free / 1e6:.1f} MB free in {folder}): free some space or write elsewhere"
    return "the disk may have been full, or a file-size limit reached (ulimit -f): write elsewhere"


def frame_gray(frame: np.ndarray) -> np.ndarray:
    """A BGR (or already gray) uint8 frame as 8-bit luma, the weights `fer.data.images.to_gray8` uses for photos."""
    import cv2

    if frame.ndim == 2:
        return frame
    # ITU-R 601 luma, as PIL's "L" conversion (rounding may differ by 1 in a pixel).
    return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)


def predict_video(
    classify: Callable[[np.ndarray], np.ndarray],
    video: VideoReader,
    out: TextIO,
    *,
    every: int = 1,
    tracker: fer_video.FaceTracker | None = None,
    annotate: str | Path | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> VideoSummary:
    """Write the CSV (`fer.serving.video.CSV_COLUMNS`) of every `every`-th frame of `video` to `out`; a VideoSummary.

    Each processed frame's faces are found (`fer.serving.faces.detect_faces`), cut
    and classified with `classify` (`load_face_model`), then followed and
    smoothed by `tracker` (a default `FaceTracker` when None); each gives one
    CSV row, and a frame without faces one row with blanks. `annotate` writes
    a copy of the whole video (every frame, at its rate) with the latest
    processed frame's faces drawn. `progress(done, total)` is called after
    every frame (total None when the video does not state it).

    A video that stops before the frame count its container states is a
    VideoTruncated (a PredictError) after the rows and the annotated frames
    read so far are written: it is truncated. On any other error, Ctrl-C
    included, no annotated video is left (an old one at `annotate` stays).

    >>> with VideoReader("talk.mp4") as video:  # doctest: +SKIP
    ...     predict_video(load_face_model("models:/fer-emotion@champion"), video, sys.stdout, every=5)
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a whole number of frames >= 1, got {every!r}")
    tracker = fer_video.FaceTracker() if tracker is None else tracker
    if annotate is not None:
        check_annotate_path(annotate, video.path)
    writer = AnnotatedVideo(annotate, video.fps, video.size) if annotate is not None else None
    failed = True
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(fer_video.CSV_COLUMNS)
    started, frames, processed, face_rows = time.monotonic(), 0, 0, 0
    faces: list[fer_video.TrackedFace] = []

    def wanted(index: int) -> bool:
        return index % every == 0 or writer is not None

    try:
        for index, frame in video.frames(wanted):
            if index % every == 0:
                seconds = index / video.fps
                faces = tracker.update(seconds, *_classified_faces(classify, frame_gray(frame)))
                rows.writerows(fer_video.csv_rows(seconds, index, faces))
                processed += 1
                face_rows += len(faces)
            if writer is not None:
                writer.write(frame, faces)
            frames = index + 1
            if progress is not None:
                progress(frames, video.frame_count)
        out.flush()
        failed = False
    finally:
        if writer is not None:
            writer.close(failed=failed)  # a failed or interrupted run leaves no annotated video
    if video.frame_count is not None and frames < video.frame_count:
        raise VideoTruncated(
            f"{_shown(video.path)} ended after {frames} of the {video.frame_count} frames its header states: it is "
            f"truncated or damaged (the CSV holds the {processed} frames processed until then); re-encode or "
            "re-download it"
        )
    return VideoSummary(
        frames=frames, processed=processed, faces=face_rows, tracks=tracker.started,
        seconds=time.monotonic() - started, annotated=writer.path if writer is not None else None,
    )


def quiet_video_logs() -> None:
    """Leave FFmpeg's and OpenCV's own warnings ("moov atom not found") out of stderr, for a command line.

    `VideoReader` says what is wrong in words; FFmpeg's level is only set when
    the environment has not set one (OPENCV_FFMPEG_LOGLEVEL).
    """
    import cv2

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _is_image_file(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _shown(path: Path) -> str:
    return repr(str(path))


def _classified_faces(classify, gray: np.ndarray) -> tuple[list, np.ndarray]:
    boxes = fer_faces.detect_faces(gray)
    if not boxes:
        return [], np.zeros((0, len(EMOTIONS)))
    return boxes, classify(fer_faces.crop_faces(gray, boxes))


def progress_printer(name: str, stream: IO[str] | None = None, every_seconds: float = 1.0):
    """A `progress` callback for `predict_video`: `fer.serving.video.progress_text` on `stream` (stderr), throttled.

    On a terminal the line is rewritten in place about every `every_seconds`;
    elsewhere (a log file) a line is added every 10 x `every_seconds`. The last
    frame always gets its line.
    """
    stream = stream or sys.stderr
    tty = stream.isatty()
    interval = every_seconds if tty else 10 * every_seconds
    started = time.monotonic()
    last = [started]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < interval and done != total:
            return
        last[0] = now
        text = fer_video.progress_text(name, done, total, now - started)
        stream.write(f"\r{text}\033[K" if tty else text + "\n")
        if tty and done == total:
            stream.write("\n")
        stream.flush()

    return report
