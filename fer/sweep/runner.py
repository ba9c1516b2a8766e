"""A hyperparameter sweep: one parent MLflow run, one complete phase run per trial, Optuna choosing.

Read top to bottom, `run_sweep` is the whole story of a sitting:

1. the sweep file, read and checked by `fer.sweep.spec` before TensorFlow loads;
2. the Optuna study, in SQLite beside the tracking store (`optuna.db`), named after
   the sweep: running the same sweep again continues it;
3. the parent run, found again by its tags (`fer.sweep`, `fer.sweep_role=parent`);
4. the trials: each one a `fer.training.train.train` run nested under the parent, as complete
   as any `fer train` run; its validation metric goes to the pruner after every epoch,
   and a trial the pruner stops ends KILLED with `fer.stopped_by=pruned`;
5. after each trial, the best so far on the parent (metric, run id, params); at the
   end of the sitting, the trials table and the figures (`fer.sweep.plots`).

Optuna's own MLflow integration (`MLflowCallback` in optuna-integration) logs each
trial as a run it creates after the trial; here a trial is a training run that
`fer.training.train` creates and logs itself, so the glue is this module instead.

Example:
    spec = load_sweep("experiments/sweep.yaml", {"data": "synthetic:400", "epochs": 2}, trials=3)
    result = run_sweep(spec)
    print(result.best_run_id, result.best_value)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from fer.config import ConfigError
from fer.tracking import (
    DEFAULT_EXPERIMENT,
    RUN_KIND_SWEEP,
    TAG_RUN_KIND,
    TAG_SWEEP_TRIAL,
    RunStopped,
    configure_tracking,
    experiment_in_use,
)

MISSING_OPTUNA = (
    'fer sweep needs Optuna, an optional extra: pip install -e ".[sweep]" '
    '(or pip install "optuna>=4,<6").'
)
try:
    import optuna
except ImportError as err:  # the rest of the project works without it
    raise ModuleNotFoundError(MISSING_OPTUNA, name="optuna") from err

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking.context import registry as run_context

from fer.sweep.plots import plot_study
from fer.sweep.spec import Objective, SweepSpec, load_sweep  # noqa: F401  (load_sweep: `runner.load_sweep` as before)
from fer.utils.locks import LockHeld, SittingLock

TAG_SWEEP = "fer.sweep"  # the sweep's name, on the parent and on every trial
TAG_ROLE = "fer.sweep_role"  # parent | trial
TAG_TRIAL = TAG_SWEEP_TRIAL  # the trial's number (0-based, as Optuna counts)
TAG_TRIAL_STATE = "fer.sweep_trial_state"  # COMPLETE | PRUNED | FAIL
TAG_BEST_RUN = "fer.sweep_best_run_id"
TAG_BEST_TRIAL = "fer.sweep_best_trial"
BEST_PARAM_TAG = "fer.sweep_best."  # + setting name: the best trial's value
RUN_ID_ATTR = "mlflow_run_id"  # the trial's run id, as a user attribute of the Optuna trial
PARENT_ATTR = "mlflow_parent_run_id"  # the parent run's id, as a user attribute of the study

# Heartbeats let a later sitting fail the trials of a sitting that was killed outright (SIGKILL, power).
HEARTBEAT_SECONDS, GRACE_SECONDS = 60, 180
SITTING_ATTR = "fer.sitting"  # host/pid of the sitting that runs a trial, as a user attribute of the trial
COUNTED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING)


class SweepError(RuntimeError):
    """A sweep that cannot start or continue; the message says why and what to do."""


class TrialPruned(optuna.TrialPruned, RunStopped):
    """The pruner stopped this trial: Optuna records it PRUNED, the run ends KILLED with `fer.stopped_by=pruned`."""

    reason = "pruned"


# 2. The study ------------------------------------------------------------------------------------------------------


def default_storage(tracking_uri: str) -> str:
    """Optuna's SQLite file beside a SQLite tracking store (optuna.db), else in the working folder.

    Its own file: Optuna and MLflow both keep an `alembic_version` table, so they cannot share a database.

    >>> default_storage("sqlite:////data/runs/mlflow.db")
    'sqlite:////data/runs/optuna.db'
    """
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):].split("?")[0])
        return f"sqlite:///{database.with_name('optuna.db')}"
    return f"sqlite:///{Path.cwd() / 'optuna.db'}"


def open_study(spec: SweepSpec, storage: str) -> optuna.Study:
    """The sweep's study in `storage`: created the first time, continued after.

    The sampler's seed moves on with the trials already there, so a continued
    sweep does not draw its first sitting's random start-up trials again.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS)
    study = optuna.create_study(
        study_name=spec.name, storage=rdb, direction=spec.objective.direction, load_if_exists=True
    )
    if study.direction.name.lower() != spec.objective.direction:
        raise SweepError(f"Study {spec.name!r} in {storage} {study.direction.name.lower()}s its objective, this "
                         f"sweep file {spec.objective.direction}s {spec.objective.metric}; give it another --name.")
    study.sampler = optuna.samplers.TPESampler(
        seed=spec.sampler_seed + len(study.trials), n_startup_trials=spec.n_startup_trials
    )
    study.pruner = _pruner(spec.pruner)
    return study


