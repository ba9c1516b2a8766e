"""What logit adjustment does to a run's predictions, scored honestly.

    python benchmarks/logit_adjustment.py RUN_ID [RUN_ID ...] [--data /data/ferplus] [--folds 2] [--repeats 5]

For each run, its logged model (`runs:/<id>/model`, flip TTA included when the run
trained with it) predicts the validation split of its training data (or of
--data); the class prior is the training split's (`fer.evaluation.logit_adjustment.class_prior`).
A run that trained with `logit_adjustment: fit` serves adjusted probabilities:
its logged tau is undone first (p * prior**tau, renormalised; a logged temperature
before it), so every run is
scored from its network's own (TTA-averaged) probabilities. It prints, per run:

* the plain figures (tau 0): accuracy, macro-F1 and per-class recall, which should
  equal the run's own `eval_*` where the run was scored on validation;
* "fit on all of validation": tau fitted (`fit_tau`) and scored on the same faces,
  which is what `logit_adjustment: fit` logs as `logit_adjustment_val_*_after` and,
  on a data set without a test split (FER+ here), as `eval_*`: optimistic, since
  the faces that chose tau also score it;
* "cross-fitted" (`fer.evaluation.logit_adjustment.cross_fit`): the faces are split
  into --folds stratified folds; each fold is scored with the tau fitted on the
  others, --repeats times with other splits. The mean and range of accuracy and
  macro-F1 over the repeats say what tau is worth on faces that did not choose it
  (runs that fit tau log the 2-fold, 5-repeat mean as `*_after_crossfit`).

It changes nothing in the runs. The tracking store is `MLFLOW_TRACKING_URI`'s.
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score

from fer.data import EMOTIONS, load
from fer.evaluation.logit_adjustment import adjust, class_prior, cross_fit, fit_tau


def scores(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float, np.ndarray]:
    classes = np.arange(len(EMOTIONS))
    return (accuracy_score(labels, predicted),
            f1_score(labels, predicted, labels=classes, average="macro", zero_division=0),
            recall_score(labels, predicted, labels=classes, average=None, zero_division=0))


def unadjusted(probabilities: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """The probabilities before an adjustment by `tau`: softmax(ln p + tau * ln prior)."""
    restored = probabilities * prior ** tau
    return restored / restored.sum(axis=1, keepdims=True)


def line(name: str, accuracy: float, macro_f1: float, recall: np.ndarray | None = None) -> str:
    recalls = "" if recall is None else "  recall % " + " / ".join(f"{100 * r:.1f}" for r in recall)
    return f"  {name:<34} accuracy {100 * accuracy:5.2f} %  macro-F1 {macro_f1:.4f}{recalls}"


def report(run_id: str, data: str | None, folds: int, repeats: int) -> None:
    run = mlflow.get_run(run_id)
    source = data or run.data.params["config.data"]
    splits = load(source, label_mode=run.data.params.get("config.label_mode", "majority"), progress=False)
    val, prior = splits.val, class_prior(splits.train.targets)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    probabilities = model.predict(val.images[..., np.newaxis].astype(np.float32))
    temperature = float(run.data.params.get("calibration.temperature", 1.0))
    probabilities = probabilities ** temperature  # temperature scaling undone (softmax(ln p / T))
    served_tau = float(run.data.params.get("logit_adjustment.tau", 0.0))
    probabilities = unadjusted(probabilities / probabilities.sum(axis=1, keepdims=True), prior, served_tau)
    labels = val.labels
    print(f"\nrun {run_id} ({run.data.tags.get('fer.phase', '?')}, tta {run.data.params.get('config.tta', 'none')}, "
          f"served tau {served_tau:g}, undone), {len(val)} validation faces of {source}; "
          f"recall order {' / '.join(EMOTIONS)}")
    print(line("plain (tau 0)", *scores(labels, probabilities.argmax(axis=1))))
    tau = fit_tau(labels, probabilities, prior)
    print(line(f"fit on all of validation (tau {tau:g})", *scores(labels, adjust(probabilities, prior, tau).argmax(1))))
    honest = cross_fit(labels, probabilities, prior, folds, repeats)
    accuracy, macro_f1 = np.array(honest.accuracy), np.array(honest.macro_f1)
    print(f"  cross-fitted ({folds} folds x {repeats}): accuracy {100 * accuracy.mean():.2f} % "
          f"({100 * accuracy.min():.2f}-{100 * accuracy.max():.2f}), macro-F1 {macro_f1.mean():.4f} "
          f"({macro_f1.min():.4f}-{macro_f1.max():.4f}), tau {min(honest.taus):g}-{max(honest.taus):g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    parser.add_argument("--data", help="the data the runs trained on (default: each run's config.data)")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for run_id in args.run_ids:
        report(run_id, args.data, args.folds, args.repeats)


if __name__ == "__main__":
    main()
