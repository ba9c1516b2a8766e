"""One training run: configuration in, a complete MLflow run out.

Read top to bottom, `train` is the whole story of a run:

1. data: load the splits the configuration names (cached after the first decode);
2. pipeline: tf.data batches, augmented for training only;
3. model: build and compile the phase's network;
4. training: `model.fit` under Keras autologging (params, per-epoch metrics,
   model summary), with the learning rate recorded every epoch, a checkpoint
   after every epoch (see `training_callbacks` for the callbacks and their order);
5. reports: history (JSON and pickle), history plots, best-performance text;
6. model: logged with a signature and an input example, ready for the registry
   (mirror-averaged when `tta: flip`, prior-adjusted with the tau fitted on
   validation when `logit_adjustment: fit`, temperature-scaled with the
   temperature fitted on validation when `calibration: temperature`);
7. evaluation: test split (validation where there is none): accuracy,
   macro-F1, per-class metrics, confusion matrix, classification report,
   log-loss, calibration error and a reliability diagram, of what step 6 logged
   (plain and unadjusted figures beside it), the metrics linked to that model so
   they show on its page;
8. diagnostics: learning-rate steps and their measured effect, the train-validation
   gap, overfitting onset, stability, convergence, the weakest classes;
9. the same network as ONNX (`model.onnx`), kept when ONNX Runtime agrees with
   Keras on the evaluated faces; skipped with a logged reason, never a failed run.

System metrics (CPU, memory, GPU; `fer.training.system_metrics`) are sampled while the
run is active unless `system_metrics: false`.

Training runs under the tf.distribute strategy of `config.distribute` (see
`fer.training.distribute`). In a multi-worker cluster only the chief does all of the
above; the other workers train in step with it and never touch MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from sklearn.utils.class_weight import compute_class_weight

from fer import data as fer_data
from fer.training import acceleration
from fer.evaluation import calibration
from fer.training import distribute
from fer.evaluation import logit_adjustment
from fer.evaluation.metrics import Evaluation, evaluate_predictions
from fer.analysis import reports
from fer.training import system_metrics
from fer.training.callbacks import LearningRateLogger, PeakMemory, SkipAutologValidationEcho, TimeLimit
from fer.training.checkpoints import (
    CheckpointUpload,
    ResumeError,
    RunCheckpoint,
    SavedCheckpoint,
    checkpoint_dir,
    config_of_run,
    fill_metric_gaps,
    restore,
    resumable_checkpoint,
    resume_lock,
    upload_checkpoint,
)
from fer.config import TrainConfig
from fer.data.splits import EMOTIONS, Split, Splits
from fer.analysis.diagnostics import diagnose_run, log_diagnostics
from fer.export.runs import log_onnx_model
from fer.models import build_model, with_flip_averaging, with_logit_adjustment, with_temperature
from fer.training.outbox import kept_until_logged
from fer.training.pipeline import batches_per_epoch, make_dataset
from fer.training.schedules import BudgetedDecay
from fer.serving.pyfunc import log_emotion_model, log_model_metrics
from fer.tracking import (
    RUN_KIND_RESUME,
    RUN_KIND_TRAINING,
    TAG_DATA_SOURCE,
    TAG_EVAL_SPLIT,
    TAG_LABEL_MODE,
    TAG_MODEL,
    TAG_PHASE,
    TAG_RUN_KIND,
    TAG_STOPPED_BY,
    RunStopped,
    configure_tracking,
)

MODEL_ARTIFACT = "model"
TEMPERATURE_PARAM = "calibration.temperature"
TAU_PARAM = "logit_adjustment.tau"
EVAL_PREFIX = "eval"


def train(
    config: TrainConfig,
    *,
    experiment: str | None = None,
    use_cache: bool = True,
    resume: str | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> str | None:
    """Train `config` as one MLflow run and return its run id.

    Args:
        config: the resolved configuration (`fer.config.load_config`).
        experiment: the MLflow experiment (default: `mlflow run`'s, else "fer").
        use_cache: read and write the decoded-image cache (`fer.data.cache`).
        resume: the id of a run that was killed or failed; it continues from its
            last finished epoch, with its own configuration, in the same MLflow run.
        callbacks: extra Keras callbacks, run before the project's own (benchmarks time epochs this way;
            a sweep reports each epoch to its trial this way).
        parent_run_id: nest the new run under this one (a sweep's trials under the sweep's run).
        run_name: the new run's name (default: phase, model and start time).
        tags: extra tags of the new run, set when it is created.

    A non-chief worker of a multi-worker cluster logs nothing and returns None.

    Example:
        run_id = train(load_config("phase2", {"data": "synthetic:400", "epochs": 2}))
    """
    if resume and distribute.worker_count() > 1:
        raise ResumeError(
            "A multi-worker run resumes on one machine: run the resume without TF_CONFIG "
            "(its checkpoint is the chief's, in FER_CHECKPOINT_DIR)."
        )
    if not distribute.is_chief():
        _train_worker(config, use_cache)
        return None
    # One sitting of a run at a time: a second resume (or outbox re-send) of it is refused, naming the first.
    start = _RunStart(resume=resume, parent_run_id=parent_run_id, run_name=run_name, tags=tags)
    with resume_lock(resume) if resume else contextlib.nullcontext():
        return _train_chief(config, start, experiment=experiment, use_cache=use_cache, callbacks=callbacks)


def _train_chief(config: TrainConfig, start: _RunStart, *, experiment: str | None, use_cache: bool,
                 callbacks: list[keras.callbacks.Callback] | None) -> str:
    """Steps 1-9 of `train`: the run on the chief, or on the one machine."""
    configure_tracking(experiment)
    client = MlflowClient()
    resume = start.resume
    config, resumed = _resume(client, resume, config) if resume else (config, None)

    # 1-3. Data, pipeline and model (its weights and optimizer state from the checkpoint when resuming)
    prepared = prepare(config, use_cache, resumed)

    # 4. Training, tracked. The model and data sets are logged by hand below:
    # autologging's model has no input example, and its dataset logging would
    # iterate the augmented tf.data pipeline instead of the source arrays.
    mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)
    start = dataclasses.replace(start, resumed=resumed)
    with _tracked_run(client, config, prepared, start) as run:
        run_id = run.info.run_id
        directory = checkpoint_dir(run_id)
        run_callbacks = training_callbacks(config, prepared.steps_per_epoch, directory, resumed, extra=callbacks)
        history = _checkpoint_callback(run_callbacks).history
        if resumed and (filled := fill_metric_gaps(client, run_id, history)):
            print(f"Logged {filled} metric values that the interrupted sitting had not flushed.")
        started = time.monotonic()
        try:
            _fit(prepared, config, run_callbacks, initial_epoch=resumed.epoch if resumed else 0)
        except BaseException as err:
            _log_interrupted(err, history, config, directory, run_id)
            raise
        # A tracking server that stops answering for good keeps the checkpoint and a record to re-send.
        with kept_until_logged(run_id, directory, config.phase, history):
            mlflow.log_metric("train_seconds", time.monotonic() - started)
            mlflow.set_tag(TAG_STOPPED_BY, _stopped_by(run_callbacks))
            # Autologging logs asynchronously; a write it lost (a busy shared store,
            # say) is logged again here from the epoch history, so no value is missing.
            mlflow.flush_async_logging()
            fill_metric_gaps(client, run_id, history)

            # 5. Reports on the whole history, every sitting of a resumed run included
            best = _log_history(history, config)

            # 6. The model, ready for pyfunc and the registry (across workers, of a copy: the others are done):
            # mirror-averaged with flip TTA, then prior-adjusted and temperature-scaled as configured
            # (both fitted on validation, in that order)
            network = distribute.for_chief_alone(prepared.model)
            post = _fit_post_processing(network, prepared, config)
            served = post.wrap(network)
            model_info = _log_model(served, prepared.splits.val, best.epochs)

            # 7. Evaluation of what was logged; its metrics are the logged model's too
            evaluation = _evaluate(network, prepared.splits, prepared.batch_size, post, model_info.model_id)

            # 8. The analysis people used to write by hand, from the run's own numbers
            diagnostics = diagnose_run(run_id, client)
            log_diagnostics(diagnostics)

            # 9. What the pyfunc serves, as ONNX, checked against Keras on the evaluated faces
            log_onnx_model(served, getattr(prepared.splits, prepared.splits.eval_split_name).images)

    print(f"\n{best.to_text()}")
    print(diagnostics.summary())
    print(
        f"\n{evaluation.split} accuracy {evaluation.accuracy:.4f}, macro-F1 {evaluation.macro_f1:.4f}, "
        f"log-loss {evaluation.log_loss:.4f}, ECE {evaluation.ece:.4f}"
        f"\nRun {run_id} in {mlflow.get_tracking_uri()}"
    )
    return run_id


# ---------------------------------------------------------------------------
# The run: a new one, or a killed one resumed


@dataclasses.dataclass(frozen=True)
class _RunStart:
    """How `train` was asked to start its MLflow run: resume an old one, or a new one named, nested and tagged so."""

    resume: str | None = None  # the run id to continue
    resumed: SavedCheckpoint | None = None  # its checkpoint, if one was usable
    parent_run_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] | None = None


@contextlib.contextmanager
def _tracked_run(client: MlflowClient, config: TrainConfig, prepared: "Prepared", start: _RunStart):
    """The active MLflow run for this sitting, system metrics sampled: the resumed run with this sitting noted,
    or a new one with its tags, configuration and data logged. Ends it on exit: FAILED on an error, KILLED
    on Ctrl-C or SIGTERM at any stage."""
    if start.resume:
        run = system_metrics.start_run(enabled=config.system_metrics, interval_seconds=config.system_metrics_interval,
                                       run_id=start.resume)
        with run, _killed_if_interrupted(start.resume, config.phase):
            first_epoch = start.resumed.epoch + 1 if start.resumed else 1
            _note_resume(client, start.resume, config.max_minutes, first_epoch)
            yield run
        return
    run_name = start.run_name or _run_name(config)
    nested = {"parent_run_id": start.parent_run_id, "nested": True} if start.parent_run_id else {}
    run = system_metrics.start_run(enabled=config.system_metrics, interval_seconds=config.system_metrics_interval,
                                   run_name=run_name, tags=start.tags, **nested)
    # A sweep's trial (nested under its parent) is not resumed: a new trial replaces it.
    with run, _killed_if_interrupted(run.info.run_id, None if start.parent_run_id else config.phase):
        _log_run_header(config, prepared, run_name)
        yield run


@contextlib.contextmanager
def _killed_if_interrupted(run_id: str, phase: str | None):
    """Ctrl-C or SIGTERM at any stage of the run (its header, its epochs, its logging after them) ends it KILLED.

    MLflow's own `with start_run()` would end it FAILED: an interruption is not a failure.
    """
    try:
        yield
    except KeyboardInterrupt:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:  # not yet ended KILLED by `_log_interrupted`
            mlflow.end_run("KILLED")
            hint = f" Resume it with: fer train {phase} --resume {run_id}" if phase else ""
            print(f"\nRun {run_id} interrupted: ended KILLED.{hint}", file=sys.stderr)
        raise


def _run_name(config: TrainConfig) -> str:
    return f"{config.phase}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _log_run_header(config: TrainConfig, prepared: Prepared, run_name: str) -> None:
    """Tags, configuration and data of a new run."""
    splits, model = prepared.splits, prepared.model
    mlflow.set_tags(
        {
            TAG_PHASE: config.phase,
            TAG_RUN_KIND: RUN_KIND_TRAINING,
            TAG_MODEL: config.model,
            TAG_DATA_SOURCE: splits.source,
            TAG_LABEL_MODE: splits.label_mode.value,
            TAG_EVAL_SPLIT: splits.eval_split_name,
            "mlflow.runName": run_name,  # also inside `mlflow run`, which names runs itself
        }
    )
    # Prefixed: `mlflow run` logs its raw -P values and autologging logs
    # fit()'s arguments under the bare names; ours are the resolved values.
    mlflow.log_params({f"config.{key}": value for key, value in config.to_params().items()})
    mlflow.log_param("model.dropout_rates", _dropout_rates(model))
    mlflow.log_param("model.parameters", model.count_params())
    mlflow.log_params(acceleration.params(model))
    mlflow.log_params(distribute.params(prepared.strategy, config.batch_size))
    _log_data(splits)


def _dropout_rates(model: keras.Model) -> str:
    """The network's dropout rates in order, e.g. "0.2,0.3,0.4,0.5" (a regularizer diagnostics cite)."""
    return ",".join(str(layer.rate) for layer in model.layers if isinstance(layer, keras.layers.Dropout))


