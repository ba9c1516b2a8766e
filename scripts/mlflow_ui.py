"""The MLflow UI in headless Chromium: start `mlflow ui` on a store, open its pages in a fresh profile.

Shared by scripts/screenshots.py (the README's pictures) and tests/test_ui.py. Needs the
`playwright` Python package (the `test` extra) and a Chromium; no browser is downloaded:
Debian's `/usr/bin/chromium` (or `$FER_CHROMIUM`) is driven as it is installed.

MLflow 3's UI has a global switch at the top of its sidebar, *GenAI* / *Model training*.
It is a setting of the browser (localStorage `mlflow.workflowType_v1`), GenAI by default,
and a `workflowType=machine_learning` query parameter overrides it for the page opened. The
experiment tag `mlflow.experimentKind` does not (MLflow 3.17; see README, "Look at the runs").
So every URL built here carries that parameter.

Example:
    with mlflow_ui("sqlite:////tmp/store/mlflow.db", Path("/tmp/store")) as base, chromium() as browser:
        page = browser.new_page()
        page.goto(runs_url(base, "1"))
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from local_servers import free_port, stop_process_group, wait_until_healthy  # scripts/ is on the path

# The UI's name for the "Model training" side of its GenAI / Model training switch.
MODEL_TRAINING = "machine_learning"

# A machine without internet: no first-run pages, component or safe-browsing downloads, QUIC
# probes or sync; --no-sandbox because CI runs as root, where Chromium's sandbox refuses to start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class BrowserUnavailable(RuntimeError):
    """No Chromium or no playwright here: the caller skips or explains, nothing was started."""


def chromium_path() -> str:
    """The Chromium to drive: $FER_CHROMIUM when set (only that one), else Debian's /usr/bin/chromium,
    else `chromium` on PATH.

    Raises BrowserUnavailable (with the install command) when there is none.
    """
    chosen = os.environ.get("FER_CHROMIUM")
    candidates = [chosen] if chosen else ["/usr/bin/chromium", shutil.which("chromium")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise BrowserUnavailable("no Chromium found: apt-get install chromium (Debian), or set FER_CHROMIUM")


@contextlib.contextmanager
def mlflow_ui(tracking_uri: str, folder: Path, timeout: float = 240) -> Iterator[str]:
    """`mlflow ui` on `tracking_uri`, on a free port of 127.0.0.1; yields its base URL, stops it after.

    `folder` is its working folder (relative artifact locations resolve there) and
    receives its log, `mlflow-ui.log`. One worker: a page or two at a time is all it serves.
    """
    port = free_port()
    log_path = folder / "mlflow-ui.log"
    command = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    with open(log_path, "w") as log:
        # Its own process group: the server's worker processes stop with it.
        process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, process, timeout, what="mlflow ui", log=log_path)
        yield base
    finally:
        stop_process_group(process)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 800):
    """A headless Chromium with a fresh, throw-away profile; yields a playwright BrowserContext.

    A fresh profile means the UI's own defaults (GenAI mode, no saved chart settings):
    what a first-time user sees. Raises BrowserUnavailable when Chromium or playwright is missing.
    """
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise BrowserUnavailable("the playwright package is not installed: pip install -e '.[test]'") from err
    with tempfile.TemporaryDirectory(prefix="fer-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        context.set_default_timeout(90_000)  # a busy 2-core machine renders the UI's pages in tens of seconds
        try:
            yield context
        finally:
            context.close()


def _query(**params: str | None) -> str:
    return urllib.parse.urlencode({key: value for key, value in params.items() if value is not None})


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's page in Model training mode, which the UI opens on its runs (GenAI mode: on traces)."""
    return f"{base}/#/experiments/{experiment_id}?{_query(workflowType=MODEL_TRAINING)}"


def runs_url(base: str, experiment_id: str, chart: bool = False, search_filter: str | None = None) -> str:
    """The experiment's runs, as a table or (chart=True) as charts, in Model training mode.

    Example:
        runs_url("http://127.0.0.1:5000", "1", chart=True)
        # 'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&compareRunsMode=CHART'
    """
    query = _query(workflowType=MODEL_TRAINING, compareRunsMode="CHART" if chart else None,
                   searchFilter=search_filter)
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def run_url(base: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """One run's page; tab "" (overview), "model-metrics" or "artifacts"."""
    path = f"/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
    return f"{base}{path}?{_query(workflowType=MODEL_TRAINING)}"
