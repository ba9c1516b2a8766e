"""Phase 2's training and inference rate against the matmul rate the same cores reach (issue #28).

    python benchmarks/ceiling.py [--quick] [--precisions float32,mixed_bfloat16]

For each precision, in a fresh process of its own (so that a Keras dtype policy or a
oneDNN kernel cache never carries over), one after the other on the same cores:

- the ceiling: TensorFlow's own `tf.linalg.matmul` of two n x n matrices (n 2048;
  1024 with --quick), float32 or bfloat16, in a `tf.function`, warmed up; 2 n^3 / t FLOP/s;
- training: phase 2 (`fer.models.build_model("final")`, compiled as a run compiles it,
  `fer.training.train.compile_model`: Adam, categorical cross-entropy, accuracy; the
  Keras dtype policy float32 or mixed_bfloat16, XLA off) stepped with `train_on_batch`
  on batch 64 of in-memory random faces (0-255, float32);
- inference: `predict_on_batch` on 256 random faces.

After 3 warm-up calls of each, 12 rounds (4 with --quick) each time 3 matmuls, one training
step and one prediction, interleaved so that load arriving mid-run hits all three; the
table has the medians, and the median of the rounds' own ratios beside them.

FLOPs are counted analytically from the built model, one multiply-add = 2 FLOPs:
Conv2D 2 K K Cin Cout Hout Wout, Dense 2 In Out, per face (BatchNorm, ReLU, pooling,
dropout and the loss are left out: under 1 % here). A training step is counted as
3x the forward pass: the backward pass of a convolution or dense layer is two
products of the forward's size (gradient by the input, by the weights); the first
convolution's input gradient, which TensorFlow skips, is 0.4 % of the forward. The
script also asks TensorFlow's own profiler (`tf.compat.v1.profiler`, float_operation)
for the forward graph's FLOPs and prints both, as a check on the count.

Prints the machine (CPU model, AVX-512 / AMX / BF16 flags of /proc/cpuinfo), the load
average at the start and the end, and per precision: GFLOP/s of matmul, training
and inference, and their ratios to the matmul ceiling of the same precision.
Timings are the same run's; the ratios are the point, the absolute rates depend on
what else shares the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_flags, describe, load_average  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("float32", "mixed_bfloat16")
TRAIN_BATCH, PREDICT_BATCH = 64, 256


# -- the model's FLOPs -------------------------------------------------------------------------


def forward_flops(model) -> int:
    """FLOPs of one face's forward pass: 2 x multiply-adds of every Conv2D and Dense layer."""
    import keras

    total = 0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            c_in, c_out = layer.kernel.shape[2], layer.kernel.shape[3]
            _, h_out, w_out, _ = layer.output.shape
            total += 2 * kh * kw * c_in * c_out * h_out * w_out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


def _layers(model):
    for layer in model.layers:
        yield from (_layers(layer) if hasattr(layer, "layers") else [layer])


def profiler_flops(model, batch: int) -> int | None:
    """TensorFlow's profiler's count (float_operation) for the forward graph of `batch` faces, per face."""
    import tensorflow as tf

    try:
        forward = tf.function(lambda x: model(x, training=False))
        graph = forward.get_concrete_function(tf.TensorSpec([batch, 48, 48, 1], tf.float32)).graph
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        info = tf.compat.v1.profiler.profile(graph=graph, options=options)
        return info.total_float_ops // batch
    except Exception as err:  # the v1 profiler is legacy: a failure is reported, not fatal
        print(f"note: tf.compat.v1.profiler failed: {err!r}", file=sys.stderr)
        return None


# -- one precision, in its own process ----------------------------------------------------------


def run_precision(precision: str, quick: bool) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import tensorflow as tf

    from fer.config import load_config
    from fer.training.train import compile_model

    n = 1024 if quick else 2048
    rounds = 4 if quick else 12
    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    a = tf.random.normal([n, n], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    matmul = tf.function(lambda a, b: tf.linalg.matmul(a, b))

    config = load_config("phase2", {"data": "synthetic:64", "dtype_policy": precision, "jit_compile": "false"})
    model = compile_model(config)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (TRAIN_BATCH, 48, 48, 1)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, TRAIN_BATCH)]
    faces = rng.uniform(0, 255, (PREDICT_BATCH, 48, 48, 1)).astype(np.float32)
    work = {
        "matmul_s": lambda: matmul(a, b).numpy(),
        "train_s": lambda: model.train_on_batch(x, y),
        "predict_s": lambda: model.predict_on_batch(faces),
    }
    for call in work.values():  # warm-up: tracing, oneDNN primitive creation
        for _ in range(3):
            call()
    # Interleaved rounds (3 matmuls, a training step, a prediction): load arriving mid-run
    # slows all three alike, so each round's ratio holds even when the rates swing.
    times = {name: [] for name in work}
    for _ in range(rounds):
        for name, call in work.items():
            for _ in range(3 if name == "matmul_s" else 1):
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
    return {
        "precision": precision,
        "n": n,
        **times,
        "forward_flops": forward_flops(model),
        "profiler_forward_flops": profiler_flops(model, 1),
        "parameters": model.count_params(),
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
    }


