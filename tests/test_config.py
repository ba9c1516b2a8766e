import pytest

from fer.config import ConfigError, load_config


def test_phase_files_hold_the_documented_settings():
    phase1, phase2 = load_config("phase1"), load_config("phase2")
    assert (phase1.model, phase1.epochs) == ("baseline", 30)
    assert (phase2.model, phase2.epochs) == ("final", 40)
    for config in (phase1, phase2):
        assert config.reduce_lr.monitor == "val_loss" and config.reduce_lr.factor == 0.2
        assert config.early_stopping.enabled
        assert config.label_mode == "majority"


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
        ({"epochs": "two"}, "epochs must be a int; got 'two'"),
        ({"model": "resnet"}, "model must be one of baseline, final; got 'resnet'"),
        ({"label_mode": "soft"}, "label_mode must be one of majority, probability; got 'soft'"),
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
    ],
)
def test_bad_speed_settings_are_rejected_naming_the_setting(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("phase2", overrides)


def test_speed_settings_default_to_auto_and_yaml_booleans_are_understood(tmp_path):
    config = load_config("phase2")
    assert (config.max_minutes, config.jit_compile, config.dtype_policy) == (0.0, "auto", "auto")
    custom = tmp_path / "gpu.yaml"
    custom.write_text("model: final\njit_compile: true\ndtype_policy: mixed_float16\nmax_minutes: 60\n")
    config = load_config(str(custom))
    assert (config.jit_compile, config.dtype_policy, config.max_minutes) == ("true", "mixed_float16", 60.0)
