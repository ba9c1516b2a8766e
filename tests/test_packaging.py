"""The two ways of installing the project must ask for the same things."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_conda_env_pins_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert sorted(map(_normalise, pip_section)) == sorted(map(_normalise, project["dependencies"]))
    python = next(d for d in conda["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert project["requires-python"] == ">=3.11" and python == "python=3.11"


def test_distribution_name_does_not_collide_with_pypi_fer_but_imports_as_fer():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "fer"
    assert project["scripts"]["fer"] == "fer.cli:main"
    assert (ROOT / "fer" / "__init__.py").exists()


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
