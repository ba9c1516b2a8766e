"""Training runs end to end: `mlflow run` of both entry points into a real SQLite store.

Each run trains for two epochs on a tiny synthetic set; the tests then read
the run back through MLflow's client, as a user comparing runs would.
"""

import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import TRAINED_EPOCHS

EPOCHS = TRAINED_EPOCHS
PER_EPOCH_METRICS = ("accuracy", "loss", "val_accuracy", "val_loss", "learning_rate", "peak_rss_mb")

pytestmark = pytest.mark.slow


def expected_acceleration() -> tuple[str, str]:
    """What `auto` resolves to on this machine (fer.training.acceleration): XLA with exactly one GPU
    (Keras's rule; several GPUs mean a mirrored strategy, where it is off), mixed precision on tensor cores."""
    import tensorflow as tf

    from fer.training.acceleration import resolve_dtype_policy

    return str(len(tf.config.list_physical_devices("GPU")) == 1), resolve_dtype_policy("auto")


def assert_evaluation_matches_the_confusion_matrix(client, run, tmp_path) -> None:
    """eval_accuracy and eval_macro_f1 are what the run's own confusion_matrix.json gives, by hand."""
    path = client.download_artifacts(run.info.run_id, "confusion_matrix.json", str(tmp_path))
    counts = np.asarray(json.loads(Path(path).read_text())["counts"], dtype=float)
    assert counts.sum() > 0
    correct, support, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    present = support > 0  # macro-F1 over the classes the split holds
    f1 = 2 * correct[present] / (support[present] + predicted[present])
    metrics = run.data.metrics
    assert metrics["eval_accuracy"] == pytest.approx(correct.sum() / counts.sum(), abs=1e-9)
    assert metrics["eval_macro_f1"] == pytest.approx(f1.mean(), abs=1e-9)


@pytest.fixture(scope="module")
def store(trained_store):
    uri, client, runs, _ = trained_store
    mlflow.set_tracking_uri(uri)
    yield client, runs
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("phase, model", [("phase1", "baseline"), ("phase2", "final")])
def test_run_finishes_with_config_params_and_tags(store, phase, model):
    _, runs = store
    run = runs[phase]
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["config.epochs"] == str(EPOCHS) and params["config.batch_size"] == "32"
    assert params["config.seed"] == "3" and params["config.model"] == model
    assert params["config.reduce_lr.factor"] == "0.2"
    assert params["optimizer_name"] == "adam"  # autologging's own params are there too
    assert tags["fer.model"] == model and tags["fer.data_source"] == "synthetic"
    assert tags["fer.label_mode"] == "majority"
    assert tags["mlflow.runName"].startswith(f"{phase}-{model}")
    # auto: neither XLA nor mixed precision without a GPU; both on one with tensor cores (fer.training.acceleration).
    assert (params["acceleration.jit_compile"], params["acceleration.dtype_policy"]) == expected_acceleration()
    assert params["config.max_minutes"] == "30.0" and tags["fer.stopped_by"] == "epochs"


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_every_epoch_metric_has_exactly_one_value_per_epoch(store, phase):
    client, runs = store
    run_id = runs[phase].info.run_id
    for key in PER_EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert steps == list(range(EPOCHS)), key
    for key in runs[phase].data.metrics:  # and no metric is logged more than once per step
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), key


@pytest.mark.parametrize("phase", ["phase1", "phase2"])
def test_run_holds_history_reports_and_evaluation(store, phase, tmp_path):
    client, runs = store
    run = runs[phase]
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    history = json.loads((local / "history.json").read_text())
    for key in PER_EPOCH_METRICS:
        assert len(history[key]) == EPOCHS
        logged = [m.value for m in client.get_metric_history(run.info.run_id, key)]
        np.testing.assert_allclose(history[key], logged, rtol=1e-6)
    for png in ("plots/history.png", "plots/confusion_matrix.png", "plots/reliability_diagram.png"):
        with Image.open(local / png) as image:
            assert image.format == "PNG" and image.width > 400
    best = (local / "best_performance.txt").read_text()
    assert f"{max(history['val_accuracy']):.4f}" in best
    report = (local / "classification_report.txt").read_text()
    assert "happiness" in report and "macro avg" in report
    assert (local / "model_summary.txt").exists() and (local / "history.pkl").exists()
    diagnostics = json.loads((local / "diagnostics.json").read_text())
    assert diagnostics["epoch_numbering"] == "1-based"
    assert "## " in (local / "diagnostics.md").read_text()
    metrics = run.data.metrics
    assert_evaluation_matches_the_confusion_matrix(client, run, tmp_path / "evaluation")
    assert "eval_recall_sadness" in metrics
    assert run.data.tags["fer.eval_split"] == "test"
    # Calibration is measured on every run, and only measured unless `calibration: temperature`.
    assert metrics["eval_log_loss"] > 0 and 0 <= metrics["eval_ece"] <= 1
    assert "calibration_temperature" not in metrics and "calibration.temperature" not in run.data.params