def _log_data(splits: Splits) -> None:
    """Each split as an MLflow dataset input (with a content digest), plus any drop counts."""
    source = splits.location if splits.source != "synthetic" else CodeDatasetSource(tags={"generator": splits.location})
    contexts = {"train": "training", "val": "validation", "test": "testing"}
    for name, split in splits.items():
        dataset = mlflow.data.from_numpy(
            features=split.images,
            targets=split.labels,
            source=source,
            name=f"{splits.source}-{name}",
        )
        mlflow.log_input(dataset, context=contexts[name])
        mlflow.log_param(f"data.{name}_size", len(split))
    for name, count in splits.dropped.items():
        mlflow.log_param(f"data.{name}_dropped", count)
    mlflow.log_metric("data_bad_items", len(splits.bad))
    if splits.bad:
        mlflow.log_text("\n".join(str(item) for item in splits.bad), "data/bad_items.txt")


def _note_resume(client: MlflowClient, run_id: str, max_minutes: float, first_epoch: int) -> None:
    """Count the sittings, note where this one starts and its time budget; label `mlflow run`'s empty run, if any.

    The first epoch matters to diagnostics: EarlyStopping's best weights are not
    in the checkpoint, so restore_best_weights only covers the last sitting.
    """
    sittings = int(client.get_run(run_id).data.tags.get("fer.sittings", "1")) + 1
    mlflow.set_tag("fer.sittings", str(sittings))
    mlflow.set_tag(f"fer.sitting_{sittings}.first_epoch", str(first_epoch))
    if max_minutes:
        mlflow.set_tag(f"fer.sitting_{sittings}.max_minutes", f"{max_minutes:g}")
    shell = os.environ.get("MLFLOW_RUN_ID")
    if shell and shell != run_id:
        client.set_tag(shell, "fer.resumed_run_id", run_id)
        client.set_tag(shell, TAG_RUN_KIND, RUN_KIND_RESUME)  # not a training: kept out of the training filter
        client.set_tag(shell, "mlflow.note.content", f"This run only resumed run {run_id}; its results are there.")


