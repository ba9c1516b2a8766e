"""Training: one run from a configuration to a finished, evaluated MLflow run.

- `train` (`fer.training.train`): the run itself, step by step;
- `pipeline`, `augment`: the tf.data input and RandomAffine augmentation;
- `callbacks`, `schedules`: per-epoch logging, the time limit, budget-aware decay;
- `acceleration`, `distribute`: XLA / mixed precision, tf.distribute strategies;
- `checkpoints`, `outbox`: crash-safe epochs, resume, runs kept until the server has them;
- `system_metrics`: MLflow's CPU / memory / GPU sampling for the run.

Example:
    from fer.config import load_config
    from fer.training.train import train
    run_id = train(load_config("phase1", {"data": "synthetic:200", "epochs": 1}))

Nothing is imported here: `fer.export` and `fer.analysis` use parts of training
(checkpoints, the history a run logs) that must not pull in the whole run.
"""