def _pruner(pruner: dict) -> optuna.pruners.BasePruner:
    options = {k: v for k, v in pruner.items() if k != "type"}
    if pruner["type"] == "median":
        return optuna.pruners.MedianPruner(**options)
    if pruner["type"] == "threshold":
        return optuna.pruners.ThresholdPruner(**options)
    return optuna.pruners.NopPruner()


def sitting_lock(name: str, storage: str):
    """The lock one sitting of sweep `name` holds: a file beside a SQLite study (`.optuna.db.<name>.lock`).

    A second sitting on the same study file fails at once with SweepError
    naming the holder (pid, host, since). A server database (PostgreSQL, MySQL)
    takes no lock: sittings on several machines then share the study as
    parallel workers (see `reconcile` and the trial budget in `run_sweep`).

    Example:
        with sitting_lock("tiny", "sqlite:////data/runs/optuna.db"):
            ...
    """
    if not _is_local(storage):
        return contextlib.nullcontext()
    database = Path(storage[len("sqlite:///"):].split("?")[0])
    return _SweepLock(database.with_name(f".{database.name}.{name}.lock"), f"sweep {name!r} is being run")


class _SweepLock(SittingLock):
    def acquire(self):
        try:
            return super().acquire()
        except LockHeld as err:
            raise SweepError(f"{err}. Sittings of one sweep on several machines share a server database "
                             "(--storage postgresql://...).") from None


def _is_local(storage: str) -> bool:
    return storage.startswith("sqlite:///")


def reconcile(study: optuna.Study, client: MlflowClient, parent_id: str, local: bool) -> int:
    """End what a dead sitting left RUNNING, in Optuna (FAIL) and MLflow (KILLED); the trials running elsewhere.

    A trial's sitting is dead when it ran on this host and its pid is gone, when
    its heartbeat is older than the grace period, or, for a study in a local
    SQLite file, always (this sitting holds the sweep's lock, so no other
    sitting can be running). Each dead trial's run is ended KILLED with
    `fer.sweep_trial_state=FAIL` and `fer.killed_because`, whatever the delay;
    the checkpoint folders of the parent's unfinished trial runs are removed
    (a failed trial is run again as a new trial, never resumed). Returns how
    many trials are still running in live sittings (on other machines).

    Example:
        others = reconcile(study, MlflowClient(), parent_run_id, local=True)  # 0: no other sitting
    """
    live_numbers = set()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        why = _dead_sitting(study, trial, local)
        if why is None:
            live_numbers.add(trial.number)
            continue
        study._storage.set_trial_user_attr(trial._trial_id, "fer.failed_because", why)
        study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        print(f"Sweep trial {trial.number}: {why}; marked FAIL.")

    experiment_id = client.get_run(parent_id).info.experiment_id
    for run in client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'"):
        number = run.data.tags.get(TAG_TRIAL)
        if number is not None and int(number) in live_numbers:
            continue
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, TAG_TRIAL_STATE, "FAIL")
            client.set_tag(run.info.run_id, "fer.killed_because", "its sweep sitting ended without finishing it "
                                                                  "(killed, or the machine stopped)")
            client.set_terminated(run.info.run_id, "KILLED")
            print(f"Sweep trial run {run.info.run_id} (trial {number}) was left RUNNING by a dead sitting: KILLED.")
        if run.info.status != "FINISHED":
            _remove_checkpoint(run.info.run_id)
    return len(live_numbers)


