"""XLA and mixed precision as configuration: what `auto` means here, and mixed models that stay correct."""

import keras
import numpy as np
import pytest

from fer.training import acceleration
from fer.models import build_model


def test_jit_compile_setting_maps_to_keras_compile_argument():
    assert acceleration.jit_compile_argument("auto") == "auto"
    assert acceleration.jit_compile_argument("true") is True
    assert acceleration.jit_compile_argument("FALSE") is False


def _without_gpus():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU: auto turns both on")


def _cpu(monkeypatch, *, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(acceleration, "cpu_has_amx_bf16", lambda: amx)
    monkeypatch.setattr(acceleration, "cpu_has_avx512_bf16", lambda: avx512_bf16)


def test_auto_resolves_to_float32_and_no_xla_on_a_cpu_without_bfloat16_instructions(monkeypatch):
    _without_gpus()
    _cpu(monkeypatch, amx=False, avx512_bf16=False)
    assert acceleration.resolve_dtype_policy("auto") == "float32"
    assert acceleration.resolve_dtype_policy("mixed_bfloat16") == "mixed_bfloat16"
    model = build_model("baseline")
    model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile="auto")
    assert acceleration.params(model) == {"acceleration.jit_compile": False, "acceleration.dtype_policy": "float32"}


def test_auto_resolves_to_mixed_bfloat16_on_a_cpu_with_amx_whatever_the_batch_norm(monkeypatch):
    _without_gpus()
    _cpu(monkeypatch, amx=True, avx512_bf16=True)
    assert acceleration.resolve_dtype_policy("auto") == "mixed_bfloat16"
    assert acceleration.resolve_dtype_policy("auto", batch_norm="keras") == "mixed_bfloat16"
    assert acceleration.resolve_dtype_policy("float32") == "float32"  # an explicit setting always wins


def test_auto_picks_mixed_bfloat16_on_avx512_bf16_only_with_the_fused_batch_norm(monkeypatch):
    # AMD EPYC without AMX: bfloat16 made the fused step 1.73x faster, Keras's batch norm 1.1x slower
    _without_gpus()
    _cpu(monkeypatch, amx=False, avx512_bf16=True)
    assert acceleration.resolve_dtype_policy("auto", batch_norm="fused") == "mixed_bfloat16"
    assert acceleration.resolve_dtype_policy("auto", batch_norm="keras") == "float32"


def test_the_run_resolves_auto_with_its_own_batch_norm(monkeypatch):
    _without_gpus()
    _cpu(monkeypatch, amx=False, avx512_bf16=True)
    from fer.config import load_config
    from fer.training.train import compile_model

    policies = {
        batch_norm: compile_model(load_config("phase1", {"batch_norm": batch_norm})).dtype_policy.name
        for batch_norm in ("fused", "keras")
    }
    assert policies == {"fused": "mixed_bfloat16", "keras": "float32"}


CPUINFO_FLAGS = [
    ("fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", True, True),
    ("fpu sse2 avx512f avx512_bf16", False, True),  # AMD EPYC from Zen 4 on
    ("fpu sse2 avx2", False, False),
    ("fpu sse2 amx_bf16x avx512_bf16x", False, False),  # flags that merely start the same
]


@pytest.mark.parametrize("flags, amx, avx512_bf16", CPUINFO_FLAGS)
def test_bfloat16_instructions_are_read_from_the_cpu_flags(tmp_path, flags, amx, avx512_bf16):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU amx_bf16 avx512_bf16\nflags\t\t: {flags}\n\n")
    assert acceleration.cpu_has_amx_bf16(cpuinfo) is amx
    assert acceleration.cpu_has_avx512_bf16(cpuinfo) is avx512_bf16


def test_no_cpuinfo_means_no_bfloat16_instructions(tmp_path):
    assert acceleration.cpu_has_amx_bf16(tmp_path / "missing") is False
    assert acceleration.cpu_has_avx512_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_model_computes_in_half_precision_but_outputs_float32_probabilities(policy):
    with acceleration.dtype_policy(policy):
        model = build_model("final")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back
    assert model.count_params() == 5_873_096  # the same network, only its arithmetic changes
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == policy.removeprefix("mixed_") and conv.variable_dtype == "float32"
    assert model.get_layer("emotion").compute_dtype == "float32"
    probabilities = model.predict(np.full((2, 48, 48, 1), 128, np.float32), verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_dtype_policy_is_restored_when_building_fails():
    with pytest.raises(RuntimeError), acceleration.dtype_policy("mixed_bfloat16"):
        raise RuntimeError("build failed")
    assert keras.config.dtype_policy().name == "float32"
