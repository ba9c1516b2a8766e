"""Models logged before the package moved into subpackages still load and predict the same.

`tests/golden/old_layout/` holds both pyfunc models fer logs (the training one
and the photo service), logged by the flat layout of 0.1 (its `make.py` says
how), with what they predicted then. A model carries the `fer` code it was
logged with, but a process that has already imported today's `fer` runs
today's modules under the old names the model's entry file imports.
"""

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden" / "old_layout"
MODELS = ("faces_model", "photo_model")

PREDICT = """
import sys
import mlflow
import numpy as np
from fer import EMOTIONS
outputs = mlflow.pyfunc.load_model(sys.argv[1]).predict(np.load(sys.argv[2]))
if sys.argv[3] == "photo_model":
    outputs = outputs[list(EMOTIONS)].to_numpy(np.float32)
np.save(sys.argv[4], np.asarray(outputs, np.float32))
"""


def unpacked(name: str, folder: Path) -> Path:
    with tarfile.open(GOLDEN / f"{name}.tar.gz") as archive:
        archive.extractall(folder, filter="data")
    return folder / name


@pytest.mark.parametrize("name", MODELS)
def test_an_old_layout_model_predicts_the_same_in_a_process_that_imported_fer(name, tmp_path):
    import mlflow

    import fer.cli  # noqa: F401  everything a `fer` command imports, before the model loads

    outputs = mlflow.pyfunc.load_model(str(unpacked(name, tmp_path))).predict(np.load(GOLDEN / "faces.npy"))
    if name == "photo_model":
        from fer import EMOTIONS

        outputs = outputs[list(EMOTIONS)].to_numpy(np.float32)
    np.testing.assert_allclose(outputs, np.load(GOLDEN / f"{name}.probabilities.npy"), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_an_old_layout_model_predicts_the_same_in_a_fresh_process(name, tmp_path):
    result_file = tmp_path / "outputs.npy"
    subprocess.run(
        [sys.executable, "-c", PREDICT, str(unpacked(name, tmp_path)), str(GOLDEN / "faces.npy"), name,
         str(result_file)],
        check=True, cwd=tmp_path, timeout=300,
    )
    np.testing.assert_allclose(np.load(result_file), np.load(GOLDEN / f"{name}.probabilities.npy"), atol=1e-6)
