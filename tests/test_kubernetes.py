"""MLflow Projects on Kubernetes: the image, the backend configuration and the Job template.

No cluster or Docker engine is needed: the files are checked against what the
installed MLflow reads, and MLflow's own code fills the Job template, as it
does before submitting it.
"""

import json
import shlex
from pathlib import Path

import pytest
import yaml

from fer import cli

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "kubernetes"

# MLflow's documented placeholders (docs: Projects, "Run an MLflow Project on Kubernetes",
# "Example Kubernetes Job Spec"). MLflow itself replaces the fields by position, not by
# text, so the strings are not in its source; the test below fills the template with
# MLflow's own function and checks that none is left.
NAME = "{replaced with MLflow Project name}"
IMAGE = "{replaced with URI of Docker image created during Project execution}"
COMMAND = "{replaced with MLflow Project entry point command}"
ENV = "{appended with MLFLOW_TRACKING_URI, MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID}"


def _template() -> dict:
    return yaml.safe_load((KUBE / "job_template.yaml").read_text())


def _container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_the_backend_config_has_mlflows_keys_and_mlflow_loads_it(monkeypatch):
    from mlflow.projects import _parse_kubernetes_config

    config = json.loads((KUBE / "kubernetes_config.json").read_text())
    assert set(config) == {"kube-context", "repository-uri", "kube-job-template-path"}
    monkeypatch.chdir(ROOT)  # the README runs `mlflow run` from the repository root
    parsed = _parse_kubernetes_config(config)
    assert parsed["kube-job-template"] == _template()


def test_the_job_template_carries_mlflows_placeholders_where_mlflow_replaces_them():
    text = (KUBE / "job_template.yaml").read_text()
    for placeholder in (NAME, IMAGE, COMMAND, ENV):
        assert placeholder in text
    job = _template()
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == NAME and job["metadata"]["namespace"]  # MLflow reads the namespace
    container = _container(job)
    assert (container["name"], container["image"], container["command"]) == (NAME, IMAGE, [COMMAND])
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")  # what a Job allows
    assert all(isinstance(item, dict) and "name" in item for item in container["env"])


def _commands(entry_point: str, parameters: dict, tmp_path) -> tuple[str, str]:
    """The command MLflow computes for the entry point: in kubernetes/, and in the root project."""
    from mlflow.projects.utils import get_entry_point_command, load_project

    kube, root = load_project(str(KUBE)), load_project(str(ROOT))
    return (get_entry_point_command(kube, entry_point, parameters, str(tmp_path))[0],
            get_entry_point_command(root, entry_point, parameters, str(tmp_path))[0])


@pytest.mark.parametrize("entry_point", ["phase1", "phase2", "main", "sweep", "compare", "promote"])
def test_mlflow_fills_the_template_into_a_job_that_runs_the_entry_point(entry_point, tmp_path):
    pytest.importorskip("kubernetes", reason="MLflow's Kubernetes backend needs `pip install mlflow[kubernetes]`")
    from mlflow.projects import kubernetes as backend
    from mlflow.projects.utils import load_project

    parameters = {"epochs": "5", "data": "/data/ferplus"} if entry_point in ("phase1", "phase2", "main") else {}
    command, root_command = _commands(entry_point, parameters, tmp_path)
    assert command == root_command

    project = load_project(str(KUBE))
    env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_RUN_ID": "abc", "MLFLOW_EXPERIMENT_ID": "1"}
    job = backend._get_kubernetes_job_definition(
        project.name, "registry.example.org/fer/fer-mlflow:latest", "sha256:0123",
        backend._get_run_command([command]), dict(env), _template(),
    )
    text = yaml.safe_dump(job)
    assert "{replaced with" not in text and "{appended with" not in text
    container = _container(job)
    assert container["image"] == "registry.example.org/fer/fer-mlflow:latest@sha256:0123"
    assert container["command"] == shlex.split(root_command)
    # Every env entry is a name/value pair Kubernetes accepts, MLflow's three included.
    assert all(isinstance(item, dict) and set(item) == {"name", "value"} for item in container["env"])
    assert env.items() <= {item["name"]: item["value"] for item in container["env"]}.items()

    # The command is one the image can run: python -m fer.cli <command> with options the CLI knows.
    argv = container["command"]
    assert argv[:3] == ["python", "-m", "fer.cli"]
    subcommand = cli.main.commands[argv[3]]
    context = subcommand.make_context(argv[3], argv[4:])
    if entry_point in ("phase1", "phase2", "main"):
        assert context.params["epochs"] == 5 and context.params["data"] == "/data/ferplus"
    if entry_point == "sweep":  # the "none" defaults mean "the sweep file's"
        assert (context.params["trials"], context.params["name"], context.params["data"]) == (20, None, None)


def test_mlflows_documented_env_line_would_make_an_invalid_job():
    """Why the template has the env placeholder as a comment: MLflow appends to the list, keeping the string."""
    pytest.importorskip("kubernetes", reason="MLflow's Kubernetes backend needs `pip install mlflow[kubernetes]`")
    from mlflow.projects import kubernetes as backend

    template = _template()
    _container(template)["env"] = [ENV]
    job = backend._get_kubernetes_job_definition("fer", "image", "sha256:0", ["true"], {"MLFLOW_RUN_ID": "abc"},
                                                 template)
    assert _container(job)["env"][0] == ENV  # a bare string where Kubernetes requires {name, value}


def test_the_kubernetes_project_is_the_root_project_in_docker():
    from mlflow.projects.utils import load_project

    root = yaml.safe_load((ROOT / "MLproject").read_text())
    kube = yaml.safe_load((KUBE / "MLproject").read_text())
    assert kube["entry_points"] == root["entry_points"]
    assert kube["name"] == root["name"] == "fer"  # Job names come from it: lower case, DNS-safe
    assert kube["docker_env"]["image"]
    # The root project stays a conda / local project: a docker_env there would win over both.
    assert "docker_env" not in root
    assert load_project(str(ROOT)).docker_env is None
    assert load_project(str(KUBE)).docker_env == kube["docker_env"]


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            instruction, _, arguments = current.strip().partition(" ")
            lines.append((instruction.upper(), arguments.strip()))
            current = ""
    return lines


def test_the_image_installs_the_project_and_runs_its_entry_point_command(tmp_path):
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    workdir = next(arguments for instruction, arguments in instructions if instruction == "WORKDIR")
    copied = set()
    for instruction, arguments in instructions:
        if instruction == "COPY":
            *sources, destination = arguments.split()
            assert destination.startswith("./") or destination.startswith(workdir)
            copied.update(sources)
    # The working directory is a project folder: MLproject, experiments and the package.
    assert {"MLproject", "experiments", "fer", "pyproject.toml"} <= copied
    assert all((ROOT / source).exists() for source in copied)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not copied & ignored
    # The project itself, with the extras its entry points need (sweep: Optuna).
    assert any(instruction == "RUN" and 'pip install -e ".[sweep]"' in arguments
               for instruction, arguments in instructions)

    # The image's own command is the start of the phase-2 entry point's command line.
    cmd = json.loads(next(arguments for instruction, arguments in instructions if instruction == "CMD"))
    command, _ = _commands("phase2", {}, tmp_path)
    assert shlex.split(command)[: len(cmd)] == cmd == ["python", "-m", "fer.cli", "train", "phase2"]
