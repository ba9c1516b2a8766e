"""Small tools every concern uses, with no fer imports of their own (like timm's `utils/`).

- `atomic`: every file written for a user appears whole or not at all (`atomic_output`,
  `write_atomic`), and a write that fails is one line saying what, where and why (`OutputError`).
- `locks`: one sitting at a time of a sweep, a resume or a store's first initialisation (`SittingLock`).

Example:
    from fer.utils import atomic_output
    with atomic_output("predictions.csv", "the CSV") as tmp:
        tmp.write_text("frame,emotion\n")
"""

from fer.utils.atomic import AtomicOutput, OutputError, atomic_output, output_error, write_atomic
from fer.utils.locks import LockHeld, SittingLock

__all__ = ["AtomicOutput", "LockHeld", "OutputError", "SittingLock", "atomic_output", "output_error", "write_atomic"]
