"""Phase 2's bare training step under Keras's TensorFlow, JAX and PyTorch backends, and plain PyTorch (issue #28).

    python benchmarks/backends.py [--steps 10] [--peers /work/venv-peers/bin/python]
                                  [--only tensorflow,jax,torch,pytorch]

The same network (phase 2: three blocks of [Conv2D 3x3 same + ReLU -> BatchNorm] x 2 ->
MaxPool -> Dropout, Dense 512 + L2 -> BatchNorm -> Dropout 0.5 -> Dense softmax; 5,873,096
parameters), the same batch (64 random 48x48x1 faces in 0-255, one-hot targets over 8
classes), Adam at 1e-3 and categorical cross-entropy, float32, XLA / jit left as each
backend's `model.compile` default except where noted; each backend in its own process:

- tensorflow: Keras on TensorFlow, `fer.models.build_model("final")` itself, compiled by
  `fer.training.train.compile_model` (what a run trains; `jit_compile=False`);
- jax: Keras on JAX (`KERAS_BACKEND=jax`), the replica below; Keras compiles the JAX step
  with `jax.jit` (XLA) by default: that is the backend, not an option;
- torch: Keras on PyTorch (`KERAS_BACKEND=torch`), the replica below (eager: Keras's
  default for torch);
- pytorch: the same architecture written in plain `torch.nn` (channels-last memory, as
  Keras's layout), `torch.optim.Adam`, one eager step: what a PyTorch user would write.

The replica is `fer.models.build_final` written out again, because `fer` (click, MLflow,
TensorFlow) is not installed beside JAX and PyTorch: they live in a separate virtual
environment (`--peers`, made by `python3.11 -m venv /work/venv-peers && /work/venv-peers/bin/pip
install keras jax jaxlib torch numpy`) so that the project's stays as it is. The tensorflow
process builds both and checks that the replica has fer.models' layers, output shapes and
parameter count, so the backends train the same network.

Each process builds its model and runs 3 warm-up steps of `train_on_batch` (or the plain
step) on the same batch (tracing, compilation, kernel selection), one process after the
other; then all stay alive, idle, and the parent asks them for one timed step each in
turn, `--steps` rounds, the order reversed every other round: only one backend computes
at a time, and load from other processes hits every backend within a round. A backend
that cannot be imported or built is reported and skipped. Prints the machine, the CPU
flags, the load average at the start and the end, each backend's thread count, the
median step and its ratio to TensorFlow's, and the median of the rounds' own ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags, describe, load_average  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch", "pytorch")
BATCH, WARMUP = 64, 3
PEERS = "/work/venv-peers/bin/python"


def build_replica(keras):
    """fer.models.build_final, written out again with plain Keras 3 (backend-neutral)."""
    from keras import layers

    inputs = keras.Input(shape=(48, 48, 1), name="face")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for filters, dropout in ((64, 0.2), (128, 0.3), (256, 0.4)):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-4))(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(8, activation="softmax", name="emotion", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="final_replica")


def _signature(model) -> list[tuple[str, tuple]]:
    return [(type(layer).__name__, tuple(layer.output.shape[1:])) for layer in model.layers]


def _batch():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (BATCH, 48, 48, 1)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)[rng.integers(0, 8, BATCH)]
    return x, y


def keras_step(backend: str):
    """(facts, one train_on_batch step) of a Keras backend (the environment's KERAS_BACKEND is already `backend`)."""
    import keras

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    x, y = _batch()
    info = {}
    if backend == "tensorflow":
        sys.path.insert(0, str(ROOT))
        import tensorflow as tf

        from fer.config import load_config
        from fer.models import build_model
        from fer.training.train import compile_model

        replica = build_replica(keras)
        project = build_model("final")
        if _signature(replica) != _signature(project) or replica.count_params() != project.count_params():
            raise SystemExit("the replica in benchmarks/backends.py no longer matches fer.models.build_final")
        model = compile_model(load_config("phase2", {"data": "synthetic:64", "jit_compile": "false",
                                                     "dtype_policy": "float32"}))
        info["threads"] = (f"intra {tf.config.threading.get_intra_op_parallelism_threads()}, inter "
                           f"{tf.config.threading.get_inter_op_parallelism_threads()} (0: TensorFlow's default)")
        info["version"] = f"tensorflow {tf.__version__}"
    else:
        model = build_replica(keras)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy",
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
        if backend == "jax":
            import jax

            info["version"] = f"jax {jax.__version__}"
            info["threads"] = f"XLA CPU ({len(jax.devices())} device)"
        else:
            import torch

            info["version"] = f"torch {torch.__version__}"
            info["threads"] = f"torch.get_num_threads() {torch.get_num_threads()}"
    info["jit_compile"] = str(model.jit_compile)
    info["parameters"] = model.count_params()
    info["keras"] = keras.__version__
    return info, lambda: model.train_on_batch(x, y)


def pytorch_step():
    """(facts, one eager Adam step) of the same network in plain torch.nn, channels-last."""
    import torch
    from torch import nn

    def block(c_in, c_out, dropout):
        layers = []
        for c in (c_in, c_out):
            layers += [nn.Conv2d(c, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out, momentum=0.1, eps=1e-3)]
        return layers + [nn.MaxPool2d(2), nn.Dropout(dropout)]

    model = nn.Sequential(
        *block(1, 64, 0.2), *block(64, 128, 0.3), *block(128, 256, 0.4), nn.Flatten(),
        nn.Linear(6 * 6 * 256, 512), nn.ReLU(), nn.BatchNorm1d(512, momentum=0.1, eps=1e-3), nn.Dropout(0.5),
        nn.Linear(512, 8),
    ).to(memory_format=torch.channels_last)
    dense = model[-5]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    x, y = _batch()
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last) / 255.0
    target = torch.from_numpy(y.argmax(1))

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), target) + 1e-4 * dense.weight.square().sum()
        loss.backward()
        optimizer.step()

    parameters = sum(p.numel() for p in model.parameters()) + sum(b.numel() for n, b in model.named_buffers()
                                                                   if "running" in n)
    return {"version": f"torch {torch.__version__}", "threads": f"torch.get_num_threads() {torch.get_num_threads()}",
            "parameters": parameters, "jit_compile": "eager", "keras": "-"}, step


