"""Training throughput and peak memory: the project's full path against a bare `model.fit`.

    python benchmarks/training.py [--model final] [--data synthetic:1280] [--epochs 3]
                                  [--batch 64] [--rounds 2] [--modes bare,pipeline,full]

Every mode trains the same network (`--model`: final is phase 2, baseline phase 1),
compiled the same way (`fer.training.train.compile_model`: Adam, categorical cross-entropy,
accuracy), on the same faces (`--data`, loaded once per process with `fer.data.load`),
for the same epochs and batch size, validating on the same validation split after
every epoch:

- bare (the reference): `model.fit` on in-memory float32 tensors, `shuffle=True`,
  no callbacks, no augmentation, no tracking;
- pipeline: `model.fit` on the project's tf.data pipeline (`fer.training.pipeline.make_dataset`:
  per-epoch permutation, one-warp augmentation), still without callbacks or tracking;
- full: `fer.training.train.train`, the whole project path: pipeline, Keras autologging into a
  SQLite store, the learning-rate, peak-memory, history and checkpoint callbacks,
  ReduceLROnPlateau (early stopping switched off, so every mode runs every epoch);
- bare-xla, bare-bf16: the reference with `jit_compile=True`, or under the Keras dtype
  policy `mixed_bfloat16`.

bare, pipeline and the bare-* modes use Keras's own batch norm and float32 (unless named),
as the project did before issue #28. `full` is what a run gets on this machine
(`dtype_policy: auto`, `batch_norm: fused`); the other full-* modes pin the two settings:

- full-f32: float32, Keras's batch norm (the defaults before issue #28);
- full-bf16: mixed_bfloat16, Keras's batch norm;
- full-fused: float32, `fer.models.FusedBatchNormalization`;
- full-bf16-fused: mixed_bfloat16 with the fused batch norm (what `--set dtype_policy=mixed_bfloat16`
  gives today, and `auto` on a CPU with AMX or AVX-512 BF16).

The first mode of `--modes` is the reference the ratios are taken against (bare by default).

Each mode runs in a fresh Python process (so that its peak resident memory is its own
and no TensorFlow state carries over), one after the other, and the rounds interleave
the modes (bare, pipeline, full, bare, ...) so that load from other processes hits
all of them. An epoch's time is the interval between the ends of consecutive epochs,
as seen by a callback placed first in the list: it holds the epoch's training steps,
its validation pass and every other callback's end-of-epoch work of the epoch before
(metric logging, checkpoint writing). The first epoch (graph tracing, XLA compilation)
is left out; the table gives each mode's median steady epoch over all rounds, images
per second of training data, and the ratio to bare measured in the same run. Peak
memory is the process's peak resident set size (getrusage), loading included.
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

from machine import describe  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parents[1]
# Settings each mode pins (anything else: the phase file's).
MODES = {
    "bare": {"dtype_policy": "float32", "batch_norm": "keras"},
    "pipeline": {"dtype_policy": "float32", "batch_norm": "keras"},
    "full": {},
    "bare-xla": {"dtype_policy": "float32", "batch_norm": "keras", "jit_compile": "true"},
    "bare-bf16": {"dtype_policy": "mixed_bfloat16", "batch_norm": "keras"},
    "full-f32": {"dtype_policy": "float32", "batch_norm": "keras"},
    "full-bf16": {"dtype_policy": "mixed_bfloat16", "batch_norm": "keras"},
    "full-fused": {"dtype_policy": "float32", "batch_norm": "fused"},
    "full-bf16-fused": {"dtype_policy": "mixed_bfloat16", "batch_norm": "fused"},
}


# -- one mode, in its own process ------------------------------------------------------------


def run_mode(mode: str, args) -> dict:
    """Train once in `mode`; return steady epoch seconds, train size and peak memory."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    import keras

    from fer.training import acceleration
    from fer import data as fer_data
    from fer.training.callbacks import peak_rss_mb
    from fer.config import load_config

    config = load_config(
        "phase2" if args.model == "final" else "phase1",
        {
            "model": args.model, "data": args.data, "epochs": args.epochs, "batch_size": args.batch,
            "early_stopping.enabled": False, "jit_compile": "false", **MODES[mode],
        },
    )
    timer = epoch_timer()
    if mode.startswith("full"):
        train_size = _train_full(config, timer)
    else:
        import fer.training.pipeline
        import fer.training.train

        splits = fer_data.load(config.data, seed=config.seed, progress=False)
        train_size = len(splits.train)
        keras.utils.set_random_seed(config.seed)
        model = fer.training.train.compile_model(config)
        if mode == "pipeline":
            train_ds, val_ds = fer.training.train.training_datasets(splits, config, config.batch_size)
            steps = fer.training.pipeline.batches_per_epoch(len(splits.train), config.batch_size)
            model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, steps_per_epoch=steps,
                      callbacks=[timer], verbose=0)
        else:
            x, y = _tensors(splits.train)
            model.fit(x, y, validation_data=_tensors(splits.val), batch_size=config.batch_size,
                      epochs=config.epochs, shuffle=True, callbacks=[timer], verbose=0)
        assert acceleration.params(model)["acceleration.jit_compile"] == (mode == "bare-xla")
    return {"mode": mode, "epochs": timer.steady_epochs(), "train_size": train_size, "peak_rss_mb": peak_rss_mb()}