def _remove_checkpoint(run_id: str) -> None:
    from fer.training.checkpoints import checkpoint_dir  # TensorFlow loads with it; the trials need it anyway

    shutil.rmtree(checkpoint_dir(run_id), ignore_errors=True)


def _dead_sitting(study: optuna.Study, trial: optuna.trial.FrozenTrial, local: bool) -> str | None:
    """Why `trial`'s sitting is dead (a sentence), or None while it may be alive."""
    host, _, pid = str(trial.user_attrs.get(SITTING_ATTR, "")).rpartition("/")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return f"its sitting (pid {pid} on host {host}) is gone"
    if local:
        return "its sitting ended without finishing it (no other sitting holds this study's lock)"
    stale = getattr(study._storage, "_get_stale_trial_ids", None)  # Optuna's RDB storage keeps heartbeats
    if stale is not None and trial._trial_id in stale(study._study_id):
        return f"its sitting's heartbeat stopped more than {GRACE_SECONDS} s ago"
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _this_sitting() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count against the budget: complete and pruned ones (failed ones are retried)."""
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=counted)


# 3. The parent run -------------------------------------------------------------------------------------------------


def find_parent(client: MlflowClient, experiment_id: str, name: str):
    """The sweep's parent run in the experiment, or None (the oldest, should there be several)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_SWEEP}` = '{name}' and tags.`{TAG_ROLE}` = 'parent'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0] if runs else None


def check_pairing(study: optuna.Study, parent, storage: str, name: str) -> None:
    """The study and the parent run belong together, or neither exists yet; else SweepError before anything runs.

    A study is stamped with its parent run's id when the sweep starts. A parent
    found without its study (another --storage, a deleted optuna.db) or a study
    whose parent is not in this experiment would mix two sweeps' trials.
    """
    owner = study.user_attrs.get(PARENT_ATTR)
    found = parent.info.run_id if parent else None
    if owner == found:
        return
    if owner is None and not study.trials and not _has_trial_runs(parent):
        return  # a first sitting stopped between creating the parent and stamping the study
    if owner is None:
        raise SweepError(f"Sweep {name!r} has a parent run ({found}) but its study is not in {storage} (the parent's "
                         f"tag fer.sweep_storage says where it was). Pass that --storage, or start a new sweep with "
                         "--name.")
    raise SweepError(f"The study {name!r} in {storage} belongs to parent run {owner}, which is not a sweep run of "
                     "this experiment. Use the experiment it was started in (--experiment), or another --name.")


def _has_trial_runs(parent) -> bool:
    runs = MlflowClient().search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1
    )
    return bool(runs)


def open_parent(client: MlflowClient, experiment_id: str, spec: SweepSpec, storage: str, existing=None) -> str:
    """The parent run's id: `existing` (the sweep's, from `find_parent`), else `mlflow run`'s run, else a new one.

    MLFLOW_RUN_ID is taken out of the environment here: the trials' runs must be new
    runs under the parent, and `mlflow.start_run` would otherwise reopen `mlflow run`'s.
    """
    shell = os.environ.pop("MLFLOW_RUN_ID", None)
    if existing:
        parent_id = existing.info.run_id
        _check_same_recipe(existing.data.params, spec)
        client.update_run(parent_id, status="RUNNING")
        if shell and shell != parent_id:
            client.set_tag(shell, "mlflow.note.content",
                           f"This run only continued sweep `{spec.name}`; its trials are under run {parent_id}.")
            client.set_tag(shell, "fer.continued_sweep_run_id", parent_id)
            client.set_tag(shell, TAG_RUN_KIND, RUN_KIND_SWEEP)
        print(f"Continuing sweep {spec.name!r}: parent run {parent_id}.")
    else:
        tags = {TAG_SWEEP: spec.name, TAG_ROLE: "parent", TAG_RUN_KIND: RUN_KIND_SWEEP,
                "mlflow.runName": f"sweep-{spec.name}"}
        if shell:
            parent_id = shell
            client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in tags.items()])
        else:
            # With the context `mlflow.start_run` records (user, source, git commit), as the trials have.
            parent_id = client.create_run(experiment_id, run_name=f"sweep-{spec.name}",
                                          tags=run_context.resolve_tags(tags)).info.run_id
        client.log_batch(parent_id, params=[Param(k, v[:6000]) for k, v in spec.recipe_params().items()])
        print(f"Sweep {spec.name!r}: parent run {parent_id}.")
    sittings = int(client.get_run(parent_id).data.tags.get("fer.sweep_sittings", "0")) + 1
    for key, value in {
        "fer.sweep_sittings": str(sittings),
        "fer.sweep_trials": str(spec.trials),
        f"fer.sweep_sitting_{sittings}.max_minutes": f"{spec.max_minutes:g}",
        "fer.sweep_storage": _without_password(storage),
        "fer.sweep_file": spec.origin,
    }.items():
        client.set_tag(parent_id, key, value)
    return parent_id