def _resume(client: MlflowClient, run_id: str, config: TrainConfig) -> tuple[TrainConfig, SavedCheckpoint | None]:
    """The run's own configuration (with this sitting's time budget, if given) and the checkpoint to start from."""
    resumed = resumable_checkpoint(client, run_id)
    sitting_budget = config.max_minutes
    config = config_of_run(client, run_id)
    if sitting_budget:  # a time budget belongs to the sitting, not to the recipe: the resume's own wins
        config = dataclasses.replace(config, max_minutes=sitting_budget)
    done = resumed.epoch if resumed else 0
    print(f"Resuming run {run_id} after epoch {done}, with its original configuration"
          + (f" and a budget of {sitting_budget:g} minutes for this sitting." if sitting_budget else "."))
    return config, resumed


# ---------------------------------------------------------------------------
# Steps 1-3: data, pipeline, model


@dataclasses.dataclass
class Prepared:
    """What training needs, built the same way on the chief and on every other worker."""

    strategy: object
    splits: Splits
    batch_size: int  # global: per-replica batch_size x replicas
    train_ds: object
    val_ds: object
    steps_per_epoch: int
    model: keras.Model


def prepare(config: TrainConfig, use_cache: bool = True, resumed: SavedCheckpoint | None = None) -> Prepared:
    """Steps 1-3 of a run: the data, the tf.data pipeline and the compiled network (restored from `resumed`).

    Example:
        prepared = prepare(load_config("phase1", {"data": "synthetic:200"}))
        prepared.model.fit(prepared.train_ds, validation_data=prepared.val_ds,
                           steps_per_epoch=prepared.steps_per_epoch, epochs=1)
    """
    strategy = distribute.choose_strategy(config)  # before TensorFlow starts its runtime

    # 1. Data
    splits = fer_data.load(config.data, use_cache=use_cache, **config.data_options())
    _print_data_summary(splits)

    # 2. Pipeline: batch_size is per replica, so a step takes batch_size x replicas
    keras.utils.set_random_seed(config.seed)
    batch_size = distribute.global_batch_size(config.batch_size, strategy)
    train_ds, val_ds = training_datasets(splits, config, batch_size)

    # 3. Model, its variables mirrored on every replica
    with strategy.scope():
        model = compile_model(config)
        if resumed:
            restore(model, resumed)
    steps = batches_per_epoch(len(splits.train), batch_size)
    return Prepared(strategy, splits, batch_size, train_ds, val_ds, steps, model)


