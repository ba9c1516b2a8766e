"""The `fer` command: thin click wrappers that parse, call the library, and print."""

from __future__ import annotations

import os
import signal

import click  # importing fer (above any module of it) has already quieted TensorFlow: fer.console
from click.core import ParameterSource

from fer.config import ConfigError, load_config
from fer.data.loading import describe_source
from fer.data.splits import DataError, LabelMode
from fer.tracking import DEFAULT_EXPERIMENT, TrackingServerError
from fer.video import DEFAULT_HALF_LIFE, DEFAULT_MAX_MISSED


def _blank_is_none(ctx, param, value):
    """MLproject passes "" for parameters left at "use the experiment file's value"."""
    return None if value in ("", None) else value


def _unset_is_none(ctx, param, value):
    """"none" / "" mean: not given, take the sweep file's (MLproject's defaults for optional values)."""
    return None if value in ("", "none", None) else value


def _latest_is_none(ctx, param, value):
    """"latest" / "best" / "none" / "" mean: no run given, let the command decide."""
    return None if value in ("", "latest", "best", "none", None) else value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's native start-up logging (off by default; also FER_VERBOSE=1).")
def main(verbose):
    """Train, compare, register and serve facial expression recognition models, tracked in MLflow."""
    if verbose:
        from fer.console import allow_native_logging

        allow_native_logging()


@main.command()
@click.argument("phase")
@click.option("--data", callback=_blank_is_none, help="FER+ folder, fer2013.csv, image-folder tree, or synthetic[:N].")
@click.option("--epochs", callback=_blank_is_none, help="Override the phase's number of epochs.")
@click.option("--batch-size", "batch_size", callback=_blank_is_none, help="Override the batch size.")
@click.option("--seed", callback=_blank_is_none, help="Override the random seed.")
@click.option("--learning-rate", "learning_rate", callback=_blank_is_none, help="Override the initial learning rate.")
@click.option("--model", callback=_blank_is_none, help="Override the model: baseline or final.")
@click.option("--label-mode", "label_mode", callback=_blank_is_none, help="majority or probability.")
@click.option("--skip-bad", "skip_bad", callback=_blank_is_none, help="true: skip unreadable images, counting them.")
@click.option("--max-minutes", "max_minutes", callback=_blank_is_none,
              help="Stop after the last epoch that fits in this many minutes (0: no limit).")
@click.option("--lr-schedule", "lr_schedule", callback=_blank_is_none,
              help="plateau (steps on a plateau), or linear / cosine (decay to ~0 at the end of the epochs or budget).")
@click.option("--tta", callback=_blank_is_none, help="none, or flip: evaluate and serve the face and its mirror averaged.")
@click.option("--calibration", callback=_blank_is_none,
              help="none, or temperature: fit one temperature on validation; the logged model applies it.")
@click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE", help="Any other setting, e.g. augmentation.rotation=10."
)
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="MLflow experiment name.")
@click.option("--no-cache", is_flag=True, help="Decode the data again even if a cached copy exists.")
@click.option("--resume", "resume", callback=_latest_is_none, metavar="RUN_ID",
              help="Continue a killed or failed run from its last finished epoch.")
def train(phase, experiment, no_cache, settings, resume, **overrides):
    """Train PHASE (phase1, phase2, or a YAML file) as one MLflow run."""
    # Where each value was given, for the error message: `mlflow run -P epochs=...` arrives as --epochs.
    origins = {key: f"--{key.replace('_', '-')} (mlflow run -P {key})" for key in overrides}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {setting[:80]!r}", param_hint="--set")
        overrides[key.strip()] = value.strip()
        origins[key.strip()] = f"--set {key.strip()}=..."
    try:
        config = load_config(phase, overrides, origins)
        if not resume:
            describe_source(config.data)  # a data path that is not there fails here, in a second
    except (ConfigError, DataError) as err:
        raise click.UsageError(str(err)) from None
    from fer.checkpoints import ResumeError
    from fer.train import train as run_training  # TensorFlow loads only once the input is known good

    # A polite kill (SIGTERM) ends the run KILLED with its history and checkpoint, like Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        run_training(config, experiment=experiment, use_cache=not no_cache, resume=resume)
    except (DataError, ResumeError, TrackingServerError) as err:
        raise click.ClickException(str(err)) from None


