"""What a training run and `fer export` do with exported files (`fer.export.formats`, `fer.export.quantization`).

- `log_onnx_model`: what every training run does (`model.onnx` beside the
  pyfunc, parity metrics), skipped with a logged reason, never a failed run,
  when the converter is missing or fails;
- `export_model`: what `fer export` does for any logged run or registered
  version: the file, the int8 copy, the validation accuracy of each against the
  Keras network's, printed and logged to the model's run;
- `log_onnx_engine_pyfunc`: a pyfunc that runs the ONNX file in ONNX Runtime,
  served without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from fer.data.splits import EMOTIONS
from fer.export.formats import (
    PARITY_TOLERANCE,
    SUFFIXES,
    ConverterMissing,
    ExportError,
    Parity,
    as_faces,
    check_face_input,
    export_network,
    first_line,
    float32_copy,
    load_exported,
    measure_parity,
    require_converter,
)
from fer.export.quantization import DEFAULT_CALIBRATION_FACES, QUANTIZATIONS, calibration_sample, quantize
from fer.serving.engines import OnnxRuntimeNetwork, forward
from fer.utils.atomic import atomic_output

ONNX_ARTIFACT = "model.onnx"
TAG_ONNX = "fer.onnx"  # "logged" or "skipped"
TAG_ONNX_SKIPPED = "fer.onnx_skipped_reason"
EXPORT_ARTIFACTS = "export"  # where `fer export` logs its files in the model's run


class OnnxExportSkipped(UserWarning):
    """A training run logged no `model.onnx`; its tag `fer.onnx_skipped_reason` says why."""


# ---------------------------------------------------------------------------
# Every training run: model.onnx beside the pyfunc


def log_onnx_model(network, images: np.ndarray) -> Parity | None:
    """In the active MLflow run: `network` as `model.onnx`, kept when ONNX Runtime agrees with Keras on `images`.

    `images` are the run's own test faces (uint8 N x 48 x 48 or float32
    N x 48 x 48 x 1). Logs the metrics `onnx_parity_max_abs_diff`,
    `onnx_parity_class_mismatch` and `onnx_export_seconds`, the artifact
    `model.onnx` and the tag `fer.onnx=logged`; returns the parity.

    Never fails the run for the export's sake: when the converter is missing,
    raises, or its probabilities differ from Keras's by more than
    PARITY_TOLERANCE, it logs `fer.onnx=skipped` with the reason in
    `fer.onnx_skipped_reason`, warns (OnnxExportSkipped) and returns None.

    Example:
        with mlflow.start_run():
            log_onnx_model(network, splits.test.images)
    """
    import mlflow

    faces = as_faces(images)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_ARTIFACT
        try:
            network = float32_copy(network)  # what is exported, so what ONNX Runtime must agree with
            export_network(network, path, "onnx")
            parity = measure_parity(forward(network, faces), forward(OnnxRuntimeNetwork(path), faces))
        except ConverterMissing as err:
            return _skip_onnx(str(err))
        except Exception as err:  # a converter that cannot take some operation must not fail the run
            return _skip_onnx(f"the ONNX export failed: {type(err).__name__}: {first_line(err)}")
        mlflow.log_metrics({**parity.metrics("onnx_parity"), "onnx_export_seconds": time.monotonic() - started})
        if not parity.holds():
            return _skip_onnx(f"ONNX Runtime disagrees with Keras on the evaluated faces ({parity.describe()}; "
                              f"tolerance {PARITY_TOLERANCE:g})")
        mlflow.log_artifact(str(path))
    mlflow.set_tag(TAG_ONNX, "logged")
    print(f"Logged {ONNX_ARTIFACT}: {parity.describe()}")
    return parity


def _skip_onnx(reason: str) -> None:
    import mlflow

    mlflow.set_tags({TAG_ONNX: "skipped", TAG_ONNX_SKIPPED: reason[:5000]})
    warnings.warn(f"No {ONNX_ARTIFACT} logged: {reason}", OnnxExportSkipped, stacklevel=3)
    return None


# ---------------------------------------------------------------------------
# `fer export`: a logged model's network, exported, quantized, measured


@dataclasses.dataclass(frozen=True)
class Measured:
    """One variant of the network (Keras, exported, int8) on the validation split."""

    name: str  # "keras", "onnx", "onnx_int8", ...
    label: str  # for people: "ONNX Runtime int8 (static, 500 training faces)"
    path: Path | None
    accuracy: float
    macro_f1: float
    agreement: float  # share of faces given the Keras network's emotion
    max_abs_diff: float  # against the Keras network's probabilities

    @property
    def megabytes(self) -> float | None:
        return self.path.stat().st_size / 1e6 if self.path else None


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What `export_model` wrote and measured; `to_text` prints it, `metrics` is what is logged."""

    model_uri: str
    format: str
    split: str
    faces: int
    variants: tuple[Measured, ...]  # keras first, then the exported file, then its int8 copy if any
    run_id: str | None  # the run the files and metrics were logged to, if any
    pyfunc_uri: str | None = None  # the ONNX-engine pyfunc logged with --pyfunc

    def metrics(self) -> dict[str, float]:
        keras = self.variants[0]
        out = {f"export_keras_{self.split}_accuracy": keras.accuracy,
               f"export_keras_{self.split}_macro_f1": keras.macro_f1}
        for variant in self.variants[1:]:
            prefix = f"export_{variant.name}"
            out |= {
                f"{prefix}_{self.split}_accuracy": variant.accuracy,
                f"{prefix}_{self.split}_macro_f1": variant.macro_f1,
                f"{prefix}_{self.split}_accuracy_delta": variant.accuracy - keras.accuracy,
                f"{prefix}_{self.split}_agreement": variant.agreement,
                f"{prefix}_max_abs_diff": variant.max_abs_diff,
                f"{prefix}_megabytes": variant.megabytes,
            }
        return out

    def to_text(self) -> str:
        keras = self.variants[0]
        lines = [
            f"{self.model_uri} on the {self.split} split ({self.faces:,} faces):",
            "",
            "| model | file | MB | accuracy | change | macro-F1 | same emotion as Keras | max prob. diff |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in self.variants:
            size = "" if v.megabytes is None else f"{v.megabytes:.1f}"
            change = "" if v is keras else f"{v.accuracy - keras.accuracy:+.4f}"
            lines.append(f"| {v.label} | {v.path or ''} | {size} | {v.accuracy:.4f} | {change} | {v.macro_f1:.4f} "
                         f"| {v.agreement:.2%} | {v.max_abs_diff:.1e} |")
        if self.run_id:
            lines += ["", f"Logged to run {self.run_id} ({EXPORT_ARTIFACTS}/, metrics export_*)"]
        if self.pyfunc_uri:
            lines += [f"ONNX-engine pyfunc {self.pyfunc_uri}; serve it without TensorFlow: "
                      f"mlflow models serve -m {self.pyfunc_uri} --env-manager local"]
        return "\n".join(lines)


def export_model(
    model_uri: str,
    format: str = "onnx",
    *,
    quantization: str | None = None,
    output: str | Path | None = None,
    data: str | None = None,
    calibration_faces: int = DEFAULT_CALIBRATION_FACES,
    log: bool = True,
    pyfunc: bool = False,
) -> ExportReport:
    """Export the network of a logged model (training run or registered version), check it, measure it, log it.

    Args:
        model_uri: a run id, runs:/<run id>/model, models:/<name>@<alias>,
            models:/<name>/<version>, or a local model folder.
        format: "onnx" or "litert".
        quantization: None, "int8" or "int8-dynamic" (see `quantize`); the int8
            file is written beside the float one, as <stem>.int8<suffix>.
        output: the float file (default ./fer-<run id>.onnx or .tflite).
        data: the faces to measure on (default: the data the model's training
            run trained on, reloaded the same way); calibration takes
            `calibration_faces` of its training split, measurement its
            validation split.
        log: log the files (under export/) and the figures (metrics export_*)
            to the model's run: the training run (for a registered version, its
            source run, which is the training run since promote logs the photo
            model there).
        pyfunc: also log, in that run, a pyfunc of the same kind that runs the
            float32 ONNX file in ONNX Runtime (`log_onnx_engine_pyfunc`).

    The float file must agree with the Keras network (PARITY_TOLERANCE) or
    ExportError is raised and nothing is kept. Each file is written beside its
    name and renamed into place when complete (`fer.utils.atomic`): a write
    that fails (disk full, a path under a file) is an OutputError of one line,
    and the old file, if any, stays. Exporting again logs the figures at the
    next step of each `export_*` metric, not a second value at step 0.

    Example:
        report = export_model("models:/fer-emotion@champion", quantization="int8")
        print(report.to_text())
    """
    from mlflow import MlflowClient

    require_converter(format)
    if quantization not in (None, *QUANTIZATIONS):
        raise ExportError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if pyfunc and (format != "onnx" or not log):
        raise ExportError("--pyfunc logs an ONNX-engine pyfunc into the model's run: it needs --format onnx "
                          "and logging (no --no-log)")
    model_uri = as_model_uri(model_uri)
    client = MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        logged = load_logged_network(model_uri, Path(tmp))
    network, run_id = logged.network, logged.run_id
    run_id = run_id if run_id and _run_exists(client, run_id) else None  # a folder from another store: no run
    if pyfunc and not run_id:
        raise ExportError(f"--pyfunc logs an ONNX-engine pyfunc into the model's run, and {model_uri} has none "
                          f"in {_tracking_uri()}: give a run id or a models:/ URI of this tracking store")
    splits, seed = measurement_data(client, run_id, data)
    faces, labels = as_faces(splits.val.images), splits.val.labels
    output = Path(output) if output else Path.cwd() / f"fer-{(run_id or Path(model_uri).name)[:12]}{SUFFIXES[format]}"

    served = forward(network, faces)
    variants = [_measured("keras", "Keras (what the pyfunc serves)", None, served, served, labels)]
    exported_network = float32_copy(network)  # mixed precision is exported in float32: parity is against that
    reference = served if exported_network is network else forward(exported_network, faces)
    with atomic_output(output, f"the {format} file") as temporary:  # checked before it replaces an old one
        export_network(exported_network, temporary, format)
        exported = forward(load_exported(temporary), faces)
        parity = measure_parity(reference, exported)
        if not parity.holds():
            raise ExportError(f"The {format} file disagrees with the Keras network on the validation faces "
                              f"({parity.describe()}; tolerance {PARITY_TOLERANCE:g}): not kept.")
    runtime = "ONNX Runtime" if format == "onnx" else "LiteRT"
    variants.append(_measured(format, f"{runtime} float32", output, exported, reference, labels))
    if quantization:
        calibration = calibration_sample(splits.train.images, calibration_faces, seed)
        quantized_path = output.with_name(f"{output.stem}.int8{output.suffix}")
        quantize(output, quantized_path, quantization, calibration, network=exported_network)
        how = f"static, {len(calibration)} training faces" if quantization == "int8" else "dynamic"
        probabilities = forward(load_exported(quantized_path), faces)
        variants.append(_measured(f"{format}_{quantization.replace('-', '_')}", f"{runtime} int8 ({how})",
                                  quantized_path, probabilities, reference, labels))
    report = ExportReport(model_uri, format, "val", len(faces), tuple(variants), run_id if log else None)
    if report.run_id:
        _log_report(client, report)
    if pyfunc:
        info = log_onnx_engine_pyfunc(output, logged.entry_file, run_id)
        report = dataclasses.replace(report, pyfunc_uri=info.model_uri)
    return report


def log_onnx_engine_pyfunc(onnx_path: str | Path, entry_file: str, run_id: str, name: str = "model_onnx"):
    """Log, in run `run_id`, a pyfunc of the kind `entry_file` names that runs `onnx_path` in ONNX Runtime.

    The same contract as the Keras one (`pyfunc_model.py`: faces in, 8
    probabilities out; `pyfunc_service.py`: faces or photos in, a row per
    face out), with onnxruntime in its requirements instead of TensorFlow and
    Keras, so `mlflow models serve` serves it without TensorFlow. Returns
    MLflow's ModelInfo.

    Example:
        info = log_onnx_engine_pyfunc("model.onnx", "pyfunc_model.py", run_id)
        mlflow.pyfunc.load_model(info.model_uri).predict(faces)
    """
    import mlflow

    from fer.serving import photo_service
    from fer.serving import pyfunc as serving

    if entry_file == "pyfunc_service.py":
        signature, example = photo_service.service_signature(), photo_service.service_input_example()
        pip_requirements = photo_service.service_requirements(engine="onnx")
    else:
        signature, example = serving.model_signature(), as_faces(make_example_faces())
        pip_requirements = serving.requirements(engine="onnx")
    with mlflow.start_run(run_id=run_id):
        return serving.log_pyfunc(entry_file, onnx_path, name=name, signature=signature, input_example=example,
                                  pip_requirements=pip_requirements)


def make_example_faces() -> np.ndarray:
    """Two drawn faces (uint8 2 x 48 x 48): an input example that needs no data."""
    from fer.data.synthetic import make_faces

    return make_faces(2, seed=0)[0]


def as_model_uri(model_uri: str) -> str:
    """A model URI for what `fer export` takes: a bare run id means that run's training pyfunc.

    >>> as_model_uri("0123456789abcdef0123456789abcdef")
    'runs:/0123456789abcdef0123456789abcdef/model'
    """
    text = model_uri.strip()
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return f"runs:/{text}/model"
    return text


@dataclasses.dataclass(frozen=True)
class LoggedNetwork:
    network: object  # the keras.Model the pyfunc runs
    run_id: str | None  # the run that logged the model, if known
    entry_file: str  # the pyfunc's entry file: pyfunc_model.py (faces) or pyfunc_service.py (photos)


def load_logged_network(model_uri: str, folder: Path) -> LoggedNetwork:
    """The Keras network inside a logged model, with the run that logged it; downloads to `folder`.

    Takes a training run's pyfunc or the registered photo model alike: both carry the `.keras` network.

    Example:
        logged = load_logged_network("models:/fer-emotion@champion", Path(tmp))
        logged.network.summary()
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from fer.serving.photo_service import find_keras_file

    try:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder)))
    except (MlflowException, OSError) as err:
        raise ExportError(f"Cannot download model {model_uri}: {first_line(err)}") from None
    try:
        keras_file = find_keras_file(local)
    except FileNotFoundError as err:
        raise ExportError(f"{model_uri} holds no fer network: {err}") from None
    metadata = Model.load(str(local)) if (local / "MLmodel").is_file() else None
    code = (metadata.flavors.get("python_function", {}).get("model_code_path") or "") if metadata else ""
    entry_file = Path(code).name if Path(code).name.startswith("pyfunc_") else "pyfunc_model.py"
    return LoggedNetwork(_face_network(keras_file, model_uri), _source_run_id(metadata), entry_file)


def _face_network(keras_file: Path, model_uri: str):
    """The Keras network in `keras_file`, checked to take fer's faces before it is traced on one."""
    import keras

    from fer import models  # noqa: F401  registers the layers a flip-TTA network is saved with

    network = keras.saving.load_model(str(keras_file), compile=False)
    try:
        check_face_input(network)
    except ExportError as err:
        raise ExportError(f"{model_uri}: {err}") from None
    forward(network, np.zeros((1, 48, 48, 1), np.float32))  # traced once, as `load_network` does for serving
    return network


def _source_run_id(metadata) -> str | None:
    """The run a logged model came from: its MLmodel's run, else (logged into a run afterwards, as the
    registry's photo model is) its logged model's source run."""
    import mlflow

    if metadata is None:
        return None
    if metadata.run_id:
        return metadata.run_id
    model_id = getattr(metadata, "model_id", None)
    return mlflow.get_logged_model(model_id).source_run_id if model_id else None


def measurement_data(client, run_id: str | None, data: str | None):
    """(splits, seed): the data `run_id`'s training run used (FER+, a csv, ...), reloaded as it trained.

    `data` replaces the run's data source (the same labels, seed and
    validation fraction); without a run it is loaded with the defaults.
    """
    from fer import data as fer_data

    config = _training_config(client, run_id) if run_id else None
    if data is None and config is None:
        raise ExportError("No training run to take the data from: give the faces to measure on with --data "
                          "(a FER+ folder, fer2013.csv, an image-folder tree, or synthetic[:N]).")
    if config is None:
        return fer_data.load(data), 0
    return fer_data.load(data or config.data, **config.data_options()), config.seed


def _run_exists(client, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
        return True
    except MlflowException:
        return False


def _training_config(client, run_id: str):
    """The configuration of the training run behind `run_id` (itself, or the run a promote run registered)."""
    from fer.training.checkpoints import PARAM_PREFIX, config_of_run
    from fer.registry import TAG_SOURCE_RUN

    run = client.get_run(run_id)
    if not any(key.startswith(PARAM_PREFIX) for key in run.data.params):
        source = run.data.tags.get(TAG_SOURCE_RUN)
        if not source:
            return None
        run_id = source
    return config_of_run(client, run_id)


def _measured(name, label, path, probabilities, reference, labels) -> Measured:
    from fer.evaluation.metrics import evaluate_predictions

    # An int8 model's softmax is quantized too: its rows sum to 1 only within about 1 %.
    normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
    evaluation = evaluate_predictions(labels, normalised, EMOTIONS, "val")
    parity = measure_parity(reference, probabilities)
    return Measured(name, label, path, evaluation.accuracy, evaluation.macro_f1,
                    1.0 - parity.class_mismatch, parity.max_abs_diff)


def _log_report(client, report: ExportReport) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = report.metrics()
    # One value per export: a second export of the run is the next step, not a second value at step 0.
    step = len(client.get_metric_history(report.run_id, next(iter(metrics))))
    client.log_batch(report.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
    for variant in report.variants[1:]:
        client.log_artifact(report.run_id, str(variant.path), EXPORT_ARTIFACTS)
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / f"{report.format}_report.md"
        summary.write_text(report.to_text() + "\n")
        client.log_artifact(report.run_id, str(summary), EXPORT_ARTIFACTS)
        figures = Path(tmp) / f"{report.format}_report.json"
        figures.write_text(json.dumps({"model_uri": report.model_uri, "split": report.split, "faces": report.faces,
                                       "metrics": report.metrics()}, indent=2))
        client.log_artifact(report.run_id, str(figures), EXPORT_ARTIFACTS)


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()
