"""The `fer` command: thin click wrappers that parse, call the library, and print.

Every option that carries an MLproject parameter has its name (`-P batch_size`
is `--batch-size`) and its type, and each option that several commands take
is defined once, below (tests/test_cli.py holds the CLI, MLproject and the
README's parameter table to each other). Exit status: 0 done, 1 failed (the
message says why), 2 a bad command line, 130 interrupted by Ctrl-C, 143
stopped by SIGTERM; a training run stopped either way ends KILLED in MLflow,
with its history and checkpoint, ready to resume.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import threading

import click  # importing fer (above any module of it) has already quieted TensorFlow: fer.console
from click.core import ParameterSource

import fer
from fer.config import CALIBRATIONS, LOGIT_ADJUSTMENTS, LR_SCHEDULES, MODELS, TTA_CHOICES, ConfigError, load_config
from fer.data.loading import describe_source
from fer.data.splits import DataError, LabelMode
from fer.tracking import DEFAULT_EXPERIMENT, TrackingServerError
from fer.serving.video import DEFAULT_HALF_LIFE, DEFAULT_MAX_MISSED
from fer.utils.atomic import OutputError, atomic_output

# What a shell reports for a job its signal stopped (128 + the signal's number): `mlflow run`,
# Kubernetes and scripts can tell an interruption from a failure (1) or a bad command line (2).
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that a training run ends KILLED with its checkpoint."""


# ---------------------------------------------------------------------------
# Option types and callbacks


class _TrueFalse(click.types.BoolParamType):
    """true / false (also yes / no, 1 / 0), with a hint when a bare switch swallowed the next argument."""

    name = "true|false"

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            option = param.opts[0] if param is not None else "the option"
            self.fail(f"{value!r} is not true or false (also yes/no, 1/0). {option} alone means true: "
                      f"give it last, before another option, or with its value ({option} true).", param, ctx)


def _blank_is_none(ctx, param, value):
    """MLproject passes "" for parameters left at "use the experiment file's value"."""
    return None if value in ("", None) else value


def _unset_is_none(ctx, param, value):
    """"none" / "" mean: not given, take the sweep file's (MLproject's defaults for optional values)."""
    return None if value in ("", "none", None) else value


def _latest_is_none(ctx, param, value):
    """"latest" / "best" / "none" / "" mean: no run given, let the command decide."""
    return None if value in ("", "latest", "best", "none", None) else value


def _choice(values) -> click.Choice:
    return click.Choice(list(values), case_sensitive=False)


def _switch(name: str, *, default: bool | None, help: str):
    """A boolean option given as MLproject passes it (`--skip-bad false`) or as a flag (`--skip-bad`: true)."""
    return click.option(name, type=_TrueFalse(), is_flag=False, flag_value=True, default=default,
                        metavar="[true|false]", help=help)


