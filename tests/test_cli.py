"""The `fer` command line: typed options named as MLproject's parameters, the README's table, exit statuses.

No training here: each test parses command lines, or stops a command before it
loads TensorFlow.
"""

import signal
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from fer import cli
from fer.cli import main

ROOT = Path(__file__).resolve().parents[1]
MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
TRAINING_ENTRY_POINTS = ("phase1", "phase2", "main")
MLPROJECT_TYPES = {"int": click.types.IntParamType, "float": click.types.FloatParamType}


def all_commands(group: click.Group = main, prefix: str = "fer"):
    """(name, command) for every command under `group`, groups included."""
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from all_commands(command, f"{prefix} {name}")


def option(command: click.Command, flag: str) -> click.Option:
    matches = [p for p in command.params if isinstance(p, click.Option) and flag in p.opts]
    assert len(matches) == 1, f"{command.name} has no option {flag}"
    return matches[0]


def entry_point_options(entry_point: str) -> tuple[click.Command, list[tuple[str, str]]]:
    """The CLI command an entry point runs, and its (--option, parameter) pairs, in order."""
    tokens = MLPROJECT[entry_point]["command"].split()
    assert tokens[:3] == ["python", "-m", "fer.cli"], tokens
    pairs = [(flag, value) for flag, value in zip(tokens, tokens[1:]) if flag.startswith("--")]
    return main.commands[tokens[3]], pairs


