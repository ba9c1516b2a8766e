"""Promotion: the champion gate, aliases, and the decision recorded on each version."""

from pathlib import Path

import mlflow
import numpy as np
import pytest

from fer.models import build_model
from fer.registry import CHALLENGER, CHAMPION, LATEST_COMPARE, PHOTO_MODEL, PromotionError, decide, promote
from fer.serving.pyfunc import log_emotion_model

NAME = "fer-emotion-test"


@pytest.fixture
def store(in_process):
    """conftest's `in_process` store, with experiment "fer" active; its client."""
    mlflow.set_experiment("fer")
    return in_process


@pytest.fixture(scope="module")
def network():
    return build_model("baseline")


def training_run(network, best_val_accuracy: float, phase: str = "phase2", tags=None, metrics=None) -> str:
    """A finished training run with a real logged model and the metric the gate reads."""
    with mlflow.start_run() as run:
        mlflow.set_tags({"fer.phase": phase, "fer.run_kind": "training", **(tags or {})})
        mlflow.log_metrics({"best_val_accuracy": best_val_accuracy, **(metrics or {})})
        log_emotion_model(network, np.zeros((1, 48, 48, 1), np.float32))
    return run.info.run_id


def compare_run(final_run_id: str) -> str:
    """A finished compare run as `fer compare` tags it (the table itself does not matter to promote)."""
    with mlflow.start_run() as run:
        mlflow.set_tags({"fer.phase": "compare", "fer.run_kind": "compare", "fer.final_run_id": final_run_id})
    return run.info.run_id


def aliases(client) -> dict:
    return {alias: str(version) for alias, version in client.get_registered_model(NAME).aliases.items()}


def test_gate_logic():  # pure: in the fast lane
    assert decide(0.5, 0.3, None) == (True, "first model to clear the minimum")
    assert decide(0.2, 0.3, None)[0] is False
    assert decide(0.6, 0.0, 0.5)[0] is True
    assert decide(0.5, 0.0, 0.5)[0] is False  # a tie does not displace the champion


@pytest.mark.slow  # builds and registers real Keras models
def test_champion_moves_only_to_a_better_model(store, network):
    first, worse, better = (training_run(network, v) for v in (0.50, 0.40, 0.70))

    d1 = promote(first, model_name=NAME, min_value=0.3)
    assert d1.promoted and d1.champion_version is None
    assert aliases(store) == {CHAMPION: "1", CHALLENGER: "1"}

    d2 = promote(worse, model_name=NAME, min_value=0.3)
    assert not d2.promoted and (d2.champion_version, d2.champion_value) == ("1", 0.5)
    assert aliases(store) == {CHAMPION: "1", CHALLENGER: "2"}
    version = store.get_model_version(NAME, "2")
    assert version.tags["fer.decision"] == CHALLENGER
    assert version.tags["fer.source_run_id"] == worse
    assert "does not beat the champion" in version.tags["fer.reason"]
    assert "stays challenger" in version.description and "0.4000" in version.description

    d3 = promote(better, model_name=NAME, min_value=0.3)
    assert d3.promoted and d3.reason == "beats the champion by +0.2000"
    assert aliases(store) == {CHAMPION: "3", CHALLENGER: "3"}
    assert store.get_model_version(NAME, "3").tags["fer.champion_before"] == "1"

    # Versions are never deleted.
    assert sorted(int(v.version) for v in store.search_model_versions(f"name = '{NAME}'")) == [1, 2, 3]


@pytest.mark.slow  # builds and registers real Keras models
def test_minimum_blocks_even_a_first_model(store, network):
    run_id = training_run(network, 0.2)
    decision = promote(run_id, model_name=NAME, min_value=0.3)
    assert not decision.promoted and "below the minimum" in decision.reason
    assert aliases(store) == {CHALLENGER: "1"}


@pytest.mark.slow  # builds and registers real Keras models
def test_default_choice_is_the_best_finished_phase2_run(store, network):
    training_run(network, 0.55)
    best = training_run(network, 0.65)
    training_run(network, 0.99, phase="phase1")  # not a phase-2 run: never chosen
    decision = promote(model_name=NAME)
    assert decision.source_run_id == best


def test_model_card_names_data_split_figures_date_and_limits():  # pure: in the fast lane
    from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag

    from fer.registry import model_card

    info = RunInfo(run_id="abc", experiment_id="1", user_id="u", status="FINISHED", start_time=1_700_000_000_000,
                   end_time=1_700_000_600_000, lifecycle_stage="active", run_name="phase2-final")
    tags = {"fer.phase": "phase2", "fer.model": "final", "fer.eval_split": "test", "fer.data_source": "ferplus",
            "fer.label_mode": "majority"}
    metrics = {"eval_accuracy": 0.7812, "eval_macro_f1": 0.5651, "eval_recall_contempt": 0.0}
    card = model_card(Run(info, RunData(metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                                        tags=[RunTag(k, v) for k, v in tags.items()])))
    assert "`abc` (phase2-final), phase2, model `final`, finished 2023-11-14 22:23 UTC" in card
    assert "- Data: ferplus, majority labels" in card
    assert "On the test split: accuracy 0.7812, macro-F1 0.5651" in card
    assert "validation figures" not in card and "synthetic" not in card  # a test split, real data
    assert "48x48 frontal faces" in card and "contempt rare: recall 0.00" in card
    assert card.endswith("`MODEL_CARD.md` in the fer repository.") and "Out of scope" in card


