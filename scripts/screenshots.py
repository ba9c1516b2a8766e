"""The README's screenshots of the MLflow UI, taken from real runs; run it again after an MLflow upgrade.

    python scripts/screenshots.py [--out docs/images] [--keep DIR]

1. Trains a short phase-1 and phase-2 run on synthetic faces (`fer train`, about two minutes
   on 2 CPU cores) into a new SQLite store in a temporary folder (or --keep DIR, left there
   to look at with `mlflow ui --backend-store-uri sqlite:///DIR/mlflow.db`). Phase 1 steps
   its learning rate down on plateaus (patience 1, so that the steps show in a few epochs),
   phase 2 decays it linearly: two shapes that a log axis shows and a linear one flattens.
2. Starts `mlflow ui` on that store on a free port of 127.0.0.1 and opens it in headless
   Chromium (Debian's, driven by playwright; see scripts/mlflow_ui.py) with a fresh profile,
   as a first-time user would.
3. Writes 1280x800 PNGs, reduced to 256 colours (each must stay under 300 KB):
   - runs.png: the experiment's runs, Model training mode;
   - charts.png: the chart view, both runs' curves in one chart per metric, learning_rate
     on a log axis;
   - compare.png: the compare page of the two runs (their params);
   - artifacts.png: the phase-2 run's artifacts, plots/history.png open.

What the script clicks is found by the text the UI shows (button names, headings); when an
MLflow upgrade renames one, the step that needs it fails with the name it looked for.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlflow_ui import chromium, mlflow_ui, run_url, runs_url  # noqa: E402 (scripts/ is on the path)

EXPERIMENT = "fer"
MAX_BYTES = 300_000
# Short runs that still draw curves: a few epochs on a few hundred synthetic faces.
COMMON = ["--data", "synthetic:320", "--epochs", "6", "--batch-size", "32", "--seed", "7"]
PHASES = {
    "phase1": COMMON + ["--set", "reduce_lr.patience=1"],
    "phase2": COMMON + ["--lr-schedule", "linear"],
}
# The charts shown side by side in charts.png, in this order.
CHART_METRICS = ("val_accuracy", "learning_rate")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--keep", type=Path, help="train into this folder and keep it (default: a temporary one); "
                        "runs already there are used again")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        take_screenshots(args.keep.resolve(), args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="fer-screenshots-") as folder:
            take_screenshots(Path(folder), args.out)


def take_screenshots(folder: Path, out: Path) -> None:
    """Train both phases into `folder`, open the UI on it, write the PNGs to `out`."""
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    for phase, options in PHASES.items():
        if not finished_runs(client).get(phase):  # a kept folder's runs are used again
            train(phase, options, tracking_uri, folder)
    runs = finished_runs(client)
    experiment_id = runs["phase1"].info.experiment_id
    names = [runs["phase1"].info.run_name, runs["phase2"].info.run_name]

    with mlflow_ui(tracking_uri, folder) as base, chromium() as browser:
        without_assistant(browser)
        page = browser.new_page()
        choose_model_training(page, base)
        page.goto(runs_url(base, experiment_id))
        wait_for_texts(page, names)
        save(page, out / "runs.png")

        page.goto(runs_url(base, experiment_id, chart=True))
        set_log_scale(page, "learning_rate")
        filter_charts(page, "^({})$".format("|".join(CHART_METRICS)))
        wait_for_texts(page, list(CHART_METRICS))
        save(page, out / "charts.png")

        page.goto(runs_url(base, experiment_id))  # tick both runs, press Compare
        wait_for_texts(page, names)
        page.get_by_role("checkbox", name="Select all runs").check()
        page.get_by_role("button", name="Compare", exact=True).click()
        wait_for_texts(page, ["config.model"])
        page.get_by_text("Show diff only", exact=True).first.click()  # the parameters that differ between the phases
        page.get_by_text("Parameters", exact=True).first.evaluate("heading => heading.scrollIntoView()")
        save(page, out / "compare.png")

        page.goto(run_url(base, experiment_id, runs["phase2"].info.run_id, tab="artifacts"))
        page.get_by_text("plots", exact=True).first.click()
        page.get_by_text("history.png", exact=True).first.click()
        page.wait_for_selector("img[src*='history.png'], img[alt*='history']", timeout=30_000)
        save(page, out / "artifacts.png")


def finished_runs(client) -> dict:
    """{phase: the latest finished run of that phase} in the experiment; {} before it exists."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])
    latest = {}
    for run in runs:
        latest.setdefault(run.data.tags.get("fer.phase"), run)
    return latest


def train(phase: str, options: list[str], tracking_uri: str, folder: Path) -> None:
    """`fer train PHASE ...` into the store, as a user would type it; fails with its output's tail."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, FER_CACHE_DIR=str(folder / "cache"),
               FER_CHECKPOINT_DIR=str(folder / "checkpoints"), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "fer.cli", "train", phase, *options, "--experiment", EXPERIMENT]
    print("$", " ".join(command[1:]), flush=True)
    started = time.monotonic()
    result = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"training {phase} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
    print(f"  {phase} trained in {time.monotonic() - started:.0f} s", flush=True)


def wait_for_texts(page, texts: list[str], timeout: float = 120_000) -> None:
    """Wait until every text is visible on the page."""
    for text in texts:
        page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout)


def without_assistant(browser) -> None:
    """Keep the MLflow Assistant panel closed: it opens by itself on a first visit and takes a third of the width.

    Sets, before any page loads, what the UI itself remembers once a user has closed it
    (localStorage, MLflow 3.17). Should a later MLflow rename these keys, the panel just shows.
    """
    browser.add_init_script(
        "window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        "window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    )


def choose_model_training(page, base: str) -> None:
    """Set the sidebar's GenAI | Model training switch to Model training, as the README says to do once.

    The browser remembers it; a link's workflowType=machine_learning lasts only until the
    next page that the UI opens itself (the compare page, say).
    """
    page.goto(f"{base}/")
    page.get_by_text("Model training", exact=True).first.click()


def filter_charts(page, pattern: str) -> None:
    """Type `pattern` (a case-insensitive regular expression) into the chart view's search box."""
    search = page.get_by_placeholder("Search metric charts")
    search.fill(pattern)
    time.sleep(1)  # the box filters after a short pause in typing


def set_log_scale(page, metric: str) -> None:
    """Switch the y axis of `metric`'s chart to log scale: the chart's menu, Configure, Log scale, Save changes."""
    filter_charts(page, f"^{metric}$")
    page.get_by_test_id("experiment-view-compare-runs-card-menu").first.click()
    page.get_by_role("menuitem", name="Configure").click()
    page.get_by_role("switch", name="y-axis-log").click()
    page.get_by_role("button", name="Save changes").click()


def save(page, path: Path) -> None:
    """Screenshot the viewport as a 256-colour PNG; fail when it is 300 KB or more."""
    from PIL import Image

    time.sleep(1.5)  # let charts finish their transition animations
    page.screenshot(path=path)
    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    size = path.stat().st_size
    if size >= MAX_BYTES:
        raise SystemExit(f"{path}: {size:,} bytes, over the {MAX_BYTES:,} the README's images may have")
    print(f"  {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {size // 1000} KB", flush=True)


if __name__ == "__main__":
    main()