def readme_parameter_table() -> list[list[str]]:
    """The rows of the README's parameter table (under "### Parameters"), as cell texts."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Parameters\n", 1)[1].split("\n#", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[1].startswith("| ---"), "the table's header row, then its separator"
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in lines[2:]]


# ---------------------------------------------------------------------------
# Options: typed, named as MLproject's parameters, each meaning one thing


@pytest.mark.parametrize("entry_point", sorted(MLPROJECT))
def test_every_mlproject_parameter_is_the_cli_option_of_its_name_and_type(entry_point):
    command, pairs = entry_point_options(entry_point)
    parameters = MLPROJECT[entry_point]["parameters"]
    tokens = MLPROJECT[entry_point]["command"].split()
    # A parameter not after an option is the command's argument of that name (sweep's {sweep_file}).
    positional = [t for before, t in zip(tokens, tokens[1:]) if t.startswith("{") and not before.startswith("--")]
    arguments = {p.name for p in command.params if isinstance(p, click.Argument)}
    assert {value.strip("{}") for value in positional} <= arguments, (positional, arguments)
    assert sorted([value for _, value in pairs] + positional) == sorted(f"{{{name}}}" for name in parameters)
    for flag, value in pairs:
        name = value.strip("{}")
        assert flag == f"--{name.replace('_', '-')}", (flag, name)
        cli_option = option(command, flag)
        assert cli_option.name == name
        expected_type = MLPROJECT_TYPES.get(parameters[name]["type"])
        if expected_type:
            assert isinstance(cli_option.type, expected_type), (name, cli_option.type)


@pytest.mark.parametrize("entry_point", sorted(MLPROJECT))
def test_the_mlproject_defaults_parse_as_the_cli_reads_them(entry_point):
    """What `mlflow run` passes with no -P at all is a valid command line, read into typed values."""
    parameters = MLPROJECT[entry_point]["parameters"]
    argv = MLPROJECT[entry_point]["command"].format(**{k: spec["default"] for k, spec in parameters.items()}).split()
    command = main.commands[argv[3]]
    values = command.make_context(command.name, argv[4:]).params
    if entry_point in TRAINING_ENTRY_POINTS:
        assert values["phase"] == ("phase1" if entry_point == "phase1" else "phase2")
        assert values["epochs"] == parameters["epochs"]["default"] and isinstance(values["epochs"], int)
        assert values["learning_rate"] == 0.001 and values["max_minutes"] == 0.0
        assert (values["skip_bad"], values["system_metrics"], values["lr_schedule"]) == (False, True, "auto")
        assert values["resume"] is None  # "none": start a new run
    elif entry_point == "sweep":  # "none": the sweep file's
        assert (values["sweep_file"], values["name"], values["data"], values["epochs"]) == ("sweep", None, None, None)
        assert values["trials"] == parameters["trials"]["default"] and isinstance(values["trials"], int)
    elif entry_point == "compare":
        assert values["baseline_run"] is None and values["final_run"] is None  # "latest": let compare find them
    else:
        assert values["run_id"] is None and values["min_value"] == 0.0  # "best": let promote choose


def test_a_switch_takes_true_or_false_as_mlflow_run_passes_it_or_nothing_as_a_flag():
    train, inspect = main.commands["train"], main.commands["data"].commands["inspect"]

    def parsed(command, *args):
        return command.make_context(command.name, list(args)).params

    assert parsed(train, "phase1", "--skip-bad", "true")["skip_bad"] is True
    assert parsed(train, "phase1", "--skip-bad", "false")["skip_bad"] is False
    assert parsed(train, "phase1", "--skip-bad", "--epochs", "3")["skip_bad"] is True
    assert parsed(train, "phase1")["skip_bad"] is None  # the phase file decides
    assert parsed(train, "phase1", "--system-metrics", "no")["system_metrics"] is False
    assert parsed(inspect, "faces", "--skip-bad")["skip_bad"] is True
    assert parsed(inspect, "faces", "--skip-bad", "false")["skip_bad"] is False
    assert parsed(inspect, "faces")["skip_bad"] is False


def test_an_option_several_commands_take_means_the_same_in_each():
    """Same flag, same type, same choices, same help: --label-mode, --skip-bad and --experiment, say."""
    seen = {}
    for name, command in all_commands():
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_eager and not param.hidden:  # hidden: aliases
                for flag in param.opts:
                    seen.setdefault(flag, []).append((name, param))
    shared = {flag: uses for flag, uses in seen.items() if len(uses) > 1}
    assert {"--label-mode", "--skip-bad", "--experiment"} <= set(shared)
    for flag, uses in shared.items():
        first = uses[0][1]
        for name, param in uses[1:]:
            assert type(param.type) is type(first.type), (flag, name)
            assert getattr(param.type, "choices", None) == getattr(first.type, "choices", None), (flag, name)
            assert param.help == first.help and param.name == first.name, (flag, name)


def test_model_means_the_architecture_and_model_uri_the_model_to_load():
    train, predict = main.commands["train"], main.commands["predict"]
    assert list(option(train, "--model").type.choices) == ["baseline", "final"]
    assert option(predict, "--model-uri").opts == ["--model-uri", "-m"]
    assert option(predict, "--model").hidden  # the deprecated alias of --model-uri, out of help and docs
    assert "--model " not in CliRunner().invoke(main, ["predict", "--help"]).output


@pytest.fixture
def predicted_with(monkeypatch):
    """The model URI `fer predict` would load photos with, recorded instead of loading anything."""
    used = []
    monkeypatch.setattr(cli, "_predict_photos", lambda model_uri, files, annotate: used.append(model_uri))
    return used


def test_predict_takes_the_old_model_option_with_a_one_line_notice(predicted_with):
    result = CliRunner().invoke(main, ["predict", "--model", "models:/fer-emotion@champion", __file__])
    assert result.exit_code == 0, result.output
    assert predicted_with == ["models:/fer-emotion@champion"]
    notice = result.stderr.strip().splitlines()
    assert len(notice) == 1 and "--model is deprecated" in notice[0] and "--model-uri" in notice[0]


def test_predict_with_model_uri_prints_no_notice_and_refuses_two_different_uris(predicted_with):
    result = CliRunner().invoke(main, ["predict", "-m", "models:/fer-emotion@champion", __file__])
    assert result.exit_code == 0 and result.stderr == "" and predicted_with == ["models:/fer-emotion@champion"]
    both = CliRunner().invoke(main, ["predict", "-m", "models:/a/1", "--model", "models:/b/1", __file__])
    assert both.exit_code == 2 and "differ: give --model-uri only" in both.output


def test_every_option_and_command_has_a_help_text():
    for name, command in [("fer", main), *all_commands()]:
        assert command.help, name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and len(param.help) > 10, (name, param.opts)


def test_readme_parameter_table_lists_every_training_parameter_with_its_option_values_and_defaults():
    rows = readme_parameter_table()
    names = [row[0].strip("`") for row in rows]
    for entry_point in TRAINING_ENTRY_POINTS:
        assert sorted(names) == sorted(MLPROJECT[entry_point]["parameters"]), entry_point
    train = main.commands["train"]
    for row in rows:
        name, flag, values = row[0].strip("`"), row[1].strip("`"), row[2]
        assert flag == f"--{name.replace('_', '-')}" and option(train, flag).name == name
        for entry_point in ("phase1", "phase2"):
            default = MLPROJECT[entry_point]["parameters"][name]["default"]
            assert f"`{default}`" in values, (name, default, values)
        choices = getattr(option(train, flag).type, "choices", None)
        if isinstance(option(train, flag).type, click.types.BoolParamType):
            choices = ["true", "false"]
        for choice in choices or []:
            assert f"`{choice}`" in values, (name, choice)


# ---------------------------------------------------------------------------
# Exit statuses and --version


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "phase1", "--epochs", "abc"], "'abc' is not a valid integer"),
        (["train", "phase1", "--epochs", "0"], "epochs must be a positive whole number; got 0"),
        (["train", "phase1", "--batch-size", "-4"], "batch_size must be a positive whole number; got -4"),
        (["train", "phase1", "--label-mode", "soft"], "'soft' is not one of 'majority', 'probability'"),
        (["train", "phase1", "--data", "/no/such/faces"], "Data path '/no/such/faces' does not exist"),
        (["train", "phase1", "--model", "resnet"], "'resnet' is not one of 'baseline', 'final'"),
        (["train", "phase1", "--learning-rate", "fast"], "'fast' is not a valid float"),
        (["train", "phase1", "--lr-schedule", "step"], "'step' is not one of 'auto', 'plateau', 'linear', 'cosine'"),
        (["train", "phase1", "--tta", "rotate"], "'rotate' is not one of 'auto', 'none', 'flip'"),
        (["train", "phase1", "--skip-bad", "maybe"], "'maybe' is not true or false"),
        (["data", "inspect", "--skip-bad", "faces/"], "--skip-bad alone means true"),
        (["predict", __file__], "Missing option '--model-uri' / '-m'"),
        (["train"], "Missing argument 'PHASE'"),
        (["train", "phase1", "--data", "synthetic:abc"], "'synthetic:N' needs a whole number N >= 8"),
        (["sweep", "--data", "synthetic:abc"], "'synthetic:N' needs a whole number N >= 8"),
        (["--no-such-option"], "No such option '--no-such-option'"),
    ],
)
def test_a_bad_command_line_exits_2_naming_the_problem_before_anything_is_tracked(args, message, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_version_names_fer_and_the_libraries_that_train_it_without_loading_tensorflow():
    code = "import sys\nfrom fer.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit as exit:\n" \
           "    print('exit', exit.code, 'tensorflow' in sys.modules)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    first, last = result.stdout.strip().splitlines()
    project_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert first.startswith(f"fer {project_version} (mlflow {version('mlflow')}, keras {version('keras')}, ")
    assert last == "exit 0 False", result.stderr


def test_the_version_is_pyprojects_and_the_changelog_has_it_with_only_unreleased_above():
    import fer

    project_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert fer.__version__ == project_version
    assert cli.version_text().startswith(f"fer {project_version} (")
    headings = [line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## [")]
    sections = [heading.split("]")[0].removeprefix("## [") for heading in headings]
    assert project_version in sections, sections
    assert sections.index(project_version) == (1 if sections[0] == "Unreleased" else 0), sections


@pytest.mark.parametrize("raised, status, says", [(KeyboardInterrupt, 130, "Interrupted (Ctrl-C)."),
                                                   (cli.Terminated, 143, "Stopped by SIGTERM.")])
def test_an_interrupted_command_exits_130_or_143_not_1(raised, status, says, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def interrupted(data):
        raise raised()

    monkeypatch.setattr(cli, "describe_source", interrupted)
    result = CliRunner().invoke(main, ["train", "phase1", "--data", "synthetic:64"])
    assert result.exit_code == status and says in result.output


SLOW_START = """
import time, fer.cli
def wait(data):
    print("ready", flush=True)
    time.sleep(120)
fer.cli.describe_source = wait
fer.cli.main(["train", "phase1", "--data", "synthetic:64"])
"""


@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_real_signal_to_a_fer_process_gives_128_plus_its_number(stop, status, tmp_path):
    """The same through real signals, before training starts (the training run's own: tests/test_reliability.py)."""
    process = subprocess.Popen([sys.executable, "-c", SLOW_START], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=_hear_ctrl_c)
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr


def _hear_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job starts with SIGINT ignored


def test_a_command_restores_the_sigterm_handler_it_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(main, ["train", "phase1", "--data", str(tmp_path / "missing")])
    assert result.exit_code == 2 and signal.getsignal(signal.SIGTERM) is before


def test_the_choices_of_the_cli_are_the_configurations():
    """Choices come from fer.config, so the CLI, -P and --set accept the same values."""
    from fer.config import LR_SCHEDULES, MODELS, TTA_CHOICES

    train = main.commands["train"]
    assert list(option(train, "--lr-schedule").type.choices) == list(LR_SCHEDULES)
    assert list(option(train, "--tta").type.choices) == list(TTA_CHOICES)
    assert list(option(train, "--model").type.choices) == list(MODELS)
