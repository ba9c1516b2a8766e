"""The figures of a sweep's study (Optuna's, drawn with matplotlib), logged under the parent run's `plots/`.

Example:
    study = optuna.load_study(study_name="sweep", storage="sqlite:///optuna.db")
    print(plot_study(study, "best_val_accuracy", Path(".")))
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna


def plot_study(study: optuna.Study, target_name: str, folder: Path) -> list[Path]:
    """Optuna's figures of the study, drawn with matplotlib, as PNG files in `folder`.

    `optimization_history.png` (every trial's value and the best so far), once a
    trial is complete `parallel_coordinate.png` (each trial a line through its
    settings, coloured by its value), and from two complete trials
    `param_importances.png` (Optuna's default evaluator, PED-ANOVA in Optuna 5: how much each
    setting tells the better trials from the rest). Figures are widened to their number of settings.

    Example:
        plot_study(optuna.load_study(study_name="sweep", storage="sqlite:///optuna.db"), "value", Path("."))
    """
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as optuna_plots

    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    settings = len({key for trial in study.get_trials(deepcopy=False) for key in trial.params})
    figures = {"optimization_history.png": optuna_plots.plot_optimization_history}
    if complete >= 1:
        figures["parallel_coordinate.png"] = optuna_plots.plot_parallel_coordinate
    if complete >= 2:
        figures["param_importances.png"] = optuna_plots.plot_param_importances
    written = []
    for name, plot in figures.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study, target_name=target_name)
            except (ValueError, RuntimeError) as err:  # e.g. importances when every trial scored the same
                print(f"No {name}: {err}")
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(*_figure_size(name, settings))
        figure.savefig(folder / name, dpi=110, bbox_inches="tight")
        pyplot.close(figure)
        written.append(folder / name)
    return written


def _figure_size(name: str, settings: int) -> tuple[float, float]:
    """Optuna's default size crowds a parallel-coordinate plot of eight settings into 6 inches."""
    if name == "parallel_coordinate.png":
        return max(8.0, 1.6 * (settings + 1)), 6.0
    if name == "param_importances.png":
        return 8.0, max(3.0, 0.5 * settings + 1.5)
    return 8.0, 5.0
