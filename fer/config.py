"""Experiment configuration: `experiments/<phase>.yaml`, overridden by command-line parameters.

A configuration is validated where it enters, so a bad value fails before any
data is decoded or any run is created, with a message that names the
parameter, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fer.training.acceleration import BATCH_NORMS, DTYPE_POLICIES, JIT_CHOICES
from fer.data.splits import LabelMode
from fer.training.distribute import STRATEGIES


def _experiments_dir() -> Path:
    """The project's experiments/: inside the package when installed from a wheel, beside it in a checkout.

    pyproject.toml maps the top-level experiments/ to the package `fer.experiments`,
    so a wheel (`pip install .`) carries the phase and sweep files as fer/experiments/;
    a checkout, an editable install and `mlflow run` read the top-level folder itself.
    """
    package = Path(__file__).resolve().parent
    installed = package / "experiments"
    return installed if installed.is_dir() else package.parent / "experiments"


EXPERIMENTS_DIR = _experiments_dir()
PHASES = ("phase1", "phase2")
# The builders live in fer.models; named here so validating a config never loads TensorFlow.
MODELS = ("baseline", "final")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
CLASS_WEIGHTS = ("none", "balanced", "sqrt")
# "auto": the budgeted recipe when the run has a time budget (max_minutes), the seed's otherwise
# (`resolve_auto`); a run's logged config holds what it resolved to.
AUTO = "auto"
LR_SCHEDULES = (AUTO, "plateau", "linear", "cosine")
TTA_CHOICES = (AUTO, "none", "flip")
CALIBRATIONS = ("none", "temperature")
LOGIT_ADJUSTMENTS = (AUTO, "none", "fit")
# What ReduceLROnPlateau and EarlyStopping may watch. learning_rate is there
# for schedules keyed on the rate itself (and for tests that force a step).
MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy", "learning_rate")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says which, what was given, what is allowed.

    `key`: the flat setting name ("reduce_lr.patience") when one setting is at fault.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random transforms applied to training batches only (see `fer.training.pipeline`)."""

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
    class_weight: str = "none"  # none | balanced (n / (k * n_class)) | sqrt (its square root: milder)
    ema_momentum: float = 0.0  # 0: off; e.g. 0.999: validate and serve an exponential moving average of the weights
    mixup_alpha: float = 0.0  # 0: off; e.g. 0.2: MixUp (Keras's layer) on training batches, Beta(alpha, alpha) weights
    seed: int = 42
    skip_bad: bool = False
    val_fraction: float = 0.1
    distribute: str = "auto"  # auto | mirrored | multi_worker | none (see fer.training.distribute)
    max_minutes: float = 0.0  # stop after the last epoch that fits in this many minutes; 0: no limit
    lr_schedule: str = "plateau"  # auto | plateau (reduce_lr below) | linear | cosine (see fer.training.schedules)
    warmup_epochs: float = 0.0  # linear / cosine: the rate rises to learning_rate over this many epochs
    final_lr_fraction: float = 0.01  # linear / cosine: the last step's rate, as a fraction of learning_rate
    tta: str = "none"  # auto | none | flip: evaluate and serve the mean of the face's and its mirror's predictions
    calibration: str = "none"  # none | temperature: fit one temperature on validation, serve scaled (fer.evaluation.calibration)
    logit_adjustment: str = "none"  # auto | none | fit: fit tau on validation, serve prior-adjusted (fer.evaluation.logit_adjustment)
    checkpoint_upload_every: int = 0  # upload the checkpoint to the run every N epochs; 0: only on failure
    jit_compile: str = "auto"  # auto | true | false (see fer.training.acceleration)
    dtype_policy: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    batch_norm: str = "fused"  # fused (TensorFlow's one-pass kernel in training) | keras (see fer.models)
    system_metrics: bool = True  # CPU, memory, disk, network (and GPU) figures as system/* metrics (fer.training.system_metrics)
    system_metrics_interval: float = 10.0  # seconds between two samples of them
    augmentation: Augmentation = Augmentation()
    reduce_lr: ReduceLR = ReduceLR()
    early_stopping: EarlyStopping = EarlyStopping()

    def to_params(self) -> dict[str, Any]:
        """Flat `section.key: value` dict, the form MLflow params take."""
        return flatten(dataclasses.asdict(self))

    def data_options(self) -> dict[str, Any]:
        """The keyword arguments of `fer.data.load` that this run's data depends on besides its source.

        Training and `fer export`'s re-measurement load the same splits with them.

        Example:
            splits = fer.data.load(config.data, **config.data_options())
        """
        return {"label_mode": self.label_mode, "skip_bad": self.skip_bad, "val_fraction": self.val_fraction,
                "seed": self.seed}


