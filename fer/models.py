"""The two networks the project compares: `baseline` (phase 1) and `final` (phase 2).

Both take raw 48x48x1 pixel values (0-255) and rescale inside the model, so a
logged model serves raw faces with no preprocessing step to forget. Rescaling
has no weights: the parameter counts below are the convolutional networks'.
"""

from __future__ import annotations

import keras
from keras import layers

from fer.evaluation.calibration import PROBABILITY_FLOOR
from fer.data.splits import IMAGE_SIZE, NUM_CLASSES
from fer.training.acceleration import BATCH_NORMS

INPUT_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)


@keras.saving.register_keras_serializable(package="fer")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs TensorFlow's fused kernel.

    Keras 3 computes batch norm from about ten elementwise ops, each a pass
    over the activations, forward and backward; TensorFlow's `FusedBatchNormV3`
    (a oneDNN primitive on x86) does it in one. Same weights, same config, same
    inference (Keras's own code); in training the outputs equal Keras's to float
    rounding, and the moving variance takes the biased batch variance, as Keras's
    does (the fused kernel returns the unbiased one). Where the kernel does not
    apply (inference, a frozen layer, a mask, renorm, an input that is not 4-D
    channels-last such as a dense head's, another Keras backend) Keras's own
    computation runs. Measured in BENCHMARKS.md (issue #28): a phase-2 training
    step 1.2-1.4x faster in float32, 2.15x in mixed bfloat16.

    Served models hold plain `BatchNormalization` layers instead
    (`plain_keras_config`), so they load without `fer`.

    Example:
        >>> layer = FusedBatchNormalization(momentum=0.9)
        >>> layer(keras.ops.ones((2, 4, 4, 3)), training=True).shape
        TensorShape([2, 4, 4, 3])
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self._fused_kernel_applies(inputs, mask)):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # Mixed precision: the kernel takes bfloat16 / float16 faces with float32 statistics.
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, tf.cast(self.gamma, tf.float32), tf.cast(self.beta, tf.float32),
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
        )
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = unbiased_variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)

    def _fused_kernel_applies(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and self.trainable and mask is None and not self.renorm and self.scale and self.center
            and len(inputs.shape) == 4 and self.axis in (-1, 3)
        )


def plain_keras_config(config):
    """A model config (nested dicts and lists) with every `FusedBatchNormalization` made a Keras `BatchNormalization`.

    Both compute the same at inference and hold the same weights in the same
    order, so a model rebuilt from the result takes the original's weights and
    loads anywhere Keras does.

    Example:
        >>> plain = keras.Model.from_config(plain_keras_config(network.get_config()))  # doctest: +SKIP
        >>> plain.set_weights(network.get_weights())  # doctest: +SKIP
    """
    if isinstance(config, list):
        return [plain_keras_config(value) for value in config]
    if not isinstance(config, dict):
        return config
    plain = {key: plain_keras_config(value) for key, value in config.items()}
    if plain.get("class_name") == FusedBatchNormalization.__name__ and "config" in plain:
        plain.update(module="keras.layers", class_name="BatchNormalization", registered_name=None)
    return plain


def _batch_norm(kind: str = "fused") -> layers.BatchNormalization:
    # Momentum 0.9 rather than Keras's 0.99: the moving statistics used at
    # inference then follow the fast-changing early network within a few dozen
    # steps. With 0.99 a short run (a few hundred steps: the synthetic default,
    # a quick check on real data) predicts one class in inference mode while
    # batch statistics would give 60%+.
    if kind not in BATCH_NORMS:
        raise ValueError(f"batch_norm must be one of {', '.join(BATCH_NORMS)}; got {kind!r}")
    return (FusedBatchNormalization if kind == "fused" else layers.BatchNormalization)(momentum=0.9)


def _softmax_output(num_classes: int) -> layers.Dense:
    # float32 whatever the dtype policy: under mixed precision a float16 softmax
    # rounds small probabilities to 0 and the loss to inf (Keras's mixed-precision guide).
    return layers.Dense(num_classes, activation="softmax", name="emotion", dtype="float32")


