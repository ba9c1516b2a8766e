"""Inference speed on CPU: the logged Keras pyfunc against ONNX Runtime float32 and int8, and their accuracy.

    python benchmarks/inference.py [--model final] [--batches 1,32,256] [--seconds 0.5]
                                   [--rounds 3] [--calls 200]
                                   [--model-uri runs:/<id>/model [--data /data/ferplus]]
                                   [--calibration-faces 500] [--no-onnx]

The network is either freshly built (`--model`: final is phase 2, 5,873,096 parameters;
baseline phase 1), untrained: trained weights are other numbers in the same tensors, so
they run the same operations at the same speed; or, with `--model-uri`, the network of a
logged model (a run id, runs:/<id>/model, models:/fer-emotion@champion), so that the
accuracy table means something. It is logged with `fer.serving.pyfunc.log_emotion_model` into a
temporary SQLite store (`sqlite:///<tmp>/mlflow.db`, artifacts beside it, removed at the
end) and loaded back with `mlflow.pyfunc.load_model("runs:/<run id>/model")`, exactly as
a user loads a training run's model; and exported with `fer.export.runs` (Keras's ONNX
exporter, checked against Keras) and quantized to int8 by ONNX Runtime, calibrated on
--calibration-faces training faces (drawn faces for an untrained network). Every method
gets the same float32 N x 48 x 48 x 1 array of faces (`fer.data.synthetic.make_faces`,
raw pixel values 0-255) and returns N x 8 probabilities:

(a) bare `model.predict_on_batch(x)`: the reference. Of the two bare ways the issue
    names it is the faster: it runs Keras's compiled predict function (a tf.function)
    on the whole array in one step, while `model(x, training=False)` runs eagerly, op
    by op (about 3x slower on one face, within noise on batches);
(b) bare `model(x, training=False)`, eager (single-face table only);
(c) bare `tf.function(model(x, training=False))` with an input signature of any N,
    traced once (single-face table only): what a pyfunc could call instead;
(d) `model.predict(x, verbose=0)`, what `fer.serving.pyfunc.EmotionModel.predict` called before
    it used `fer.serving.pyfunc.forward`: per call Keras 3 builds a data adapter, a tf.data
    iterator and a callback list, then runs the predict function over batches of 32
    (single-face table only);
(e) the loaded pyfunc's `predict(x)`: MLflow's input-schema check, then
    `EmotionModel.predict`, which calls `fer.serving.pyfunc.forward` (`predict_on_batch` on
    chunks of up to 256 faces): the Keras pyfunc;
(f) ONNX Runtime, float32: the exported `.onnx` file in an InferenceSession (CPU,
    default threads), through `fer.serving.pyfunc.forward` like (e);
(g) ONNX Runtime, int8 static: ONNX Runtime's QDQ quantization of (f), activation
    ranges calibrated on training faces;
(h) ONNX Runtime, int8 dynamic: weights int8, activation ranges measured per call.

Table 1, batch throughput: faces per second of (a), (e), (f), (g), (h) for each batch
size in --batches, over whole calls lasting at least --seconds. Table 2, single-face
latency: milliseconds per call on one face (1 x 48 x 48 x 1), median and 95th percentile
over --calls calls of each method. Each method and batch size is warmed up first
(tracing, thread pools; excluded: Keras's retracing warnings come from there, one trace
per new shape), then the rounds interleave the methods (a, e, f, g, h, a, ... in table 1;
a, b, ..., h, a, ... in table 2), so that load from other processes hits all of them;
table 1 gives the median round, table 2 pools the calls of every round. Ratios are
against (a) and against (e), the Keras pyfunc, in the same run: absolute rates depend on
the machine and whatever else it is doing (a training job on the same cores shows as a
load average near or above nproc, and slows everything in proportion).
Table 3, accuracy: (a), (f), (g), (h) on the validation split of the model's training
data (or --data): accuracy and macro-F1, the change against (a), and the share of faces
given the same emotion as (a). With an untrained network it is printed for
completeness and says so: its accuracy is chance.
--no-onnx leaves (f)-(h) and table 3 out (for a machine without the [onnx] extra).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fer.export import runs as export  # noqa: E402
from fer.export import formats as exported
from fer.export import quantization
from fer.data.splits import EMOTIONS  # noqa: E402
from fer.data.synthetic import make_faces  # noqa: E402
from fer.models import build_model  # noqa: E402
from fer.evaluation.metrics import evaluate_predictions  # noqa: E402
from fer.serving.engines import FACE_SHAPE, forward  # noqa: E402
from fer.serving.pyfunc import log_emotion_model  # noqa: E402
from machine import describe, load_note  # noqa: E402  (benchmarks/machine.py)


# -- the logged model, loaded back -----------------------------------------------------------


def log_and_load(network: keras.Model, example: np.ndarray, folder: Path):
    """Log `network` as a training run does into a SQLite store under `folder`; load it back as a user would."""
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    # An explicit artifact location: the default would be ./mlruns in the working directory.
    experiment = mlflow.create_experiment("inference-benchmark", artifact_location=(folder / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_emotion_model(network, example)
    return mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")


# -- the methods -----------------------------------------------------------------------------


ONNX_FLOAT, ONNX_STATIC, ONNX_DYNAMIC = (
    "(f) ONNX Runtime float32", "(g) ONNX Runtime int8, static", "(h) ONNX Runtime int8, dynamic")


def methods_for(network: keras.Model, pyfunc, onnx_files: dict[str, Path]) -> dict[str, callable]:
    compiled = tf.function(
        lambda x: network(x, training=False),
        input_signature=[tf.TensorSpec((None, *FACE_SHAPE), tf.float32)],
    )
    methods = {
        "(a) bare model.predict_on_batch (reference)": network.predict_on_batch,
        "(b) bare model(x, training=False), eager": lambda x: np.asarray(network(x, training=False)),
        "(c) bare tf.function(model), input signature": lambda x: compiled(x).numpy(),
        "(d) model.predict(x, verbose=0), EmotionModel before": lambda x: network.predict(x, verbose=0),
        "(e) pyfunc predict (mlflow.pyfunc.load_model)": lambda x: np.asarray(pyfunc.predict(x)),
    }
    for name, path in onnx_files.items():
        session = exported.OnnxRuntimeNetwork(path)
        methods[name] = lambda x, session=session: forward(session, x)
    return methods


def export_onnx(network: keras.Model, calibration: np.ndarray, folder: Path) -> dict[str, Path]:
    """The network as ONNX (float32, checked against Keras by the caller) and its two int8 copies."""
    float_path = exported.export_network(network, folder / "model.onnx")
    return {
        ONNX_FLOAT: float_path,
        ONNX_STATIC: quantization.quantize(float_path, folder / "model.int8.onnx", "int8", calibration),
        ONNX_DYNAMIC: quantization.quantize(float_path, folder / "model.int8-dynamic.onnx", "int8-dynamic"),
    }


BATCH_METHODS = ("(a)", "(e)", "(f)", "(g)", "(h)")  # table 1: the reference, the pyfunc, ONNX Runtime
ACCURACY_METHODS = ("(a)", "(f)", "(g)", "(h)")


# -- the network and its faces ---------------------------------------------------------------


def network_and_data(args) -> tuple[keras.Model, str, object | None, int]:
    """(network, description, splits to measure accuracy on or None, seed) from --model or --model-uri."""
    if not args.model_uri:
        keras.utils.set_random_seed(0)
        network = build_model(args.model)
        return network, f"{args.model}, untrained", None, 0
    from mlflow import MlflowClient

    from fer.tracking import configure_tracking

    configure_tracking()
    with tempfile.TemporaryDirectory() as tmp:
        logged = export.load_logged_network(export.as_model_uri(args.model_uri), Path(tmp))
    splits, seed = export.measurement_data(MlflowClient(), logged.run_id, args.data)
    return logged.network, f"{args.model_uri} (run {logged.run_id})", splits, seed


def accuracy_table(methods: dict, splits, untrained: bool) -> list[str]:
    """Table 3: accuracy of (a), (f), (g), (h) on the validation split, against (a)."""
    val = splits.val
    x = val.images[..., np.newaxis].astype(np.float32)
    probabilities = {name: forward(_Batched(methods[name]), x)
                     for name in methods if name.startswith(ACCURACY_METHODS)}
    reference_name = next(iter(probabilities))
    reference = evaluate_predictions(val.labels, probabilities[reference_name], EMOTIONS, "val")
    rows = [f"Table 3: accuracy on the validation split ({len(val):,} faces of {splits.source})"
            + (" -- untrained network: chance level, shown only for the agreement column" if untrained else ""),
            "",
            "| method | accuracy | change vs (a) | macro-F1 | same emotion as (a) | max prob. diff vs (a) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, p in probabilities.items():
        evaluation = evaluate_predictions(val.labels, p, EMOTIONS, "val")
        parity = exported.measure_parity(probabilities[reference_name], p)
        rows.append(f"| {name} | {evaluation.accuracy:.4f} | {evaluation.accuracy - reference.accuracy:+.4f} | "
                    f"{evaluation.macro_f1:.4f} | {1 - parity.class_mismatch:.2%} | {parity.max_abs_diff:.1e} |")
    return rows


class _Batched:
    """A method as `fer.serving.pyfunc.forward` takes it (predict_on_batch), so every method sees chunks of 256."""

    def __init__(self, predict):
        self.predict_on_batch = predict


# -- measuring -------------------------------------------------------------------------------


def throughput(predict, x: np.ndarray, seconds: float) -> float:
    """Faces per second over whole calls lasting >= `seconds` (at least one call)."""
    faces, started = 0, time.perf_counter()
    while True:
        predict(x)
        faces += len(x)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return faces / elapsed


def latencies(predict, x: np.ndarray, calls: int) -> list[float]:
    """Seconds of each of `calls` calls."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - started)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("final", "baseline"), default="final",
                        help="final (phase 2, default) or baseline (phase 1)")
    parser.add_argument("--batches", default="1,32,256",
                        help="batch sizes for table 1, comma-separated (default 1,32,256; 1024 takes seconds per call)")
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum timed seconds per method, batch and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; table 1 reports the median")
    parser.add_argument("--calls", type=int, default=200, help="single-face calls per method in table 2, all rounds (rounded up to a multiple of --rounds)")
    parser.add_argument("--model-uri", help="a logged model to measure instead of an untrained --model: a run id, "
                                            "runs:/<id>/model or models:/<name>@<alias> (in MLFLOW_TRACKING_URI)")
    parser.add_argument("--data", help="with --model-uri: the data whose validation split table 3 uses "
                                       "(default: the data the model's training run used)")
    parser.add_argument("--calibration-faces", type=int, default=500,
                        help="training faces that calibrate the static int8 model (default 500)")
    parser.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime out: (a)-(e) only")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if min(batches) < 1 or args.rounds < 1 or args.calls < args.rounds or args.calibration_faces < 1:
        parser.error("batch sizes must be >= 1, --rounds >= 1, --calls >= --rounds and --calibration-faces >= 1")
    if args.data and not args.model_uri:
        parser.error("--data measures a trained model's accuracy: give --model-uri too")

    print(f"machine: {describe('tensorflow', 'keras', 'mlflow', *(() if args.no_onnx else ('onnxruntime',)))}")
    network, description, splits, seed = network_and_data(args)
    faces, _ = make_faces(max(batches), seed=0)
    x = faces[..., np.newaxis].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        pyfunc = log_and_load(network, x[:1], Path(tmp))
        print(f"model: {description}, {network.count_params():,} parameters; "
              f"logged and loaded back in {time.perf_counter() - started:.1f} s")
        onnx_files = {}
        if not args.no_onnx:
            started = time.perf_counter()
            if splits is not None:
                calibration = quantization.calibration_sample(splits.train.images, args.calibration_faces, seed)
            else:
                calibration = make_faces(args.calibration_faces, seed=1)[0][..., np.newaxis].astype(np.float32)
            onnx_files = export_onnx(network, calibration, Path(tmp))
            sizes = ", ".join(f"{name[:3]} {path.stat().st_size / 1e6:.1f} MB" for name, path in onnx_files.items())
            print(f"exported to ONNX and quantized ({len(calibration)} calibration faces) in "
                  f"{time.perf_counter() - started:.1f} s: {sizes}")
        methods = methods_for(network, pyfunc, onnx_files)
        reference = network.predict_on_batch(x[: batches[0]])
        for name, predict in methods.items():  # the same probabilities every float32 way
            if "int8" not in name:
                np.testing.assert_allclose(predict(x[: batches[0]]), reference, atol=1e-5, err_msg=name)
        print(f"batches: {batches}, at least {args.seconds} s per method, batch and round; "
              f"{args.rounds} rounds; {args.calls} single-face calls per method")

        # -- table 1: batch throughput -------------------------------------------------------
        batch_methods = {n: m for n, m in methods.items() if n.startswith(BATCH_METHODS)}
        for n in batches:  # warm-up: traces for each shape, thread pools
            for predict in batch_methods.values():
                predict(x[:n]), predict(x[:n])
        rates: dict[tuple[int, str], list[float]] = {(n, m): [] for n in batches for m in batch_methods}
        for _ in range(args.rounds):
            for n in batches:
                for name, predict in batch_methods.items():
                    rates[n, name].append(throughput(predict, x[:n], args.seconds))

        # -- table 2: single-face latency ----------------------------------------------------
        one = x[:1]
        for predict in methods.values():  # warm-up
            latencies(predict, one, 10)
        per_round = math.ceil(args.calls / args.rounds)
        times: dict[str, list[list[float]]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, predict in methods.items():
                times[name].append(latencies(predict, one, per_round))

        # -- table 3: accuracy ---------------------------------------------------------------
        if onnx_files:
            accuracy_splits = splits if splits is not None else _drawn_splits()
            accuracy_rows = accuracy_table(methods, accuracy_splits, untrained=splits is None)

    width = max(map(len, methods))
    pyfunc_name = next(name for name in methods if name.startswith("(e)"))
    print()
    print("Table 1: batch throughput (faces/s; median round)")
    print()
    print(f"| batch | {'method':<{width}} | faces/s | vs (a) | vs (e) | rounds, faces/s |")
    print(f"| ---: | {'-' * width} | ---: | ---: | ---: | --- |")
    for n in batches:
        bare = statistics.median(rates[n, next(iter(batch_methods))])
        served = statistics.median(rates[n, pyfunc_name])
        for name in batch_methods:
            rate = statistics.median(rates[n, name])
            rounds = ", ".join(f"{r:,.1f}" for r in rates[n, name])
            print(f"| {n} | {name:<{width}} | {rate:,.1f} | {rate / bare:.2f}x | {rate / served:.2f}x | {rounds} |")

    print()
    print(f"Table 2: single-face latency (ms per call, 1 x 48 x 48 x 1; {per_round * args.rounds} calls each)")
    print()
    print(f"| {'method':<{width}} | median ms | p95 ms | vs (a), median | vs (e), median | rounds, median ms |")
    print(f"| {'-' * width} | ---: | ---: | ---: | ---: | --- |")
    bare = statistics.median(t for r in times[next(iter(methods))] for t in r)
    served = statistics.median(t for r in times[pyfunc_name] for t in r)
    for name, rounds_times in times.items():
        pooled = [t for r in rounds_times for t in r]
        median, p95 = statistics.median(pooled), float(np.percentile(pooled, 95))
        rounds = ", ".join(f"{statistics.median(r) * 1e3:.1f}" for r in rounds_times)
        print(f"| {name:<{width}} | {median * 1e3:.1f} | {p95 * 1e3:.1f} | {median / bare:.1f}x | "
              f"{median / served:.2f}x | {rounds} |")
    if onnx_files:
        print()
        print("\n".join(accuracy_rows))
    print()
    print(load_note())


def _drawn_splits():
    """Drawn faces with their labels, for an untrained network's table 3 (chance accuracy)."""
    from fer import data as fer_data

    return fer_data.load("synthetic:400", seed=0, use_cache=False, progress=False)


if __name__ == "__main__":
    main()
