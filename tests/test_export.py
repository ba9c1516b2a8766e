"""ONNX and LiteRT export: real exports run by real ONNX Runtime / LiteRT, checked against Keras.

Trained networks are tiny (the baseline, one short epoch on drawn faces) so the
exports take seconds; the training runs are real `fer.training.train.train` runs into a
SQLite store in tmp_path.
"""

import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from fer.data.synthetic import make_faces
from fer.export.runs import TAG_ONNX, TAG_ONNX_SKIPPED, OnnxExportSkipped, log_onnx_model
from fer.export.formats import (
    PARITY_TOLERANCE,
    ConverterMissing,
    export_network,
    float32_copy,
    measure_parity,
    require_converter,
)
from fer.export.quantization import quantize
from fer.serving.engines import LiteRTNetwork, OnnxRuntimeNetwork, forward


def faces(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = make_faces(n, seed=seed)
    return images[..., np.newaxis].astype(np.float32), labels


# ---------------------------------------------------------------------------
# Fast: no network built


def test_parity_is_the_largest_probability_gap_and_the_share_of_changed_emotions():
    reference = np.full((4, 8), 0.05)
    reference[:, 0] = 0.65  # every face: neutral
    candidate = reference.copy()
    candidate[1, [0, 3]] = [0.30, 0.40]  # face 1 turns sad
    candidate[2, 5] += 0.01  # face 2 moves a little, keeps its emotion
    parity = measure_parity(reference, candidate)
    assert parity.max_abs_diff == pytest.approx(0.35)
    assert parity.class_mismatch == pytest.approx(0.25) and parity.faces == 4
    assert not parity.holds() and measure_parity(reference, reference + 1e-6).holds()
    with pytest.raises(ValueError, match="N x 8"):
        measure_parity(reference, candidate[:, :7])


def test_a_missing_converter_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # what `import tf2onnx` meets when it is not installed
    with pytest.raises(ConverterMissing, match=r"tf2onnx .*fer-mlflow\[onnx\]"):
        require_converter("onnx")


# ---------------------------------------------------------------------------
# Exports of a trained network


@pytest.fixture(scope="module")
def trained(trained_baseline):
    """The baseline after one epoch on 200 drawn faces, so its weights and batch-norm statistics are not initial."""
    return trained_baseline


@pytest.mark.slow
@pytest.mark.parametrize("tta", [False, True, "all"], ids=["plain", "flip-tta", "tta-adjusted-calibrated"])
def test_onnx_runtime_gives_the_keras_probabilities(trained, tmp_path, tta):
    from fer.evaluation.logit_adjustment import offsets
    from fer.models import with_flip_averaging, with_logit_adjustment, with_temperature

    network = with_flip_averaging(trained) if tta else trained
    if tta == "all":  # every step a run may put after the network
        network = with_temperature(with_logit_adjustment(network, offsets(np.linspace(0.3, 0.01, 8), 0.5)), 1.4)
    path = export_network(network, tmp_path / "model.onnx")
    x, _ = faces(300, seed=2)  # more than one forward chunk of 256: any batch size runs
    parity = measure_parity(forward(network, x), forward(OnnxRuntimeNetwork(path), x))
    assert parity.max_abs_diff < 1e-5 and parity.class_mismatch == 0, parity.describe()
    if tta:  # the exported wrapper still averages a face with its mirror
        onnx = OnnxRuntimeNetwork(path)
        np.testing.assert_allclose(onnx.predict_on_batch(x[:8]), onnx.predict_on_batch(x[:8, :, ::-1]), atol=1e-6)


@pytest.mark.slow
def test_litert_gives_the_keras_probabilities(trained, tmp_path):
    path = export_network(trained, tmp_path / "model.tflite", "litert")
    x, _ = faces(40, seed=2)
    parity = measure_parity(forward(trained, x), forward(LiteRTNetwork(path), x))
    assert parity.max_abs_diff < 1e-5 and parity.class_mismatch == 0, parity.describe()


@pytest.mark.slow
def test_a_mixed_precision_network_is_exported_as_a_float32_copy(trained, tmp_path):
    from fer.training.acceleration import dtype_policy
    from fer.models import build_model

    with dtype_policy("mixed_bfloat16"):
        mixed = build_model("baseline")
    mixed.set_weights(trained.get_weights())
    copy = float32_copy(mixed)
    assert copy is not mixed and {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    x, _ = faces(16, seed=4)
    np.testing.assert_allclose(forward(copy, x), forward(trained, x), atol=1e-6)  # same weights, float32
    assert float32_copy(trained) is trained
    path = export_network(mixed, tmp_path / "mixed.onnx")
    assert measure_parity(forward(trained, x), forward(OnnxRuntimeNetwork(path), x)).max_abs_diff < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_int8_onnx_is_smaller_and_mostly_agrees(trained, tmp_path, method):
    source = export_network(trained, tmp_path / "model.onnx")
    calibration, _ = faces(64, seed=5)
    target = quantize(source, tmp_path / "model.int8.onnx", method, calibration)
    assert target.stat().st_size < source.stat().st_size / 2  # int8 weights: about a quarter
    x, _ = faces(200, seed=6)
    quantized = forward(OnnxRuntimeNetwork(target), x)
    parity = measure_parity(forward(trained, x), quantized)
    assert 0 < parity.max_abs_diff < 0.5  # quantized: not the float numbers, not noise either
    assert parity.class_mismatch < 0.25, parity.describe()
    # still probabilities: the softmax stays float (an int8 softmax's rows summed to 0.988 on FER+)
    np.testing.assert_allclose(quantized.sum(axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------
# The training run's model.onnx


@pytest.fixture
def store(in_process):
    """The client of a SQLite store in tmp_path, active for MLflow and fer (conftest's `in_process`)."""
    return in_process


def train_tiny(**settings) -> str:
    from fer.config import load_config
    from fer.training.train import train

    config = {"data": "synthetic:96", "epochs": 1, "batch_size": 32, "seed": 7, **settings}
    return train(load_config("phase1", config), experiment="export")


def artifact_paths(client, run_id: str) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id)}


@pytest.mark.slow
def test_a_training_run_logs_model_onnx_that_serves_what_the_pyfunc_serves(store, tmp_path):
    # the served model is the flip-averaging wrapper: so must the file be. float32 pinned: where
    # `auto` picks mixed_bfloat16, the pyfunc computes in bfloat16 and the file in float32 (next test)
    run_id = train_tiny(tta="flip", dtype_policy="float32")
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_ONNX] == "logged"
    assert run.data.metrics["onnx_parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert run.data.metrics["onnx_parity_class_mismatch"] == 0
    assert "model.onnx" in artifact_paths(store, run_id)
    path = store.download_artifacts(run_id, "model.onnx", str(tmp_path))
    x, _ = faces(20, seed=8)
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    np.testing.assert_allclose(forward(OnnxRuntimeNetwork(path), x), pyfunc.predict(x), atol=1e-5)


@pytest.mark.slow
def test_a_mixed_bfloat16_run_logs_a_float32_model_onnx_that_serves_within_bfloat16_round_off(store, tmp_path):
    run_id = train_tiny(dtype_policy="mixed_bfloat16")
    run = store.get_run(run_id)
    assert run.data.params["acceleration.dtype_policy"] == "mixed_bfloat16"
    assert run.data.tags[TAG_ONNX] == "logged"
    assert run.data.metrics["onnx_parity_max_abs_diff"] <= PARITY_TOLERANCE  # against the float32 copy it exports
    path = store.download_artifacts(run_id, "model.onnx", str(tmp_path))
    x, _ = faces(20, seed=8)
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(x)  # computed in bfloat16
    exported = forward(OnnxRuntimeNetwork(path), x)
    assert not np.allclose(exported, served, atol=1e-7)  # the pyfunc really is the bfloat16 network
    np.testing.assert_allclose(exported, served, atol=5e-3)  # bfloat16 keeps 8 bits of mantissa


@pytest.mark.slow
def test_without_the_converter_the_run_finishes_and_says_why_there_is_no_onnx(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    with pytest.warns(OnnxExportSkipped, match="tf2onnx"):
        run_id = train_tiny()
    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[TAG_ONNX] == "skipped"
    assert "tf2onnx" in run.data.tags[TAG_ONNX_SKIPPED] and "pip install" in run.data.tags[TAG_ONNX_SKIPPED]
    assert "model.onnx" not in artifact_paths(store, run_id)
    assert "eval_accuracy" in run.data.metrics
    assert mlflow.pyfunc.load_model(f"runs:/{run_id}/model") is not None  # the pyfunc is logged all the same


@pytest.mark.slow
def test_a_converter_error_or_a_disagreeing_file_is_skipped_with_its_reason(store, trained, monkeypatch):
    import keras

    x, _ = faces(32, seed=9)

    def failing_export(self, *args, **kwargs):
        raise RuntimeError("Unsupported ops: FancyOp\nsecond line")

    with monkeypatch.context() as patch, mlflow.start_run() as run:
        patch.setattr(keras.Model, "export", failing_export)
        with pytest.warns(OnnxExportSkipped):
            assert log_onnx_model(trained, x) is None
    tags = store.get_run(run.info.run_id).data.tags
    assert tags[TAG_ONNX] == "skipped"
    assert tags[TAG_ONNX_SKIPPED] == "the ONNX export failed: RuntimeError: Unsupported ops: FancyOp"

    # An export ONNX Runtime runs differently from Keras: measured, logged, not kept.
    with monkeypatch.context() as patch, mlflow.start_run() as run:
        patch.setattr(OnnxRuntimeNetwork, "predict_on_batch", lambda self, f: np.full((len(f), 8), 1 / 8, np.float32))
        with pytest.warns(OnnxExportSkipped, match="disagrees"):
            assert log_onnx_model(trained, x) is None
    logged = store.get_run(run.info.run_id)
    assert logged.data.metrics["onnx_parity_max_abs_diff"] > PARITY_TOLERANCE
    assert "model.onnx" not in artifact_paths(store, run.info.run_id)

    with warnings.catch_warnings(), mlflow.start_run() as run:  # and unpatched, it is kept
        warnings.simplefilter("error", OnnxExportSkipped)
        parity = log_onnx_model(trained, x)
    assert parity.holds() and "model.onnx" in artifact_paths(store, run.info.run_id)


# ---------------------------------------------------------------------------
# `fer export`


def fer(*args: str):
    from fer.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


@pytest.mark.slow
def test_fer_export_int8_logs_its_validation_accuracy_change(store, tmp_path):
    from fer import data as fer_data

    run_id = train_tiny()
    output = tmp_path / "out" / "emotions.onnx"
    result = fer("export", run_id, "--quantize", "int8", "--calibration-faces", "48", "-o", str(output))
    assert result.exit_code == 0, result.output
    quantized = output.with_name("emotions.int8.onnx")
    assert output.is_file() and quantized.is_file()

    # The figures, computed here from the files and the run's own validation faces.
    val = fer_data.load("synthetic:96", seed=7).val
    x, labels = val.images[..., np.newaxis].astype(np.float32), val.labels
    keras_accuracy = np.mean(mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(x).argmax(1) == labels)
    int8_accuracy = np.mean(forward(OnnxRuntimeNetwork(quantized), x).argmax(1) == labels)
    metrics = store.get_run(run_id).data.metrics
    assert metrics["export_keras_val_accuracy"] == pytest.approx(keras_accuracy)
    assert metrics["export_onnx_int8_val_accuracy"] == pytest.approx(int8_accuracy)
    assert metrics["export_onnx_int8_val_accuracy_delta"] == pytest.approx(int8_accuracy - keras_accuracy)
    assert metrics["export_onnx_val_accuracy_delta"] == pytest.approx(0, abs=1 / len(labels))
    assert metrics["export_onnx_int8_megabytes"] < metrics["export_onnx_megabytes"] / 2
    logged = {f.path for f in store.list_artifacts(run_id, "export")}
    assert {"export/emotions.onnx", "export/emotions.int8.onnx", "export/onnx_report.md"} <= logged
    assert f"{int8_accuracy - keras_accuracy:+.4f}" in result.output  # and the change is printed


@pytest.mark.slow
def test_fer_export_takes_a_registered_version_and_finds_its_training_data(store, tmp_path):
    from fer.registry import promote

    run_id = train_tiny()
    promote(run_id, model_name="fer-export-test", experiment="export")
    output = tmp_path / "champion.tflite"
    result = fer("export", "models:/fer-export-test@champion", "--format", "litert", "-o", str(output), "--no-log")
    assert result.exit_code == 0, result.output
    assert output.is_file() and "LiteRT float32" in result.output
    trained_accuracy = store.get_run(run_id).data.metrics.get("export_keras_val_accuracy")
    assert trained_accuracy is None  # --no-log: nothing written to either run


@pytest.mark.slow
def test_fer_export_errors_are_one_line_and_say_what_to_do(store, tmp_path):
    result = fer("export", "runs:/0123456789abcdef0123456789abcdef/model")
    assert result.exit_code != 0 and "Cannot download model" in result.output
    result = fer("export", str(tmp_path))  # a folder that holds no model
    assert result.exit_code != 0 and "Error:" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_an_onnx_engine_pyfunc_predicts_like_the_keras_one_without_importing_tensorflow(store, tmp_path):
    import re
    import subprocess

    run_id = train_tiny(dtype_policy="float32")  # both float32: the same probabilities to round-off
    result = fer("export", run_id, "--pyfunc", "-o", str(tmp_path / "emotions.onnx"))
    assert result.exit_code == 0, result.output
    uri = re.search(r"ONNX-engine pyfunc (\S+);", result.output).group(1)
    requirements = (Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "m"))) / "requirements.txt")
    assert "onnxruntime==" in requirements.read_text() and "tensorflow" not in requirements.read_text()

    x, _ = faces(6, seed=10)
    np.save(tmp_path / "faces.npy", x)
    script = (
        "import sys, numpy as np, mlflow\n"
        f"model = mlflow.pyfunc.load_model({uri!r})\n"
        f"np.save({str(tmp_path / 'onnx.npy')!r}, model.predict(np.load({str(tmp_path / 'faces.npy')!r})))\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().splitlines()[-1] == "[]"  # neither TensorFlow nor Keras was imported
    keras_probabilities = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(x)
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), keras_probabilities, atol=1e-5)


def test_fer_export_refuses_an_onnx_engine_pyfunc_it_could_not_log_before_any_work(store):
    for args in (["--pyfunc", "--format", "litert"], ["--pyfunc", "--no-log"]):
        result = fer("export", "0123456789abcdef0123456789abcdef", *args)
        assert result.exit_code != 0 and "--pyfunc" in result.output and "Cannot download" not in result.output