def child(backend: str) -> None:
    """Warm up, say READY with the backend's facts, then time one step per "step" line on stdin."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    info, step = pytorch_step() if backend == "pytorch" else keras_step(backend)
    for _ in range(WARMUP):
        step()
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        started = time.perf_counter()
        step()
        print(f"TIME {time.perf_counter() - started}", flush=True)


class Backend:
    """One backend's process: started, warmed up, then stepped on request; `skipped` says why not."""

    def __init__(self, name: str, args):
        self.name, self.times, self.info, self.skipped, self.process = name, [], {}, None, None
        python = sys.executable if name == "tensorflow" else args.peers
        if not Path(python).exists():
            self.skipped = f"no interpreter at {python} (see the docstring for the virtual environment)"
            return
        self.log = tempfile.TemporaryFile(mode="w+")  # stderr: a file, so that a chatty backend never blocks
        env = {**os.environ, "KERAS_BACKEND": "torch" if name == "pytorch" else name}
        self.process = subprocess.Popen([python, __file__, "--child", name], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT / "benchmarks",
                                        env=env)
        reply = self._read("READY ")
        if reply is None:
            self.log.seek(0)
            tail = (self.log.read().strip().splitlines() or ["(no output)"])[-1]
            self.skipped = f"exit {self.process.wait()}: {tail[:300]}"
        else:
            self.info = json.loads(reply)

    def step(self) -> float:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        seconds = float(self._read("TIME "))
        self.times.append(seconds)
        return seconds

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait()

    def _read(self, prefix: str) -> str | None:
        for line in self.process.stdout:
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
        return None


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child)
        return
    names = args.only.split(",")
    if unknown := sorted(set(names) - set(BACKENDS)) or "tensorflow" not in names:
        sys.exit(f"--only takes {', '.join(BACKENDS)} and must include tensorflow (the reference); got {args.only}")
    started = time.monotonic()
    print(f"machine: {describe('tensorflow', 'keras')}")
    print(f"CPU flags: {cpu_flags()}")
    print(f"load average at start: {load_average()}")
    print(f"phase 2, batch {BATCH}, float32, {WARMUP} warm-up steps, then {args.steps} rounds of one step per "
          "backend\n", flush=True)
    backends = []
    for name in names:  # started and warmed up one at a time
        backend = Backend(name, args)
        backends.append(backend)
        print(f"{name}: " + (f"skipped ({backend.skipped})" if backend.skipped else
                             f"ready ({backend.info['version']}, {backend.info['threads']})"), flush=True)
    live = [b for b in backends if not b.skipped]
    try:
        for round_index in range(args.steps):
            for backend in (live if round_index % 2 == 0 else live[::-1]):
                backend.step()
    finally:
        for backend in live:
            backend.close()
    for backend in live:
        print(f"{backend.name}: steps {', '.join(f'{t * 1e3:.0f}' for t in backend.times)} ms")
    print()
    reference = next(b for b in backends if b.name == "tensorflow")
    if reference.skipped:
        sys.exit(f"tensorflow, the reference, did not run: {reference.skipped}")
    tf_step = statistics.median(reference.times)
    print("| backend | version | parameters | compiled | step ms (median) | faces/s | time vs tensorflow "
          "| speed vs tensorflow | speed vs tensorflow, median of the rounds' own ratios |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for backend in backends:
        if backend.skipped:
            print(f"| {backend.name} | skipped: {backend.skipped} | | | | | | | |")
            continue
        step, info = statistics.median(backend.times), backend.info
        per_round = statistics.median(t / b for t, b in zip(reference.times, backend.times))
        print(f"| {backend.name} | {info['version']}, keras {info['keras']} | {info['parameters']:,} "
              f"| {info['jit_compile']} | {step * 1e3:.0f} | {BATCH / step:.1f} "
              f"| {step / tf_step:.2f}x | {tf_step / step:.2f}x | {per_round:.2f}x |")
    print(f"\nload average at end: {load_average()}; {time.monotonic() - started:.0f} s")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="rounds, each one timed step of every backend")
    parser.add_argument("--peers", default=PEERS, help="the Python of the virtual environment with JAX and PyTorch")
    parser.add_argument("--only", default=",".join(BACKENDS))
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
