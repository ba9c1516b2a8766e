"""The sweep file: what every trial shares, what it searches, how it chooses, and its budget; checked at the door.

`load_sweep` reads `experiments/sweep.yaml` (or any sweep file) into a `SweepSpec`;
every problem is a ConfigError naming the file and the entry at fault, raised before
any data, TensorFlow, run or study. Needs neither Optuna nor TensorFlow.

Example:
    spec = load_sweep("sweep", {"data": "synthetic:200", "epochs": 1}, trials=2)
    print(spec.recipe_params()["sweep.objective"])  # maximize best_val_accuracy
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fer.config import EXPERIMENTS_DIR, ConfigError, TrainConfig, _read_yaml, flatten, load_config

if TYPE_CHECKING:
    import optuna

DEFAULT_SWEEP = "sweep"  # experiments/sweep.yaml

# A name goes into an MLflow search filter and an Optuna study name: keep it plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SWEEP_KEYS = ("phase", "objective", "trials", "max_minutes", "sampler", "pruner", "settings", "space")
PRUNERS = ("median", "threshold", "none")


@dataclasses.dataclass(frozen=True)
class Objective:
    """What the study optimizes: a run metric, the per-epoch metric the pruner watches, and the direction."""

    metric: str
    epoch_metric: str
    direction: str  # maximize | minimize


# Validation metrics only: a search that chose by the test split would report an optimistic test score.
OBJECTIVES = {
    "best_val_accuracy": Objective("best_val_accuracy", "val_accuracy", "maximize"),
    "lowest_val_loss": Objective("lowest_val_loss", "val_loss", "minimize"),
}


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched setting: a list of choices, or a numeric range (integer when the setting is)."""

    key: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False

    def suggest(self, trial: optuna.Trial):
        """The trial's value for this setting, as Optuna's sampler picks it."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        """E.g. "log-uniform [0.0001, 0.01]", "one of [plateau, linear, cosine]"."""
        if self.choices is not None:
            return f"one of [{', '.join(map(str, self.choices))}]"
        kind = ("log-" if self.log else "") + ("integer" if self.integer else "uniform")
        return f"{kind} [{self.low:g}, {self.high:g}]" + (f" step {self.step:g}" if self.step else "")


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A whole sweep: what every trial shares, what it searches, how it chooses, and its budget."""

    name: str
    phase: str
    objective: Objective
    space: tuple[Dimension, ...]
    settings: dict[str, Any]
    trials: int  # in all, over every sitting
    max_minutes: float  # per sitting; 0: no limit
    sampler_seed: int = 42
    n_startup_trials: int = 5
    pruner: dict[str, Any] = dataclasses.field(default_factory=lambda: {"type": "median"})
    origin: str = "sweep file"

    def recipe_params(self) -> dict[str, str]:
        """What makes two sittings the same sweep, as MLflow params of the parent run (budgets excluded)."""
        pruner = " ".join(f"{k}={v}" for k, v in sorted(self.pruner.items()) if k != "type")
        params = {
            "sweep.phase": self.phase,
            "sweep.objective": f"{self.objective.direction} {self.objective.metric}",
            "sweep.sampler": f"TPE seed={self.sampler_seed} n_startup_trials={self.n_startup_trials}",
            "sweep.pruner": f"{self.pruner['type']} {pruner}".strip(),
        }
        params.update({f"sweep.settings.{key}": str(value) for key, value in sorted(self.settings.items())})
        params.update({f"sweep.space.{d.key}": d.describe() for d in self.space})
        return params

    def trial_config(self, values: dict[str, Any], where: str, max_minutes: float | None = None) -> TrainConfig:
        """The phase's configuration with the shared settings, then the trial's values (and a time cap) applied."""
        overrides = {**self.settings, **values}
        if max_minutes is not None:
            overrides["max_minutes"] = max_minutes
        return load_config(self.phase, overrides, where)


def sweep_path(name_or_path: str | None = None) -> Path:
    """The sweep file: a path, or a name looked up in ./experiments and then the project's experiments/.

    >>> sweep_path().name
    'sweep.yaml'
    """
    given = name_or_path or DEFAULT_SWEEP
    path = Path(given)
    if path.is_file():
        return path
    for folder in (Path.cwd() / "experiments", EXPERIMENTS_DIR):
        if (folder / f"{given}.yaml").is_file():
            return folder / f"{given}.yaml"
    raise ConfigError(f"No sweep file at {given!r} (nor experiments/{given}.yaml); give a YAML file such as "
                      f"{EXPERIMENTS_DIR / 'sweep.yaml'}.")


