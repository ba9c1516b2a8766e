"""`mlflow models serve` with the Keras engine against the ONNX Runtime engine: memory and latency.

    python benchmarks/serving_engines.py [--model final] [--requests 200] [--batch 64] [--batches 30]

The network (`--model`: final is phase 2, 5,873,096 parameters; baseline phase 1) is
freshly built: trained weights are other numbers in the same tensors, so they cost the
same memory and time. In a temporary SQLite store it is logged twice, as users get it:

(k) the training pyfunc (`fer.serving.pyfunc.log_emotion_model`), TensorFlow and Keras inside;
(o) the same network exported to ONNX (`fer.export.formats.export_network`) and logged as the
    ONNX-engine pyfunc (`fer.export.runs.log_onnx_engine_pyfunc`, what `fer export --pyfunc`
    logs): ONNX Runtime inside, TensorFlow never imported.

Each is served in turn by `mlflow models serve --env-manager local --workers 1` on
127.0.0.1 (`scripts/local_servers.py`), and measured through HTTP as a client sees it:
start-up time to the first answered /ping; resident memory of the server's whole
process tree (psutil) when idle after start-up and after the requests; single-face
latency (POST /invocations with one face, --requests calls after 10 warm-up calls,
median and 95th percentile); and batch throughput (--batches calls of --batch faces).
One server runs at a time, (k) then (o) then (k) again, so that a change of load during
the run shows as a difference between the two (k) rows; the ratios are against (k)'s
first row, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from fer.data.synthetic import make_faces  # noqa: E402
from local_servers import start_model_server, stop_process_group  # noqa: E402  (scripts/)
from machine import describe, load_note  # noqa: E402  (benchmarks/machine.py)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB."""
    process = psutil.Process(pid)
    members = [process, *process.children(recursive=True)]
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def post(base: str, faces: np.ndarray) -> float:
    """Seconds for one POST /invocations of `faces`; checks that 8 probabilities per face came back."""
    body = json.dumps({"inputs": faces.tolist()}).encode()
    request = urllib.request.Request(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    elapsed = time.perf_counter() - started
    predictions = np.asarray(answer["predictions"])
    if predictions.shape != (len(faces), 8):
        raise RuntimeError(f"expected {len(faces)} x 8 probabilities, got {predictions.shape}")
    return elapsed


def measure(name: str, model_uri: str, tracking_uri: str, folder: Path, args, faces: np.ndarray) -> dict:
    started = time.perf_counter()
    process, base = start_model_server(model_uri, tracking_uri, folder / f"{name}.log")
    try:
        startup = time.perf_counter() - started
        idle = tree_rss_mb(process.pid)
        one = faces[:1]
        for _ in range(10):
            post(base, one)
        latencies = sorted(post(base, one) * 1000 for _ in range(args.requests))
        batch = faces[: args.batch]
        post(base, batch)
        seconds = sum(post(base, batch) for _ in range(args.batches))
        loaded = tree_rss_mb(process.pid)
    finally:
        stop_process_group(process)
    return {
        "name": name, "startup_s": startup, "idle_mb": idle, "loaded_mb": loaded,
        "median_ms": statistics.median(latencies), "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
        "faces_per_s": args.batch * args.batches / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="final", choices=("final", "baseline"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()
    print(describe("tensorflow", "keras", "mlflow", "onnxruntime"))

    from fer.export.runs import log_onnx_engine_pyfunc
    from fer.export.formats import export_network
    from fer.models import build_model
    from fer.serving.pyfunc import log_emotion_model

    faces = make_faces(max(args.batch, 1), seed=3)[0][..., np.newaxis].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment("serving-engines")
        network = build_model(args.model)
        with mlflow.start_run() as run:
            keras_uri = log_emotion_model(network, faces[:2]).model_uri
        onnx_path = export_network(network, folder / "model.onnx")
        onnx_uri = log_onnx_engine_pyfunc(onnx_path, "pyfunc_model.py", run.info.run_id).model_uri
        print(f"model: {args.model}, {network.count_params():,} parameters; {args.requests} single-face calls, "
              f"{args.batches} calls of {args.batch} faces per server")
        rows = [measure(name, uri, tracking_uri, folder, args, faces)
                for name, uri in (("(k) Keras engine", keras_uri), ("(o) ONNX Runtime engine", onnx_uri),
                                  ("(k) Keras engine, again", keras_uri))]
    reference = rows[0]
    print("\n| server | start-up s | memory idle MiB | memory after MiB | one face median ms (p95) | "
          f"batch {args.batch}, faces/s | vs (k): memory after, median ms, faces/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for row in rows:
        ratios = (f"{row['loaded_mb'] / reference['loaded_mb']:.2f}x, {row['median_ms'] / reference['median_ms']:.2f}x, "
                  f"{row['faces_per_s'] / reference['faces_per_s']:.2f}x")
        print(f"| {row['name']} | {row['startup_s']:.1f} | {row['idle_mb']:.0f} | {row['loaded_mb']:.0f} | "
              f"{row['median_ms']:.1f} ({row['p95_ms']:.1f}) | {row['faces_per_s']:.0f} | {ratios} |")
    print(f"\n{load_note()}")


if __name__ == "__main__":
    main()