@main.command()
@click.argument("sweep_file", required=False, default="sweep", metavar="[SWEEP_FILE]")
@click.option("--name", callback=_unset_is_none,
              help="The sweep's name (default: the file's): its Optuna study and its parent run. The same name "
                   "again continues the sweep.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Trials in all, over every sitting (complete or pruned ones count; default: the file's).")
@click.option("--max-minutes", "max_minutes", type=click.FloatRange(min=0), default=None,
              help="This sitting's time budget: no trial starts after it, the last is cut to fit (0: no limit; "
                   "default: the file's).")
@click.option("--data", callback=_unset_is_none, help="Every trial's data (default: the file's or the phase's).")
@click.option("--epochs", callback=_unset_is_none, help="Every trial's number of epochs (default: the file's).")
@click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE", help="Any other setting every trial shares."
)
@click.option("--storage", callback=_unset_is_none, metavar="URL",
              help="Optuna storage (default: optuna.db beside a SQLite tracking store, else in the working folder).")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="MLflow experiment name.")
@click.option("--no-cache", is_flag=True, help="Decode the data again even if a cached copy exists.")
def sweep(sweep_file, name, trials, max_minutes, data, epochs, settings, storage, experiment, no_cache):
    """Search hyperparameters: a parent run with one nested training run per trial (Optuna TPE, pruning).

    SWEEP_FILE is a YAML file or a name in experiments/ (default: experiments/sweep.yaml).
    """
    try:
        from fer import sweep as sweeps  # Optuna is an optional extra
    except ModuleNotFoundError as err:
        if err.name != "optuna":
            raise
        raise click.ClickException(str(err)) from None
    overrides = {key: value for key, value in (("data", data), ("epochs", epochs)) if value is not None}
    overrides.update(_settings(settings))
    try:
        spec = sweeps.load_sweep(sweep_file, overrides, name=name, trials=trials, max_minutes=max_minutes)
        if "data" in spec.settings:
            describe_source(spec.settings["data"])  # a data path that is not there fails here, in a second
    except (ConfigError, DataError) as err:
        raise click.UsageError(str(err)) from None

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        sweeps.run_sweep(spec, experiment=experiment, storage=storage, use_cache=not no_cache)
    except (DataError, sweeps.SweepError, TrackingServerError) as err:
        raise click.ClickException(str(err)) from None


def _settings(settings: tuple[str, ...]) -> dict[str, str]:
    """--set KEY=VALUE pairs as a dict; a pair without '=' is a usage error."""
    parsed = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {setting[:80]!r}", param_hint="--set")
        parsed[key.strip()] = value.strip()
    return parsed


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@main.command()
@click.option("--baseline-run", callback=_latest_is_none, default="latest", show_default=True,
              help="Phase-1 run id (default: the latest finished phase-1 run).")
@click.option("--final-run", callback=_latest_is_none, default="latest", show_default=True,
              help="Phase-2 run id (default: the latest finished phase-2 run).")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="MLflow experiment to search.")