def load_sweep(
    name_or_path: str | None = None,
    settings: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    trials: int | None = None,
    max_minutes: float | None = None,
) -> SweepSpec:
    """Read and check a sweep file; `settings` (flat names, e.g. {"epochs": 3}) and the budget override it.

    Every problem is a ConfigError naming the file and the entry at fault,
    raised before any data, TensorFlow, run or study: each range end and each
    choice is checked as the trial would be configured with it.

    >>> spec = load_sweep("sweep", {"data": "synthetic:200", "epochs": 2}, trials=3)
    >>> spec.trials, spec.objective.metric, spec.settings["epochs"]
    (3, 'best_val_accuracy', 2)
    """
    path = sweep_path(name_or_path)
    values = _read_yaml(path)
    _only(values, SWEEP_KEYS, "top-level", path)
    name = name or path.stem
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-' (at most 100), "
                          "starting with a letter or digit.")

    objective_name = values.get("objective", "best_val_accuracy")
    if objective_name not in OBJECTIVES:
        raise ConfigError(f"{path}: objective must be one of {', '.join(OBJECTIVES)} (validation metrics: the "
                          f"test split stays unseen by the search); got {objective_name!r}.")
    budget_trials = _whole(trials if trials is not None else values.get("trials", 20), "trials", path, minimum=1)
    budget_minutes = max_minutes if max_minutes is not None else values.get("max_minutes", 0)
    if not isinstance(budget_minutes, (int, float)) or isinstance(budget_minutes, bool) or not (
            math.isfinite(budget_minutes) and budget_minutes >= 0):
        raise ConfigError(f"{path}: max_minutes must be 0 (no limit) or a positive number; got {budget_minutes!r}.")

    shared = {**flatten(_section(values, "settings", path)), **(settings or {})}
    phase = str(values.get("phase", "phase2"))
    where = f"settings in {path}" if not settings else f"settings in {path} or the command line"
    # The shared settings alone must make a valid configuration; kept as typed values ("1e-4" and 0.0001 are one).
    resolved = load_config(phase, shared, where).to_params()
    shared = {key: resolved[key] for key in shared}
    space = _space(_section(values, "space", path), phase, shared, path)
    sampler = _section(values, "sampler", path)
    _only(sampler, ("seed", "n_startup_trials"), "sampler", path)
    pruner = {"type": "median", **_section(values, "pruner", path)}
    _check_pruner(pruner, path)
    return SweepSpec(
        name=name,
        phase=phase,
        objective=OBJECTIVES[objective_name],
        space=space,
        settings=shared,
        trials=budget_trials,
        max_minutes=float(budget_minutes),
        sampler_seed=_whole(sampler.get("seed", 42), "sampler.seed", path),
        n_startup_trials=_whole(sampler.get("n_startup_trials", 5), "sampler.n_startup_trials", path),
        pruner=pruner,
        origin=str(path),
    )


def _section(values: dict, key: str, path: Path) -> dict:
    section = values.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {key} must be a mapping (`name: value` lines indented under it); "
                          f"got {section!r:.80}.")
    return section


