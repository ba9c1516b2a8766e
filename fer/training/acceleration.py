"""Speed settings that depend on the hardware: XLA compilation and mixed precision.

Two settings of `experiments/<phase>.yaml` (or `--set key=value`):

- `jit_compile`: `auto` | `true` | `false`. XLA-compile the training step.
  `auto` is Keras's own rule (`model.compile(jit_compile="auto")`): on where
  a GPU is visible, off on a CPU-only machine and under a multi-device
  tf.distribute strategy (`true` forces it on there).
- `dtype_policy`: `auto` | `float32` | `mixed_float16` | `mixed_bfloat16`, a
  Keras dtype policy for the network. `auto` is `mixed_float16` on a GPU with
  tensor cores (compute capability 7.0 or newer); on a CPU without a GPU it is
  `mixed_bfloat16` where the CPU has bfloat16 instructions (`amx_bf16`, or
  `avx512_bf16` with `batch_norm: fused`, among /proc/cpuinfo's flags), and
  `float32` otherwise. The softmax output stays float32 either way (see
  `fer.models`), and Keras wraps the optimizer in a LossScaleOptimizer for
  `mixed_float16`.
- `batch_norm`: `fused` | `keras`: `fer.models.FusedBatchNormalization`
  (TensorFlow's one-pass kernel in training) or Keras's own layer.

Why: on the project's 2-core machines XLA made a phase-2 epoch 2.3x slower
(`python benchmarks/training.py --modes bare,bare-xla`, BENCHMARKS.md), so
`auto` leaves it off on a CPU. Mixed bfloat16 made a FER+ epoch about 2x faster
on a Xeon with AMX, where oneDNN runs the convolutions on the AMX tile units,
and 1.78x faster on an AMD EPYC with AVX-512 BF16 but no AMX once the batch
norm is fused; with Keras's own (unfused) batch norm, whose elementwise chain
bfloat16 does not speed up, it was 1.1x slower there. Accuracy stayed within
run-to-run noise (BENCHMARKS.md, issue #28). On GPUs both are the standard ways
to go faster.

Every run logs what the settings resolved to (`acceleration.*` params).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

JIT_CHOICES = ("auto", "true", "false")
DTYPE_POLICIES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BATCH_NORMS = ("fused", "keras")  # fer.models.FusedBatchNormalization, or keras.layers.BatchNormalization
# Tensor cores, where float16 matmuls and convolutions run several times faster, start at Volta.
TENSOR_CORE_CAPABILITY = (7, 0)


def jit_compile_argument(setting: str) -> bool | str:
    """The value for `model.compile(jit_compile=...)`: True, False, or "auto" (Keras decides)."""
    return {"auto": "auto", "true": True, "false": False}[setting.lower()]


def resolve_dtype_policy(setting: str, batch_norm: str = "fused") -> str:
    """The Keras dtype policy name for a `dtype_policy` setting, `auto` resolved for this machine.

    `batch_norm` is the run's `batch_norm` setting: on a CPU with AVX-512 BF16
    but no AMX, bfloat16 pays only with the fused batch norm (module docstring).

    Example:
        >>> resolve_dtype_policy("float32")  # an explicit policy is kept as it is
        'float32'
        >>> resolve_dtype_policy("auto")  # an AMD EPYC with AVX-512 BF16, no GPU  # doctest: +SKIP
        'mixed_bfloat16'
    """
    if setting != "auto":
        return setting
    if _gpus_with_tensor_cores():
        return "mixed_float16"
    if not _gpus() and (cpu_has_amx_bf16() or (batch_norm == "fused" and cpu_has_avx512_bf16())):
        return "mixed_bfloat16"
    return "float32"


def cpu_has_amx_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU reports AMX bfloat16 tiles (`amx_bf16` among its flags); False where unknown.

    Example:
        >>> cpu_has_amx_bf16()  # on a Sapphire Rapids or newer Xeon  # doctest: +SKIP
        True
    """
    return "amx_bf16" in _cpu_flags(cpuinfo)


def cpu_has_avx512_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU reports AVX-512 bfloat16 instructions (`avx512_bf16`); False where unknown.

    Example:
        >>> cpu_has_avx512_bf16()  # on an AMD EPYC from Zen 4 on, or a Xeon from Cooper Lake on  # doctest: +SKIP
        True
    """
    return "avx512_bf16" in _cpu_flags(cpuinfo)


def _cpu_flags(cpuinfo: str | Path) -> frozenset[str]:
    """The first `flags` line of /proc/cpuinfo, as a set; empty where there is none to read."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # not Linux, or no procfs: no evidence of any flag
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


@contextlib.contextmanager
def dtype_policy(name: str):
    """Build layers under the dtype policy `name`, then put the previous global policy back.

    Layers take the policy in force when they are created, so only the model
    built inside this block is mixed: another run in the same process (tests,
    notebooks) starts from float32 again.
    """
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def params(model) -> dict:
    """What the settings resolved to, as a compiled model reports them (logged with every run)."""
    return {
        "acceleration.jit_compile": bool(model.jit_compile),
        "acceleration.dtype_policy": model.dtype_policy.name,
    }


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _gpus_with_tensor_cores() -> bool:
    import tensorflow as tf

    for gpu in _gpus():
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= TENSOR_CORE_CAPABILITY:
            return True
    return False