def _print_data_summary(splits: Splits) -> None:
    sizes = ", ".join(f"{name} {len(split)}" for name, split in splits.items())
    print(f"Data: {splits.source} ({splits.location}), {splits.label_mode.value} labels: {sizes}")
    for name, count in splits.dropped.items():
        if count:
            print(f"  {name}: {count} images dropped by the {splits.label_mode.value} label rule")
    if splits.bad:
        print(f"  {len(splits.bad)} bad images or rows skipped (skip_bad); first: {splits.bad[0]}")


def training_datasets(splits: Splits, config: TrainConfig, batch_size: int):
    """Training batches (shuffled, augmented) and validation batches (neither), `batch_size` faces each.

    On one machine the training set is one endless dataset (give fit
    `steps_per_epoch`), so fit keeps its iterator across epochs (see
    `make_dataset`). Across workers it stays one epoch per iteration, which
    tf.distribute shards between them.
    """
    repeat = distribute.worker_count() == 1
    train_ds = make_dataset(
        splits.train, batch_size, training=True, augmentation=config.augmentation, seed=config.seed, repeat=repeat,
        mixup_alpha=config.mixup_alpha,
    )
    return train_ds, make_dataset(splits.val, batch_size, training=False)


def compile_model(config: TrainConfig) -> keras.Model:
    """The phase's network, compiled, with XLA and mixed precision as configured (`fer.training.acceleration`).

    Build it inside the strategy's scope.
    """
    with acceleration.dtype_policy(acceleration.resolve_dtype_policy(config.dtype_policy, config.batch_norm)):
        model = build_model(config.model, batch_norm=config.batch_norm)
    model.compile(
        optimizer=_optimizer(config),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=acceleration.jit_compile_argument(config.jit_compile),
    )
    return model


def _optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    optimizers = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": lambda learning_rate, **ema: keras.optimizers.SGD(learning_rate, momentum=0.9, **ema),
        "rmsprop": keras.optimizers.RMSprop,
    }
    ema = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {}
    return optimizers[config.optimizer](learning_rate=config.learning_rate, **ema)


# ---------------------------------------------------------------------------
# Step 4: training


