"""Write examples/faces.png: a 480x320 "photo" of three drawn faces on a noisy background.

The README's `fer predict` and `curl` examples use it, so they run on a fresh
clone with no photo of one's own. The faces come from the synthetic generator
(`fer.data.synthetic.make_faces`), scaled up; OpenCV's face detector finds them
as it finds real ones. A model trained on the synthetic default reads them;
for a real face, use a real photo (any JPEG or PNG up to 10 MB).

Run from the repository root (deterministic: the same file every time):

    python examples/make_faces_photo.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fer, without installing it

from fer.data.synthetic import faces_on_noise, make_faces  # noqa: E402

SIZE = (480, 320)  # width, height
# Where the faces go: x, y, side (pixels).
PLACES = [(40, 90, 120), (190, 60, 140), (350, 110, 100)]


def faces_photo(seed: int = 3) -> np.ndarray:
    """The photo as a uint8 grayscale array (height x width)."""
    drawn, _ = make_faces(len(PLACES), seed=seed)
    return faces_on_noise(SIZE, drawn, PLACES, np.random.default_rng(seed))


if __name__ == "__main__":
    path = Path(__file__).with_name("faces.png")
    Image.fromarray(faces_photo()).save(path, optimize=True)
    print(f"Wrote {path} ({path.stat().st_size:,} bytes)")
