"""Experiment configuration: `experiments/<phase>.yaml`, overridden by command-line parameters.

A configuration is validated where it enters, so a bad value fails before any
data is decoded or any run is created, with a message that names the
parameter, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from fer.acceleration import DTYPE_POLICIES, JIT_CHOICES
from fer.data.splits import LabelMode
from fer.distribute import STRATEGIES

# The project's experiments/: beside the package in a checkout (and in `mlflow run`).
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
PHASES = ("phase1", "phase2")
# The builders live in fer.models; named here so validating a config never loads TensorFlow.
MODELS = ("baseline", "final")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
CLASS_WEIGHTS = ("none", "balanced")
# What ReduceLROnPlateau and EarlyStopping may watch. learning_rate is there
# for schedules keyed on the rate itself (and for tests that force a step).
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy", "learning_rate")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random transforms applied to training batches only (see `fer.pipeline`)."""

    rotation: float = 15.0  # degrees, +/-
    width_shift: float = 0.1  # fraction of the width, +/-
    height_shift: float = 0.1
    shear: float = 0.1  # shear factor, +/-
    zoom: float = 0.1  # fraction, +/-
    horizontal_flip: bool = True


@dataclasses.dataclass(frozen=True)
class ReduceLR:
    monitor: str = "val_loss"
    factor: float = 0.2
    patience: int = 3
    min_lr: float = 1e-6


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    enabled: bool = True
    monitor: str = "val_loss"
    patience: int = 8
    restore_best_weights: bool = True


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on. Logged as the run's params."""

    phase: str = "phase2"
    model: str = "final"
    data: str = "synthetic"
    epochs: int = 40
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    label_mode: str = "majority"
    label_smoothing: float = 0.0
    class_weight: str = "none"
    seed: int = 42
    skip_bad: bool = False
    val_fraction: float = 0.1
    distribute: str = "auto"  # auto | mirrored | multi_worker | none (see fer.distribute)
    max_minutes: float = 0.0  # stop after the last epoch that fits in this many minutes; 0: no limit
    jit_compile: str = "auto"  # auto | true | false (see fer.acceleration)
    dtype_policy: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    augmentation: Augmentation = Augmentation()
    reduce_lr: ReduceLR = ReduceLR()
    early_stopping: EarlyStopping = EarlyStopping()

    def to_params(self) -> dict[str, Any]:
        """Flat `section.key: value` dict, the form MLflow params take."""
        return _flatten(dataclasses.asdict(self))


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config(phase_or_path: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The configuration of a phase ("phase1", "phase2") or YAML file, with overrides applied.

    Overrides use the flat names of `TrainConfig.to_params` ("epochs",
    "augmentation.rotation"); a value of None leaves the file's value alone.
    """
    path = Path(phase_or_path)
    if phase_or_path in PHASES:
        # The working folder's experiments/ first, so a team can keep its own copies.
        candidates = [Path.cwd() / "experiments", EXPERIMENTS_DIR]
        path = next((d / f"{phase_or_path}.yaml" for d in candidates if (d / f"{phase_or_path}.yaml").is_file()),
                    candidates[-1] / f"{phase_or_path}.yaml")
    if not path.is_file():
        raise ConfigError(f"No experiment configuration at {path}; expected one of {PHASES} or a YAML file.")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, got {type(values).__name__}.")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_nested(values, key.split("."), value)
    return from_dict(values, origin=str(path))


def _set_nested(values: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value


def from_dict(values: dict, origin: str = "configuration") -> TrainConfig:
    """Build and validate a TrainConfig from nested plain values."""
    sections = {"augmentation": Augmentation, "reduce_lr": ReduceLR, "early_stopping": EarlyStopping}
    kwargs = {}
    for key, value in values.items():
        if key in sections:
            kwargs[key] = _build(sections[key], value or {}, f"{origin}: {key}")
        else:
            kwargs[key] = value
    config = _build(TrainConfig, kwargs, origin)
    validate(config)
    return config


def _build(cls, values: dict, origin: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{origin}: unknown setting(s) {unknown}; known: {sorted(fields)}")
    converted = {}
    for name, value in values.items():
        default = fields[name].default
        converted[name] = value if dataclasses.is_dataclass(default) else _coerce(value, type(default), name)
    return cls(**converted)


def _coerce(value, kind: type, name: str):
    """Parameters arrive as strings from `mlflow run -P`; turn them into the field's type."""
    if kind is str and isinstance(value, bool):
        return str(value).lower()  # YAML's `jit_compile: true` means the setting "true"
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool:
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if kind is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {kind.__name__}; got {value!r}") from None


def validate(config: TrainConfig) -> None:
    """Reject values that would fail later, or silently train something else."""
    if config.model not in MODELS:
        raise ConfigError(f"model must be one of {', '.join(MODELS)}; got {config.model!r}")
    for name in ("epochs", "batch_size"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be a positive whole number; got {getattr(config, name)}")
    if not config.learning_rate > 0:
        raise ConfigError(f"learning_rate must be positive; got {config.learning_rate}")
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {config.optimizer!r}")
    if config.distribute not in STRATEGIES:
        raise ConfigError(f"distribute must be one of {', '.join(STRATEGIES)}; got {config.distribute!r}")
    if config.max_minutes < 0:
        raise ConfigError(f"max_minutes must be 0 (no limit) or a positive number of minutes; got {config.max_minutes}")
    if config.max_minutes and config.distribute == "multi_worker":
        raise ConfigError(
            "max_minutes cannot be used with distribute: multi_worker (each worker's clock would stop it "
            "after a different epoch, and the others would wait for it forever); set epochs instead"
        )
    if config.jit_compile.lower() not in JIT_CHOICES:
        raise ConfigError(f"jit_compile must be one of {', '.join(JIT_CHOICES)}; got {config.jit_compile!r}")
    if config.dtype_policy not in DTYPE_POLICIES:
        raise ConfigError(f"dtype_policy must be one of {', '.join(DTYPE_POLICIES)}; got {config.dtype_policy!r}")
    if config.class_weight not in CLASS_WEIGHTS:
        raise ConfigError(f"class_weight must be one of {', '.join(CLASS_WEIGHTS)}; got {config.class_weight!r}")
    try:
        LabelMode.parse(config.label_mode)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if not 0 <= config.label_smoothing < 1:
        raise ConfigError(f"label_smoothing must be in [0, 1); got {config.label_smoothing}")
    if not 0 < config.val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1; got {config.val_fraction}")
    if not 0 < config.reduce_lr.factor < 1:
        raise ConfigError(f"reduce_lr.factor must be between 0 and 1; got {config.reduce_lr.factor}")
    for section in ("reduce_lr", "early_stopping"):
        monitor = getattr(config, section).monitor
        if monitor not in MONITORS:
            raise ConfigError(f"{section}.monitor must be one of {', '.join(MONITORS)}; got {monitor!r}")
    check_augmentation(config.augmentation)


def check_augmentation(aug: Augmentation, prefix: str = "augmentation.") -> None:
    """The transforms' ranges, checked once for the configuration and for `fer.augment.RandomAffine`.

    Raises ConfigError naming `prefix` + the transform, the value and the range allowed.
    """
    for name in ("width_shift", "height_shift", "shear", "zoom"):
        if not 0 <= getattr(aug, name) < 1:
            raise ConfigError(f"{prefix}{name} must be a fraction in [0, 1); got {getattr(aug, name)}")
    if not 0 <= aug.rotation <= 180:
        raise ConfigError(f"{prefix}rotation must be degrees in [0, 180]; got {aug.rotation}")