def flatten(values: dict, prefix: str = "", is_value: Callable[[dict], bool] | None = None) -> dict[str, Any]:
    """Nested settings as flat `section.key` names; flat keys pass as they are.

    A mapping is a section, unless `is_value(mapping)` says it is a value itself (a sweep's
    `{choices: [...]}`, say), which is then kept whole.

    >>> flatten({"augmentation": {"zoom": 0.1}, "epochs": 3})
    {'augmentation.zoom': 0.1, 'epochs': 3}
    >>> flatten({"augmentation": {"zoom": {"low": 0.0, "high": 0.2}}}, is_value=lambda m: "low" in m)
    {'augmentation.zoom': {'low': 0.0, 'high': 0.2}}
    """
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and not (is_value and is_value(value)):
            flat.update(flatten(value, f"{prefix}{key}.", is_value))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_config(
    phase_or_path: str, overrides: dict[str, Any] | None = None, override_origins: dict[str, str] | str = "overrides"
) -> TrainConfig:
    """The configuration of a phase ("phase1", "phase2") or YAML file, with overrides applied.

    Overrides use the flat names of `TrainConfig.to_params` ("epochs",
    "augmentation.rotation"); a value of None leaves the file's value alone.
    `override_origins` says where the overrides were given, for the error
    messages: one text for all, or one per key (the CLI passes "--set", "--epochs").
    Every problem is a ConfigError naming the setting (section-qualified), the
    value given, what is allowed and where it came from, raised before any data
    or TensorFlow is loaded.

    >>> load_config("phase2", {"epochs": "3"}).epochs
    3
    >>> load_config("phase2", {"reduce_lr.patience": "abc"}, "--set")
    Traceback (most recent call last):
    fer.config.ConfigError: reduce_lr.patience must be a whole number (e.g. 3); got 'abc' (from --set)
    """
    path = _config_path(phase_or_path)
    values = _read_yaml(path)
    origins = {}
    for key, value in (overrides or {}).items():
        if value is not None:
            where = override_origins if isinstance(override_origins, str) else override_origins.get(key, "overrides")
            _set_nested(values, key, value, where)
            origins[key] = where
    return from_dict(values, origin=str(path), key_origins=origins)


def _config_path(phase_or_path: str) -> Path:
    path = Path(phase_or_path)
    if phase_or_path in PHASES:
        # The working folder's experiments/ first, so a team can keep its own copies.
        candidates = [Path.cwd() / "experiments", EXPERIMENTS_DIR]
        path = next((d / f"{phase_or_path}.yaml" for d in candidates if (d / f"{phase_or_path}.yaml").is_file()),
                    candidates[-1] / f"{phase_or_path}.yaml")
    if not path.is_file():
        raise ConfigError(f"No experiment configuration at {path}; expected one of {PHASES} or a YAML file.")
    return path


