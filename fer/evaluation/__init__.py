"""Evaluation: what a model's probabilities score, and the post-processing fitted on validation.

- `calibration`: log-loss, expected calibration error, reliability bins, temperature fitting;
- `logit_adjustment`: the class-prior adjustment (tau fitted for macro-F1).
"""
