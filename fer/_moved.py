"""Old module names (the flat layout of 0.1) kept importable: each is the module that replaced it.

A model logged before 0.2 imports `fer.photo_service` from its entry file, and a
`.keras` file saved then names `fer.augment` as the home of its RandomAffine
layer; user scripts may say `from fer.train import train`. Importing an old
name gives the new module itself (one module object under two names, so a
patch through either reaches both) and warns once. To be removed in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "fer.acceleration": "fer.training.acceleration",
    "fer.augment": "fer.training.augment",
    "fer.calibration": "fer.evaluation.calibration",
    "fer.callbacks": "fer.training.callbacks",
    "fer.checkpoints": "fer.training.checkpoints",
    "fer.compare": "fer.analysis.compare",
    "fer.diagnostics": "fer.analysis.diagnostics",
    "fer.distribute": "fer.training.distribute",
    "fer.exported": "fer.export.formats",
    "fer.faces": "fer.serving.faces",
    "fer.history": "fer.analysis.history",
    "fer.images": "fer.data.images",
    "fer.logit_adjustment": "fer.evaluation.logit_adjustment",
    "fer.outbox": "fer.training.outbox",
    "fer.photo_service": "fer.serving.photo_service",
    "fer.pipeline": "fer.training.pipeline",
    "fer.predict": "fer.serving.predict",
    "fer.pyfunc_model": "fer.serving.pyfunc_model",
    "fer.pyfunc_service": "fer.serving.pyfunc_service",
    "fer.quantization": "fer.export.quantization",
    "fer.reports": "fer.analysis.reports",
    "fer.schedules": "fer.training.schedules",
    "fer.system_metrics": "fer.training.system_metrics",
    "fer.train": "fer.training.train",
    "fer.video": "fer.serving.video",
}
# fer.serving, fer.export and fer.sweep were modules and are packages now: their __init__
# names what the old modules offered.


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads it as the new module (`sys.modules[old] is sys.modules[new]`)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name]} in fer 0.2; import it from there (the old name goes in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # already executed under its new name


def install() -> None:
    """Make the old module names importable (idempotent; `fer/__init__.py` calls it)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