def _read_yaml(path: Path) -> dict:
    """The file's settings as a dict; ConfigError (file, line, what to fix) for anything that is not."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text: byte {err.start} is {raw[err.start:err.start + 1]!r}; "
                          "save the file as UTF-8.") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}; fix the file "
                          "(settings are `key: value` lines, sections indented under their name).") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of settings (`key: value` lines); got {type(values).__name__} "
                          f"{_quote(values)}.")
    return values


def _set_nested(values: dict, key: str, value, where: str) -> None:
    """values["a"]["b"] = value for key "a.b"; a plain setting cannot take a sub-key."""
    *sections, last = key.split(".")
    for depth, name in enumerate(sections):
        inner = values.setdefault(name, {})
        if not isinstance(inner, dict):
            setting = ".".join(sections[:depth + 1])
            raise ConfigError(f"{key}: {setting} is a single setting, not a section, so it has no "
                              f"{'.'.join(key.split('.')[depth + 1:])!r}; sections are {', '.join(SECTIONS)}; "
                              f"got {_quote(value)} (from {where})", key=key)
        values = inner
    values[last] = value


SECTIONS = {"augmentation": Augmentation, "reduce_lr": ReduceLR, "early_stopping": EarlyStopping}

# What each field type accepts, as the error messages say it.
_ALLOWED = {
    int: "a whole number (e.g. 3)",
    float: "a finite number (e.g. 0.001)",
    bool: "true or false (also yes/no, 1/0)",
    str: "text",
}


def from_dict(values: dict, origin: str = "configuration", key_origins: dict[str, str] | None = None) -> TrainConfig:
    """Build and validate a TrainConfig from nested plain values.

    `origin` names where `values` came from (a file, a run); `key_origins`
    maps flat keys given elsewhere (command-line overrides) to where. Both
    end up in the ConfigError of a bad value.
    """
    where = _Origins(origin, key_origins or {})
    kwargs = {}
    for key, value in values.items():
        if key in SECTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                fields = ", ".join(f.name for f in dataclasses.fields(SECTIONS[key]))
                raise ConfigError(f"{key} must be a section (a mapping with any of {fields}); "
                                  f"got {_quote(value)} ({where(key)})", key=key)
            kwargs[key] = _build(SECTIONS[key], value, f"{key}.", where)
        else:
            kwargs[key] = value
    config = _build(TrainConfig, kwargs, "", where)
    try:
        validate(config)
        config = resolve_auto(config)
    except ConfigError as err:
        if err.key is None:
            raise
        raise ConfigError(f"{err} ({where(err.key)})", key=err.key) from None
    return config


def resolve_auto(config: TrainConfig) -> TrainConfig:
    """`config` with its "auto" settings decided by whether it has a time budget (`max_minutes` > 0).

    With a budget, the budgeted recipe measured on FER+ (BENCHMARKS.md, "Toward a
    budgeted recipe"): `lr_schedule` linear (decay to its floor when the budget
    ends, after `warmup_epochs`), `tta` flip and `logit_adjustment` fit (rare classes
    recalled after training). Without one, the seed notebook's: plateau, none, none.
    Settings given explicitly are kept.

    >>> resolve_auto(TrainConfig(lr_schedule="auto", tta="auto", max_minutes=60)).lr_schedule
    'linear'
    >>> resolve_auto(TrainConfig(lr_schedule="auto", tta="auto")).tta
    'none'
    """
    budgeted = config.max_minutes > 0
    decided = {}
    if config.lr_schedule == AUTO:
        decided["lr_schedule"] = "linear" if budgeted else "plateau"
    if config.tta == AUTO:
        decided["tta"] = "flip" if budgeted else "none"
    if config.logit_adjustment == AUTO:
        decided["logit_adjustment"] = "fit" if budgeted else "none"
    return dataclasses.replace(config, **decided)


@dataclasses.dataclass(frozen=True)
class _Origins:
    """Where a flat key's value came from, as error messages say it."""

    origin: str
    key_origins: dict[str, str]

    def __call__(self, key: str) -> str:
        return f"from {self.key_origins[key]}" if key in self.key_origins else f"in {self.origin}"


def _build(cls, values: dict, prefix: str, where: _Origins):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        qualified = [f"{prefix}{key}" for key in unknown]
        raise ConfigError(f"unknown setting(s) {qualified} ({where(qualified[0])}); known: "
                          f"{sorted(prefix + name for name in fields)}", key=qualified[0])
    converted = {}
    for name, value in values.items():
        default = fields[name].default
        if dataclasses.is_dataclass(default):
            converted[name] = value
        elif isinstance(value, (dict, list)):
            raise ConfigError(f"{prefix}{name} is a single setting ({_ALLOWED[type(default)]}), not a section or "
                              f"list; got {_quote(value)} ({where(prefix + name)})", key=prefix + name)
        else:
            converted[name] = _coerce(value, type(default), prefix + name, where)
    return cls(**converted)


def _coerce(value, kind: type, key: str, where: _Origins):
    """Parameters arrive as strings from `mlflow run -P` and `--set`; turn them into the field's type."""
    if kind is str and isinstance(value, bool):
        return str(value).lower()  # YAML's `jit_compile: true` means the setting "true"
    if isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool)):
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{key} must be {_ALLOWED[kind]}; got {_quote(value)} ({where(key)})", key=key)
        return value
    try:
        if kind is bool:
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(value, bool):  # YAML's `epochs: yes` is not 1
            raise ValueError
        if kind is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if kind is float and not math.isfinite(float(value)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} must be {_ALLOWED[kind]}; got {_quote(value)} ({where(key)})", key=key) from None