def compare(baseline_run, final_run, experiment):
    """Build the baseline-vs-final table and log it to a `compare` run."""
    from fer.compare import CompareError
    from fer.compare import compare as run_compare

    try:
        run_id, _, markdown = run_compare(baseline_run, final_run, experiment)
    except (CompareError, TrackingServerError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(markdown)
    click.echo(f"Logged to run {run_id}")


@main.command()
@click.option("--run-id", callback=_latest_is_none, default="best", show_default=True,
              help="Training run to register: a run id, 'best' (the finished phase-2 run with the highest "
                   "--metric) or 'latest-compare' (the final run of the latest compare).")
@click.option("--model-name", default="fer-emotion", show_default=True, help="Registered model name.")
@click.option("--metric", default="best_val_accuracy", show_default=True, help="Metric the champion gate compares.")
@click.option("--min-value", type=float, default=0.0, show_default=True, help="The metric must reach at least this.")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="MLflow experiment to search.")
def promote(run_id, model_name, metric, min_value, experiment):
    """Register a run's model as `challenger`; make it `champion` if it beats the current one."""
    from fer.registry import PromotionError
    from fer.registry import promote as run_promote

    try:
        decision = run_promote(run_id, model_name=model_name, metric=metric, min_value=min_value,
                               experiment=experiment)
    except (PromotionError, TrackingServerError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(decision.to_text())


@main.command()
@click.argument("run_id")
def diagnose(run_id):
    """Write diagnostics.md and diagnostics.json to RUN_ID and print the summary."""
    from mlflow.exceptions import MlflowException

    from fer.diagnostics import diagnose_run, log_diagnostics
    from fer.tracking import configure_tracking

    try:
        configure_tracking(None)
        diagnostics = diagnose_run(run_id)
        log_diagnostics(diagnostics, run_id=run_id)
    except (TrackingServerError, MlflowException, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(diagnostics.to_markdown())


VIDEO_OPTIONS = ("csv_path", "every", "half_life", "max_missed")


@main.command()
@click.option("--model", "model_uri", required=True, metavar="MODEL_URI",
              help="The photo model: models:/fer-emotion@champion, runs:/<training run id>/photo_model of a "
                   "promoted run, or a local model folder. For a video, a training run's runs:/<run id>/model "
                   "works too.")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False),
                metavar="PHOTO... | VIDEO")