def _inputs() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    inputs = keras.Input(shape=INPUT_SHAPE, name="face")
    return inputs, layers.Rescaling(1.0 / 255, name="rescale")(inputs)


def build_baseline(num_classes: int = NUM_CLASSES, batch_norm: str = "fused") -> keras.Model:
    """Phase-1 baseline: a small CNN, 684,712 parameters (about an eighth of `final`).

    Three conv blocks (32, 64, 128 filters): Conv2D 3x3 -> BatchNorm -> ReLU ->
    MaxPool 2x2 -> Dropout 0.25, then Flatten -> Dense 128 -> BatchNorm ->
    ReLU -> Dropout 0.5 -> Dense softmax. One conv per block and a narrow head:
    the point of phase 1 is a quick, honest reference for phase 2 to beat.
    `batch_norm`: "fused" (`FusedBatchNormalization`, faster training) or
    "keras" (Keras's own layer); the same network either way.
    """
    inputs, x = _inputs()
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = _batch_norm(batch_norm)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, use_bias=False)(x)
    x = _batch_norm(batch_norm)(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = _softmax_output(num_classes)(x)
    return keras.Model(inputs, outputs, name="baseline")


def build_final(num_classes: int = NUM_CLASSES, l2: float = 1e-4, batch_norm: str = "fused") -> keras.Model:
    """Phase-2 final model: VGG-style, 5,873,096 parameters (2,816 non-trainable).

    Three blocks of [Conv2D 3x3 same -> ReLU -> BatchNorm] x 2 -> MaxPool 2x2 ->
    Dropout, with 64, 128 and 256 filters and dropout 0.2, 0.3, 0.4; then
    Flatten (6x6x256 = 9,216) -> Dense 512 with L2 -> ReLU -> BatchNorm ->
    Dropout 0.5 -> Dense softmax. `batch_norm` as for `build_baseline`.
    """
    inputs, x = _inputs()
    for filters, dropout in ((64, 0.2), (128, 0.3), (256, 0.4)):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = _batch_norm(batch_norm)(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(512, activation="relu", kernel_regularizer=keras.regularizers.l2(l2))(x)
    x = _batch_norm(batch_norm)(x)
    x = layers.Dropout(0.5)(x)
    outputs = _softmax_output(num_classes)(x)
    return keras.Model(inputs, outputs, name="final")


BUILDERS = {"baseline": build_baseline, "final": build_final}


@keras.saving.register_keras_serializable(package="fer")
class HorizontalFlip(layers.Layer):
    """Mirrors images left to right (always; for the random kind, see keras.layers.RandomFlip)."""

    def call(self, images):
        return keras.ops.flip(images, axis=-2)  # N x H x W x C: W is the second axis from the end


def with_flip_averaging(network: keras.Model) -> keras.Model:
    """`network` wrapped to predict the mean of a face's and its mirror's probabilities (test-time augmentation).

    The wrapper shares `network`'s weights, takes the same input and returns
    the same N x 8 probabilities, so it is served and evaluated like the plain
    network. A saved wrapper loads wherever `fer.models` is imported (it
    registers `HorizontalFlip`).

    Example:
        tta = with_flip_averaging(build_model("final"))
        probabilities = tta.predict(faces)  # == (net(faces) + net(faces[:, :, ::-1])) / 2
    """
    inputs = keras.Input(shape=network.input_shape[1:], name="face")
    mirrored = HorizontalFlip(name="mirror")(inputs)
    outputs = layers.Average(name="flip_average", dtype="float32")([network(inputs), network(mirrored)])
    return keras.Model(inputs, outputs, name=f"{network.name}_flip_tta")


@keras.saving.register_keras_serializable(package="fer")
class TemperatureScaling(layers.Layer):
    """Rescales probabilities to softmax(ln p / T): a softmax network's logits divided by `temperature`.

    Works on log-probabilities because the networks end in a softmax
    (`fer.evaluation.calibration` explains why that equals dividing the logits). The same
    floor as `fer.evaluation.calibration.apply_temperature` keeps ln 0 finite, so both
    give the same numbers. The most likely class never changes.
    """

    def __init__(self, temperature: float, **kwargs):
        kwargs.setdefault("dtype", "float32")  # like the softmax it follows, whatever the dtype policy
        super().__init__(**kwargs)
        temperature = float(temperature)
        if not temperature > 0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number above 0; got {temperature!r}")
        self.temperature = temperature

    def call(self, probabilities):
        log_p = keras.ops.log(keras.ops.maximum(probabilities, PROBABILITY_FLOOR))
        return keras.ops.softmax(log_p / self.temperature, axis=-1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def with_temperature(network: keras.Model, temperature: float) -> keras.Model:
    """`network` wrapped to serve temperature-scaled probabilities (`fer.evaluation.calibration.fit_temperature` finds T).

    Like `with_flip_averaging`: the same weights, the same input, N x 8
    probabilities out, so serving is unchanged; it wraps a flip-averaging
    network as well as a plain one. A saved wrapper loads wherever `fer.models`
    is imported (it registers `TemperatureScaling`).

    Example:
        calibrated = with_temperature(build_model("final"), 1.7)
        probabilities = calibrated.predict(faces)  # == fer.evaluation.calibration.apply_temperature(net(faces), 1.7)
    """
    inputs = keras.Input(shape=network.input_shape[1:], name="face")
    outputs = TemperatureScaling(temperature, name="temperature")(network(inputs))
    return keras.Model(inputs, outputs, name=f"{network.name}_calibrated")


@keras.saving.register_keras_serializable(package="fer")
class LogitAdjustment(layers.Layer):
    """Shifts probabilities to softmax(ln p + offsets): logit adjustment by the class prior.

    `offsets` are ``-tau * ln prior`` per class (`fer.evaluation.logit_adjustment.offsets`);
    the same floor as `fer.evaluation.logit_adjustment.adjust` keeps ln 0 finite, so both
    give the same numbers.
    """

    def __init__(self, offsets, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.offsets = [float(value) for value in offsets]

    def call(self, probabilities):
        log_p = keras.ops.log(keras.ops.maximum(probabilities, PROBABILITY_FLOOR))
        return keras.ops.softmax(log_p + keras.ops.convert_to_tensor(self.offsets, dtype=self.dtype), axis=-1)

    def get_config(self):
        return {**super().get_config(), "offsets": self.offsets}


def with_logit_adjustment(network: keras.Model, offsets) -> keras.Model:
    """`network` wrapped to serve prior-adjusted probabilities (`fer.evaluation.logit_adjustment.fit_tau` finds tau).

    Like `with_temperature`: the same weights and input, N x 8 probabilities
    out, so serving is unchanged. A saved wrapper loads wherever `fer.models`
    is imported (it registers `LogitAdjustment`).

    Example:
        adjusted = with_logit_adjustment(build_model("final"), offsets(prior, 0.4))
        probabilities = adjusted.predict(faces)  # == fer.evaluation.logit_adjustment.adjust(net(faces), prior, 0.4)
    """
    inputs = keras.Input(shape=network.input_shape[1:], name="face")
    outputs = LogitAdjustment(offsets, name="logit_adjustment")(network(inputs))
    return keras.Model(inputs, outputs, name=f"{network.name}_adjusted")


def build_model(name: str, batch_norm: str = "fused") -> keras.Model:
    """The model called `name` ("baseline" or "final"), its batch norm `batch_norm` ("fused" or "keras").

    Example:
        >>> build_model("final").count_params()
        5873096
    """
    if name not in BUILDERS:
        raise ValueError(f"model must be one of {', '.join(BUILDERS)}; got {name!r}")
    return BUILDERS[name](batch_norm=batch_norm)