def _quote(value, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters: an error message never carries a whole file."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def validate(config: TrainConfig) -> None:
    """Reject values that would fail later, or silently train something else.

    Each ConfigError names the setting (its `key`), the value and what is allowed;
    `from_dict` adds where the value came from.
    """
    _require(config.model in MODELS, "model", f"one of {', '.join(MODELS)}", config.model)
    for name in ("epochs", "batch_size"):
        _require(getattr(config, name) >= 1, name, "a positive whole number", getattr(config, name))
    # numpy's generator (keras.utils.set_random_seed) takes seeds from 0 to 2**32 - 1.
    _require(0 <= config.seed < 2**32, "seed", f"a whole number from 0 to {2**32 - 1}", config.seed)
    _require(config.learning_rate > 0, "learning_rate", "positive", config.learning_rate)
    _require(config.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}", config.optimizer)
    _require(config.distribute in STRATEGIES, "distribute", f"one of {', '.join(STRATEGIES)}", config.distribute)
    _require(config.max_minutes >= 0, "max_minutes", "0 (no limit) or a positive number of minutes",
             config.max_minutes)
    if config.max_minutes and config.distribute == "multi_worker":
        raise ConfigError(
            "max_minutes cannot be used with distribute: multi_worker (each worker's clock would stop it "
            "after a different epoch, and the others would wait for it forever); set epochs instead", key="max_minutes"
        )
    _require(config.jit_compile.lower() in JIT_CHOICES, "jit_compile", f"one of {', '.join(JIT_CHOICES)}",
             config.jit_compile)
    _require(config.dtype_policy in DTYPE_POLICIES, "dtype_policy", f"one of {', '.join(DTYPE_POLICIES)}",
             config.dtype_policy)
    _require(config.batch_norm in BATCH_NORMS, "batch_norm", f"one of {', '.join(BATCH_NORMS)}", config.batch_norm)
    _require(config.class_weight in CLASS_WEIGHTS, "class_weight", f"one of {', '.join(CLASS_WEIGHTS)}",
             config.class_weight)
    _require(config.lr_schedule in LR_SCHEDULES, "lr_schedule", f"one of {', '.join(LR_SCHEDULES)}",
             config.lr_schedule)
    _require(0 <= config.warmup_epochs <= config.epochs, "warmup_epochs",
             f"a number of epochs from 0 to epochs ({config.epochs})", config.warmup_epochs)
    _require(0 <= config.final_lr_fraction < 1, "final_lr_fraction", "a fraction in [0, 1)", config.final_lr_fraction)
    _require(config.tta in TTA_CHOICES, "tta", f"one of {', '.join(TTA_CHOICES)}", config.tta)
    _require(config.logit_adjustment in LOGIT_ADJUSTMENTS, "logit_adjustment",
             f"one of {', '.join(LOGIT_ADJUSTMENTS)}", config.logit_adjustment)
    _require(config.calibration in CALIBRATIONS, "calibration", f"one of {', '.join(CALIBRATIONS)}",
             config.calibration)
    _require(config.system_metrics_interval > 0, "system_metrics_interval", "a positive number of seconds",
             config.system_metrics_interval)
    _require(config.checkpoint_upload_every >= 0, "checkpoint_upload_every",
             "0 (upload on failure only) or a number of epochs", config.checkpoint_upload_every)
    try:
        LabelMode.parse(config.label_mode)
    except ValueError as err:
        raise ConfigError(str(err), key="label_mode") from None
    _require(0 <= config.label_smoothing < 1, "label_smoothing", "in [0, 1)", config.label_smoothing)
    _require(0 <= config.ema_momentum < 1, "ema_momentum", "0 (off) or a momentum in (0, 1), such as 0.999",
             config.ema_momentum)
    if config.ema_momentum and config.early_stopping.enabled and config.early_stopping.restore_best_weights:
        # Keras's EarlyStopping keeps the raw weights of its best epoch, while validation scored the average.
        raise ConfigError(
            "ema_momentum cannot be used with early_stopping.restore_best_weights: the weights restored would be "
            "the raw ones of the best epoch, not the average that validation scored; set "
            "early_stopping.restore_best_weights=false or early_stopping.enabled=false", key="ema_momentum"
        )
    _require(config.mixup_alpha >= 0, "mixup_alpha", "0 (off) or a positive Beta parameter, such as 0.2",
             config.mixup_alpha)
    _require(0 < config.val_fraction < 1, "val_fraction", "between 0 and 1", config.val_fraction)
    _require(0 < config.reduce_lr.factor < 1, "reduce_lr.factor", "between 0 and 1", config.reduce_lr.factor)
    for section in ("reduce_lr", "early_stopping"):
        _require(getattr(config, section).patience >= 0, f"{section}.patience", "a whole number of epochs, 0 or more",
                 getattr(config, section).patience)
        monitor = getattr(config, section).monitor
        _require(monitor in MONITORS, f"{section}.monitor", f"one of {', '.join(MONITORS)}", monitor)
    check_augmentation(config.augmentation)


def _require(ok: bool, key: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}; got {_quote(value)}", key=key)


def check_augmentation(aug: Augmentation, prefix: str = "augmentation.") -> None:
    """The transforms' ranges, checked once for the configuration and for `fer.training.augment.RandomAffine`.

    Raises ConfigError naming `prefix` + the transform, the value and the range allowed.
    """
    for name in ("width_shift", "height_shift", "shear", "zoom"):
        _require(0 <= getattr(aug, name) < 1, f"{prefix}{name}", "a fraction in [0, 1)", getattr(aug, name))
    _require(0 <= aug.rotation <= 180, f"{prefix}rotation", "degrees in [0, 180]", aug.rotation)
