"""Where a steady phase-2 training step's time goes (issue #28): profiler, ablations, threads, oneDNN.

    python benchmarks/profile_step.py [--precision float32|mixed_bfloat16] [--steps 6] [--data synthetic:1280]

Three parts, each in a fresh process of its own, one after the other:

1. **Profile.** `model.fit` on the project's own path: `fer.training.train.compile_model` and
   `training_datasets` (the tf.data pipeline with the phase's augmentation), batch 64. A
   callback starts TensorFlow's profiler (`tf.profiler.experimental.start`) once `--warmup`
   steps are done and stops it after `--steps` more. The trace (an XSpace protobuf,
   `*.xplane.pb`) is read offline with the protobuf classes TensorFlow ships
   (`tensorflow.tsl.profiler.protobuf.xplane_pb2`): no TensorBoard. Every TensorFlow op
   event of the host plane is put in one bucket by its op type and name (convolution
   forward, convolution backward by input / by filter, batch norm forward / backward,
   dense (MatMul), ReLU and pooling, the optimizer update (ops under the optimizer's name
   scope), other); tf.data's threads apart: the augmentation (its XLA executable) and the
   rest of the input pipeline, each the union of its intervals. Shares are of the summed
   op time; "busy" is the union of the op intervals of the training step's threads against
   the profiled wall time, and idle is the rest (time in Python, Keras's step loop,
   waiting for the input, or between ops).
2. **Ablations**, timed with the same network and batch without the profiler: the whole
   step (`train_on_batch`), the forward pass alone, forward + backward (gradients, no
   update), the optimizer update alone (`apply_gradients` on cached gradients), the
   input pipeline alone (the project's tf.data iterator, with and without augmentation),
   and the whole step of a copy of the network whose batch norm uses TensorFlow's fused
   kernel (`with_fused_batch_norm`: Keras 3 builds batch norm from elementwise ops),
   the median of repeats each, as shares of the whole step measured in the same process;
   the rounds interleave the parts, and each part's ratio to the whole step of its own
   round is given too (its median over rounds), which holds when the load changes
   between rounds.
3. **Threads and oneDNN**: TensorFlow's intra- and inter-op thread settings,
   OMP_NUM_THREADS and the CPU affinity; then one step run with ONEDNN_VERBOSE=1: every
   oneDNN primitive executed, counted by kind and implementation (is the convolution a
   `brg_conv` / `jit:avx512` / AMX / bf16 kernel, or does TensorFlow not use oneDNN for it?).

Prints the machine, the CPU's AVX-512 / AMX / BF16 flags and the load average at the start
and the end. All shares are of times measured in the same process.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags, describe, load_average  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64

# Op types by bucket. Anything run by tf.data's threads is input pipeline or augmentation,
# whatever its type (see bucket()).
CONV_FORWARD = {"Conv2D", "_FusedConv2D", "_MklConv2D", "_MklNativeConv2D", "_MklFusedConv2D",
                "_MklNativeFusedConv2D", "_MklNativeConv2DWithBias", "_MklConv2DWithBias"}
CONV_BACKWARD_INPUT = {"Conv2DBackpropInput", "_MklConv2DBackpropInput", "_MklNativeConv2DBackpropInput"}
CONV_BACKWARD_FILTER = {"Conv2DBackpropFilter", "_MklConv2DBackpropFilter", "_MklNativeConv2DBackpropFilter",
                        "_MklConv2DBackpropFilterWithBias", "_MklNativeConv2DBackpropFilterWithBias",
                        "BiasAddGrad"}
BATCH_NORM_FORWARD = {"FusedBatchNormV3", "_MklFusedBatchNormV3", "_MklNativeFusedBatchNormV3",
                      "FusedBatchNormEx", "_MklFusedBatchNormEx", "_MklNativeFusedBatchNormEx"}
BATCH_NORM_BACKWARD = {"FusedBatchNormGradV3", "_MklFusedBatchNormGradV3", "_MklNativeFusedBatchNormGradV3",
                       "FusedBatchNormGradEx"}
DENSE = {"MatMul", "_MklMatMul", "_FusedMatMul", "_MklFusedMatMul", "_MklNativeFusedMatMul", "BatchMatMulV2"}
RELU_POOL = {"Relu", "ReluGrad", "_MklRelu", "_MklReluGrad", "MaxPool", "MaxPoolGrad", "_MklMaxPool",
             "_MklMaxPoolGrad", "_MklNativeMaxPool", "_MklNativeMaxPoolGrad", "BiasAdd", "_MklNativeMaxPoolGrad"}
BUCKETS = ("conv forward", "conv backward (input)", "conv backward (filter)", "batch norm forward",
           "batch norm backward", "dense (MatMul)", "ReLU, pooling, bias", "optimizer update",
           "augmentation (tf.data)", "input pipeline, rest (tf.data)", "other ops")


OP_EVENT = re.compile(r"^(.*[^:]):(_?[A-Z][A-Za-z0-9]*)$")  # "name:Type", not "Class::Method"


def bucket(op_name: str, op_type: str) -> str:
    """The bucket of one TensorFlow op of the training step (tf.data's are counted apart, see read_xspace)."""
    lowered = op_name.lower()
    backward = "gradient_tape" in lowered
    if "batch_normalization" in lowered:  # Keras 3 on TensorFlow: moments and normalization from elementwise ops
        return "batch norm backward" if backward else "batch norm forward"
    if op_type in CONV_FORWARD:
        return "conv forward"
    if op_type in CONV_BACKWARD_INPUT:
        return "conv backward (input)"
    if op_type in CONV_BACKWARD_FILTER:
        return "conv backward (filter)"
    if op_type in BATCH_NORM_FORWARD:
        return "batch norm forward"
    if op_type in BATCH_NORM_BACKWARD:
        return "batch norm backward"
    if "adam" in lowered or "optimizer" in lowered or op_type.startswith("ResourceApply"):
        return "optimizer update"
    if op_type in DENSE:
        return "dense (MatMul)"
    if op_type in RELU_POOL:
        return "ReLU, pooling, bias"
    return "other ops"


# -- 1. the profile ------------------------------------------------------------------------------


def profile(args) -> dict:
    """Profile --steps steady steps of the project's fit; per-bucket op time and busy share of the wall time."""
    import tensorflow as tf

    config, model, splits = _prepare(args)
    from fer.training.train import training_datasets

    train_ds, _ = training_datasets(splits, config, BATCH)
    logdir = tempfile.mkdtemp(prefix="fer-profile-")
    window = {}

    import keras

    class ProfileWindow(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == args.warmup:
                tf.profiler.experimental.start(logdir)
                window["start"] = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch == args.warmup + args.steps - 1:
                window["wall"] = time.perf_counter() - window["start"]
                tf.profiler.experimental.stop()

    model.fit(train_ds, steps_per_epoch=args.warmup + args.steps + 1, epochs=1, verbose=0, callbacks=[ProfileWindow()])
    paths = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    if not paths:
        raise RuntimeError(f"the profiler wrote no .xplane.pb under {logdir}")
    return {"wall_s": window["wall"], **read_xspace(paths[0])}


def read_xspace(path: str) -> dict:
    """Op time per bucket and per op type, the training threads' busy time, tf.data's, all in seconds.

    In TensorFlow 2.21's trace an op event of the training step's executor threads
    (`tf_Compute/...`) is named "<op name>:<op type>"; the tf.data threads
    (`tf_data_...`) run the augmentation as an XLA executable (`CpuExecutable::...`
    events) and the rest as iterator spans. Python's thread holds one
    `multi_step_on_iterator` span per step: the time outside it is Keras's own loop.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    host = next(plane for plane in space.planes if plane.name == "/host:CPU")
    by_bucket, by_type = collections.Counter(), collections.Counter()
    step_intervals, augmentation, pipeline, python_steps = [], [], [], 0.0
    for line in host.lines:
        for event in line.events:
            name = host.event_metadata[event.metadata_id].name
            start = line.timestamp_ns * 1e-9 + event.offset_ps * 1e-12
            interval = (start, start + event.duration_ps * 1e-12)
            if line.name.startswith("tf_data"):
                (augmentation if name.startswith("CpuExecutable") else pipeline).append(interval)
            elif line.name == "python" and name == "multi_step_on_iterator":
                python_steps += event.duration_ps * 1e-12
            elif line.name.startswith("tf_Compute") and (op := OP_EVENT.match(name)):
                op_name, op_type = op.groups()
                seconds = event.duration_ps * 1e-12
                by_bucket[bucket(op_name, op_type)] += seconds
                by_type[op_type] += seconds
                step_intervals.append(interval)
    augmentation_s = _union(augmentation)
    by_bucket["augmentation (tf.data)"] = augmentation_s
    by_bucket["input pipeline, rest (tf.data)"] = max(_union(pipeline + augmentation) - augmentation_s, 0.0)
    return {"buckets": dict(by_bucket), "types": dict(by_type.most_common(20)),
            "busy_s": _union(step_intervals), "python_steps_s": python_steps}


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


# -- 2. ablations --------------------------------------------------------------------------------


def ablations(args) -> dict:
    """Median seconds of the step and of its parts, same network and batch, no profiler."""
    import numpy as np
    import tensorflow as tf

    config, model, splits = _prepare(args)
    from fer.training.pipeline import make_dataset

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (BATCH, 48, 48, 1)).astype(np.float32))
    y = tf.constant(np.eye(8, dtype=np.float32)[rng.integers(0, 8, BATCH)])
    loss_fn = model.loss
    variables = model.trainable_variables

    @tf.function
    def forward():
        return model(x, training=True)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True)) + tf.add_n(model.losses)
        return tape.gradient(loss, variables)

    gradients = forward_backward()

    @tf.function
    def update():
        model.optimizer.apply_gradients(zip(gradients, variables))

    def next_batch(dataset):
        iterator = iter(dataset)
        return lambda: next(iterator)

    augmented = make_dataset(splits.train, BATCH, training=True, augmentation=config.augmentation,
                             seed=config.seed, repeat=True)
    plain = make_dataset(splits.train, BATCH, training=True, augmentation=None, seed=config.seed, repeat=True)
    fused = with_fused_batch_norm(model)
    parts = {
        "whole step (train_on_batch)": lambda: model.train_on_batch(x, y),
        "whole step, batch norm fused (FusedBatchNormV3)": lambda: fused.train_on_batch(x, y),
        "forward (training=True)": lambda: forward()[0, 0].numpy(),
        "forward + backward (gradients)": lambda: forward_backward()[0].numpy(),
        "optimizer update (apply_gradients)": lambda: (update(), variables[0].numpy()),
        "input pipeline, augmented (next batch)": next_batch(augmented),
        "input pipeline, no augmentation": next_batch(plain),
    }
    rounds = {name: [] for name in parts}
    for name, call in parts.items():  # warm-up: tracing, oneDNN primitives, tf.data start
        for _ in range(3):
            call()
    for _ in range(args.repeats):  # rounds interleave the parts, so load changes hit all of them
        for name, call in parts.items():
            started = time.perf_counter()
            call()
            rounds[name].append(time.perf_counter() - started)
    return {name: times for name, times in rounds.items()}


def with_fused_batch_norm(model):
    """A copy of `model` whose 4-D BatchNormalization layers train with TensorFlow's fused kernel.

    Keras 3 on TensorFlow computes batch norm from elementwise ops (moments: mean,
    squared difference, mean; then the normalization), each a pass over the
    activations; TensorFlow's FusedBatchNormV3 (a oneDNN primitive here) does it in
    one. The moving statistics are updated the same way (momentum, unbiased batch
    variance as TensorFlow's fused kernel returns it). A timing copy only: its
    training numerics are not identical to Keras's layer, and it is not used for
    training (see BENCHMARKS.md for what a switch would need).
    """
    import keras
    import tensorflow as tf

    class FusedBatchNorm(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            if not training or len(inputs.shape) != 4:
                return super().call(inputs, training=training, mask=mask)
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1 - self.momentum))
            return outputs

    def clone(layer):
        cls = FusedBatchNorm if isinstance(layer, keras.layers.BatchNormalization) else type(layer)
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.compile(optimizer=type(model.optimizer).from_config(model.optimizer.get_config()), loss=model.loss,
                 metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=False)
    return copy


# -- 3. threads and oneDNN -----------------------------------------------------------------------


def threads(args) -> dict:
    import tensorflow as tf

    return {
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset: on by default on x86)"),
        "affinity": sorted(os.sched_getaffinity(0)),
    }


def onednn_step(args) -> None:
    """Two train_on_batch steps; the parent reads ONEDNN_VERBOSE's lines from this process's stdout."""
    import numpy as np

    _, model, _ = _prepare(args, data="synthetic:64")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, 48, 48, 1)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, BATCH)]
    model.train_on_batch(x, y)
    print("STEADY STEP", flush=True)
    model.train_on_batch(x, y)
    print("END STEP", flush=True)


def onednn_primitives(stdout: str) -> collections.Counter:
    """(kind, implementation, propagation) -> [count, ms] of the oneDNN primitives executed in the steady step."""
    steady = stdout.split("STEADY STEP", 1)[-1].split("END STEP", 1)[0]
    counts = collections.defaultdict(lambda: [0, 0.0])
    for line in steady.splitlines():
        if not line.startswith(("onednn_verbose", "dnnl_verbose")) or ",exec," not in line:
            continue
        parts = line.split(",")
        i = parts.index("exec")
        kind, impl, prop = parts[i + 2], parts[i + 3], parts[i + 4]
        try:
            ms = float(parts[-1])
        except ValueError:
            ms = 0.0
        counts[(kind, impl, prop)][0] += 1
        counts[(kind, impl, prop)][1] += ms
    return counts


# -- shared --------------------------------------------------------------------------------------


def _prepare(args, data: str | None = None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    from fer import data as fer_data
    from fer.config import load_config
    from fer.training.train import compile_model

    config = load_config("phase2", {"data": data or args.data, "batch_size": BATCH,
                                    "dtype_policy": args.precision, "jit_compile": "false"})
    splits = fer_data.load(config.data, seed=config.seed, progress=False, use_cache=False)
    return config, compile_model(config), splits


def run_child(part: str, args, env: dict | None = None, raw: bool = False):
    command = [sys.executable, __file__, "--child", part, "--precision", args.precision, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--data", args.data]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if raw:
        return done.stdout
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{part} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    args = parse_args()
    if args.child == "onednn":
        onednn_step(args)
        return
    if args.child:
        part = {"profile": profile, "ablations": ablations, "threads": threads}[args.child]
        print("RESULT " + json.dumps(part(args)))
        return
    started = time.monotonic()
    print(f"machine: {describe('tensorflow', 'keras')}")
    print(f"CPU flags: {cpu_flags()}")
    print(f"load average at start: {load_average()}")
    print(f"phase 2, batch {BATCH}, {args.precision}, data {args.data}\n", flush=True)

    prof = run_child("profile", args)
    ops = sum(prof["buckets"].values())
    per_step = prof["wall_s"] / args.steps
    print(f"## 1. Profile: {args.steps} steps of model.fit on the project's pipeline after {args.warmup} warm-up; "
          f"{per_step * 1e3:.0f} ms a step (with the profiler on)\n")
    print("| bucket | op time per step, ms | share of op time |")
    print("| --- | ---: | ---: |")
    for name in BUCKETS:
        seconds = prof["buckets"].get(name, 0.0)
        print(f"| {name} | {seconds / args.steps * 1e3:.1f} | {seconds / ops:.1%} |")
    busy = prof["busy_s"] / prof["wall_s"]
    print(f"\nsummed op time {ops / prof['wall_s']:.2f}x the wall time (ops overlap on the 2 cores); the training "
          f"threads' ops cover {busy:.1%} of the wall time: idle (Python, Keras's loop, waiting) {1 - busy:.1%}")
    outside = 1 - prof["python_steps_s"] / prof["wall_s"]
    print(f"outside the compiled step function (Keras's Python loop, callbacks, the profiler itself): {outside:.1%}")
    print("top op types, ms per step: " + ", ".join(f"{t} {s / args.steps * 1e3:.1f}"
                                                   for t, s in prof["types"].items()) + "\n", flush=True)

    parts = run_child("ablations", args)
    whole = statistics.median(parts["whole step (train_on_batch)"])
    print(f"## 2. Ablations ({args.repeats} interleaved rounds, medians; in-memory batch)\n")
    wholes = parts["whole step (train_on_batch)"]
    print("| part | ms | vs whole step | vs whole step, median of the rounds' own ratios | rounds, ms |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, times in parts.items():
        median = statistics.median(times)
        per_round = statistics.median(t / w for t, w in zip(times, wholes))
        print(f"| {name} | {median * 1e3:.1f} | {median / whole:.1%} | {per_round:.1%} "
              f"| {', '.join(f'{t * 1e3:.0f}' for t in times)} |")
    fwd, fwd_bwd = (statistics.median(parts[k]) for k in ("forward (training=True)", "forward + backward (gradients)"))
    update = statistics.median(parts["optimizer update (apply_gradients)"])
    print(f"\nbackward alone {(fwd_bwd - fwd) * 1e3:.0f} ms = {(fwd_bwd - fwd) / fwd:.2f}x the forward; "
          f"forward + backward + update {(fwd_bwd + update) / whole:.1%} of the whole step\n", flush=True)

    print("## 3. Threads and oneDNN\n")
    print(f"threads: {run_child('threads', args)}")
    verbose = run_child("onednn", args, env={"ONEDNN_VERBOSE": "1"}, raw=True)
    counts = onednn_primitives(verbose)
    if not counts:
        print("ONEDNN_VERBOSE=1 printed no primitive execution in the steady step: TensorFlow ran it without oneDNN")
    else:
        total = sum(ms for _, ms in counts.values())
        print(f"oneDNN primitives executed in one steady step (ONEDNN_VERBOSE=1): {sum(n for n, _ in counts.values())}, "
              f"{total:.0f} ms in all\n")
        print("| kind | implementation | propagation | count | ms | share |")
        print("| --- | --- | --- | ---: | ---: | ---: |")
        for (kind, impl, prop), (n, ms) in sorted(counts.items(), key=lambda item: -item[1][1]):
            print(f"| {kind} | {impl} | {prop} | {n} | {ms:.1f} | {ms / total:.1%} |")
    print(f"\nload average at end: {load_average()}; {time.monotonic() - started:.0f} s")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    parser.add_argument("--steps", type=int, default=6, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=4, help="steps before the profiler starts")
    parser.add_argument("--repeats", type=int, default=5, help="ablation rounds")
    parser.add_argument("--data", default="synthetic:1280")
    parser.add_argument("--child", choices=("profile", "ablations", "threads", "onednn"), help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
