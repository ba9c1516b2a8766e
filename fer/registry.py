"""Promotion to the model registry, with a gate.

`promote` registers a training run's model as a new version of a registered
model, always under alias `challenger`; alias `champion` moves to it only when
its metric beats the current champion's (read from the champion's own source
run, so both are measured the same way) and clears a minimum. The decision and
its numbers go into the version's tags and description, and the training run's
evaluation metrics are linked to the registered model, so the version's model
page shows them. Versions are never deleted: every promotion stays auditable.

The registered model is the photo-capable service model (`fer.serving.photo_service`),
logged at promotion into the training run itself (a logged model named
`photo_model` whose source run is the training run), so a version's source
run is the training run: its metrics, curves, data set and diagnostics are one
click from the version's page. The version's description is a short model card
(`model_card`). A `promote` run records the decision (tags only, no metrics, so
it never shows in the training charts).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Run
from mlflow.exceptions import MlflowException

from fer.tracking import (
    RUN_KIND_PROMOTE,
    TAG_DATA_SOURCE,
    TAG_EVAL_SPLIT,
    TAG_LABEL_MODE,
    TAG_MODEL,
    TAG_PHASE,
    TAG_RUN_KIND,
    client_for_command,
    first_finished_run,
)

DEFAULT_MODEL_NAME = "fer-emotion"
DEFAULT_METRIC = "best_val_accuracy"
CHAMPION, CHALLENGER = "champion", "challenger"
TAG_SOURCE_RUN = "fer.source_run_id"
PHOTO_MODEL = "photo_model"  # the served model's name among its training run's logged models
LATEST_COMPARE = "latest-compare"  # promote's run choice: the final run of the latest compare


class PromotionError(LookupError):
    """Nothing to promote, or the chosen run lacks the metric; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    source_run_id: str
    metric: str
    value: float
    min_value: float
    champion_version: str | None  # the champion before this promotion
    champion_value: float | None
    promoted: bool
    reason: str

    def to_text(self) -> str:
        before = (
            f"current champion v{self.champion_version} has {self.metric} = {self.champion_value:.4f}"
            if self.champion_version
            else "there was no champion"
        )
        verdict = "now champion" if self.promoted else "stays challenger"
        return (
            f"{self.model_name} v{self.version} (run {self.source_run_id}): {self.metric} = {self.value:.4f}; "
            f"{before}; minimum {self.min_value:.4f}. {verdict}: {self.reason}."
        )


def best_finished_run(client: MlflowClient, experiment: str, metric: str, phase: str = "phase2") -> Run:
    """The finished run of `phase` with the highest `metric` in `experiment`."""
    run = first_finished_run(client, experiment, phase, order_by=f"metrics.`{metric}` DESC")
    if run is None or metric not in run.data.metrics:
        raise PromotionError(
            f"No finished {phase} run with metric {metric!r} in experiment {experiment!r} at "
            f"{mlflow.get_tracking_uri()}. Train one first: "
            f"mlflow run . -e {phase} --env-manager local --experiment-name {experiment}"
        )
    return run


def final_run_of_latest_compare(client: MlflowClient, experiment: str) -> Run:
    """The final (phase-2) run of the latest finished `compare` run in `experiment`.

    Example:
        run = final_run_of_latest_compare(MlflowClient(), "fer")  # what `fer compare` just compared
    """
    latest = first_finished_run(client, experiment, "compare")
    if latest is None:
        raise PromotionError(
            f"No finished compare run in experiment {experiment!r} at {mlflow.get_tracking_uri()}, so there is "
            f"no 'latest compare' to promote from. Compare first: "
            f"mlflow run . -e compare --env-manager local --experiment-name {experiment}"
        )
    final_run_id = latest.data.tags.get("fer.final_run_id")
    if not final_run_id:
        raise PromotionError(f"Compare run {latest.info.run_id} has no tag fer.final_run_id; run compare again.")
    return client.get_run(final_run_id)


def resolve_source_run(client: MlflowClient, experiment: str, run_id: str | None, metric: str) -> Run:
    """The training run to promote: `run_id`, the final run of the latest compare, or the best by `metric`.

    `run_id` is a run id, LATEST_COMPARE ("latest-compare"), or None for the
    finished phase-2 run with the highest `metric`.
    """
    if run_id == LATEST_COMPARE:
        return final_run_of_latest_compare(client, experiment)
    if run_id:
        return client.get_run(run_id)
    return best_finished_run(client, experiment, metric)


def current_champion(client: MlflowClient, model_name: str, metric: str) -> tuple[str | None, float | None]:
    """(version, metric value from its training run), or (None, None) when there is no champion."""
    try:
        version = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None, None  # no registered model yet, or no champion alias
    # Versions registered before the photo model moved into the training run name it only in the tag.
    source = version.tags.get(TAG_SOURCE_RUN) or version.run_id
    value = client.get_run(source).data.metrics.get(metric) if source else None
    return str(version.version), value


