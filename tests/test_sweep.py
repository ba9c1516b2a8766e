"""`fer sweep`: a parent run, one nested phase run per trial, pruning, and a sweep that continues where it stopped."""

import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import EXPERIMENT, mlflow_run
from fer.config import ConfigError

optuna = pytest.importorskip("optuna")

from fer.sweep import runner as sweeps  # noqa: E402  (needs Optuna, the `sweep` extra)

# Small enough for seconds a trial: the baseline network, 64 faces, 2 epochs.
TINY = {"data": "synthetic:64", "batch_size": 32, "epochs": 2}


def write_sweep(folder: Path, name: str = "tiny", **entries) -> Path:
    """A sweep file for tiny trials: phase 1, a learning rate and a schedule to search, no pruning."""
    recipe = {
        "phase": "phase1",
        "objective": "best_val_accuracy",
        "trials": 3,
        "sampler": {"seed": 7, "n_startup_trials": 2},
        "pruner": {"type": "none"},
        "settings": dict(TINY),
        "space": {
            "learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
            "lr_schedule": {"choices": ["plateau", "linear"]},
        },
        **entries,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def store(in_process):
    """A SQLite tracking store (and data cache) in tmp_path, used in this process; its client."""
    return in_process


def children(client: MlflowClient, parent):
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )


def logged_models(run):
    """The models a run logged (MLflow 3 keeps them as logged models, beside the run's artifacts)."""
    return mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                       filter_string=f"source_run_id = '{run.info.run_id}'")


def parents(client: MlflowClient, experiment: str):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`{sweeps.TAG_ROLE}` = 'parent'")


# The sweep file, checked at the door -------------------------------------------------------------------------------


def test_the_project_sweep_file_searches_the_issue_s_settings_with_their_kinds():
    spec = sweeps.load_sweep()
    dimensions = {d.key: d for d in spec.space}
    assert spec.name == "sweep" and spec.phase == "phase2" and spec.objective.direction == "maximize"
    assert dimensions["learning_rate"].log and not dimensions["learning_rate"].integer
    assert dimensions["learning_rate"].describe() == "log-uniform [0.0001, 0.003]"
    assert dimensions["lr_schedule"].choices == ("plateau", "linear", "cosine")
    assert {"label_mode", "class_weight", "augmentation.rotation", "augmentation.zoom"} <= set(dimensions)
    assert spec.recipe_params()["sweep.space.augmentation.rotation"] == "uniform [0, 20]"