def _check_same_recipe(logged: dict[str, str], spec: SweepSpec) -> None:
    """A continued sweep must search the same space the same way; the budget may change."""
    wanted = {k: v[:6000] for k, v in spec.recipe_params().items()}
    differs = sorted(k for k in set(logged) | set(wanted) if k.startswith("sweep.") and logged.get(k) != wanted.get(k))
    if differs:
        shown = "; ".join(f"{k}: was {logged.get(k)!r}, now {wanted.get(k)!r}" for k in differs[:5])
        raise SweepError(f"Sweep {spec.name!r} was started with another recipe ({shown}). Continue it with the "
                         "same file and settings (only trials and max_minutes may change), or start a new sweep "
                         "with --name.")


def _without_password(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


# 4-5. The sitting --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What a sitting leaves: the parent run, the trial counts, and the best trial so far (if any completed)."""

    parent_run_id: str
    study_name: str
    storage: str
    complete: int
    pruned: int
    failed: int
    best_run_id: str | None
    best_value: float | None
    best_params: dict[str, Any]

    def to_text(self, metric: str) -> str:
        counts = f"{self.complete} complete, {self.pruned} pruned, {self.failed} failed"
        if self.best_run_id is None:
            return f"Sweep {self.study_name}: {counts}; no complete trial yet. Parent run {self.parent_run_id}."
        params = ", ".join(f"{k}={_short(v)}" for k, v in self.best_params.items())
        return (f"Sweep {self.study_name}: {counts}. Best: run {self.best_run_id}, {metric} {self.best_value:.4f} "
                f"({params}).\nParent run {self.parent_run_id}. Promote the winner with: "
                f"fer promote --run-id {self.best_run_id}")


def run_sweep(
    spec: SweepSpec, *, experiment: str | None = None, storage: str | None = None, use_cache: bool = True
) -> SweepResult:
    """Run (or continue) the sweep until `spec.trials` trials are complete or pruned, or `spec.max_minutes` pass.

    No trial starts once the sitting's minutes are spent, and the trial in
    progress gets the time left as its `max_minutes` (it then stops after the
    last epoch that fits, and is evaluated like any time-limited run). Ctrl-C
    ends the trial's run KILLED and the parent KILLED; running the same sweep
    again continues it. A trial whose sampled settings make an invalid
    configuration is failed and the sweep goes on; any other error stops it.

    One sitting at a time on a SQLite study (`sitting_lock`: a second one is a
    SweepError naming the first); each sitting first ends what a dead one left
    running (`reconcile`). On a server database, sittings on several machines
    run as parallel workers, each with its own sampler seed, trials running
    anywhere counting against `spec.trials`.

    Example:
        result = run_sweep(load_sweep("sweep", {"data": "synthetic:400", "epochs": 2}, trials=3))
    """
    experiment = experiment or DEFAULT_EXPERIMENT
    configure_tracking(experiment)
    client = MlflowClient()
    experiment_name = experiment_in_use(client, experiment)  # inside `mlflow run`: its run's experiment
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    storage = storage or default_storage(mlflow.get_tracking_uri())
    with sitting_lock(spec.name, storage):
        return _sitting(spec, client, experiment_name, experiment_id, storage, use_cache)


def _sitting(spec: SweepSpec, client: MlflowClient, experiment_name: str, experiment_id: str, storage: str,
             use_cache: bool) -> SweepResult:
    """One sitting of `run_sweep`, holding the sweep's lock: the study and parent, the crash clean-up, the trials."""
    study = open_study(spec, storage)
    existing = find_parent(client, experiment_id, spec.name)
    check_pairing(study, existing, storage, spec.name)
    parent_id = open_parent(client, experiment_id, spec, storage, existing)
    study.set_user_attr(PARENT_ATTR, parent_id)
    others = reconcile(study, client, parent_id, local=_is_local(storage))
    if others:  # a sitting on another machine shares the study: draw apart from it, count its trials
        study.sampler = optuna.samplers.TPESampler(seed=secrets.randbelow(2**31), n_startup_trials=spec.n_startup_trials)
        print(f"Sweep {spec.name!r}: {others} trial(s) running in another sitting; this one joins as a parallel "
              "worker (its own sampler seed).")

    remaining = spec.trials - len(finished_trials(study)) - others
    status = "FINISHED"
    try:
        if remaining > 0:
            deadline = time.monotonic() + 60 * spec.max_minutes if spec.max_minutes else None
            objective = _objective(spec, parent_id, experiment_name, use_cache, client, deadline)
            record = _record_trial(spec, parent_id, client)
            with warnings.catch_warnings(), _interrupts_without_traceback():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    objective,
                    n_trials=remaining,
                    timeout=60 * spec.max_minutes if spec.max_minutes else None,
                    catch=(ConfigError,),
                    # Trials running in another sitting count too: two sittings never run more than the budget.
                    callbacks=[record, optuna.study.MaxTrialsCallback(spec.trials, states=COUNTED_STATES)],
                    gc_after_trial=True,
                )
        else:
            print(f"Sweep {spec.name!r} already has its {spec.trials} trials; raise --trials to run more.")
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, at any stage of a trial
        status = "KILLED"
        print(f"\nSweep {spec.name!r} interrupted; run the same command again to continue it.")
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        result = _log_summary(client, parent_id, study, spec, storage)
        client.set_terminated(parent_id, status)
    print(result.to_text(spec.objective.metric))
    return result


