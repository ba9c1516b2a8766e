"""The two ways of installing the project must ask for the same things."""

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import mlflow
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def _conda_pip_section() -> list[str]:
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    return next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))


def test_conda_env_pins_the_same_dependencies_as_pyproject():
    """pyproject's runtime dependencies, plus the extras the MLproject entry points need (sweep, onnx), no more."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    extras = project["optional-dependencies"]
    expected = [*project["dependencies"], *extras["sweep"], *extras["onnx"]]
    assert sorted(map(_normalise, _conda_pip_section())) == sorted(map(_normalise, expected))
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert project["requires-python"] == ">=3.11" and python == "python=3.11"


def test_conda_env_has_what_each_mlproject_entry_point_imports():
    """`-e sweep` imports optuna; every training run exports model.onnx (onnx, onnxruntime, tf2onnx)."""
    names = {re.split(r"[<>=!~\[]", _normalise(r))[0] for r in _conda_pip_section()}
    assert {"mlflow", "tensorflow", "keras", "optuna", "onnx", "onnxruntime", "tf2onnx"} <= names


def test_the_mlflow_floor_is_the_version_whose_sqlite_default_the_docs_describe():
    """MLflow 3.7 made mlflow.db the default store of `mlflow run` and `mlflow ui`; docs/training.md relies on it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["test"], *_conda_pip_section()]
    floors = {re.search(r">=([\d.]+)", r).group(1) for r in requirements if _normalise(r).startswith("mlflow")}
    assert floors == {"3.7"}
    assert "MLflow 3.7 or later" in (ROOT / "docs" / "training.md").read_text()


@pytest.mark.slow
def test_conda_envs_pip_list_resolves_for_its_python(tmp_path):
    """pip's resolver finds one set of versions for conda.yaml's pip list (what conda's pip step installs).

    The conda part (python 3.11 and pip from conda-forge) is not solved here: no conda
    channel is reachable from this project's machines (docs/development.md).
    """
    if sys.version_info[:2] != (3, 11):
        pytest.skip(f"conda.yaml asks for Python 3.11; this is {sys.version_info[0]}.{sys.version_info[1]}")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(_conda_pip_section()) + "\n")
    resolved = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                               "--report", str(tmp_path / "report.json"), "-r", str(requirements)],
                              capture_output=True, text=True, timeout=600)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    import json

    installed = {item["metadata"]["name"].lower() for item in json.loads((tmp_path / "report.json").read_text())["install"]}
    assert {"tensorflow", "mlflow", "optuna", "onnx", "onnxruntime", "tf2onnx"} <= installed


def test_distribution_name_does_not_collide_with_pypi_fer_but_imports_as_fer():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "fer"
    assert project["scripts"]["fer"] == "fer.cli:main"
    module, _, attribute = project["scripts"]["fer"].partition(":")
    command = getattr(importlib.import_module(module), attribute)
    assert isinstance(command, click.Group) and {"train", "predict", "promote"} <= set(command.commands)