def _options(*decorators):
    """Several options as one decorator, listed in --help in the order given."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


# ---------------------------------------------------------------------------
# Options, each defined once. A training option left out keeps the phase file's value.

class _OptionalInt(click.types.IntParamType):
    """A whole number, or "none" / "" for "not given" (MLproject's default for an optional value)."""

    def convert(self, value, param, ctx):
        return None if value in ("", "none", None) else super().convert(value, param, ctx)


DATA = click.option("--data", callback=_unset_is_none, metavar="SOURCE",
                    help="The faces: synthetic[:N] (drawn faces), a FER+ folder, a fer2013.csv or an image-folder "
                         "tree. Left out: the phase or sweep file's; for export, the data the training run used.")
EPOCHS = click.option("--epochs", type=_OptionalInt(),
                      help="Epochs to train (at most, with early stopping or --max-minutes).")
BATCH_SIZE = click.option("--batch-size", "batch_size", type=int, help="Faces per training step, per replica.")
SEED = click.option("--seed", type=int, help="Random seed: data split, shuffling, augmentation, initial weights.")
LEARNING_RATE = click.option("--learning-rate", "learning_rate", type=float, help="Initial learning rate.")
ARCHITECTURE = click.option("--model", type=_choice(MODELS),
                            help="Network architecture: baseline (phase 1's) or final (phase 2's).")


def label_mode_option(default: str | None = None):
    """--label-mode, with `default` (None: the phase file's)."""
    return click.option("--label-mode", "label_mode", type=_choice(m.value for m in LabelMode), default=default,
                        show_default=default is not None,
                        help="majority: the most-voted emotion; probability: FER+'s vote distribution as a soft "
                             "target.")


def skip_bad_option(default: bool | None = None):
    """--skip-bad [true|false], with `default` (None: the phase file's)."""
    return _switch("--skip-bad", default=default,
                   help="true: skip unreadable images and malformed rows, counting and listing them; false: "
                        "stop at the first, naming it.")


def output_option(default: str | None):
    """--output / -o FILE: the file a command writes, `default` where it has one."""
    return click.option("--output", "-o", type=click.Path(dir_okay=False), default=default, show_default=True,
                        metavar="FILE", help="The file to write: data inspect's figure of sample faces and classes "
                                             "(PNG); export's float32 model (default ./fer-<run id>.onnx or .tflite, "
                                             "the int8 copy beside it).")


MAX_MINUTES = click.option("--max-minutes", "max_minutes", type=click.FloatRange(min=0),
                           help="A time budget in minutes (0: no limit): a training stops after the last epoch "
                                "that fits, a sweep starts no trial after it and cuts the last to fit.")
LR_SCHEDULE = click.option("--lr-schedule", "lr_schedule", type=_choice(LR_SCHEDULES),
                           help="plateau (step down when validation loss stalls), linear / cosine (decay to ~0 at "
                                "the end of the epochs or of --max-minutes), or auto: linear with --max-minutes, "
                                "else plateau.")
TTA = click.option("--tta", type=_choice(TTA_CHOICES),
                   help="none, flip (evaluate and serve the mean of the face's and its mirror's predictions), or "
                        "auto: flip with --max-minutes, else none.")
LOGIT_ADJUSTMENT = click.option("--logit-adjustment", "logit_adjustment", type=_choice(LOGIT_ADJUSTMENTS),
                                help="none, fit (after training, fit on validation how far to favour rare classes; "
                                     "the logged model applies it), or auto: fit with --max-minutes, else none.")
CALIBRATION = click.option("--calibration", type=_choice(CALIBRATIONS),
                           help="none, or temperature: fit one temperature on validation; the logged model applies it.")
SYSTEM_METRICS = _switch("--system-metrics", default=None,
                         help="true: log CPU, memory, disk, network and GPU figures as system/* metrics while "
                              "the run trains; false: none.")
SETTINGS = click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                        help="Any other setting of the phase file, e.g. augmentation.rotation=10 (repeatable).")
RESUME = click.option("--resume", callback=_latest_is_none, metavar="RUN_ID",
                      help="Continue a killed or failed run from its last finished epoch, into the same run.")
EXPERIMENT = click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, metavar="NAME",
                          help="MLflow experiment (inside `mlflow run`, the run's own: --experiment-name).")

# The MLproject training parameters and the other settings a training command takes.
TRAINING_OPTIONS = _options(DATA, EPOCHS, BATCH_SIZE, SEED, LEARNING_RATE, ARCHITECTURE, label_mode_option(),
                            skip_bad_option(), MAX_MINUTES, LR_SCHEDULE, TTA, LOGIT_ADJUSTMENT,
                            CALIBRATION, SYSTEM_METRICS,
                            SETTINGS)


# ---------------------------------------------------------------------------
# The group: --version, and interruptions as exit statuses