def _objective(spec: SweepSpec, parent_id: str, experiment: str, use_cache: bool, client: MlflowClient,
               deadline: float | None):
    """Optuna's objective: one trial is one `fer.training.train.train` run under the parent; returns its objective metric."""
    import keras  # TensorFlow loads once the sweep is known good

    from fer.training.callbacks import ReportEachEpoch
    from fer.training.train import train

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(SITTING_ATTR, _this_sitting())  # a later sitting tells a dead sitting's trials by it
        values = {d.key: d.suggest(trial) for d in spec.space}
        cap = _minutes_left(deadline, spec.settings.get("max_minutes"))
        config = spec.trial_config(values, f"sweep {spec.name}, trial {trial.number}", cap)
        keras.utils.clear_session()  # each trial builds a new network; drop the last one's graph
        run_id = train(
            config,
            experiment=experiment,
            use_cache=use_cache,
            callbacks=[ReportEachEpoch(spec.objective.epoch_metric, _pruning(trial, spec.objective))],
            parent_run_id=parent_id,
            run_name=f"{spec.name}-trial-{trial.number}",
            tags={TAG_SWEEP: spec.name, TAG_ROLE: "trial", TAG_TRIAL: str(trial.number)},
        )
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        metrics = client.get_run(run_id).data.metrics
        if spec.objective.metric not in metrics:
            raise SweepError(f"Run {run_id} has no metric {spec.objective.metric!r}; it has {sorted(metrics)}.")
        return metrics[spec.objective.metric]

    return objective


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback; Ctrl-C is no failure of the code: its line stays, not the trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info, record.exc_text = None, None
        return True


@contextlib.contextmanager
def _interrupts_without_traceback():
    """For the block: Optuna's handlers print a Ctrl-C'd (or SIGTERM'd) trial's line without a traceback."""
    handlers = logging.getLogger("optuna").handlers
    quiet = _NoInterruptTraceback()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _minutes_left(deadline: float | None, setting) -> float | None:
    """The trial's time cap: the sitting's minutes left, or the trial's own max_minutes if that is shorter."""
    if deadline is None:
        return None
    left = max((deadline - time.monotonic()) / 60, 0.01)
    own = float(setting or 0)
    return min(left, own) if own else left