# -- the comparison ------------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_precision(args.child, args.quick)))
        return
    precisions = args.precisions.split(",")
    if unknown := sorted(set(precisions) - set(PRECISIONS)):
        sys.exit(f"--precisions takes {', '.join(PRECISIONS)}; got {', '.join(unknown)}")
    started = time.monotonic()
    print(f"machine: {describe('tensorflow', 'keras')}")
    print(f"CPU flags: {cpu_flags()}")
    print(f"load average at start: {load_average()}")
    print(f"{'quick: n 1024, 4 rounds' if args.quick else 'n 2048, 12 rounds'}; "
          f"train batch {TRAIN_BATCH}, predict batch {PREDICT_BATCH}\n", flush=True)
    results = []
    for precision in precisions:
        result = run_child(precision, args.quick)
        results.append(result)
        print(f"{precision}: matmul {_ms(result['matmul_s'])} ms, train step {_ms(result['train_s'])} ms, "
              f"predict {_ms(result['predict_s'])} ms; threads {result['threads']} (0 = TensorFlow's default)",
              flush=True)
    first = results[0]
    counted, profiled = first["forward_flops"], first["profiler_forward_flops"]
    print(f"\nparameters {first['parameters']:,}; forward FLOPs per face: {counted / 1e9:.3f} G counted "
          f"(Conv2D + Dense), {profiled / 1e9:.3f} G by tf.compat.v1.profiler" if profiled else
          f"\nparameters {first['parameters']:,}; forward FLOPs per face: {counted / 1e9:.3f} G counted")
    print(f"training step counted as 3x forward: {3 * counted * TRAIN_BATCH / 1e9:.1f} GFLOP per step of "
          f"{TRAIN_BATCH}; inference {counted * PREDICT_BATCH / 1e9:.1f} GFLOP per call of {PREDICT_BATCH}\n")
    print(table(results))
    print(f"\nload average at end: {load_average()}; {time.monotonic() - started:.0f} s")


def table(results: list[dict]) -> str:
    rows = [
        "| precision | matmul n | matmul GFLOP/s | train step ms | train faces/s | train GFLOP/s | train / matmul "
        "| predict faces/s | predict GFLOP/s | predict / matmul | per-round ratios, median: train, predict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        ceiling = 2 * r["n"] ** 3 / statistics.median(r["matmul_s"]) / 1e9
        step, call = statistics.median(r["train_s"]), statistics.median(r["predict_s"])
        train = 3 * r["forward_flops"] * TRAIN_BATCH / step / 1e9
        predict = r["forward_flops"] * PREDICT_BATCH / call / 1e9
        rows.append(
            f"| {r['precision']} | {r['n']} | {ceiling:.0f} | {step * 1e3:.0f} | {TRAIN_BATCH / step:.1f} "
            f"| {train:.0f} | {train / ceiling:.0%} | {PREDICT_BATCH / call:.0f} | {predict:.0f} | {predict / ceiling:.0%} "
            f"| {_round_ratio(r, 'train_s', 3 * TRAIN_BATCH):.0%}, {_round_ratio(r, 'predict_s', PREDICT_BATCH):.0%} |"
        )
    if len(results) == 2:
        (a, b) = results
        rows.append(f"\n{b['precision']} against {a['precision']}, same run: matmul "
                    f"{statistics.median(a['matmul_s']) / statistics.median(b['matmul_s']):.2f}x the rate, "
                    f"train step {statistics.median(a['train_s']) / statistics.median(b['train_s']):.2f}x, "
                    f"predict {statistics.median(a['predict_s']) / statistics.median(b['predict_s']):.2f}x "
                    "(above 1: faster)")
    return "\n".join(rows)


def _round_ratio(r: dict, key: str, faces_flops: int) -> float:
    """The median over rounds of (the round's rate) / (the median of that round's 3 matmuls' rate)."""
    ratios = []
    for i, seconds in enumerate(r[key]):
        ceiling = 2 * r["n"] ** 3 / statistics.median(r["matmul_s"][3 * i:3 * i + 3])
        ratios.append(r["forward_flops"] * faces_flops / seconds / ceiling)
    return statistics.median(ratios)


def _ms(times: list[float]) -> str:
    return ", ".join(f"{t * 1e3:.0f}" for t in times)


def run_child(precision: str, quick: bool) -> dict:
    command = [sys.executable, __file__, "--child", precision, *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{precision} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a check of under a minute: n 1024, 4 rounds")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--child", choices=PRECISIONS, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
