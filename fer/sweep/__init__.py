"""Hyperparameter sweeps: Optuna trials as nested MLflow runs under one parent run (needs the `sweep` extra).

- `spec`: the sweep file, read and checked at the door (`load_sweep`, `SweepSpec`); needs no Optuna.
- `runner`: the study, its trials as full training runs, pruning, resuming (`run_sweep`).
- `plots`: the study's figures, logged on the parent run (`plot_study`).

Example:
    from fer.sweep import load_sweep, run_sweep
    result = run_sweep(load_sweep("experiments/sweep.yaml", {"data": "synthetic:400", "epochs": 2}, trials=3))
"""

from fer.sweep.runner import SweepError, TrialPruned, run_sweep
from fer.sweep.spec import SweepSpec, load_sweep

__all__ = ["SweepError", "SweepSpec", "TrialPruned", "load_sweep", "run_sweep"]
