import subprocess
import sys

import pytest
from click.testing import CliRunner

from fer.cli import main
from fer.config import ConfigError, load_config


def test_phase_files_hold_the_documented_settings():
    phase1, phase2 = load_config("phase1"), load_config("phase2")
    assert (phase1.model, phase1.epochs) == ("baseline", 30)
    assert (phase2.model, phase2.epochs) == ("final", 40)
    for config in (phase1, phase2):
        assert config.reduce_lr.monitor == "val_loss" and config.reduce_lr.factor == 0.2
        assert config.early_stopping.enabled
        assert config.label_mode == "majority"
        assert config.calibration == "none"  # measured always; a temperature only when asked for


def test_string_overrides_from_mlflow_run_are_typed_and_applied():
    config = load_config("phase2", {"epochs": "3", "batch_size": "16", "seed": "7", "augmentation.rotation": "5"})
    assert (config.epochs, config.batch_size, config.seed) == (3, 16, 7)
    assert config.augmentation.rotation == 5.0
    assert load_config("phase2", {"epochs": None}).epochs == 40  # None keeps the file's value


def test_params_are_flat_for_mlflow():
    params = load_config("phase1").to_params()
    assert params["model"] == "baseline"
    assert params["augmentation.horizontal_flip"] is True
    assert params["reduce_lr.factor"] == 0.2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": "0"}, "epochs must be a positive whole number; got 0"),
        ({"batch_size": "-8"}, "batch_size must be a positive whole number"),
        ({"epochs": "two"}, r"epochs must be a whole number \(e.g. 3\); got 'two' \(from overrides\)"),
        ({"model": "resnet"}, "model must be one of baseline, final; got 'resnet'"),
        ({"label_mode": "soft"}, "label_mode must be one of majority, probability; got 'soft'"),
        ({"calibration": "platt"}, "calibration must be one of none, temperature; got 'platt'"),
        ({"learning_rate": "0"}, "learning_rate must be positive"),
        ({"colour": "red"}, r"unknown setting\(s\) \['colour'\]"),
    ],
)
def test_bad_values_are_rejected_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("phase2", overrides)


def test_missing_experiment_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="No experiment configuration"):
        load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_minutes": "-5"}, "max_minutes must be 0 .no limit. or a positive number of minutes; got -5"),
        ({"max_minutes": "60", "distribute": "multi_worker"}, "max_minutes cannot be used with distribute: multi_worker"),
        ({"jit_compile": "sometimes"}, "jit_compile must be one of auto, true, false; got 'sometimes'"),
        ({"dtype_policy": "float16"}, "dtype_policy must be one of auto, float32, mixed_float16, mixed_bfloat16"),
        ({"batch_norm": "sync"}, "batch_norm must be one of fused, keras; got 'sync'"),
        ({"ema_momentum": "1"}, "ema_momentum must be 0 .off. or a momentum in .0, 1., such as 0.999; got 1"),
        ({"ema_momentum": "0.999"}, "ema_momentum cannot be used with early_stopping.restore_best_weights: "
                                    "the weights restored would be the raw ones of the best epoch"),
        ({"mixup_alpha": "-0.2"}, "mixup_alpha must be 0 .off. or a positive Beta parameter, such as 0.2; got -0.2"),
        ({"class_weight": "inverse"}, "class_weight must be one of none, balanced, sqrt; got 'inverse'"),
    ],
)
def test_bad_speed_settings_are_rejected_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("phase2", overrides)


def test_speed_settings_default_to_auto_and_yaml_booleans_are_understood(tmp_path):
    config = load_config("phase2")
    assert (config.max_minutes, config.jit_compile, config.dtype_policy, config.batch_norm) == (0.0, "auto", "auto", "fused")
    custom = tmp_path / "gpu.yaml"
    custom.write_text("model: final\njit_compile: true\ndtype_policy: mixed_float16\nmax_minutes: 60\n")
    config = load_config(str(custom))
    assert (config.jit_compile, config.dtype_policy, config.max_minutes) == ("true", "mixed_float16", 60.0)


# ------------------------------------------------------------- hostile input (issue 18, row 7)


@pytest.mark.parametrize(
    "key, message",
    [
        ("reduce_lr.patience", "reduce_lr.patience must be a whole number (e.g. 3); got 'abc' (from --set)"),
        ("early_stopping.patience", "early_stopping.patience must be a whole number (e.g. 3); got 'abc' (from --set)"),
    ],
)
def test_a_bad_value_names_its_section_what_is_allowed_and_where_it_came_from(key, message):
    with pytest.raises(ConfigError) as err:
        load_config("phase2", {key: "abc"}, "--set")
    assert str(err.value) == message and err.value.key == key


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: final\nreduce_lr:\n  patience: 2.5\n")
    with pytest.raises(ConfigError, match=rf"reduce_lr.patience must be a whole number \(e.g. 3\); got 2.5 \(in {path}\)"):
        load_config(str(path))
    path.write_text("model: final\nreduce_lr:\n  factor: 2\n")
    with pytest.raises(ConfigError, match=rf"reduce_lr.factor must be between 0 and 1; got 2.0 \(in {path}\)"):
        load_config(str(path))