def decide(value: float, min_value: float, champion_value: float | None) -> tuple[bool, str]:
    if value < min_value:
        return False, f"{value:.4f} is below the minimum {min_value:.4f}"
    if champion_value is None:
        return True, "first model to clear the minimum"
    if value > champion_value:
        return True, f"beats the champion by {value - champion_value:+.4f}"
    return False, f"does not beat the champion ({value:.4f} <= {champion_value:.4f})"


def promote(
    run_id: str | None = None,
    *,
    model_name: str = DEFAULT_MODEL_NAME,
    metric: str = DEFAULT_METRIC,
    min_value: float = 0.0,
    experiment: str = "fer",
) -> Decision:
    """Register a training run's photo model as `challenger`; move `champion` to it if it beats the current one.

    `run_id`: the training run; "latest-compare" (LATEST_COMPARE) for the final
    run of the latest compare; None for the best finished phase-2 run by
    `metric`. The registered version's source run is the training run, its
    description a model card (`model_card`) and the decision.

    Example:
        decision = promote("latest-compare", min_value=0.5)
        print(decision.to_text())
    """
    client, experiment = client_for_command(experiment)
    source = resolve_source_run(client, experiment, run_id, metric)
    if metric not in source.data.metrics:
        raise PromotionError(f"Run {source.info.run_id} has no metric {metric!r}; choose another with --metric.")
    value = source.data.metrics[metric]
    champion_version, champion_value = current_champion(client, model_name, metric)
    model_id = photo_model_of(client, source)  # before the promote run starts: it must not become its output

    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"promote-{model_name}"):
        mlflow.set_tags({TAG_PHASE: "promote", TAG_RUN_KIND: RUN_KIND_PROMOTE, TAG_SOURCE_RUN: source.info.run_id})
        version = _register(client, model_name, source.info.run_id, model_id)
        client.set_registered_model_alias(model_name, CHALLENGER, version)
        promoted, reason = decide(value, min_value, champion_value)
        if promoted:
            client.set_registered_model_alias(model_name, CHAMPION, version)
        decision = Decision(
            model_name, str(version), source.info.run_id, metric, value, min_value,
            champion_version, champion_value, promoted, reason,
        )
        _record(client, decision, model_card(source))
        # Tags, not metrics: a metric here would sit beside the trainings' own in every chart.
        mlflow.set_tags({
            "fer.registered_version": f"{model_name}/{decision.version}",
            "fer.decision": CHAMPION if promoted else CHALLENGER,
            "fer.metric": metric,
            "fer.metric_value": f"{value:.6f}",
            "mlflow.note.content": decision.to_text(),
        })
    return decision


def photo_model_of(client: MlflowClient, source: Run) -> str:
    """The id of `source`'s photo model (PHOTO_MODEL), logged into it from its Keras model if not there yet.

    The logged model's source run is the training run, and the training run
    lists it among its outputs, so the registry's lineage leads there.
    """
    run_id, experiment_id = source.info.run_id, source.info.experiment_id
    ready = [
        model for model in client.search_logged_models([experiment_id], filter_string=f"name = '{PHOTO_MODEL}'")
        if model.source_run_id == run_id and model.status == LoggedModelStatus.READY
    ]
    if ready:  # promoted before (under another name, say): one photo model per training run
        return max(ready, key=lambda model: model.creation_timestamp).model_id
    evaluation = evaluation_metrics(client, run_id)
    logged = mlflow.initialize_logged_model(name=PHOTO_MODEL, source_run_id=run_id, experiment_id=experiment_id)
    _log_service_model(run_id, logged.model_id)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    # The training model's evaluation, linked to the photo model too: a registered version shows it.
    client.log_batch(run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step, model_id=logged.model_id)
                                      for m in evaluation])
    return logged.model_id


def evaluation_metrics(client: MlflowClient, run_id: str) -> list[Metric]:
    """A training run's evaluation metrics (`eval_*`) as it logged them: key, value, timestamp and step.

    Logged again with a `model_id`, they link to that model without a second value
    in the run: MLflow keeps one row for a metric with the same key, value, time and step.

    Example:
        {m.key: m.value for m in evaluation_metrics(MlflowClient(), run_id)}["eval_accuracy"]
    """
    run = client.get_run(run_id)
    keys = sorted(key for key in run.data.metrics if key.startswith("eval_"))
    return [client.get_metric_history(run_id, key)[-1] for key in keys]