def test_the_model_card_the_description_points_to_is_in_the_repository():  # pure: in the fast lane
    from fer.registry import MODEL_CARD_LINE

    card = (Path(__file__).resolve().parents[1] / "MODEL_CARD.md").read_text()
    assert "`MODEL_CARD.md`" in MODEL_CARD_LINE
    assert all(f"## {heading}" in card for heading in ("Intended use", "Out of scope", "Data and its terms"))


def test_nothing_to_promote_says_what_to_run(store):
    with pytest.raises(PromotionError, match="mlflow run . -e phase2"):
        promote(model_name=NAME)


@pytest.mark.slow  # builds and registers real Keras models
def test_registered_champion_predicts_faces(store, network):
    promote(training_run(network, 0.6), model_name=NAME)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1)).astype(np.float32)
    result = model.predict(faces)
    expected = network.predict(faces, verbose=0)
    assert len(result) == 3
    np.testing.assert_allclose(result[["neutral", "happiness"]].to_numpy(dtype=float), expected[:, :2], rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # builds and registers real Keras models
def test_version_source_run_is_the_training_run_and_its_description_a_model_card(store, network):
    run_id = training_run(
        network, 0.62,
        tags={"fer.eval_split": "val", "fer.data_source": "ferplus", "fer.model": "final", "fer.label_mode": "majority"},
        metrics={"eval_accuracy": 0.6123, "eval_macro_f1": 0.4567, "eval_recall_contempt": 0.04},
    )
    decision = promote(run_id, model_name=NAME)
    version = store.get_model_version(NAME, decision.version)
    assert version.run_id == run_id  # the registry's "source run" link leads to the curves and metrics

    card = version.description
    for expected in ("ferplus", "phase2", "validation split", "accuracy 0.6123", "macro-F1 0.4567",
                     "48x48 frontal faces", "contempt rare: recall 0.04", "now champion"):
        assert expected in card, (expected, card)

    # The served model is the training run's own logged model, and loads by that run.
    assert version.source.startswith("models:/")  # the SQL registry keeps the logged model's id only there
    logged = store.get_logged_model(version.source.removeprefix("models:/"))
    assert (logged.name, logged.source_run_id) == (PHOTO_MODEL, run_id)
    assert logged.model_id in [output.model_id for output in store.get_run(run_id).outputs.model_outputs]
    photo_model = mlflow.pyfunc.load_model(f"runs:/{run_id}/{PHOTO_MODEL}")
    assert "emotion" in photo_model.predict(np.zeros((1, 48, 48), np.float32)).columns

    # The promote run holds the decision as tags: no metric to stand beside the trainings' in a chart.
    (promote_run,) = store.search_runs([store.get_run(run_id).info.experiment_id],
                                       filter_string="tags.`fer.run_kind` = 'promote'")
    assert promote_run.data.metrics == {}
    assert promote_run.data.tags["fer.source_run_id"] == run_id
    assert promote_run.data.tags["fer.registered_version"] == f"{NAME}/{decision.version}"

    # Promoting the same run again registers the same photo model, not another copy.
    again = promote(run_id, model_name=NAME)
    assert store.get_model_version(NAME, again.version).source == version.source


@pytest.mark.slow  # builds and registers real Keras models
def test_latest_compare_promotes_the_compared_final_run(store, network):
    compared = training_run(network, 0.50)
    training_run(network, 0.90)  # the best by the metric: what the default would take
    compare_run(compared)
    assert promote(LATEST_COMPARE, model_name=NAME).source_run_id == compared


def test_latest_compare_without_a_compare_says_what_to_run(store):
    with pytest.raises(PromotionError, match="mlflow run . -e compare"):
        promote(LATEST_COMPARE, model_name=NAME)


@pytest.mark.slow  # promotes a model trained by `mlflow run`
def test_compare_and_promote_runs_share_no_metric_name_with_trainings(trained_store, monkeypatch):
    """On real training runs: neither kind of run adds a curve to the trainings' charts."""
    from fer.analysis.compare import compare

    uri, client, runs, _ = trained_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # Their own experiment: the shared store's experiment keeps exactly the runs other tests expect.
    baseline_id, final_id = runs["phase1"].info.run_id, runs["phase2"].info.run_id
    try:
        compare(baseline_id, final_id, experiment="fer-run-kinds")
        decision = promote(LATEST_COMPARE, model_name="fer-run-kinds", experiment="fer-run-kinds")
    finally:
        mlflow.set_tracking_uri(None)
    assert decision.source_run_id == final_id
    assert client.get_model_version("fer-run-kinds", decision.version).run_id == final_id

    training_metrics = set(client.get_run(baseline_id).data.metrics) | set(client.get_run(final_id).data.metrics)
    assert {"best_val_accuracy", "val_accuracy", "eval_accuracy"} <= training_metrics
    experiment_id = client.get_experiment_by_name("fer-run-kinds").experiment_id
    others = client.search_runs([experiment_id])
    assert sorted(run.data.tags["fer.run_kind"] for run in others) == ["compare", "promote"]
    for run in others:
        assert not set(run.data.metrics) & training_metrics, (run.data.tags["fer.run_kind"], run.data.metrics)
    # The README's filter: the trainings, and nothing else.
    trainings = client.search_runs([runs["phase1"].info.experiment_id], filter_string="tags.fer.run_kind = 'training'")
    assert {baseline_id, final_id} <= {run.info.run_id for run in trainings}
    assert {run.data.tags["fer.phase"] for run in trainings} <= {"phase1", "phase2"}
