"""Servers on 127.0.0.1 for tests, benchmarks and scripts: started, waited for, stopped with all their processes.

- `free_port`; `wait_until_healthy` (polls /health, or /ping); `stop_process_group`;
- `start_tracking_server` and the `tracking_server` block (`mlflow server`), `start_model_server`
  (`mlflow models serve`).

Shared by tests/conftest.py, scripts/mlflow_ui.py and the server benchmarks
(benchmarks/serving_load.py, benchmarks/tracking_outage.py); import it with scripts/ on sys.path.
Every server here is started with `start_new_session=True`, so that its whole process group
(`mlflow server`'s uvicorn workers and job runner, `mlflow models serve`'s workers) stops with it.

Example:
    with tracking_server(Path("/tmp/server")) as uri:
        MlflowClient(uri).search_experiments()
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class ServerDidNotStart(RuntimeError):
    """The server exited, or did not answer in time; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_tracking_server(
    folder: Path, port: int, backend_store_uri: str | None = None, timeout: float = 180
) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` that serves artifacts from folder/artifacts; returns once healthy.

    Its store is `backend_store_uri` (default: SQLite, folder/server.db); its output is appended
    to folder/server.log (a restart on the same port adds to it). The caller stops it
    (`stop_process_group`, or a signal to its process group); ServerDidNotStart if it never answers.

    Example:
        process = start_tracking_server(Path("/tmp/server"), free_port())
    """
    backend_store_uri = backend_store_uri or f"sqlite:///{folder / 'server.db'}"
    log_path = folder / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
        )
    wait_until_healthy(f"http://127.0.0.1:{port}", process, timeout, log=log_path)
    return process


@contextlib.contextmanager
def tracking_server(folder: Path, backend_store_uri: str | None = None, timeout: float = 180) -> Iterator[str]:
    """`start_tracking_server` on a free port for the block; yields its URI, stops it (all its processes) after.

    Example:
        with tracking_server(Path("/tmp/server")) as uri:
            MlflowClient(uri).search_experiments()
    """
    port = free_port()
    process = start_tracking_server(folder, port, backend_store_uri, timeout)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(process)


def start_model_server(
    model_uri: str, tracking_uri: str, log_path: Path, timeout: float = 180
) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve -m MODEL_URI` (local env, one worker) on a free port; (process, base URL) once
    it answers /ping.

    It runs this interpreter's `mlflow`, imports `fer` from this checkout, and never sees
    MLFLOW_RUN_ID or FER_ALLOW_PATHS from the caller's environment. Its output goes to `log_path`.
    The caller stops it with `stop_process_group`; ServerDidNotStart if it never answers.

    Example:
        process, base = start_model_server("models:/fer-emotion@champion", "sqlite:///mlflow.db", Path("serve.log"))
        try:
            urllib.request.urlopen(f"{base}/ping")
        finally:
            stop_process_group(process)
    """
    port = free_port()
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "FER_ALLOW_PATHS")}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(base, process, timeout, what="mlflow models serve", log=log_path, path="/ping")
    return process, base


def wait_until_healthy(
    uri: str,
    process: subprocess.Popen,
    timeout: float,
    what: str = "mlflow server",
    log: Path | None = None,
    path: str = "/health",
) -> None:
    """Poll `uri` + `path` until it answers 200.

    Raises ServerDidNotStart (naming `what`, with the last 3000 characters of `log`) if the
    process exits or `timeout` seconds pass first; the process group is stopped then.
    `mlflow server` and `mlflow ui` answer on /health, `mlflow models serve` on /ping.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        exit_code = process.poll()
        if exit_code is not None or time.monotonic() > deadline:
            stop_process_group(process)
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            why = f"it exited with {exit_code}" if exit_code is not None else f"no answer on {path}"
            raise ServerDidNotStart(f"{what} at {uri} did not start within {timeout:.0f}s ({why})\n{tail}")
        time.sleep(0.5)


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a server started with `start_new_session=True` and every process it forked.

    SIGTERM to the group, SIGKILL after 30 s if the server is still there. A server that has
    exited already is left alone.
    """
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
