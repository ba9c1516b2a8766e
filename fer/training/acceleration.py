"""Speed settings that depend on the hardware: XLA compilation and mixed precision.

Two settings of `experiments/<phase>.yaml` (or `--set key=value`):

- `jit_compile`: `auto` | `true` | `false`. XLA-compile the training step.
  `auto` is Keras's own rule (`model.compile(jit_compile="auto")`): on where
  a GPU is visible, off on a CPU-only machine and under a multi-device
  tf.distribute strategy (`true` forces it on there).
- `dtype_policy`: `auto` | `float32` | `mixed_float16` | `mixed_bfloat16`, a
  Keras dtype policy for the network. `auto` is `mixed_float16` on a GPU with
  tensor cores (compute capability 7.0 or newer), `float32` otherwise. The
  softmax output stays float32 either way (see `fer.models`), and Keras wraps
  the optimizer in a LossScaleOptimizer for `mixed_float16`.

Why `auto` leaves both off on a CPU: on the project's 2-core machines XLA made
a phase-2 epoch 2.3x slower and mixed bfloat16 1.1x slower, although that CPU
(an AMD EPYC) has AVX-512 BF16 (`python benchmarks/training.py --modes bare,bare-xla,bare-bf16`,
BENCHMARKS.md). On a CPU with AMX (`amx_bf16` in /proc/cpuinfo) mixed bfloat16
made the training step 2x faster instead (`python benchmarks/ceiling.py`, issue #28);
`auto` does not pick it there yet: that waits for a pinned-epoch FER+ accuracy check.
On GPUs both are the standard ways to go faster.

Every run logs what the settings resolved to (`acceleration.*` params).
"""

from __future__ import annotations

import contextlib

JIT_CHOICES = ("auto", "true", "false")
DTYPE_POLICIES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Tensor cores, where float16 matmuls and convolutions run several times faster, start at Volta.
TENSOR_CORE_CAPABILITY = (7, 0)


def jit_compile_argument(setting: str) -> bool | str:
    """The value for `model.compile(jit_compile=...)`: True, False, or "auto" (Keras decides)."""
    return {"auto": "auto", "true": True, "false": False}[setting.lower()]


def resolve_dtype_policy(setting: str) -> str:
    """The Keras dtype policy name for a `dtype_policy` setting, `auto` resolved for this machine."""
    if setting != "auto":
        return setting
    return "mixed_float16" if _gpus_with_tensor_cores() else "float32"


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


def _gpus_with_tensor_cores() -> bool:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= TENSOR_CORE_CAPABILITY:
            return True
    return False