def test_datasets_are_logged_with_digests_and_contexts(store):
    _, runs = store
    inputs = runs["phase2"].inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert {"training", "validation", "testing"} <= set(contexts)
    assert all(len(d.digest) >= 8 for d in contexts.values())
    assert contexts["training"].digest != contexts["validation"].digest


def test_logged_model_reloads_and_predicts_like_the_keras_model(store, tmp_path):
    import keras

    client, runs = store
    run_id = runs["phase2"].info.run_id
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    signature = pyfunc.metadata.signature
    assert signature.inputs.inputs[0].shape == (-1, 48, 48, 1)
    assert signature.outputs.inputs[0].shape == (-1, 8)
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path)))
    assert (local / "input_example.json").exists() or (local / "serving_input_example.json").exists()
    network = keras.saving.load_model(next(local.rglob("*.keras")), compile=False)
    faces = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(pyfunc.predict(faces), network.predict(faces, verbose=0), rtol=1e-5, atol=1e-6)


def train_phase1(settings: dict, experiment: str) -> str:
    from fer.config import load_config
    from fer.training.train import train

    return train(load_config("phase1", {"data": "synthetic:64", "batch_size": 32, **settings}), experiment=experiment)


def test_learning_rate_step_is_recorded_at_the_epoch_that_first_ran_at_the_new_rate(in_process):
    """Monitoring the rate itself with patience 1 forces ReduceLROnPlateau to step after epochs 2 and 4."""
    run_id = train_phase1({"epochs": 5, "reduce_lr.monitor": "learning_rate", "reduce_lr.patience": 1,
                           "early_stopping.enabled": False}, "lr-step")
    rates = [m.value for m in sorted(in_process.get_metric_history(run_id, "learning_rate"), key=lambda m: m.step)]
    np.testing.assert_allclose(rates, [1e-3, 1e-3, 2e-4, 2e-4, 4e-5], rtol=1e-5)


def test_a_linear_schedule_with_flip_tta_run_logs_both_evaluations_and_serves_mirror_averaged(in_process, tmp_path):
    """lr_schedule=linear decays every epoch to the floor; tta=flip logs the TTA figures as eval_* and the
    plain network's as eval_no_tta_*; the served model is the mirror-averaging one."""
    from fer import data as fer_data
    from fer.data.synthetic import make_faces

    settings = {"data": "synthetic:96", "epochs": 3, "lr_schedule": "linear", "warmup_epochs": 0, "tta": "flip",
                "early_stopping.enabled": False}
    run_id = train_phase1(settings, "schedule-tta")
    run = in_process.get_run(run_id)
    rates = [m.value for m in sorted(in_process.get_metric_history(run_id, "learning_rate"), key=lambda m: m.step)]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2] == pytest.approx(1e-5, rel=1e-4)
    assert_evaluation_matches_the_confusion_matrix(in_process, run, tmp_path / "evaluation")
    diagnostics = Path(in_process.download_artifacts(run_id, "diagnostics.md", str(tmp_path))).read_text()
    assert "followed a linear decay" in diagnostics and "followed by" not in diagnostics

    # The plain figures are the wrapped network's own, on the same split.
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "model")))
    from fer.serving.pyfunc import load_network

    wrapper = load_network(str(next(local.rglob("*.keras"))))
    plain = next(layer for layer in wrapper.layers if isinstance(layer, keras.Model))
    splits = fer_data.load("synthetic:96", seed=42)
    evaluated = getattr(splits, run.data.tags["fer.eval_split"])
    predicted = plain.predict(evaluated.images[..., np.newaxis].astype(np.float32), verbose=0).argmax(axis=1)
    assert run.data.metrics["eval_no_tta_accuracy"] == pytest.approx(np.mean(predicted == evaluated.labels), abs=1e-9)

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    faces = make_faces(4, seed=3)[0][..., np.newaxis].astype(np.float32)
    np.testing.assert_allclose(model.predict(faces), model.predict(faces[:, :, ::-1]), atol=1e-5)


