"""Hyperparameter sweeps: Optuna trials as nested MLflow runs under one parent run (needs the `sweep` extra).

- `runner`: the study, its trials as full training runs, pruning, resuming.

Example:
    from fer.sweep import load_sweep, run_sweep
    result = run_sweep(load_sweep("experiments/sweep.yaml", {"data": "synthetic:400", "epochs": 2}, trials=3))
"""

from fer.sweep.runner import SweepError, TrialPruned, load_sweep, run_sweep

__all__ = ["SweepError", "TrialPruned", "load_sweep", "run_sweep"]