def _train_full(config, timer) -> int:
    """fer.training.train.train into a throwaway SQLite store, with `timer` first among its callbacks."""
    import fer.training.train

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["FER_CHECKPOINT_DIR"] = f"{tmp}/checkpoints"
        with open(os.devnull, "w") as quiet:  # the run's own report: not this benchmark's output
            stdout, sys.stdout = sys.stdout, quiet
            try:
                run_id = fer.training.train.train(config, experiment="benchmark", callbacks=[timer])  # first: see above
            finally:
                sys.stdout = stdout
        import mlflow

        return int(mlflow.MlflowClient().get_run(run_id).data.params["data.train_size"])


def _tensors(split):
    import numpy as np

    return split.images[..., np.newaxis].astype(np.float32), split.targets.astype(np.float32)


def epoch_timer():
    """A Keras callback recording the times between consecutive epoch ends (put it first in the list)."""
    import keras

    class EpochEnds(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = [time.perf_counter()]

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

        def steady_epochs(self):
            return [b - a for a, b in zip(self.ends[1:], self.ends[2:])]  # epoch 1 left out

    return EpochEnds()


# -- the comparison --------------------------------------------------------------------------


def main() -> None:
    args = parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_mode(args.child, args)))
        return
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown or len(set(modes)) != len(modes):
        sys.exit(f"--modes takes distinct modes among {', '.join(MODES)}; got {args.modes}")
    print(f"machine: {describe('tensorflow', 'keras', 'mlflow')}")
    print(f"model {args.model}, data {args.data}, {args.epochs} epochs of batch {args.batch}, "
          f"{args.rounds} rounds, modes {', '.join(modes)}\n")
    results = {mode: [] for mode in modes}
    for round_index in range(args.rounds):
        for mode in modes:
            started = time.monotonic()
            result = run_child(mode, args)
            results[mode].append(result)
            epochs = ", ".join(f"{s:.1f}" for s in result["epochs"])
            print(f"round {round_index + 1} {mode}: steady epochs {epochs} s, peak {result['peak_rss_mb']:,.0f} MiB "
                  f"({time.monotonic() - started:.0f} s with start-up)", flush=True)
    print()
    print(table(results, modes))


def run_child(mode: str, args) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--data", args.data,
               "--epochs", str(args.epochs), "--batch", str(args.batch)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"mode {mode} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def table(results: dict, modes: list[str]) -> str:
    def epoch_seconds(mode):
        return statistics.median(s for result in results[mode] for s in result["epochs"])

    def peak(mode):
        return statistics.median(result["peak_rss_mb"] for result in results[mode])

    reference = modes[0]
    train_size = results[reference][0]["train_size"]
    reference_time, reference_peak = epoch_seconds(reference), peak(reference)
    rows = [
        f"| mode | steady epoch, s | train images/s | time vs {reference} | peak memory, MiB "
        f"| memory vs {reference} | epochs, s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode in modes:
        seconds = epoch_seconds(mode)
        all_epochs = ", ".join(f"{s:.1f}" for result in results[mode] for s in result["epochs"])
        rows.append(
            f"| {mode} | {seconds:.2f} | {train_size / seconds:,.1f} | {seconds / reference_time:.3f}x "
            f"| {peak(mode):,.0f} | {peak(mode) / reference_peak:.2f}x | {all_epochs} |"
        )
    return "\n".join(rows)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("final", "baseline"), default="final")
    parser.add_argument("--data", default="synthetic:1280",
                        help="what fer.data.load takes: synthetic:N, or a FER+ folder for the full split")
    parser.add_argument("--epochs", type=int, default=3, help="per mode and round; the first is left out")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="bare,pipeline,full", help="comma-separated; the first is the reference")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is left out")
    return args


if __name__ == "__main__":
    main()