def _log_service_model(source_run_id: str, model_id: str):
    from fer.serving.photo_service import find_keras_file, log_service_model
    from fer.serving.pyfunc import load_network, save_servable

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = mlflow.artifacts.download_artifacts(f"runs:/{source_run_id}/model", dst_path=tmp)
        keras_file = find_keras_file(Path(model_dir))
        # Saved again without optimizer state: runs logged by fer 0.1.0 carry Adam's (3x the weights).
        served = save_servable(load_network(str(keras_file)), Path(tmp) / "served" / keras_file.name)
        return log_service_model(served, name=PHOTO_MODEL, model_id=model_id)


def _register(client: MlflowClient, model_name: str, run_id: str, model_id: str) -> str:
    """A new version of `model_name` from logged model `model_id`, with `run_id` as its source run."""
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(model_name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
    return str(version.version)


# The project's own card (MODEL_CARD.md, at the repository's root) holds what every version shares; the
# version's description names its two rules and points there rather than copying the whole card.
MODEL_CARD_LINE = (
    "- Intended use: research and prototyping on 48x48 face crops. Out of scope: inferring what a person "
    "feels, and decisions about people. The full card (uses, limits of emotion recognition from faces, "
    "the data's terms, per-class recall): `MODEL_CARD.md` in the fer repository."
)


def model_card(run: Run) -> str:
    """A short model card for a training run's model, from its tags, params and metrics.

    What it was trained on, which phase, accuracy and macro-F1 and on which
    split, when, and its limits, and a pointer to the project's MODEL_CARD.md
    (`MODEL_CARD_LINE`). Markdown, a few lines: the registry shows it as the
    version's description.
    """
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    split = tags.get(TAG_EVAL_SPLIT, "test")
    split_words = "test split" if split == "test" else "validation split (the data has no test split)"
    when = datetime.fromtimestamp((run.info.end_time or run.info.start_time) / 1000, timezone.utc)
    data = tags.get(TAG_DATA_SOURCE, "unknown data")
    train_size = params.get("data.train_size")
    lines = [
        "Facial expression model: 48x48 grayscale faces in, the 8 FER+ emotions out; "
        "photos are served with faces found by OpenCV's Haar cascade.",
        "",
        f"- Training run: `{run.info.run_id}` ({run.info.run_name}), {tags.get(TAG_PHASE, 'phase not recorded')}, "
        + (f"model `{tags[TAG_MODEL]}`, " if TAG_MODEL in tags else "")
        + f"finished {when:%Y-%m-%d %H:%M} UTC",
        f"- Data: {data}" + (f", {int(train_size):,} training faces" if train_size else "")
        + (f", {tags[TAG_LABEL_MODE]} labels" if TAG_LABEL_MODE in tags else ""),
    ]
    if "eval_accuracy" in metrics:
        lines.append(
            f"- On the {split_words}: accuracy {metrics['eval_accuracy']:.4f}, "
            f"macro-F1 {metrics.get('eval_macro_f1', float('nan')):.4f}"
        )
    if "best_val_accuracy" in metrics:
        lines.append(f"- Best validation accuracy {metrics['best_val_accuracy']:.4f}")
    lines.append("- Limits: " + "; ".join(_limits(tags, metrics, split)))
    lines.append(MODEL_CARD_LINE)
    return "\n".join(lines)


def _limits(tags: dict, metrics: dict, split: str) -> list[str]:
    limits = []
    if split != "test":
        limits.append("validation figures (no held-out test split): expect less on new faces")
    if tags.get(TAG_DATA_SOURCE, "").startswith("synthetic"):
        limits.append("trained on drawn synthetic faces: says nothing about real faces")
    limits.append("48x48 frontal faces, centred and upright like the training data")
    contempt = metrics.get("eval_recall_contempt")
    if contempt is None:
        measured = "eval_accuracy" in metrics
        limits.append("contempt rare: " + ("not measured (no contempt faces in the evaluation split)" if measured
                                           else "the model was not evaluated"))
    elif contempt < 0.5:
        limits.append(f"contempt rare: recall {contempt:.2f}")
    return limits


def _record(client: MlflowClient, decision: Decision, card: str) -> None:
    """The decision on the version: its numbers as tags, the model card and the decision as its description."""
    tags = {
        TAG_SOURCE_RUN: decision.source_run_id,
        "fer.metric": decision.metric,
        "fer.metric_value": f"{decision.value:.6f}",
        "fer.min_value": f"{decision.min_value:.6f}",
        "fer.champion_before": decision.champion_version or "none",
        "fer.champion_value_before": "none" if decision.champion_value is None else f"{decision.champion_value:.6f}",
        "fer.decision": CHAMPION if decision.promoted else CHALLENGER,
        "fer.reason": decision.reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(decision.model_name, decision.version, key, value)
    description = f"{card}\n\nPromotion: {decision.to_text()}"
    client.update_model_version(decision.model_name, decision.version, description=description)