def test_with_weight_averaging_what_is_validated_each_epoch_is_what_is_served(in_process, tmp_path):
    """ema_momentum: Keras's optimizer averages the weights, SwapEMAWeights validates the average, and fit
    leaves the average in the model: the logged model scores on validation exactly the last val_accuracy."""
    from fer import data as fer_data
    from fer.serving.pyfunc import load_network

    settings = {"data": "synthetic:96", "epochs": 3, "ema_momentum": 0.9, "early_stopping.enabled": False}
    run_id = train_phase1(settings, "ema")
    run = in_process.get_run(run_id)
    assert run.data.params["config.ema_momentum"] == "0.9"
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "model")))
    network = load_network(str(next(local.rglob("*.keras"))))
    val = fer_data.load("synthetic:96", seed=42).val
    predicted = network.predict(val.images[..., np.newaxis].astype(np.float32), verbose=0).argmax(axis=1)
    last = max(in_process.get_metric_history(run_id, "val_accuracy"), key=lambda m: m.step).value
    assert last == pytest.approx(np.mean(predicted == val.labels), abs=1e-6)


def test_sqrt_class_weights_are_the_square_roots_of_balanced_ones():
    from fer.config import load_config
    from fer.data.splits import Split
    from fer.training.train import _class_weights

    labels = np.array([0] * 60 + [1] * 30 + [7] * 6)  # classes 2-6 absent: no weight
    train = Split.from_labels(np.zeros((len(labels), 48, 48), np.uint8), labels)
    balanced = _class_weights(load_config("phase1", {"class_weight": "balanced"}), train)
    sqrt = _class_weights(load_config("phase1", {"class_weight": "sqrt"}), train)
    assert set(sqrt) == set(balanced) == {0, 1, 7}
    assert balanced[7] == pytest.approx(96 / (3 * 6))
    for label in balanced:
        assert sqrt[label] == pytest.approx(balanced[label] ** 0.5)


def test_temperature_calibration_is_fitted_logged_and_applied_by_the_logged_model(in_process, tmp_path):
    """calibration=temperature: T fitted on validation (param and metric), eval_* are the scaled probabilities'
    (unscaled beside them), the reliability diagram is logged, and the served model returns the scaled ones."""
    from fer import data as fer_data
    from fer.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature, log_loss

    run_id = train_phase1({"data": "synthetic:96", "epochs": 2, "calibration": "temperature"}, "calibration")
    run = in_process.get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    temperature = metrics["calibration_temperature"]
    assert params["config.calibration"] == "temperature"
    assert float(params["calibration.temperature"]) == pytest.approx(temperature, rel=1e-5)
    assert metrics["calibration_val_log_loss_after"] <= metrics["calibration_val_log_loss_before"]
    local = Path(in_process.download_artifacts(run_id, "plots/reliability_diagram.png", str(tmp_path)))
    with Image.open(local) as image:
        assert image.format == "PNG" and image.width > 400

    # The logged model: the network (in it, untouched) followed by the fitted temperature.
    from fer.serving.pyfunc import load_network

    model_dir = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "model")))
    served = load_network(str(next(model_dir.rglob("*.keras"))))
    assert served.get_layer("temperature").temperature == pytest.approx(temperature)
    network = next(layer for layer in served.layers if isinstance(layer, keras.Model))
    splits = fer_data.load("synthetic:96", seed=42)
    val, test = splits.val, splits.test

    def faces(split):
        return split.images[..., np.newaxis].astype(np.float32)

    # The temperature is the one that fits the network's validation predictions best.
    assert temperature == pytest.approx(fit_temperature(val.labels, network.predict(faces(val), verbose=0)), rel=1e-3)
    raw = network.predict(faces(test), verbose=0)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    served_probabilities = pyfunc.predict(faces(test))
    np.testing.assert_allclose(served_probabilities, apply_temperature(raw, temperature), atol=1e-5)
    # eval_* score what is served; eval_uncalibrated_* the network's own probabilities.
    assert run.data.tags["fer.eval_split"] == "test"
    assert metrics["eval_log_loss"] == pytest.approx(log_loss(test.labels, served_probabilities), abs=1e-4)
    assert metrics["eval_ece"] == pytest.approx(expected_calibration_error(test.labels, served_probabilities), abs=1e-4)
    assert metrics["eval_uncalibrated_log_loss"] == pytest.approx(log_loss(test.labels, raw), abs=1e-4)
    assert metrics["eval_accuracy"] == pytest.approx(np.mean(raw.argmax(axis=1) == test.labels), abs=1e-9)