def test_command_line_settings_and_budget_override_the_file(tmp_path):
    spec = sweeps.load_sweep(str(write_sweep(tmp_path)), {"epochs": "1"}, name="other", trials=5, max_minutes=2)
    assert (spec.name, spec.trials, spec.max_minutes, spec.settings["epochs"]) == ("other", 5, 2.0, 1)
    config = spec.trial_config({"learning_rate": 0.005, "lr_schedule": "linear"}, "test", max_minutes=1.5)
    assert (config.epochs, config.learning_rate, config.lr_schedule, config.max_minutes) == (1, 0.005, "linear", 1.5)


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"space": {"learning_rte": {"low": 0.1, "high": 0.2}}}, "space.learning_rte in .*is not a setting"),
        ({"space": {"lr_schedule": {"choices": ["plateau", "step"]}}}, "lr_schedule must be one of .*space.lr_schedule"),
        ({"space": {"lr_schedule": {"low": 0, "high": 1}}}, "str setting: search it with choices"),
        ({"space": {"learning_rate": {"low": 0.01, "high": 0.001}}}, "low must be below high"),
        ({"space": {"learning_rate": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs low above 0"),
        ({"space": {"seed": {"low": 1, "high": 9.5}}}, "whole-number setting"),
        ({"space": {"epochs": {"low": 1, "high": 3}}}, "both searched and fixed"),
        ({"space": {}}, "space is empty"),
        ({"space": {"augmentation": {}}}, r"space.augmentation is an empty section"),
        ({"space": {"learning_rate": {"low": 1e-3, "high": 1e-2}, "augmentation": {"zoom": {}}}},
         r"space.augmentation.zoom is an empty section"),
        ({"space": {"seed": {"low": 1, "high": 3, "step": 5}}}, r"step 5 is larger than the range 1 to 3"),
        ({"pruner": {"type": "threshold", "lower": "x"}}, r"pruner.lower must be a number .*got 'x'"),
        ({"pruner": {"type": "threshold", "lower": 0.5, "upper": 0.2}}, "lower must be below pruner.upper"),
        ({"objective": "eval_accuracy"}, "validation metrics: the test split stays unseen"),
        ({"trials": 0}, "trials must be a whole number of at least 1"),
        ({"pruner": {"type": "hyperband"}}, "pruner.type must be one of median, threshold, none"),
        ({"pruner": {"type": "median", "patience": 2}}, r"unknown pruner \(median\) entries \['patience'\]"),
        ({"settings": {"epochs": 0}}, "epochs must be a positive whole number"),
        ({"budget": 3}, r"unknown top-level entries \['budget'\]; allowed: phase, objective, "),
    ],
)
def test_a_bad_sweep_file_fails_before_anything_runs_naming_the_entry(tmp_path, entries, message):
    with pytest.raises(ConfigError, match=message):
        sweeps.load_sweep(str(write_sweep(tmp_path, **entries)))


def test_a_sweep_name_must_be_plain(tmp_path):
    with pytest.raises(ConfigError, match="sweep name \"it's\""):
        sweeps.load_sweep(str(write_sweep(tmp_path)), name="it's")


def test_optuna_s_file_sits_beside_a_sqlite_tracking_store_else_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sweeps.default_storage("sqlite:////srv/runs/mlflow.db?timeout=30") == "sqlite:////srv/runs/optuna.db"
    assert sweeps.default_storage("http://mlflow.example.org:5000") == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_without_optuna_the_command_names_the_extra_to_install(monkeypatch):
    from fer.cli import main

    import fer

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "fer.sweep.runner")
    monkeypatch.delitem(sys.modules, "fer.sweep")  # else `from fer.sweep import runner` finds it there
    monkeypatch.delattr(fer, "sweep")
    result = CliRunner().invoke(main, ["sweep"])
    assert result.exit_code == 1
    assert 'pip install -e ".[sweep]"' in result.output


