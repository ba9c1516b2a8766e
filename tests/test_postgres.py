"""The team tracking server of the README on PostgreSQL: phases, compare and promote against it.

Starts a throwaway PostgreSQL (Debian's binaries, a temporary data folder,
127.0.0.1 only, password authentication), creates a database, and runs
`mlflow server --backend-store-uri postgresql://...` on it. Skips where
PostgreSQL or psycopg2 is not installed.
"""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import compare_and_promote, free_port, run_or_fail, tracking_server

pytestmark = pytest.mark.slow

USER, PASSWORD, DATABASE = "fer", "fer-test-password", "mlflow"



def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


def _as_postgres_user(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with database `mlflow`; yields (user:password@host:port/db, psycopg2)."""
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb / pg_ctl; on Debian: apt-get install postgresql)")
    if os.geteuid() == 0 and (shutil.which("runuser") is None or subprocess.run(["id", "postgres"],
                                                                                capture_output=True).returncode):
        pytest.skip("running as root, and there is no `postgres` user (or runuser) to run PostgreSQL as")

    # Not under pytest's tmp_path: its folders are private to root, and the server runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="fer-postgres-"))
    data, password_file = folder / "data", folder / "password"
    password_file.write_text(PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(password_file, "postgres")
    port = free_port()
    initdb = subprocess.run(
        _as_postgres_user([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={password_file}",
                           "--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"]),
        capture_output=True, text=True,
    )
    assert initdb.returncode == 0, initdb.stdout + initdb.stderr
    options = f"-h 127.0.0.1 -p {port} -k {folder}"  # TCP on localhost only; the socket in our folder
    start = subprocess.run(
        _as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"),
                           "-o", options, "-w", "-t", "60", "start"]),
        capture_output=True, text=True,
    )
    try:
        assert start.returncode == 0, start.stdout + start.stderr + _read(folder / "server.log")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname="postgres")
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {DATABASE}")
        connection.close()
        yield f"{USER}:{PASSWORD}@127.0.0.1:{port}/{DATABASE}", psycopg2
    finally:
        subprocess.run(_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    """`mlflow server` with the PostgreSQL backend store, serving artifacts from a folder (the README's recipe)."""
    database, _ = postgres
    folder = tmp_path_factory.mktemp("postgres-server")
    # The driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, not psycopg2.
    backend_store_uri = f"postgresql+psycopg2://{database}"
    # The first start creates MLflow's tables in PostgreSQL: allow it time.
    with tracking_server(folder, backend_store_uri, timeout=180) as uri:
        yield uri, folder


def test_phases_compare_and_promote_against_a_server_on_postgresql(postgres, server, tmp_path):
    database, psycopg2 = postgres
    uri, folder = server
    params = {"data": "synthetic:64", "epochs": 2, "batch_size": 32}
    run_or_fail("phase1", params, uri, tmp_path)
    # The server is under test here, not the network: phase 2 trains the small baseline model.
    run_or_fail("phase2", {**params, "set": "model=baseline"}, uri, tmp_path)
    client, runs = compare_and_promote("fer-postgres", uri, tmp_path)
    phase2 = next(run for run in runs if run.data.tags["fer.phase"] == "phase2")
    assert len(client.get_metric_history(phase2.info.run_id, "val_loss")) == 2

    # The runs, metrics and registry live in PostgreSQL; the artifacts in the server's folder.
    connection = psycopg2.connect(f"postgresql://{database}")
    with connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'")
        assert cursor.fetchone()[0] == 4
        cursor.execute("SELECT count(*) FROM metrics WHERE key = 'val_loss'")
        assert cursor.fetchone()[0] >= 4
        cursor.execute("SELECT name FROM registered_models")
        assert cursor.fetchall() == [("fer-postgres",)]
    connection.close()
    stored = {p.name for p in (folder / "artifacts").rglob("*")}
    assert {"history.json", "comparison.html", "history.png"} <= stored
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
