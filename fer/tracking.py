"""Where runs go: a SQLite store in the working folder unless MLFLOW_TRACKING_URI says otherwise."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run

from fer.utils.locks import SittingLock

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one process at a time there
    fcntl = None

DEFAULT_EXPERIMENT = "fer"
# What MLflow says while another process is half-way through creating a new store's tables.
MIGRATING = ("already exists", "database is locked", "out-of-date database schema", "no such table", "no such column",
             "duplicate column")
INIT_ATTEMPTS = 8  # tries at creating a new SQLite store while another process creates it (about 18 s in all)

# Tags every project run carries, so compare and promote can find runs by meaning.
TAG_PHASE = "fer.phase"
TAG_MODEL = "fer.model"
TAG_DATA_SOURCE = "fer.data_source"
TAG_LABEL_MODE = "fer.label_mode"
TAG_EVAL_SPLIT = "fer.eval_split"
TAG_STOPPED_BY = "fer.stopped_by"  # time_limit | early_stopping | epochs | pruned
TAG_SWEEP_TRIAL = "fer.sweep_trial"  # on a sweep's trial: its number (fer.sweep); "latest" in compare skips trials
# What a run is: one filter in the MLflow UI (`tags.fer.run_kind = 'training'`) shows
# only trainings, without the compare and promote runs beside them in every chart.
TAG_RUN_KIND = "fer.run_kind"
RUN_KIND_TRAINING, RUN_KIND_COMPARE, RUN_KIND_PROMOTE = "training", "compare", "promote"
RUN_KIND_SWEEP = "sweep"  # a sweep's parent run (its trials are trainings)
RUN_KIND_RESUME = "resume"  # the empty run `mlflow run -P resume=<id>` creates around a resumed one
TRAINING_RUNS_FILTER = f"tags.`{TAG_RUN_KIND}` = '{RUN_KIND_TRAINING}'"


class RunStopped(Exception):
    """Raised from a training callback to end a run early on purpose, not as a failure.

    The run ends KILLED with its history so far, tagged `fer.stopped_by` with the
    class's `reason`, and keeps no checkpoint: there is nothing to resume. A sweep's
    pruned trial is one (`fer.sweep.runner.TrialPruned`, also Optuna's TrialPruned).

    Example:
        class Pruned(RunStopped):
            reason = "pruned"
        raise Pruned("trial 3: val_accuracy 0.21 after epoch 2, below the median")
    """

    reason = "stopped"


def default_tracking_uri() -> str:
    """sqlite:///<working folder>/mlflow.db; MLflow keeps artifacts beside it in ./mlruns."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def configure_tracking(experiment: str | None = None) -> str:
    """Point MLflow at the tracking store and experiment; returns the tracking URI.

    Inside `mlflow run`, MLflow has already created the run (MLFLOW_RUN_ID) in
    the experiment it was given, so the experiment is left alone there.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        _initialize_sqlite_store(uri)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    if experiment and not os.environ.get("MLFLOW_RUN_ID"):
        if uri.startswith("sqlite:///"):
            _while_migrating(lambda: mlflow.set_experiment(experiment))
        else:
            mlflow.set_experiment(experiment)
    return mlflow.get_tracking_uri()


def experiment_in_use(client: MlflowClient, experiment: str) -> str:
    """The experiment a command works in: inside `mlflow run`, the one its run (MLFLOW_RUN_ID) is in.

    `mlflow run --experiment-name X` creates the run in X before the entry point
    starts; compare and promote then search and log there, whatever their own
    `--experiment` default says. Outside `mlflow run`, `experiment` itself.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return experiment
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name


def first_finished_run(
    client: MlflowClient, experiment: str, phase: str, order_by: str = "attributes.start_time DESC"
) -> Run | None:
    """The first FINISHED run tagged `fer.phase` = `phase` in the experiment named `experiment`, by
    `order_by` (default: the latest), sweep trials left out; None when there is none, or no such experiment.

    A sweep's trials are phase runs too, often on a smaller data set and fewer epochs; the
    latest or best of them is rarely the run a user means by "the latest phase 2" (name one by id).

    Example:
        best = first_finished_run(client, "fer", "phase2", order_by="metrics.`best_val_accuracy` DESC")
    """
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    page_token = None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{TAG_PHASE}` = '{phase}' and attributes.status = 'FINISHED'",
            order_by=[order_by],
            max_results=100,
            page_token=page_token,
        )
        for run in page:
            if TAG_SWEEP_TRIAL not in run.data.tags:
                return run
        page_token = page.token
        if not page_token:
            return None


def client_for_command(experiment: str) -> tuple[MlflowClient, str]:
    """What a command that reads runs (compare, promote) starts with: tracking configured from the
    environment, a client of that store, and the experiment it works in (`experiment_in_use`).

    Raises TrackingServerError when the tracking server cannot be used (see `configure_tracking`).

    Example:
        client, experiment = client_for_command("fer")
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    """
    configure_tracking(None)
    client = MlflowClient()
    return client, experiment_in_use(client, experiment)


class TrackingServerError(ConnectionError):
    """The tracking server cannot be used; raised before any work starts."""


# One quick try: a server that is down should be reported in seconds, not
# after MLflow's default retries with back-off (minutes).
PREFLIGHT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def check_server(uri: str) -> None:
    """Make one real API call to the tracking server; fail clearly if it does not answer as MLflow."""
    try:
        with environment_set(PREFLIGHT_ENV):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # connection refused, DNS, 401/403, not an MLflow server, ...
        reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise TrackingServerError(
            f"The MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) cannot be used: {reason}. "
            "Check that it is running and reachable, and, for a server with authentication, that "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are set. Nothing was trained."
        ) from err


@contextlib.contextmanager
def environment_set(values: dict[str, str]):
    """`values` in os.environ for the block; after it, each of those variables as it was (or unset again).

    For settings MLflow reads from the environment only (retries, the system-metrics interval).

    Example:
        with environment_set({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}):
            MlflowClient(uri).search_experiments(max_results=1)
    """
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def server_unreachable(err: BaseException) -> bool:
    """True when `err`, or an error that led to it, is a failed connection to the tracking server.

    MLflow raises MlflowException("API request to ... failed with exception ...")
    once its HTTP retries are spent; the requests error it wraps (refused or
    dropped connection, timeout, retries on 5xx answers exhausted) is in the
    exception's chain. Errors the server answered with (a 400, a missing run)
    are not unreachability.

    Example:
        try:
            mlflow.log_metric("x", 1.0)
        except MlflowException as err:
            if server_unreachable(err): ...
    """
    import requests  # a dependency of MLflow itself

    lost = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, lost):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _initialize_sqlite_store(uri: str) -> None:
    """Create or migrate a SQLite store under a file lock.

    MLflow creates the tables on first use; several processes started together
    on a new mlflow.db would race to create them ("table already exists").
    One at a time, each finds the tables there or creates them; one that
    collides with a process outside fer (which takes no lock) tries again.
    """
    database = Path(uri[len("sqlite:///"):].split("?")[0])
    if fcntl is None or not database.parent.is_dir():
        return
    with SittingLock(database.with_name(database.name + ".lock"), "the tracking store is being created", wait=True):
        # A process that does not take this lock (`mlflow ui`, a query, `mlflow run` itself) may be creating
        # the tables at the same moment: its half-done migration fails ours ("table ... already exists"),
        # so try again until it has finished. Any other problem shows at the first real call.
        with contextlib.suppress(Exception):
            _while_migrating(lambda: MlflowClient(uri).search_experiments(max_results=1))


def _while_migrating(call):
    """`call()`, tried again while another process is still creating the store's tables (`MIGRATING`)."""
    for attempt in range(INIT_ATTEMPTS):
        try:
            return call()
        except Exception as err:
            if attempt == INIT_ATTEMPTS - 1 or not any(sign in str(err) for sign in MIGRATING):
                raise
            time.sleep(0.5 * (attempt + 1))