# Sweeps that train -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_three_trial_sweep_is_one_parent_with_three_finished_nested_runs_and_the_best_on_the_parent(store, tmp_path):
    # Validation loss, not accuracy: on 12 validation faces accuracies tie, and tied trials have no importances.
    spec = sweeps.load_sweep(str(write_sweep(tmp_path, objective="lowest_val_loss")))
    result = sweeps.run_sweep(spec, experiment="sweep-test")

    [parent] = parents(store, "sweep-test")
    trials = children(store, parent)
    assert parent.info.status == "FINISHED" and parent.info.run_id == result.parent_run_id
    assert len(trials) == 3 and {run.info.status for run in trials} == {"FINISHED"}
    assert sorted(run.data.tags[sweeps.TAG_TRIAL] for run in trials) == ["0", "1", "2"]
    for run in trials:  # each one a complete phase run, as `fer train` makes it
        assert run.data.tags["fer.phase"] == "phase1" and run.data.tags[sweeps.TAG_TRIAL_STATE] == "COMPLETE"
        assert {"best_val_accuracy", "eval_accuracy", "val_accuracy"} <= set(run.data.metrics)
        assert [model.name for model in logged_models(run)] == ["model"]

    best = min(trials, key=lambda run: run.data.metrics["lowest_val_loss"])
    tags = parent.data.tags
    assert tags[sweeps.TAG_BEST_RUN] == best.info.run_id == result.best_run_id
    assert parent.data.metrics["lowest_val_loss"] == best.data.metrics["lowest_val_loss"]
    assert float(tags["fer.sweep_best.learning_rate"]) == pytest.approx(float(best.data.params["config.learning_rate"]))
    assert tags["fer.sweep_best.lr_schedule"] == best.data.params["config.lr_schedule"]
    assert parent.data.metrics["trials_complete"] == 3
    assert parent.data.params["sweep.space.learning_rate"] == "log-uniform [0.0001, 0.01]"
    plots = {a.path for a in store.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.png", "plots/parallel_coordinate.png", "plots/param_importances.png"}
    assert sweeps.best_trial_info(store, parent.info.run_id)["run_id"] == best.info.run_id
    assert (tmp_path / "optuna.db").is_file()  # beside mlflow.db


@pytest.mark.slow
def test_a_pruned_trial_ends_killed_tagged_pruned_after_the_epoch_that_decided_it(store, tmp_path):
    # No epoch reaches a validation accuracy above 1.01: the pruner stops the trial after its first epoch.
    path = write_sweep(tmp_path, trials=1, pruner={"type": "threshold", "lower": 1.01, "n_warmup_steps": 1},
                       settings={**TINY, "epochs": 3})
    result = sweeps.run_sweep(sweeps.load_sweep(str(path)), experiment="sweep-test")

    [parent] = parents(store, "sweep-test")
    [trial] = children(store, parent)
    assert trial.info.status == "KILLED"
    assert trial.data.tags["fer.stopped_by"] == "pruned" and trial.data.tags[sweeps.TAG_TRIAL_STATE] == "PRUNED"
    assert [m.step for m in store.get_metric_history(trial.info.run_id, "val_accuracy")] == [0]  # epoch 1 only
    assert logged_models(trial) == []  # stopped before evaluation and the model
    assert (result.complete, result.pruned, result.best_run_id) == (0, 1, None)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_pruned"] == 1
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["PRUNED"]


@pytest.mark.slow
def test_running_a_sweep_again_continues_it_under_the_same_parent(store, tmp_path):
    # Five random start-up trials: a sitting that reseeded the sampler alike would draw trial 0's values again.
    path = str(write_sweep(tmp_path, sampler={"seed": 7, "n_startup_trials": 5}))
    first = sweeps.run_sweep(sweeps.load_sweep(path, trials=2), experiment="sweep-test")
    second = sweeps.run_sweep(sweeps.load_sweep(path, trials=3), experiment="sweep-test")
    third = sweeps.run_sweep(sweeps.load_sweep(path, trials=3), experiment="sweep-test")  # nothing left to run

    [parent] = parents(store, "sweep-test")
    trials = children(store, parent)
    assert first.parent_run_id == second.parent_run_id == third.parent_run_id == parent.info.run_id
    assert sorted(run.data.tags[sweeps.TAG_TRIAL] for run in trials) == ["0", "1", "2"]
    assert parent.data.tags["fer.sweep_sittings"] == "3" and parent.info.status == "FINISHED"
    # The first sitting's random start-up draws are not repeated: three different learning rates.
    assert len({run.data.params["config.learning_rate"] for run in trials}) == 3

    with pytest.raises(sweeps.SweepError, match="another recipe"):
        sweeps.run_sweep(sweeps.load_sweep(path, {"epochs": 1}, trials=4), experiment="sweep-test")


@pytest.mark.slow
def test_the_sweep_entry_point_makes_mlflow_run_s_run_the_parent_and_a_second_mlflow_run_continues_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_sweep(tmp_path, settings={**TINY, "epochs": 1})
    params = {"sweep_file": path, "trials": 1, "data": "synthetic:64"}
    first = mlflow_run("sweep", params, uri, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = mlflow_run("sweep", {**params, "trials": 2}, uri, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    client = MlflowClient(uri)
    [parent] = parents(client, EXPERIMENT)
    runs = client.search_runs([parent.info.experiment_id])
    shells = [run for run in runs if run.data.tags.get("mlflow.project.entryPoint") == "sweep"]
    assert len(shells) == 2 and parent.info.run_id in {run.info.run_id for run in shells}
    [other] = [run for run in shells if run.info.run_id != parent.info.run_id]
    assert other.data.tags["fer.continued_sweep_run_id"] == parent.info.run_id
    assert len(children(client, parent)) == 2 and parent.data.params["trials"] == "1"