def version_text() -> str:
    """"fer 0.1.0 (mlflow 3.17.0, keras 3.15.0, tensorflow 2.21.0, python 3.11.7)", without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("mlflow", "keras", "tensorflow"))
    return f"fer {fer.__version__} ({libraries}, python {platform.python_version()})"


def _print_version(ctx, param, value):
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


class _Commands(click.Group):
    """Runs a command with SIGTERM raised as `Terminated`; Ctrl-C then exits 130, SIGTERM 143, an OutputError 1."""

    def invoke(self, ctx):
        with _sigterm_raises_terminated():
            try:
                return super().invoke(ctx)
            except OutputError as err:  # a file for the user could not be written: one line, exit 1
                raise click.ClickException(str(err)) from None
            except KeyboardInterrupt as err:
                terminated = isinstance(err, Terminated)
                click.echo("Stopped by SIGTERM." if terminated else "Interrupted (Ctrl-C).", err=True)
                ctx.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


@contextlib.contextmanager
def _sigterm_raises_terminated():
    """A polite kill (SIGTERM) ends a command as Ctrl-C does, its clean-up included; as before, after it."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Print fer's version and those of MLflow, Keras, TensorFlow and Python, then exit.")
@click.option("--verbose", is_flag=True,
              help="Show TensorFlow's native start-up logging (off by default; also FER_VERBOSE=1).")
def main(verbose):
    """Train, compare, register and serve facial expression recognition models, tracked in MLflow.

    Exit status: 0 done, 1 failed, 2 bad command line, 130 interrupted (Ctrl-C), 143 stopped (SIGTERM).
    """
    if verbose:
        from fer.console import allow_native_logging

        allow_native_logging()


# ---------------------------------------------------------------------------
# Commands


@main.command()
@click.argument("phase")
@TRAINING_OPTIONS
@EXPERIMENT
@click.option("--no-cache", is_flag=True, help="Decode the data again even if a cached copy exists.")
@RESUME
def train(phase, experiment, no_cache, settings, resume, **overrides):
    """Train PHASE (phase1, phase2, or a YAML file) as one MLflow run."""
    # Where each value was given, for the error message: `mlflow run -P epochs=...` arrives as --epochs.
    origins = {key: f"--{key.replace('_', '-')} (mlflow run -P {key})" for key in overrides}
    given = _settings(settings)
    overrides.update(given)
    origins.update({key: f"--set {key}=..." for key in given})
    try:
        config = load_config(phase, overrides, origins)
        if not resume:
            describe_source(config.data)  # a data path that is not there fails here, in a second
    except (ConfigError, DataError) as err:
        raise click.UsageError(str(err)) from None
    from fer.training.checkpoints import ResumeError
    from fer.training.train import train as run_training  # TensorFlow loads only once the input is known good

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
@MAX_MINUTES
@DATA
@EPOCHS
@SETTINGS
@click.option("--storage", callback=_unset_is_none, metavar="URL",
              help="Optuna storage (default: optuna.db beside a SQLite tracking store, else in the working folder).")
@EXPERIMENT
@click.option("--no-cache", is_flag=True, help="Decode the data again even if a cached copy exists.")
def sweep(sweep_file, name, trials, max_minutes, data, epochs, settings, storage, experiment, no_cache):
    """Search hyperparameters: a parent run with one nested training run per trial (Optuna TPE, pruning).

    SWEEP_FILE is a YAML file or a name in experiments/ (default: experiments/sweep.yaml).
    """
    try:
        from fer.sweep import runner as sweeps  # Optuna is an optional extra
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


@main.command()
@click.option("--baseline-run", callback=_latest_is_none, default="latest", show_default=True, metavar="RUN_ID",
              help="Phase-1 run id (default: the latest finished phase-1 run).")
@click.option("--final-run", callback=_latest_is_none, default="latest", show_default=True, metavar="RUN_ID",
              help="Phase-2 run id (default: the latest finished phase-2 run).")