@click.option("--annotate", "annotate", type=click.Path(), metavar="OUT_DIR | OUT.mp4",
              help="Photos: also write each with its faces boxed and labelled to OUT_DIR/<name>.annotated.png. "
                   "A video: write a copy with boxes, track ids and emotions (.mp4, .avi or .webm).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              show_default=True, help="A video: where the CSV goes (- is standard output).")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="A video: process every N-th frame only (faster; the CSV has those frames).")
@click.option("--half-life", "half_life", type=click.FloatRange(min=0), default=DEFAULT_HALF_LIFE,
              show_default=True, help="A video: seconds after which a face's past probabilities weigh half "
                                      "(exponential moving average per face; 0: no smoothing).")
@click.option("--max-missed", "max_missed", type=click.IntRange(min=0), default=DEFAULT_MAX_MISSED,
              show_default=True, help="A video: a face unseen for more than N processed frames gets a new id "
                                      "when it comes back.")
def predict(model_uri, files, annotate, csv_path, every, half_life, max_missed):
    """Find the faces in each PHOTO and print one line per face: box, emotion, probabilities.

    Or, given one VIDEO (.mp4, .avi, .webm, .mkv, .mov, .m4v), follow its faces
    from frame to frame and write a CSV with a row per face per processed frame:
    time, frame, face id, box and the 8 emotion probabilities, smoothed over
    time. Progress goes to standard error.
    """
    from fer.faces import FaceDetectorUnavailable
    from fer.predict import PredictError, is_video_path

    videos = [path for path in files if is_video_path(path)]
    if videos and len(files) > 1:
        raise click.UsageError(f"give one video at a time, or only photos; got {len(files)} files, "
                               f"{len(videos)} of them videos ({', '.join(videos[:3])})")
    if not videos:
        given = [name for name in VIDEO_OPTIONS
                 if click.get_current_context().get_parameter_source(name) is not ParameterSource.DEFAULT]
        if given:
            shown = ", ".join("--" + name.replace("_path", "").replace("_", "-") for name in given)
            raise click.UsageError(f"{shown}: for a video only, and no video was given")
    try:
        if videos:
            _predict_video(model_uri, videos[0], annotate, csv_path, every, half_life, max_missed)
        else:
            _predict_photos(model_uri, files, annotate)
    except (PredictError, TrackingServerError, FaceDetectorUnavailable) as err:
        raise click.ClickException(str(err)) from None


def _predict_photos(model_uri, files, annotate_dir):
    from fer.predict import load_service_model, predict_files
    from fer.tracking import configure_tracking

    if annotate_dir and os.path.isfile(annotate_dir):
        raise click.BadParameter(f"{annotate_dir} is a file; for photos give a folder", param_hint="--annotate")
    configure_tracking()  # models:/ and runs:/ resolve against the project's store
    model = load_service_model(model_uri)
    failed = predict_files(model, files, annotate_dir, click.echo, lambda line: click.echo(line, err=True))
    if failed:
        raise click.ClickException(f"{failed} of {len(files)} images could not be used (see above).")


def _predict_video(model_uri, path, annotate, csv_path, every, half_life, max_missed):
    from fer.predict import (
        PredictError, VideoReader, check_annotate_path, load_face_model, predict_video, progress_printer,
        quiet_video_logs,
    )
    from fer.tracking import configure_tracking
    from fer.video import FaceTracker

    try:
        tracker = FaceTracker(half_life=half_life, max_missed=max_missed)
    except ValueError as err:  # click's ranges let inf and nan through
        raise click.BadParameter(str(err), param_hint="--half-life") from None
    quiet_video_logs()
    # The video and the outputs are checked first: a bad file name should not cost a model load.
    with VideoReader(path) as video:
        if video.fps_assumed:
            click.echo(f"{path}: no frame rate in the file; times assume {video.fps:g} frames/s", err=True)
        if annotate is not None:
            check_annotate_path(annotate, path)
        taken = {os.path.realpath(name) for name in (path, annotate) if name}
        if csv_path != "-" and os.path.realpath(csv_path) in taken:
            raise click.BadParameter(f"{csv_path} is the video, or the annotated video: give another name",
                                     param_hint="--csv")
        try:
            out = click.open_file(csv_path, "w", encoding="utf-8")
        except OSError as err:
            raise PredictError(f"Cannot write the CSV to {csv_path}: {err.strerror or err}") from None
        with out:
            configure_tracking()  # models:/ and runs:/ resolve against the project's store
            classify = load_face_model(model_uri)
            summary = predict_video(classify, video, out, every=every, tracker=tracker, annotate=annotate,
                                    progress=progress_printer(path))
    where = "standard output" if csv_path == "-" else csv_path
    click.echo(f"{path}: {summary.frames} frames, {summary.processed} processed, {summary.faces} face rows, "
               f"{summary.tracks} face ids, {summary.seconds:.1f} s; CSV: {where}", err=True)
    if summary.annotated is not None:
        click.echo(f"{path}: annotated: {summary.annotated}", err=True)


@main.group()
def data():
    """Inspect data sources."""


@data.command()
@click.argument("path", required=False, default="synthetic")
@click.option("--label-mode", type=click.Choice([m.value for m in LabelMode]), default="majority", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="data_inspect.png", show_default=True)
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images and malformed rows, counting them.")
def inspect(path, label_mode, output, skip_bad):
    """Print per-split class counts and imbalance for PATH; write sample faces and the class distribution."""
    from fer import data as fer_data
    from fer.data.inspect import describe, figure_path, plot_overview

    try:
        figure_path(output)  # before the data is decoded: a typo in -o should cost a second
    except DataError as err:
        raise click.BadParameter(str(err), param_hint="'--output' / '-o'") from None
    try:
        splits = fer_data.load(path, label_mode=label_mode, skip_bad=skip_bad)
        click.echo(describe(splits))
        click.echo(f"Figure: {plot_overview(splits, output)}")
    except DataError as err:
        raise click.ClickException(str(err)) from None


if __name__ == "__main__":
    main()