def test_the_wheel_lists_every_package_and_carries_the_experiment_files():
    """pyproject lists its packages (see there why): a new subpackage left off would be missing from the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "fer").rglob("__init__.py")}
    assert set(setuptools["packages"]) == in_tree | {"fer.experiments"}
    assert setuptools["package-dir"] == {"fer.experiments": "experiments"}
    assert setuptools["package-data"]["fer.experiments"] == ["*.yaml"]
    assert {"phase1.yaml", "phase2.yaml", "sweep.yaml"} <= {p.name for p in (ROOT / "experiments").glob("*.yaml")}


def test_config_reads_the_checkouts_experiments_beside_the_package():
    from fer.config import EXPERIMENTS_DIR

    assert EXPERIMENTS_DIR == ROOT / "experiments"


def test_mlproject_uses_conda_yaml_and_has_the_product_entry_points():
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    assert mlproject["conda_env"] == "conda.yaml"
    assert set(mlproject["entry_points"]) == {"phase1", "phase2", "main", "sweep", "compare", "promote"}
    # `mlflow run .` alone runs main: phase 2, parameters and command alike.
    assert mlproject["entry_points"]["main"] == mlproject["entry_points"]["phase2"]
    for name in ("phase1", "phase2"):
        params = mlproject["entry_points"][name]["parameters"]
        assert {"data", "epochs", "batch_size", "seed"} <= set(params)


def test_mlproject_defaults_agree_with_the_experiment_files():
    """mlflow run logs its parameters and autologging logs epochs / batch_size again: they must match."""
    mlproject = yaml.safe_load((ROOT / "MLproject").read_text())
    for phase in ("phase1", "phase2"):
        entry = mlproject["entry_points"][phase]
        config = yaml.safe_load((ROOT / "experiments" / f"{phase}.yaml").read_text())
        for name, spec in entry["parameters"].items():
            if name == "resume":  # not a setting: the run to continue
                continue
            assert str(spec["default"]).lower() == str(config[name]).lower(), (phase, name)


def test_sweep_entry_point_defaults_agree_with_the_sweep_file():
    """Its budget defaults are the file's; data, epochs, name and storage default to "none" (the file's, optuna.db)."""
    params = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["sweep"]["parameters"]
    sweep = yaml.safe_load((ROOT / "experiments" / "sweep.yaml").read_text())
    assert params["sweep_file"]["default"] == "sweep"
    assert (params["trials"]["default"], params["max_minutes"]["default"]) == (sweep["trials"], sweep["max_minutes"])
    assert all(params[name]["default"] == "none" for name in ("name", "data", "epochs", "storage"))


def test_the_test_extra_brings_the_sweep_extra_and_optuna():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(_normalise(r).startswith("optuna") for r in extras["sweep"])
    assert "fer-mlflow[sweep]" in extras["test"]


def test_the_test_extra_installs_what_the_onnx_extra_does():
    """tests/test_export.py runs real exports: CI's `pip install -e ".[test]"` must bring the converter."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"onnx", "onnxruntime", "tf2onnx"} == {re.split(r"[<>=!~\[]", r)[0] for r in extras["onnx"]}
    assert set(map(_normalise, extras["onnx"])) <= set(map(_normalise, extras["test"]))


def _build_wheel(folder: Path) -> Path:
    """A wheel of the project as `pip install .` builds it, from a copy of what the wheel is made of."""
    import shutil

    source = folder / "source"
    for name in ("fer", "experiments"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    # pip's own build isolation: setuptools >= 77 (the license field) from the index, as a user's pip does.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(folder / "dist"), str(source)],
                   check=True, capture_output=True, text=True, timeout=600)
    return next((folder / "dist").glob("fer_mlflow-*.whl"))


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_trains_from_another_folder(tmp_path):
    """`pip install .` (not editable), then `fer train phase1` in a folder with no experiments/ of its own."""
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(site), FER_CACHE_DIR=str(tmp_path / "cache"))

    where = subprocess.run([sys.executable, "-c", "import fer, fer.config as c; print(fer.__file__); "
                            "print(c.EXPERIMENTS_DIR)"], env=env, cwd=work, capture_output=True, text=True, check=True)
    package_file, experiments = where.stdout.split()
    assert Path(package_file).is_relative_to(site), package_file
    assert Path(experiments) == site / "fer" / "experiments"

    trained = subprocess.run([sys.executable, "-m", "fer.cli", "train", "phase1", "--data", "synthetic:200",
                              "--epochs", "1"], env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]

    client = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")  # the default store, in the working folder
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.status for run in runs] == ["FINISHED"]
    run = runs[0]
    assert {"eval_accuracy", "best_val_accuracy"} <= set(run.data.metrics)
    assert run.data.params["epochs"] == "1" and run.data.tags["fer.phase"] == "phase1"
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]