def training_callbacks(
    config: TrainConfig,
    steps_per_epoch: int,
    directory: Path,
    resumed: SavedCheckpoint | None = None,
    extra: list[keras.callbacks.Callback] | None = None,
) -> list[keras.callbacks.Callback]:
    """The run's callbacks, in the order Keras must call them (every hook calls them first to last).

    0. `extra`, the caller's own (a sweep's pruning report, a benchmark's timer);
    1. `LearningRateLogger`, `PeakMemory`: put the epoch's rate and memory into its
       logs before anything records them, and before ReduceLROnPlateau changes the rate;
       with `ema_momentum`, Keras's `SwapEMAWeights`: validation scores the averaged weights;
    2. the steering callbacks: the learning-rate schedule, the time limit, early stopping;
    3. `RunCheckpoint`: after the steering ones (on resume it restores their
       counters after their own on_train_begin reset them), and before MLflow's
       logger, which autologging appends (so a kill leaves gaps, never duplicates);
    4. `CheckpointUpload`, when `checkpoint_upload_every` asks for it;
    5. `SkipAutologValidationEcho`, given this very list: autologging appends its
       logger to the list fit receives, and that is where it looks for it.
    """
    steering = [*_schedule(config, steps_per_epoch), *_time_limit(config), *_early_stopping(config)]
    callbacks = [
        *(extra or []),
        LearningRateLogger(),
        PeakMemory(),
        *_ema_validation(config),
        *steering,
        RunCheckpoint(directory, resumed, steering),
        *([CheckpointUpload(directory, config.checkpoint_upload_every)] if config.checkpoint_upload_every else []),
    ]
    callbacks.append(SkipAutologValidationEcho(callbacks))
    return callbacks


def _checkpoint_callback(callbacks: list[keras.callbacks.Callback]) -> RunCheckpoint:
    """The run's `RunCheckpoint`: it keeps the whole epoch history, every sitting included."""
    return next(callback for callback in callbacks if isinstance(callback, RunCheckpoint))


def _schedule(config: TrainConfig, steps_per_epoch: int) -> list[keras.callbacks.Callback]:
    if config.lr_schedule == "plateau":
        return [
            keras.callbacks.ReduceLROnPlateau(
                monitor=config.reduce_lr.monitor,
                factor=config.reduce_lr.factor,
                patience=config.reduce_lr.patience,
                min_lr=config.reduce_lr.min_lr,
                mode=_mode(config.reduce_lr.monitor),
                verbose=1,
            )
        ]
    return [
        BudgetedDecay(
            config.lr_schedule,
            config.learning_rate,
            steps_per_epoch=steps_per_epoch,
            epochs=config.epochs,
            warmup_epochs=config.warmup_epochs,
            final_fraction=config.final_lr_fraction,
            budget_minutes=config.max_minutes,
        )
    ]


def _ema_validation(config: TrainConfig) -> list[keras.callbacks.Callback]:
    # The optimizer keeps the average (use_ema); fit copies it into the model when it ends
    # (finalize_variable_values), so what is evaluated and served is the average too.
    return [keras.callbacks.SwapEMAWeights()] if config.ema_momentum else []


def _time_limit(config: TrainConfig) -> list[keras.callbacks.Callback]:
    return [TimeLimit(config.max_minutes)] if config.max_minutes else []


def _early_stopping(config: TrainConfig) -> list[keras.callbacks.Callback]:
    stop = config.early_stopping
    if not stop.enabled:
        return []
    return [
        keras.callbacks.EarlyStopping(
            monitor=stop.monitor,
            patience=stop.patience,
            restore_best_weights=stop.restore_best_weights,
            mode=_mode(stop.monitor),
            verbose=1,
        )
    ]


def _mode(monitor: str) -> str:
    """Accuracy improves upwards; loss and the learning rate itself downwards."""
    return "max" if monitor.endswith("accuracy") else "min"


def _fit(prepared: Prepared, config: TrainConfig, callbacks: list, initial_epoch: int = 0):
    # One endless training dataset with steps_per_epoch on one machine (see training_datasets).
    repeated = distribute.worker_count() == 1
    return prepared.model.fit(
        prepared.train_ds,
        validation_data=prepared.val_ds,
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=prepared.steps_per_epoch if repeated else None,
        # Ignored by Keras for a tf.data input (already batched), but lets
        # autologging record the batch size (per replica) rather than None.
        batch_size=config.batch_size,
        shuffle=False,  # the pipeline shuffles
        callbacks=callbacks,
        class_weight=_class_weights(config, prepared.splits.train),
        verbose=1 if sys.stdout.isatty() else 2,
    )


def _class_weights(config: TrainConfig, train: Split) -> dict[int, float] | None:
    """'balanced' weights each present class by n / (k * n_class), 'sqrt' by its square root; absent classes get none.

    On FER+ balanced weights reach 21x for contempt and kept a run near chance
    (BENCHMARKS.md, row 6); their square root, under 5x, is the milder choice.
    """
    if config.class_weight == "none":
        return None
    present = np.unique(train.labels)
    weights = compute_class_weight("balanced", classes=present, y=train.labels)
    if config.class_weight == "sqrt":
        weights = np.sqrt(weights)
    return {int(c): float(w) for c, w in zip(present, weights)}


