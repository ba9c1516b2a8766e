"""Promotion: the champion gate, aliases, and the decision recorded on each version."""

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from fer.models import build_model
from fer.registry import CHALLENGER, CHAMPION, PromotionError, decide, promote
from fer.serving import log_emotion_model

NAME = "fer-emotion-test"


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("fer")
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def network():
    return build_model("baseline")


def training_run(network, best_val_accuracy: float, phase: str = "phase2") -> str:
    """A finished training run with a real logged model and the metric the gate reads."""
    with mlflow.start_run() as run:
        mlflow.set_tag("fer.phase", phase)
        mlflow.log_metric("best_val_accuracy", best_val_accuracy)
        log_emotion_model(network, np.zeros((1, 48, 48, 1), np.float32))
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