def _only(section: dict, allowed: tuple, what: str, path: Path) -> None:
    unknown = sorted(set(map(str, section)) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown {what} entries {unknown}; allowed: {', '.join(allowed)}.")


def _whole(value, what: str, path: Path, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{path}: {what} must be a whole number of at least {minimum}; got {value!r}.")
    return value


def _check_pruner(pruner: dict, path: Path) -> None:
    kind = pruner["type"]
    allowed = {
        "median": ("type", "n_startup_trials", "n_warmup_steps"),
        "threshold": ("type", "lower", "upper", "n_warmup_steps"),
        "none": ("type",),
    }
    if kind not in allowed:
        raise ConfigError(f"{path}: pruner.type must be one of {', '.join(PRUNERS)}; got {kind!r}.")
    _only(pruner, allowed[kind], f"pruner ({kind})", path)
    for key in ("n_startup_trials", "n_warmup_steps"):
        if key in pruner:
            _whole(pruner[key], f"pruner.{key}", path)
    if kind == "threshold" and "lower" not in pruner and "upper" not in pruner:
        raise ConfigError(f"{path}: a threshold pruner needs lower or upper (the per-epoch bounds of the "
                          "objective's validation metric).")
    for key in ("lower", "upper"):  # Optuna would take a string and fail at its first report, mid-study
        value = pruner.get(key)
        if key in pruner and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
            raise ConfigError(f"{path}: pruner.{key} must be a number (a bound of the objective's validation "
                              f"metric, e.g. {key}: 0.3); got {value!r}.")
    if isinstance(pruner.get("lower"), (int, float)) and isinstance(pruner.get("upper"), (int, float)) and not (
            pruner["lower"] < pruner["upper"]):
        raise ConfigError(f"{path}: pruner.lower must be below pruner.upper; got {pruner['lower']!r} and "
                          f"{pruner['upper']!r}.")


def _space(space: dict, phase: str, shared: dict, path: Path) -> tuple[Dimension, ...]:
    """Each entry checked against the settings a phase has, and each end or choice tried in a configuration."""
    if not space:
        raise ConfigError(f"{path}: space is empty; name at least one setting to search, e.g. "
                          "`learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}`.")
    defaults = TrainConfig().to_params()
    dimensions = []
    if empty := _empty_sections(space):  # flattening would drop it: a trial that searches nothing
        raise ConfigError(f"{path}: space.{empty[0]} is an empty section: name the settings under it to search, "
                          f"e.g. `{empty[0]}: {{rotation: {{low: 0, high: 20}}}}`, or remove it.")
    for key, spec in flatten(space, is_value=_is_entry).items():
        entry = f"space.{key} in {path}"
        if key not in defaults:
            raise ConfigError(f"{entry}: {key!r} is not a setting; settings are {sorted(defaults)}.")
        if key in shared:
            raise ConfigError(f"{entry}: {key} is both searched and fixed (settings or the command line); "
                              "keep one.")
        dimension = _dimension(key, spec, type(defaults[key]), entry)
        tried = dimension.choices if dimension.choices is not None else (dimension.low, dimension.high)
        for value in tried:
            load_config(phase, {**shared, key: value}, entry)
        dimensions.append(dimension)
    return tuple(dimensions)


def _empty_sections(space: dict, prefix: str = "") -> list[str]:
    """The nested sections of `space` with nothing under them (flattening would drop them silently)."""
    empty = []
    for key, value in space.items():
        if isinstance(value, dict) and not _is_entry(value):
            empty += _empty_sections(value, f"{prefix}{key}.") if value else [f"{prefix}{key}"]
    return empty


def _is_entry(mapping: dict) -> bool:
    """A search-space entry is a mapping with choices or low/high; any other mapping is a section (augmentation:)."""
    return bool({"choices", "low", "high"} & set(mapping))


def _dimension(key: str, spec, kind: type, entry: str) -> Dimension:
    example = "{choices: [a, b]} or {low: 0.0, high: 1.0} (optionally log: true, step: ...)"
    if not isinstance(spec, dict):
        raise ConfigError(f"{entry}: expected {example}; got {spec!r:.80}.")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise ConfigError(f"{entry}: choices must be a non-empty list, alone; got {spec!r:.80}.")
        return Dimension(key, choices=tuple(choices))
    if kind in (str, bool):
        raise ConfigError(f"{entry}: {key} is a {kind.__name__} setting: search it with choices: [...].")
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(f"{entry}: expected {example}; got {spec!r:.80}.")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers) or not isinstance(log, bool):
        raise ConfigError(f"{entry}: low, high and step must be numbers and log true or false; got {spec!r:.80}.")
    if not low < high:
        raise ConfigError(f"{entry}: low must be below high; got low {low!r}, high {high!r}.")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{entry}: a log range needs low above 0 and no step; got {spec!r:.80}.")
    if step is not None and step <= 0:
        raise ConfigError(f"{entry}: step must be positive; got {step!r}.")
    if step is not None and step > high - low:  # the range would hold only `low`: nothing searched
        raise ConfigError(f"{entry}: step {step!r} is larger than the range {low!r} to {high!r}; give a step of at "
                          f"most {high - low:g}.")
    integer = kind is int
    if integer and any(float(v) != int(v) for v in numbers):
        raise ConfigError(f"{entry}: {key} is a whole-number setting: low, high and step must be whole; "
                          f"got {spec!r:.80}.")
    return Dimension(key, low=low, high=high, log=log, step=step, integer=integer)
