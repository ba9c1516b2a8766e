"""The MLflow UI as the README says to use it: `mlflow ui` on a store with a phase-1 and a phase-2 run, in headless Chromium.

Skips where Chromium or the playwright package is not installed (.ci/run installs both).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from mlflow_ui import BrowserUnavailable, chromium, chromium_path, experiment_url, mlflow_ui  # noqa: E402


def _missing_browser() -> str | None:
    """Why the browser cannot run here, or None; checked before the shared training fixture trains."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    try:
        chromium_path()
    except BrowserUnavailable as err:
        return str(err)
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing_browser() is not None, reason=str(_missing_browser()))]


def test_the_readme_link_shows_both_training_runs_and_compare_opens_their_params(trained_store):
    uri, client, runs, folder = trained_store
    experiment_id = runs["phase1"].info.experiment_id
    names = [runs[phase].info.run_name for phase in ("phase1", "phase2")]
    with mlflow_ui(uri, folder) as base, chromium() as browser:
        page = browser.new_page()
        # A fresh profile is in GenAI mode, which opens an experiment on its traces overview;
        # in Model training mode (workflowType=machine_learning) it opens on the runs.
        page.goto(experiment_url(base, experiment_id))
        page.wait_for_url(f"**/experiments/{experiment_id}/runs?**")
        for name in names:
            page.get_by_text(name, exact=True).first.wait_for(state="visible")

        # The README: tick the runs, press Compare, read their parameters side by side.
        page.get_by_role("checkbox", name="Select all runs").check()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_url("**/compare-runs?**")
        page.get_by_role("rowheader", name="config.model", exact=True).wait_for(state="visible")
        for name in names:
            assert page.get_by_text(name, exact=True).first.is_visible()
        for model in ("baseline", "final"):  # each run's value of config.model
            assert page.get_by_text(model, exact=True).first.is_visible()