def _stopped_by(callbacks: list[keras.callbacks.Callback]) -> str:
    """Why fit ended: "time_limit", "early_stopping", or "epochs" (it ran them all)."""
    for callback in callbacks:
        if isinstance(callback, TimeLimit) and callback.stopped_epoch is not None:
            return "time_limit"
        if isinstance(callback, keras.callbacks.EarlyStopping) and callback.stopped_epoch > 0:
            return "early_stopping"
    return "epochs"


def _log_interrupted(err: BaseException, history: dict, config: TrainConfig, directory: Path, run_id: str) -> None:
    """End the run KILLED (Ctrl-C, SIGTERM) or FAILED, keeping what it had: history, plots, checkpoint.

    A run stopped on purpose (`RunStopped`: a pruned sweep trial) ends KILLED with
    its history and the reason in `fer.stopped_by`, and drops its checkpoint.
    """
    if history.get("val_loss"):
        _log_history(history, config)
    if isinstance(err, RunStopped):
        mlflow.set_tag(TAG_STOPPED_BY, err.reason)
        mlflow.end_run("KILLED")
        shutil.rmtree(directory, ignore_errors=True)
        print(f"\nRun {run_id} stopped after {len(history.get('loss', []))} epochs: {err}", file=sys.stderr)
        return
    upload_checkpoint(directory)  # so that the run can be resumed on another machine too
    status = "KILLED" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "FAILED"
    mlflow.end_run(status)
    print(
        f"\nRun {run_id} ended {status} after {len(history.get('loss', []))} epochs. "
        f"Resume it with: fer train {config.phase} --resume {run_id}",
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------
# Step 5: reports on the history


def _log_history(history: dict, config: TrainConfig) -> reports.BestPerformance:
    history = {key: [float(v) for v in values] for key, values in history.items()}
    best = reports.best_performance(history)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "history.json").write_text(json.dumps(history, indent=2))
        # For notebooks that expect a pickled History.history; never read back by this project.
        with open(tmp / "history.pkl", "wb") as f:
            pickle.dump(history, f)
        (tmp / "best_performance.txt").write_text(best.to_text() + "\n")
        mlflow.log_artifact(str(tmp / "history.json"))
        mlflow.log_artifact(str(tmp / "history.pkl"))
        mlflow.log_artifact(str(tmp / "best_performance.txt"))
        plot = reports.plot_history(history, tmp / "history.png", title=f"{config.phase}: {config.model}")
        mlflow.log_artifact(str(plot), artifact_path="plots")
    # best_val_accuracy, best_val_accuracy_epoch, lowest_val_loss, ... (epochs 1-based)
    mlflow.log_metrics({k: v for k, v in best.to_dict().items() if k != "epochs"})
    mlflow.log_metric("epochs_trained", best.epochs)
    return best


# ---------------------------------------------------------------------------
# Step 6: the served model, its post-processing fitted on validation


@dataclasses.dataclass(frozen=True)
class PostProcessing:
    """What the logged model does to the network's probabilities, in this order.

    tta "flip": the mean of the face's and its mirror's; `prior` and `tau`: logit
    adjustment (`fer.evaluation.logit_adjustment`); `temperature`: temperature scaling
    (`fer.evaluation.calibration`). None: that step is left out.

    `wrap` is the Keras model the run logs and serves; `network_probabilities`
    and `steps` compute the same numbers with numpy from one prediction, for
    fitting the steps and for evaluating each of them.
    """

    tta: str = "none"
    prior: np.ndarray | None = None  # with `tau`: logit adjustment by this class prior
    tau: float = 0.0
    temperature: float | None = None

    def wrap(self, network: keras.Model) -> keras.Model:
        """`network` as the run logs and serves it."""
        served = with_flip_averaging(network) if self.tta == "flip" else network
        if self.prior is not None:
            served = with_logit_adjustment(served, logit_adjustment.offsets(self.prior, self.tau))
        return served if self.temperature is None else with_temperature(served, self.temperature)

    def network_probabilities(self, network: keras.Model, split: Split, batch_size: int):
        """The plain network's probabilities on `split`, and what test-time augmentation makes of them.

        The second is the first without TTA; with "flip", the mean over each face and its mirror.
        """
        plain = _predict(network, split, batch_size)
        if self.tta != "flip":
            return plain, plain
        mirrored = Split(split.images[:, :, ::-1], split.labels, split.targets)
        return plain, (plain + _predict(network, mirrored, batch_size)) / 2

    def steps(self, probabilities: np.ndarray):
        """Each fitted step in order, as (name, probabilities after it): "adjusted", then "calibrated".

        `probabilities` are what `network_probabilities` gives second; the last
        step's are what the served model gives.
        """
        if self.prior is not None:
            probabilities = logit_adjustment.adjust(probabilities, self.prior, self.tau)
            yield "adjusted", probabilities
        if self.temperature is not None:
            yield "calibrated", calibration.apply_temperature(probabilities, self.temperature)

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """What the served model gives, from the network's (TTA-averaged) `probabilities`."""
        for _, probabilities in self.steps(probabilities):
            pass
        return probabilities


