"""Against a real `mlflow server` on 127.0.0.1: phases, compare and promote, and a server that is not there."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    compare_and_promote,
    fer_cli,
    free_port,
    run_or_fail,
    stop_process_group,
    tracking_server,
    wait_until_healthy,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An MLflow tracking server with a SQLite backend that serves artifacts from a temporary folder."""
    folder = tmp_path_factory.mktemp("server")
    with tracking_server(folder, timeout=90) as uri:
        yield uri, folder


def test_phases_compare_and_promote_run_against_a_tracking_server(server, tmp_path):
    uri, folder = server
    params = {"data": "synthetic:64", "epochs": 2, "batch_size": 32}
    for phase in ("phase1", "phase2"):
        run_or_fail(phase, params, uri, tmp_path)
    compare_and_promote("fer-remote", uri, tmp_path)
    # Artifacts went through the server into its folder, not into the client's working folder.
    stored = {p.name for p in (folder / "artifacts").rglob("*")}
    assert {"history.json", "comparison.html", "history.png"} <= stored
    assert not (tmp_path / "mlruns").exists()


def test_an_unreachable_server_is_reported_before_training(tmp_path):
    result = fer_cli(["train", "phase2", "--epochs", "1"], f"http://127.0.0.1:{free_port()}", tmp_path)
    assert result.returncode == 1
    assert "tracking server at http://127.0.0.1:" in result.stderr and "Nothing was trained" in result.stderr
    assert "Epoch 1/1" not in result.stdout and "Data:" not in result.stdout  # before data and training


def test_something_that_is_not_an_mlflow_server_is_reported(tmp_path):
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        result = fer_cli(["compare"], f"http://127.0.0.1:{port}", tmp_path)
    finally:
        web.terminate()
        web.wait()
    assert result.returncode == 1
    assert "cannot be used" in result.stderr and "Traceback" not in result.stderr


def test_a_server_with_basic_auth_accepts_the_right_credentials_only(tmp_path):
    """The recipe in the README: `mlflow server --app-name basic-auth`, credentials from the environment."""
    port, password = free_port(), "fer-test-password-123"
    server_env = {**os.environ, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret", "MLFLOW_AUTH_ADMIN_PASSWORD": password}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"],
        env=server_env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(uri, process, timeout=90, what="basic-auth server")

        def compare_as(user, secret):
            return fer_cli(["compare"], uri, tmp_path, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=secret)

        refused = compare_as("admin", "wrong-password-000")
        assert refused.returncode == 1 and "401" in refused.stderr and "MLFLOW_TRACKING_PASSWORD" in refused.stderr
        accepted = compare_as("admin", password)
        # Authenticated: the server answered, and the experiment simply has no runs yet.
        assert accepted.returncode == 1 and "No finished phase1 run" in accepted.stderr
    finally:
        stop_process_group(process)
