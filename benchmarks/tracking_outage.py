"""A tracking server that goes away mid-training: what the run looks like afterwards.

    python benchmarks/tracking_outage.py [--outage 30] [--never] [--kill SIGKILL] [--epochs 8] [--data synthetic:400]
        [--timeout 1800]

Starts a real `mlflow server` (SQLite backend store, `--artifacts-destination` in a
temporary folder) on a free 127.0.0.1 port, and `python -m fer.cli train phase1` against
it in its own process. As soon as epoch 2's `loss` is in the store, the server is killed
(SIGKILL by default: a crash, nothing flushed), and started again on the same store and
port `--outage` seconds later (`--never`: not at all). Then it reports: the training
process's exit status and total time, the run's status, for every per-epoch metric the
steps it holds and any step logged more than once, and the error lines the training
printed. `MLFLOW_HTTP_*` variables in this shell are passed on, so MLflow's retry
settings can be tried: `MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 python benchmarks/tracking_outage.py`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from local_servers import ServerDidNotStart, free_port, start_tracking_server  # noqa: E402  (scripts/)


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with folder/server.db and folder/artifacts; returns once healthy."""
    try:
        return start_tracking_server(folder, port, timeout=120)
    except ServerDidNotStart as err:
        raise SystemExit(str(err)) from None


def stop_server(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal the server's whole process group and wait until every process of it is gone.

    `mlflow server` starts uvicorn (with its workers) and a job runner as separate
    processes: signalling only the `mlflow server` process leaves them serving.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # graceful shutdown took too long


def metric_rows(database: Path) -> list[tuple[str, int, float]]:
    """(key, step, value) of every metric row of the store's runs, read from the SQLite file itself."""
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        try:
            return db.execute("SELECT key, step, value FROM metrics").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def run_statuses(database: Path) -> list[str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        return [row[0] for row in db.execute("SELECT status FROM runs")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the server stays down")
    parser.add_argument("--never", action="store_true", help="do not start the server again")
    parser.add_argument("--kill", default="SIGKILL", choices=["SIGKILL", "SIGTERM"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--data", default="synthetic:400")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for training to end")
    parser.add_argument("--after-epoch", type=int, default=2, help="kill once this epoch's loss is stored")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fer-outage-") as tmp:
        folder = Path(tmp)
        database = folder / "server.db"
        port = free_port()
        server = start_server(folder, port)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
               "FER_CACHE_DIR": str(folder / "cache"), "FER_CHECKPOINT_DIR": str(folder / "checkpoints"),
               "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "fer.cli", "train", "phase1", "--data", args.data,
                   "--epochs", str(args.epochs), "--batch-size", "32", "--set", "early_stopping.enabled=false"]
        training = None
        try:
            started = time.monotonic()
            with open(folder / "train.out", "w") as out:
                training = subprocess.Popen(command, env=env, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
                while not any(k == "loss" and s >= args.after_epoch - 1 for k, s, _ in metric_rows(database)):
                    if training.poll() is not None:
                        raise SystemExit(f"training ended before epoch {args.after_epoch}:\n"
                                         + (folder / "train.out").read_text()[-3000:])
                    time.sleep(0.2)
                killed_at = time.monotonic() - started
                stop_server(server, getattr(signal, args.kill))
                print(f"server killed ({args.kill}) at {killed_at:.1f} s, after epoch {args.after_epoch}'s loss was stored")
                if not args.never:
                    time.sleep(args.outage)
                    server = start_server(folder, port)
                    print(f"server back at {time.monotonic() - started:.1f} s (down {args.outage:g} s)")
                try:
                    training.wait(timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"training still running after {args.timeout:g} s: killed")
            total = time.monotonic() - started
        finally:
            stop_server(server, signal.SIGTERM)
            if training is not None and training.poll() is None:
                training.kill()
                training.wait()
        output = (folder / "train.out").read_text()

        print(f"training exit status {training.returncode}, total {total:.1f} s")
        print(f"run status(es): {run_statuses(database)}")
        steps = collections.defaultdict(list)
        for key, step, _ in metric_rows(database):
            steps[key].append(step)
        for key in sorted(steps):
            counts = collections.Counter(steps[key])
            repeated = {step: n for step, n in counts.items() if n > 1}
            print(f"  {key}: steps {sorted(counts)}" + (f", logged more than once: {repeated}" if repeated else ""))
        errors = [line for line in output.splitlines()
                  if any(word in line for word in ("Error", "error", "Failed", "Traceback", "WARNING", "Exception"))]
        print(f"{len(errors)} error/warning lines from training; the first 15:")
        for line in errors[:15]:
            print(f"  {line[:200]}")
        kept = sorted(p.relative_to(folder) for p in (folder / "checkpoints").rglob("*") if p.is_file()) \
            if (folder / "checkpoints").exists() else []
        print(f"left in FER_CHECKPOINT_DIR: {[str(p) for p in kept]}")
        print("last 25 lines of training output:")
        print("\n".join(output.splitlines()[-25:]))


if __name__ == "__main__":
    main()