def test_logit_adjustment_is_fitted_on_validation_and_applied_by_the_logged_model(in_process, tmp_path):
    """logit_adjustment=fit after flip TTA: tau fitted on validation (param, metrics before/after), eval_* are
    the adjusted probabilities' (unadjusted beside them), and the served model returns the adjusted ones."""
    from fer import data as fer_data
    from fer.evaluation.logit_adjustment import adjust, class_prior, cross_fit, fit_tau

    run_id = train_phase1({"data": "synthetic:96", "epochs": 2, "tta": "flip", "logit_adjustment": "fit"},
                          "logit-adjustment")
    run = in_process.get_run(run_id)
    metrics, params = run.data.metrics, run.data.params
    tau = metrics["logit_adjustment_tau"]
    assert params["config.logit_adjustment"] == "fit" and float(params["logit_adjustment.tau"]) == tau
    assert metrics["logit_adjustment_val_macro_f1_after"] >= metrics["logit_adjustment_val_macro_f1_before"]

    splits = fer_data.load("synthetic:96", seed=42)
    prior = class_prior(splits.train.targets)

    def faces(split, mirror=False):
        images = split.images[:, :, ::-1] if mirror else split.images
        return images[..., np.newaxis].astype(np.float32)

    model_dir = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "model")))
    from fer.serving.pyfunc import load_network

    network = load_network(str(next(model_dir.rglob("*.keras"))))
    while inner := [layer for layer in network.layers if isinstance(layer, keras.Model)]:
        network = inner[0]  # the trained network, inside the flip average, inside the adjustment

    def tta(split):
        return (network.predict(faces(split), verbose=0) + network.predict(faces(split, mirror=True), verbose=0)) / 2

    assert tau == fit_tau(splits.val.labels, tta(splits.val), prior)
    honest = cross_fit(splits.val.labels, tta(splits.val), prior)  # beside the optimistic after-figures
    assert metrics["logit_adjustment_val_macro_f1_after_crossfit"] == pytest.approx(honest.mean_macro_f1, abs=1e-9)
    assert metrics["logit_adjustment_val_accuracy_after_crossfit"] == pytest.approx(honest.mean_accuracy, abs=1e-9)
    test = splits.test
    unadjusted = tta(test)
    served_probabilities = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(faces(test))
    np.testing.assert_allclose(served_probabilities, adjust(unadjusted, prior, tau), atol=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(np.mean(served_probabilities.argmax(1) == test.labels), abs=1e-9)
    assert metrics["eval_unadjusted_accuracy"] == pytest.approx(np.mean(unadjusted.argmax(1) == test.labels), abs=1e-9)


def test_a_refitted_temperature_on_resume_goes_to_a_tag_since_a_param_cannot_change(in_process):
    from fer.training.train import TEMPERATURE_PARAM, _log_fitted_param

    mlflow.set_experiment("refit")
    with mlflow.start_run() as run:
        _log_fitted_param(TEMPERATURE_PARAM, "1.5")
        _log_fitted_param(TEMPERATURE_PARAM, "1.5")  # the same value again: nothing to say
        _log_fitted_param(TEMPERATURE_PARAM, "2.25")  # a resumed sitting refitted on other weights
    data = in_process.get_run(run.info.run_id).data
    assert data.params[TEMPERATURE_PARAM] == "1.5"
    assert data.tags[f"fer.{TEMPERATURE_PARAM}_refitted"] == "2.25"


def test_time_limit_ends_a_finished_run_early_under_xla_and_mixed_precision(in_process, tmp_path):
    """A 3-second budget stops a 50-epoch run after its first epoch (which XLA compilation makes long)."""
    run_id = train_phase1({"epochs": 50, "max_minutes": 0.05, "jit_compile": "true",
                           "dtype_policy": "mixed_bfloat16"}, "time-limit")
    run = in_process.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["fer.stopped_by"] == "time_limit"
    assert 1 <= run.data.metrics["epochs_trained"] < 50
    assert run.data.params["acceleration.jit_compile"] == "True"
    assert run.data.params["acceleration.dtype_policy"] == "mixed_bfloat16"
    # Evaluated and logged like any run.
    assert_evaluation_matches_the_confusion_matrix(in_process, run, tmp_path / "evaluation")
