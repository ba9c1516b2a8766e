"""Serving under load: a real `mlflow models serve` of the photo model, hit by concurrent clients.

    python benchmarks/serving_load.py [--model-uri URI] [--clients 4] [--requests 400] [--seconds 60]
    python benchmarks/serving_load.py --detection [--rounds 3]

Load mode (default). The model is the one given (`--model-uri`, a photo model:
models:/fer-emotion@champion, runs:/<training run id>/photo_model, a folder), or
else a freshly built, untrained baseline network logged with
`fer.serving.photo_service.log_service_model` into a temporary SQLite store (removed at
the end): untrained weights run the same operations at the same speed. It is
served with `mlflow models serve --env-manager local --workers 1` on
127.0.0.1, and --clients threads each send requests in turn, cycling through a
fixed mix until --requests have been sent or --seconds have passed, whichever
comes first:

- faces: 8 drawn 48x48 faces as an array (`{"inputs": ...}`);
- photo: one 320x240 PNG photo with two drawn faces, base64 (`dataframe_records`);
- large photo: a 3000x3000 JPEG of the same scene (decoded shrunk, searched at 640 px);
- strip: a 3000x1 PNG (no face; made OpenCV fail before);
- junk: base64 of text, and a string that is neither base64 nor allowed as a path
  (both answered 400).

Printed: requests/s, p50 / p99 latency per kind and overall, the count of 2xx,
4xx, 5xx answers and of connection errors (a refused, reset or timed-out
connection), and the server's resident memory (all its processes) after
start-up and warm-up and at the end: flat memory is what a long-running server
needs. Absolute rates depend on the machine and its load; run it on a quiet one.

Detection mode (`--detection`): one 6000x6000 RGB JPEG photo with two faces,
decoded and searched the way serving did before (whole photo decoded, copy of
1024 px a side searched) and the way it does now (`fer.data.images.decode_photo`: a
JPEG decoded at a reduced scale to at most 1280 px; `fer.serving.faces.find_faces` on
a 640 px copy), interleaved over --rounds; median seconds each and the ratio.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from fer.serving import faces as fer_faces  # noqa: E402
from fer.data import images  # noqa: E402
from fer.data.synthetic import make_faces  # noqa: E402
from local_servers import ServerDidNotStart, start_model_server, stop_process_group  # noqa: E402  (scripts/)
from machine import describe, load_note  # noqa: E402  (benchmarks/machine.py)

START_TIMEOUT = 300  # seconds for the server to answer /ping
REQUEST_TIMEOUT = 120


# -- inputs ------------------------------------------------------------------------------------


def scene(width: int, height: int, seed: int = 7) -> np.ndarray:
    """An RGB photo: a smooth gray background with two drawn faces at a fifth and three fifths across."""
    rng = np.random.default_rng(seed)
    base = np.clip(rng.normal(128, 20, (24, 32)), 0, 255).astype(np.uint8)
    photo = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)).copy()
    side = height * 2 // 5
    for face, left in zip(make_faces(2, seed=seed)[0], (width // 5, width * 3 // 5)):
        top = height // 4
        photo[top:top + side, left:left + side] = np.asarray(
            Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC)
        )
    return np.repeat(photo[..., np.newaxis], 3, axis=2)


def encoded(pixels: np.ndarray, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def request_mix() -> list[tuple[str, bytes]]:
    """(kind, JSON body) of each request in the cycle the clients send."""
    def photo_body(data: bytes) -> bytes:
        return json.dumps({"dataframe_records": [{"image": b64(data)}]}).encode()

    faces, _ = make_faces(8, seed=1)
    return [
        ("faces", json.dumps({"inputs": faces.tolist()}).encode()),
        ("photo", photo_body(encoded(scene(320, 240), "PNG"))),
        ("large photo", photo_body(encoded(scene(3000, 3000), "JPEG", quality=80))),
        ("strip", photo_body(encoded(np.full((1, 3000), 100, np.uint8), "PNG"))),
        ("junk", photo_body(b"this is not an image file, only some text " * 4)),
        ("junk", json.dumps({"dataframe_records": [{"image": "not-base64-and-no-paths-allowed"}]}).encode()),
    ]


# -- the server --------------------------------------------------------------------------------


def log_untrained_model(folder: Path) -> str:
    """A baseline network, untrained, logged as the photo model into a SQLite store under `folder`."""
    import mlflow

    from fer.models import build_model
    from fer.serving.photo_service import log_service_model

    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.create_experiment("serving-benchmark", artifact_location=(folder / "artifacts").as_uri())
    keras_path = folder / "model.keras"
    build_model("baseline").save(keras_path)
    with mlflow.start_run(experiment_id=experiment):
        return log_service_model(keras_path).model_uri


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in process group `pgid` (the server and its workers), MB."""
    total_pages = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of stat: the process group
                total_pages += int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return total_pages * os.sysconf("SC_PAGE_SIZE") / 1e6


# -- the clients -------------------------------------------------------------------------------


def send(base: str, body: bytes) -> tuple[int | None, float]:
    """(HTTP status or None for a connection error, seconds) of one POST to /invocations."""
    request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    except OSError:  # refused, reset, timed out
        status = None
    return status, time.perf_counter() - started


