"""Video throughput: frames per second of `fer predict VIDEO` at 640x480, against face detection alone.

    python benchmarks/video.py [--model final] [--frames 150] [--rounds 3]

A 640x480, 25 frames/s video is written first with OpenCV (mp4v, as `fer predict
--annotate` writes .mp4): two drawn faces (`fer.data.synthetic.make_faces`,
scaled to 120 and 150 px, sizes the Haar cascade finds) drifting across fresh
noise every frame. The network (`--model`: final is phase 2, baseline phase 1)
is freshly built, not trained: trained weights are other numbers in the same
tensors and run at the same speed. It is logged as the photo model
(`fer.serving.photo_service.log_service_model`) into a temporary SQLite store and loaded
back with `fer.serving.predict.load_face_model`, as `fer predict --model` loads it.

Every method runs over the whole video, from the file:

(a) decode, gray and `fer.serving.faces.detect_faces` on every frame: the reference,
    the least any per-frame face pipeline over this video costs;
(b) decode only (OpenCV's `read`), for scale;
(c) `fer.serving.predict.predict_video`, every frame: detection, cropping, the
    loaded model, tracking, smoothing and the CSV (written to memory);
(d) the same with `every=5` (`fer predict --every 5`);
(e) the same as (c) with `annotate=<tmp>/annotated.mp4`.

Frames/s are the video's frames over the wall time of the whole pass (for (d),
all frames, not only the processed fifth). Methods are warmed up once on a 5-frame video, then
the rounds interleave them (a, b, c, d, e, a, ...) so that load from other processes
hits all; the table gives the median round and its ratio against (a) in the
same run, which holds when absolute rates move with the machine and its load.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fer.serving import faces as fer_faces  # noqa: E402
from fer.data.synthetic import make_faces  # noqa: E402
from fer.models import build_model  # noqa: E402
from fer.serving.photo_service import log_service_model  # noqa: E402
from fer.serving.predict import VideoReader, frame_gray, load_face_model, predict_video  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py)

SIZE = (640, 480)  # width, height
FPS = 25.0
SIDES = (150, 120)


def write_video(path: Path, frames: int) -> None:
    """Two drawn faces drifting across fresh noise, 640x480 at 25 frames/s, mp4v."""
    drawn, _ = make_faces(2, seed=7)
    faces = [np.asarray(Image.fromarray(f).resize((s, s), Image.Resampling.BICUBIC)) for f, s in zip(drawn, SIDES)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    rng = np.random.default_rng(0)
    for frame in range(frames):
        gray = np.clip(rng.normal(128, 20, SIZE[::-1]), 0, 255).astype(np.uint8)
        step = frame % 100  # back and forth, staying inside the frame
        for face, (x, y) in zip(faces, [(40 + 2 * step, 60 + step), (420, 40 + 2 * step)]):
            gray[y:y + len(face), x:x + len(face)] = face
        writer.write(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    writer.release()


def log_and_load(network, folder: Path):
    """Log `network` as the photo model into a SQLite store under `folder`; load it back as `fer predict` does."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.create_experiment("video-benchmark", artifact_location=(folder / "artifacts").as_uri())
    keras_path = folder / "model.keras"
    network.save(keras_path)
    with mlflow.start_run(experiment_id=experiment):
        info = log_service_model(keras_path)
    return load_face_model(info.model_uri)


def detection_only(path: Path) -> int:
    frames = 0
    with VideoReader(path) as video:
        for _, frame in video.frames(lambda index: True):
            fer_faces.detect_faces(frame_gray(frame))
            frames += 1
    return frames


def decode_only(path: Path) -> int:
    frames = 0
    with VideoReader(path) as video:
        for _ in video.frames(lambda index: True):
            frames += 1
    return frames


def full(classify, path: Path, every: int = 1, annotate: Path | None = None) -> int:
    with VideoReader(path) as video:
        summary = predict_video(classify, video, io.StringIO(), every=every, annotate=annotate)
    return summary.frames


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("final", "baseline"), default="final")
    parser.add_argument("--frames", type=int, default=150, help="frames in the video (default 150: 6 s at 25 fps)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table gives the median")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.rounds < 1:
        parser.error("--frames and --rounds must be >= 1")

    print(f"machine: {describe('tensorflow', 'keras', 'mlflow', 'opencv-python-headless')}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video, short = tmp / "faces.mp4", tmp / "warm-up.mp4"
        write_video(video, args.frames)
        write_video(short, 5)
        keras.utils.set_random_seed(0)
        network = build_model(args.model)
        classify = log_and_load(network, tmp)
        print(f"video: {SIZE[0]}x{SIZE[1]}, {args.frames} frames at {FPS:g} frames/s, mp4v, two faces; "
              f"model: {args.model}, {network.count_params():,} parameters, logged as the photo model and loaded back")
        methods = {
            "(a) decode + detect_faces (reference)": lambda path: detection_only(path),
            "(b) decode only": lambda path: decode_only(path),
            "(c) predict_video, every frame": lambda path: full(classify, path),
            "(d) predict_video, every=5": lambda path: full(classify, path, every=5),
            "(e) predict_video + annotate .mp4": lambda path: full(classify, path, annotate=tmp / "annotated.mp4"),
        }
        with VideoReader(video) as reader:
            found = sum(len(fer_faces.detect_faces(frame_gray(f))) for _, f in reader.frames(lambda i: True))
        print(f"faces found: {found} in {args.frames} frames (two drawn per frame)")
        for run in methods.values():  # warm-up on a 5-frame video: traces, thread pools, codec start-up
            run(short)
        rates: dict[str, list[float]] = {name: [] for name in methods}
        for round_ in range(args.rounds):
            for name, run in methods.items():
                started = time.perf_counter()
                frames = run(video)
                rates[name].append(frames / (time.perf_counter() - started))
                # As it goes: on a busy machine a long run may be cut short.
                print(f"round {round_ + 1}: {name}: {rates[name][-1]:.2f} frames/s", flush=True)

    width = max(map(len, methods))
    reference = statistics.median(next(iter(rates.values())))
    print()
    print(f"Video throughput at {SIZE[0]}x{SIZE[1]} (video frames/s, median of {args.rounds} rounds)")
    print()
    print(f"| {'method':<{width}} | frames/s | vs (a) | rounds, frames/s |")
    print(f"| {'-' * width} | ---: | ---: | --- |")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"| {name:<{width}} | {rate:,.1f} | {rate / reference:.2f}x | {', '.join(f'{v:,.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