def _fit_post_processing(network: keras.Model, prepared: Prepared, config: TrainConfig) -> PostProcessing:
    """The post-processing `config` asks for, its steps fitted in order on one prediction of the validation split."""
    post = PostProcessing(tta=config.tta)
    if config.logit_adjustment != "fit" and config.calibration != "temperature":
        return post
    val = prepared.splits.val
    _, probabilities = post.network_probabilities(network, val, prepared.batch_size)
    if config.logit_adjustment == "fit":
        prior = logit_adjustment.class_prior(prepared.splits.train.targets)
        post = dataclasses.replace(post, prior=prior, tau=_fit_logit_adjustment(val, probabilities, prior))
    if config.calibration == "temperature":
        post = dataclasses.replace(post, temperature=_fit_temperature(val, post.apply(probabilities)))
    return post


def _fit_logit_adjustment(val: Split, probabilities: np.ndarray, prior: np.ndarray) -> float:
    """Fit tau on the validation split's (TTA-averaged) `probabilities` and log it; tau.

    Param and metric `logit_adjustment.tau` / `logit_adjustment_tau`, and the
    validation accuracy and macro-F1 before and after (`logit_adjustment_val_*`),
    the latter being what the fit maximised. The after figures score tau on the
    faces that chose it, so the cross-fitted ones (`*_after_crossfit`: tau fitted
    on one half of validation, scored on the other, mean of 5 splits) go beside them.
    """
    tau = logit_adjustment.fit_tau(val.labels, probabilities, prior)
    before = evaluate_predictions(val.labels, probabilities, EMOTIONS, "val")
    after = evaluate_predictions(val.labels, logit_adjustment.adjust(probabilities, prior, tau), EMOTIONS, "val")
    _log_fitted_param(TAU_PARAM, f"{tau:g}")
    mlflow.log_metrics({
        "logit_adjustment_tau": tau,
        "logit_adjustment_val_accuracy_before": before.accuracy,
        "logit_adjustment_val_accuracy_after": after.accuracy,
        "logit_adjustment_val_macro_f1_before": before.macro_f1,
        "logit_adjustment_val_macro_f1_after": after.macro_f1,
    })
    print(f"Logit adjustment: tau {tau:g}, fitted on {len(val)} validation faces "
          f"(macro-F1 {before.macro_f1:.4f} -> {after.macro_f1:.4f}, accuracy {before.accuracy:.4f} -> {after.accuracy:.4f})")
    if np.bincount(val.labels).max() >= 2:  # halves need a class with a face in each (not so on tiny test data)
        honest = logit_adjustment.cross_fit(val.labels, probabilities, prior)
        mlflow.log_metrics({"logit_adjustment_val_accuracy_after_crossfit": honest.mean_accuracy,
                            "logit_adjustment_val_macro_f1_after_crossfit": honest.mean_macro_f1})
        print(f"  cross-fitted (tau fitted on one half of validation, scored on the other, 5 splits): "
              f"macro-F1 {honest.mean_macro_f1:.4f}, accuracy {honest.mean_accuracy:.4f}")
    return tau


def _fit_temperature(val: Split, probabilities: np.ndarray) -> float:
    """Fit the temperature on the validation split's `probabilities` (TTA-averaged, prior-adjusted) and log it.

    Param and metric `calibration.temperature` / `calibration_temperature`, and the
    validation log-loss and ECE before and after (`calibration_val_*`), which the fit minimised.
    """
    temperature = calibration.fit_temperature(val.labels, probabilities)
    scaled = calibration.apply_temperature(probabilities, temperature)
    _log_fitted_param(TEMPERATURE_PARAM, f"{temperature:.6g}")
    mlflow.log_metrics({
        "calibration_temperature": temperature,
        "calibration_val_log_loss_before": calibration.log_loss(val.labels, probabilities),
        "calibration_val_log_loss_after": calibration.log_loss(val.labels, scaled),
        "calibration_val_ece_before": calibration.expected_calibration_error(val.labels, probabilities),
        "calibration_val_ece_after": calibration.expected_calibration_error(val.labels, scaled),
    })
    print(f"Calibration: temperature {temperature:.4g}, fitted on {len(val)} validation faces")
    return temperature


def _log_fitted_param(name: str, value: str) -> None:
    try:
        mlflow.log_param(name, value, synchronous=True)  # so that a conflict raises here
    except MlflowException as err:
        # A resumed run refits on its checkpoint's weights, and a param cannot change: the
        # metric holds the latest value, this tag the one the model applies.
        if err.error_code != "INVALID_PARAMETER_VALUE":
            raise
        mlflow.set_tag(f"fer.{name}_refitted", value)