def run_clients(base: str, mix, clients: int, requests: int, seconds: float) -> tuple[list, float]:
    """[(kind, status, seconds)] of every request the clients sent, and the wall time they took."""
    results, lock = [], threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + seconds

    def client():
        while time.monotonic() < stop_at:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            kind, body = mix[index % len(mix)]
            status, elapsed = send(base, body)
            with lock:
                results.append((kind, status, elapsed))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report_load(results: list, wall: float) -> None:
    print("| kind | requests | 2xx | 4xx | 5xx | conn. errors | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    kinds = sorted({kind for kind, _, _ in results}) + ["all"]
    for kind in kinds:
        rows = [r for r in results if kind in ("all", r[0])]
        statuses = [status for _, status, _ in rows]
        times = [elapsed * 1e3 for _, _, elapsed in rows]
        counts = [sum(1 for s in statuses if s is not None and low <= s < low + 100) for low in (200, 400, 500)]
        errors = statuses.count(None)
        print(f"| {kind} | {len(rows)} | {counts[0]} | {counts[1]} | {counts[2]} | {errors} | "
              f"{percentile(times, 50):.0f} | {percentile(times, 99):.0f} |")
    print()
    print(f"{len(results)} requests in {wall:.1f} s: {len(results) / wall:.2f} requests/s")


def load_mode(args) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.model_uri:
            model_uri = args.model_uri
            print(f"model: {model_uri}")
        else:
            model_uri = log_untrained_model(folder)
            print(f"model: baseline network, untrained, logged as the photo model ({model_uri})")
        mix = request_mix()
        print(f"mix: {', '.join(kind for kind, _ in mix)}; bodies {', '.join(f'{len(b) / 1e3:.0f} KB' for _, b in mix)}")
        print(f"clients: {args.clients}; at most {args.requests} requests or {args.seconds:.0f} s")
        try:
            process, base = start_model_server(model_uri, mlflow.get_tracking_uri(), folder / "server.log",
                                               START_TIMEOUT)
        except ServerDidNotStart as err:
            raise SystemExit(str(err)) from None
        try:
            for _, body in mix:  # warm-up: first-call tracing and lazy imports are not what is measured
                send(base, body)
            rss_start = group_rss_mb(process.pid)
            results, wall = run_clients(base, mix, args.clients, args.requests, args.seconds)
            rss_end = group_rss_mb(process.pid)
        finally:
            stop_process_group(process)
    print()
    report_load(results, wall)
    print(f"server memory (RSS, all its processes): {rss_start:,.0f} MB after warm-up, {rss_end:,.0f} MB at the end "
          f"({rss_end / rss_start:.2f}x)")


# -- detection mode ----------------------------------------------------------------------------


def detect_before(data: bytes) -> list:
    """Serving before: the whole photo decoded to gray, a copy of 1024 px a side searched."""
    gray = np.asarray(images.open_image(data).convert("L"))
    saved = fer_faces.DETECT_MAX_SIDE
    fer_faces.DETECT_MAX_SIDE = 1024
    try:
        return fer_faces.detect_faces(gray)
    finally:
        fer_faces.DETECT_MAX_SIDE = saved


def detect_now(data: bytes) -> list:
    """Serving now: decoded shrunk (`decode_photo`), searched by `find_faces`; boxes in photo pixels."""
    photo = images.decode_photo(data)
    return [photo.to_photo_pixels(box) for box in fer_faces.find_faces(photo.gray)]


def detection_mode(args) -> None:
    data = encoded(scene(6000, 6000), "JPEG", quality=75)
    print(f"photo: 6000x6000 RGB JPEG, {len(data) / 1e3:.0f} KB, two faces of 2400 px")
    methods = {"before: full decode, 1024 px search": detect_before, "now: decode_photo + find_faces": detect_now}
    for method in methods.values():
        method(data)  # warm-up: the cascade loads once
    times = {name: [] for name in methods}
    found = {}
    for _ in range(args.rounds):
        for name, method in methods.items():
            started = time.perf_counter()
            found[name] = method(data)
            times[name].append(time.perf_counter() - started)
    reference = statistics.median(times[next(iter(methods))])
    print()
    print("| method | median s | vs before | rounds, s | faces found |")
    print("| --- | ---: | ---: | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {median:.3f} | {median / reference:.2f}x | {rounds} | {found[name]} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-uri", help="a photo model to serve; default: an untrained baseline, logged here")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=int, default=400, help="at most this many requests in all (default 400)")
    parser.add_argument("--seconds", type=float, default=60, help="and for at most this long (default 60)")
    parser.add_argument("--detection", action="store_true", help="time face detection on a 6000x6000 photo instead")
    parser.add_argument("--rounds", type=int, default=3, help="detection mode: interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    for name in ("clients", "requests", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    print(f"machine: {describe('mlflow', 'tensorflow', 'opencv-python-headless', 'pillow')}")
    (detection_mode if args.detection else load_mode)(args)
    print()
    print(load_note())


if __name__ == "__main__":
    main()