@EXPERIMENT
def compare(baseline_run, final_run, experiment):
    """Build the baseline-vs-final table and log it to a `compare` run."""
    from fer.analysis.compare import CompareError
    from fer.analysis.compare import compare as run_compare

    try:
        run_id, _, markdown = run_compare(baseline_run, final_run, experiment)
    except (CompareError, TrackingServerError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(markdown)
    click.echo(f"Logged to run {run_id}")


@main.command()
@click.option("--run-id", callback=_latest_is_none, default="best", show_default=True, metavar="RUN_ID",
              help="Training run to register: a run id, 'best' (the finished phase-2 run with the highest "
                   "--metric) or 'latest-compare' (the final run of the latest compare).")
@click.option("--model-name", default="fer-emotion", show_default=True, help="Registered model name.")
@click.option("--metric", default="best_val_accuracy", show_default=True, help="Metric the champion gate compares.")
@click.option("--min-value", type=float, default=0.0, show_default=True, help="The metric must reach at least this.")
@EXPERIMENT
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

    from fer.analysis.diagnostics import diagnose_run, log_diagnostics
    from fer.tracking import configure_tracking

    try:
        configure_tracking(None)
        diagnostics = diagnose_run(run_id)
        log_diagnostics(diagnostics, run_id=run_id)
    except (TrackingServerError, MlflowException, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(diagnostics.to_markdown())


VIDEO_OPTIONS = ("csv_path", "every", "half_life", "max_missed")


def _deprecated_model_option(ctx, param, value):
    """`--model`, `fer predict`'s old name for `--model-uri`: still taken, with a one-line notice."""
    if value is not None:
        click.echo("fer predict: --model is deprecated and will go in a later version; use --model-uri "
                   "(or -m), which takes the same value.", err=True)
    return value


@main.command()
# Required, but checked in the command: the deprecated --model may give it instead.
@click.option("--model-uri", "-m", "model_uri", metavar="MODEL_URI",
              help="The photo model, as `mlflow models serve -m` takes it: models:/fer-emotion@champion, "
                   "runs:/<training run id>/photo_model of a promoted run, or a local model folder. For a video, "
                   "a training run's runs:/<run id>/model works too.  [required]")
@click.option("--model", "old_model_uri", metavar="MODEL_URI", hidden=True, callback=_deprecated_model_option,
              help="Deprecated: --model-uri.")
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
def predict(model_uri, old_model_uri, files, annotate, csv_path, every, half_life, max_missed):
    """Find the faces in each PHOTO and print one line per face: box, emotion, probabilities.

    Or, given one VIDEO (.mp4, .avi, .webm, .mkv, .mov, .m4v), follow its faces
    from frame to frame and write a CSV with a row per face per processed frame:
    time, frame, face id, box and the 8 emotion probabilities, smoothed over
    time. Progress goes to standard error.
    """
    from fer.serving.faces import FaceDetectorUnavailable
    from fer.serving.predict import PredictError, is_video_path

    model_uri = _model_uri(model_uri, old_model_uri)
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


def _model_uri(model_uri: str | None, old_model_uri: str | None) -> str:
    """The one model URI of `--model-uri` and the deprecated `--model`; a usage error for none or two."""
    if model_uri and old_model_uri and model_uri != old_model_uri:
        raise click.UsageError(f"--model-uri {model_uri!r} and --model {old_model_uri!r} differ: give --model-uri only")
    if not (model_uri or old_model_uri):
        raise click.UsageError("Missing option '--model-uri' / '-m': the photo model to use, "
                               "e.g. models:/fer-emotion@champion")
    return model_uri or old_model_uri


def _predict_photos(model_uri, files, annotate_dir):
    from fer.serving.predict import load_service_model, predict_files
    from fer.tracking import configure_tracking

    if annotate_dir and os.path.isfile(annotate_dir):
        raise click.BadParameter(f"{annotate_dir} is a file; for photos give a folder", param_hint="--annotate")
    configure_tracking()  # models:/ and runs:/ resolve against the project's store
    model = load_service_model(model_uri)
    failed = predict_files(model, files, annotate_dir, click.echo, lambda line: click.echo(line, err=True))
    if failed:
        raise click.ClickException(f"{failed} of {len(files)} images could not be used (see above).")


def _predict_video(model_uri, path, annotate, csv_path, every, half_life, max_missed):
    from fer.serving.predict import (
        VideoReader, VideoTruncated, check_annotate_path, load_face_model, predict_video, progress_printer,
        quiet_video_logs,
    )
    from fer.tracking import configure_tracking
    from fer.serving.video import FaceTracker

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
        truncated = None
        with _csv_output(csv_path) as out:
            configure_tracking()  # models:/ and runs:/ resolve against the project's store
            classify = load_face_model(model_uri)
            try:
                summary = predict_video(classify, video, out, every=every, tracker=tracker, annotate=annotate,
                                        progress=progress_printer(path))
            except VideoTruncated as err:  # the rows read are kept, as its message says
                truncated = err
    if truncated is not None:
        raise truncated
    where = "standard output" if csv_path == "-" else csv_path
    click.echo(f"{path}: {summary.frames} frames, {summary.processed} processed, {summary.faces} face rows, "
               f"{summary.tracks} face ids, {summary.seconds:.1f} s; CSV: {where}", err=True)
    if summary.annotated is not None:
        click.echo(f"{path}: annotated: {summary.annotated}", err=True)


@contextlib.contextmanager
def _csv_output(csv_path: str):
    """Standard output as it is, or the CSV file written beside its name and renamed into place when complete."""
    if csv_path == "-":
        yield click.get_text_stream("stdout")
        return
    with atomic_output(csv_path, "the CSV") as temporary:
        with open(temporary, "w", encoding="utf-8", newline="") as out:
            yield out


@main.command(name="export")
@click.argument("model_uri", metavar="RUN_OR_MODEL_URI")
@click.option("--format", "format_", type=click.Choice(["onnx", "litert"]), default="onnx", show_default=True,
              help="onnx (ONNX Runtime, needs the [onnx] extra) or litert (a .tflite file for TensorFlow Lite).")
@click.option("--quantize", type=click.Choice(["none", "int8", "int8-dynamic"]), default="none", show_default=True,
              help="Also write an int8 copy: int8 is calibrated on training faces, int8-dynamic needs no calibration.")
@output_option(default=None)
@DATA
@click.option("--calibration-faces", type=click.IntRange(min=1), default=500, show_default=True,
              help="Training faces that calibrate the static int8 quantization.")
@click.option("--no-log", is_flag=True, help="Do not log the files and figures to the model's run.")
@click.option("--pyfunc", is_flag=True,
              help="Also log a pyfunc (model_onnx) that runs the ONNX file in ONNX Runtime: served without TensorFlow.")
def export_command(model_uri, format_, quantize, output, data, calibration_faces, no_log, pyfunc):
    """Export a run's or registered version's network to ONNX or LiteRT, checked against Keras, optionally int8.

    RUN_OR_MODEL_URI: a run id, runs:/<run id>/model, models:/fer-emotion@champion, models:/<name>/<version>,
    or a local model folder. Prints the validation accuracy of Keras, the exported file and its int8 copy.
    """
    from fer.export.runs import ExportError, export_model  # TensorFlow loads later, in export_model
    from fer.tracking import configure_tracking

    try:
        configure_tracking()  # run ids and models:/ resolve against the project's store
        report = export_model(model_uri, format_, quantization=None if quantize == "none" else quantize,
                              output=output, data=data, calibration_faces=calibration_faces, log=not no_log,
                              pyfunc=pyfunc)
    except (ExportError, DataError, TrackingServerError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(report.to_text())


@main.group()
def data():
    """Inspect data sources."""


@data.command()
@click.argument("path", required=False, default="synthetic")
@label_mode_option(default=LabelMode.MAJORITY.value)
@output_option(default="data_inspect.png")
@skip_bad_option(default=False)
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