def _log_model(model: keras.Model, examples: Split, epochs_trained: int) -> ModelInfo:
    """Log the model as the run's output at the step after its last epoch.

    MLflow links the run's metrics at the model's step to it; at a per-epoch step
    those would be one epoch's training figures, not the model's. Its own are
    its evaluation, linked explicitly (`_evaluate`).
    """
    faces = examples.images[:2, ..., np.newaxis].astype(np.float32)
    return log_emotion_model(model, faces, name=MODEL_ARTIFACT, step=epochs_trained)


# ---------------------------------------------------------------------------
# Step 7: evaluation


def _evaluate(
    network: keras.Model,
    splits: Splits,
    batch_size: int,
    post: PostProcessing = PostProcessing(),
    model_id: str | None = None,
) -> Evaluation:
    """Evaluate on the test split (validation where there is none) what `post.wrap(network)` serves, and log it.

    With tta "flip" the logged figures are those of the mean of each face's and
    its mirror's probabilities (what `with_flip_averaging` serves), and the
    plain network's accuracy and macro-F1 go beside them as `eval_no_tta_*`:
    two forward passes in all. With logit adjustment (a prior), the figures are
    those of the adjusted probabilities, and the unadjusted accuracy and
    macro-F1 go beside them as `eval_unadjusted_*`. With a temperature they
    are those of the scaled probabilities (accuracy and F1 do not change), and
    the unscaled log-loss and ECE go beside them as `eval_uncalibrated_*`. The
    reliability diagram draws both. The metrics are the run's and, given
    `model_id`, also that logged model's (`log_model_metrics`).
    """
    # predict, not evaluate: evaluate would fire autologging's validation hooks
    # and record test numbers under validation names.
    split_name = splits.eval_split_name
    split = getattr(splits, split_name)
    plain, probabilities = post.network_probabilities(network, split, batch_size)
    if post.tta == "flip":
        _log_beside(split, plain, "no_tta", model_id)
    curves = {}
    for step, after in post.steps(probabilities):
        if step == "adjusted":
            _log_beside(split, probabilities, "unadjusted", model_id)
        else:
            uncalibrated = calibration.reliability(split.labels, probabilities)
            log_model_metrics({f"{EVAL_PREFIX}_uncalibrated_log_loss": calibration.log_loss(split.labels, probabilities),
                               f"{EVAL_PREFIX}_uncalibrated_ece": uncalibrated.ece}, model_id)
            curves["before temperature scaling"] = uncalibrated
        probabilities = after
    evaluation = evaluate_predictions(split.labels, probabilities, EMOTIONS, split_name)
    log_model_metrics(evaluation.metrics(EVAL_PREFIX), model_id)
    curves["served model" if post.temperature is None else f"temperature {post.temperature:.3g}"] = \
        evaluation.reliability
    mlflow.log_text(evaluation.report_text, "classification_report.txt")
    mlflow.log_dict(
        {"split": split_name, "labels": list(EMOTIONS), "counts": evaluation.confusion.tolist()},
        "confusion_matrix.json",
    )
    with tempfile.TemporaryDirectory() as tmp:
        title = f"Confusion matrix ({split_name}, row-normalized)"
        path = reports.plot_confusion_matrix(evaluation.confusion, EMOTIONS, Path(tmp) / "confusion_matrix.png", title)
        mlflow.log_artifact(str(path), artifact_path="plots")
        title = f"Reliability ({split_name}, {len(evaluation.reliability.counts)} confidence bins)"
        path = reports.plot_reliability_diagram(curves, Path(tmp) / "reliability_diagram.png", title)
        mlflow.log_artifact(str(path), artifact_path="plots")
    return evaluation


def _log_beside(split: Split, probabilities: np.ndarray, label: str, model_id: str | None) -> None:
    """Accuracy and macro-F1 of `probabilities` before a post-processing step, as `eval_<label>_*`."""
    before = evaluate_predictions(split.labels, probabilities, EMOTIONS, "before")
    log_model_metrics({f"{EVAL_PREFIX}_{label}_accuracy": before.accuracy,
                       f"{EVAL_PREFIX}_{label}_macro_f1": before.macro_f1}, model_id)


def _predict(network: keras.Model, split: Split, batch_size: int) -> np.ndarray:
    return network.predict(make_dataset(split, batch_size, training=False), verbose=0)


# ---------------------------------------------------------------------------
# The other workers of a multi-worker cluster


def _train_worker(config: TrainConfig, use_cache: bool) -> None:
    """A non-chief worker: the chief's data, model and fit, in lock-step with it, and no MLflow at all.

    Its checkpoints go to a temporary folder of its own (the chief's are the
    run's): every worker writes them, as TensorFlow's multi-worker guide asks,
    but only the chief's are kept.
    """
    prepared = prepare(config, use_cache)
    with tempfile.TemporaryDirectory(prefix=f"fer-{distribute.task_name()}-") as tmp:
        _fit(prepared, config, training_callbacks(config, prepared.steps_per_epoch, Path(tmp)))
    print(f"Worker {distribute.task_name()} done; the chief logged the run.")