def test_a_sub_key_of_a_plain_setting_is_refused():
    with pytest.raises(ConfigError, match=r"epochs.foo: epochs is a single setting, not a section, so it has no "
                                          r"'foo'; sections are augmentation, reduce_lr, early_stopping; got '1' "
                                          r"\(from --set\)"):
        load_config("phase2", {"epochs.foo": "1"}, "--set")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"augmentation: 5\n", "augmentation must be a section (a mapping with any of rotation, width_shift, "
                               "height_shift, shear, zoom, horizontal_flip); got 5 (in {path})"),
        (b"epochs: [1, 2]\n", "epochs is a single setting (a whole number (e.g. 3)), not a section or list; "
                              "got [1, 2] (in {path})"),
        (b"epochs: yes\n", "epochs must be a whole number (e.g. 3); got True (in {path})"),
        (b"learning_rate: .nan\n", "learning_rate must be a finite number (e.g. 0.001); got nan (in {path})"),
        (b"model: final\n  epochs: 3\n", "{path} is not valid YAML at line 2, column 9: mapping values are not "
                                         "allowed here; fix the file"),
        (b"model: \"final\n", "{path} is not valid YAML at line 2, column 1: found unexpected end of stream"),
        (b"model: fin\xe9l\n", "{path} is not UTF-8 text: byte 10 is b'\\xe9'; save the file as UTF-8."),
        (b"- epochs\n", "{path} must hold a mapping of settings (`key: value` lines); got list ['epochs']."),
    ],
)
def test_hostile_phase_files_are_config_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "phase.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert message.format(path=path) in str(err.value)
    assert "\n" not in str(err.value)


def test_seed_must_be_one_numpy_accepts():
    with pytest.raises(ConfigError, match=r"seed must be a whole number from 0 to 4294967295; got -1 \(from -P\)"):
        load_config("phase2", {"seed": "-1"}, "-P")
    assert load_config("phase2", {"seed": str(2**32 - 1)}).seed == 2**32 - 1


def test_a_long_value_is_quoted_at_most_80_characters():
    with pytest.raises(ConfigError) as err:
        load_config("phase2", {"model": "x" * 5000})
    quoted = str(err.value).split("got ", 1)[1].split(" (from")[0]
    assert len(quoted) == 80 and quoted.endswith("...")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "epochs.foo=1"], "epochs.foo: epochs is a single setting, not a section"),
        (["--set", "reduce_lr.patience=abc"],
         "reduce_lr.patience must be a whole number (e.g. 3); got 'abc' (from --set reduce_lr.patience=...)"),
        (["--seed", "-1"], "seed must be a whole number from 0 to 4294967295; got -1 (from --seed (mlflow run -P seed))"),
        (["--set", "=3"], "expected KEY=VALUE, got '=3'"),
    ],
)
def test_cli_prints_a_config_error_as_one_line_and_exits_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "phase2", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error:")] == [
        next(line for line in result.output.splitlines() if message[:30] in line)
    ]


def test_cli_rejects_a_hostile_phase_file_before_loading_tensorflow(tmp_path):
    path = tmp_path / "phase.yaml"
    path.write_bytes(b"augmentation: 5\n")
    code = (
        "import sys\nfrom fer.cli import main\n"
        f"try:\n    main(['train', {str(path)!r}])\n"
        "except SystemExit as exit:\n    print('exit', exit.code, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout.strip() == "exit 2 False", result.stderr
    assert "Error: augmentation must be a section" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_a_time_budget_gives_the_budgeted_recipe_and_no_budget_the_seeds():
    """lr_schedule and tta "auto" (the phase files' default): linear decay and flip TTA under max_minutes."""
    for phase in ("phase1", "phase2"):
        budgeted = load_config(phase, {"max_minutes": "60"})
        assert (budgeted.lr_schedule, budgeted.tta, budgeted.warmup_epochs) == ("linear", "flip", 0.5)
        assert budgeted.logit_adjustment == "fit"
        unbudgeted = load_config(phase)
        assert (unbudgeted.lr_schedule, unbudgeted.tta, unbudgeted.logit_adjustment) == ("plateau", "none", "none")
    chosen = load_config("phase2", {"max_minutes": "60", "lr_schedule": "cosine", "tta": "none"})
    assert (chosen.lr_schedule, chosen.tta) == ("cosine", "none")  # what is given is kept
    assert load_config("phase2", {"max_minutes": "60"}).to_params()["lr_schedule"] == "linear"  # logged as resolved


def test_weight_averaging_is_accepted_once_early_stopping_keeps_the_last_weights():
    config = load_config("phase2", {"ema_momentum": "0.999", "early_stopping.restore_best_weights": "false"})
    assert (config.ema_momentum, config.early_stopping.enabled) == (0.999, True)
    assert load_config("phase2", {"ema_momentum": "0.99", "early_stopping.enabled": "false"}).ema_momentum == 0.99