def _pruning(trial: optuna.Trial, objective: Objective):
    """The per-epoch report: hand the validation metric to the trial, and stop the run if the pruner says so."""

    def report(epoch: int, value: float) -> TrialPruned | None:
        if epoch == 1:  # the run exists now: a pruned trial keeps its run id too
            trial.set_user_attr(RUN_ID_ATTR, mlflow.active_run().info.run_id)
        trial.report(value, step=epoch)
        if trial.should_prune():
            return TrialPruned(f"trial {trial.number} pruned: {objective.epoch_metric} {value:.4f} after epoch {epoch}")
        return None

    return report


def _record_trial(spec: SweepSpec, parent_id: str, client: MlflowClient):
    """After each trial: its state on its run, the best trial so far and the counts on the parent."""

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get(RUN_ID_ATTR) or _trial_run(client, parent_id, trial.number)
        if run_id:
            client.set_tag(run_id, TAG_TRIAL_STATE, trial.state.name)
        _log_best(client, parent_id, study, spec)

    return record


def _trial_run(client: MlflowClient, parent_id: str, number: int) -> str | None:
    """The run of a trial that failed before its first epoch ended (if it got as far as a run)."""
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.`{TAG_TRIAL}` = '{number}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _log_best(client: MlflowClient, parent_id: str, study: optuna.Study, spec: SweepSpec,
              log_metrics: bool = True) -> SweepResult:
    """The counts and the best complete trial, as the parent's metrics (a step per finished trial) and tags."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {name: states.count(getattr(optuna.trial.TrialState, name.upper()))
              for name in ("complete", "pruned", "fail")}
    step = counts["complete"] + counts["pruned"]
    metrics = {"trials_complete": counts["complete"], "trials_pruned": counts["pruned"],
               "trials_failed": counts["fail"]}
    best_run_id, best_value, best_params = None, None, {}
    if counts["complete"]:
        best = study.best_trial
        best_run_id, best_value, best_params = best.user_attrs.get(RUN_ID_ATTR), best.value, dict(best.params)
        metrics[spec.objective.metric] = best_value
        tags = {TAG_BEST_RUN: str(best_run_id), TAG_BEST_TRIAL: str(best.number)}
        tags.update({f"{BEST_PARAM_TAG}{key}": str(value) for key, value in best_params.items()})
        for key, value in tags.items():
            client.set_tag(parent_id, key, value)
        client.log_dict(parent_id, {"trial": best.number, "run_id": best_run_id, "metric": spec.objective.metric,
                                    "value": best_value, "params": best_params}, "best_trial.json")
    timestamp = int(time.time() * 1000)
    if log_metrics:
        client.log_batch(parent_id, metrics=[Metric(k, float(v), timestamp, step) for k, v in metrics.items()])
    return SweepResult(parent_id, spec.name, "", counts["complete"], counts["pruned"], counts["fail"],
                       best_run_id, best_value, best_params)


def _log_summary(client: MlflowClient, parent_id: str, study: optuna.Study, spec: SweepSpec,
                 storage: str) -> SweepResult:
    """End of a sitting: the best trial, the trials table, the figures and a note on the parent."""
    # The metrics went to the parent after each trial; tags and best_trial.json are refreshed.
    result = dataclasses.replace(_log_best(client, parent_id, study, spec, log_metrics=False), storage=storage)
    # A trial interrupted by Ctrl-C never reached the after-trial record: Optuna has it FAIL, so does its run.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if run_id := trial.user_attrs.get(RUN_ID_ATTR) or _trial_run(client, parent_id, trial.number):
            client.set_tag(run_id, TAG_TRIAL_STATE, "FAIL")
            _remove_checkpoint(run_id)  # a failed trial is run again as a new trial, never resumed
    trials = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
    if len(trials):
        client.log_text(parent_id, trials.to_csv(index=False), "trials.csv")
    with tempfile.TemporaryDirectory() as tmp:
        for path in plot_study(study, spec.objective.metric, Path(tmp)):
            client.log_artifact(parent_id, str(path), artifact_path="plots")
    client.set_tag(parent_id, "mlflow.note.content", result.to_text(spec.objective.metric))
    return result


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_trial_info(client: MlflowClient, parent_run_id: str) -> dict:
    """The parent's record of the best trial (`best_trial.json`): trial, run_id, metric, value, params.

    Example:
        best = best_trial_info(MlflowClient(), parent_run_id)
        mlflow.pyfunc.load_model(f"runs:/{best['run_id']}/model")
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent_run_id, "best_trial.json", tmp)
        return json.loads(Path(path).read_text())
