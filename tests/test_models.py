import keras
import numpy as np
import pytest

from fer.config import MODELS
from fer.models import BUILDERS, FusedBatchNormalization, build_model, plain_keras_config


def _non_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)


def test_final_model_has_exactly_the_specified_parameters():
    model = build_model("final")
    assert model.count_params() == 5_873_096
    assert _non_trainable(model) == 2_816


def test_final_model_flattens_to_9216_features_and_outputs_8_probabilities():
    model = build_model("final")
    flatten = next(layer for layer in model.layers if layer.name.startswith("flatten"))
    assert flatten.output.shape[-1] == 9_216
    assert model.input_shape == (None, 48, 48, 1)
    probabilities = model.predict(np.full((2, 48, 48, 1), 128, np.float32), verbose=0)
    assert probabilities.shape == (2, 8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_final_model_dropout_rises_from_0_2_and_head_uses_l2():
    model = build_model("final")
    rates = [layer.rate for layer in model.layers if layer.__class__.__name__ == "Dropout"]
    assert rates == [0.2, 0.3, 0.4, 0.5]
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert dense[0].units == 512 and dense[0].kernel_regularizer is not None


def test_baseline_is_clearly_smaller_than_final():
    assert build_model("baseline").count_params() < build_model("final").count_params() / 4


def test_unknown_model_name_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="baseline, final.*'vgg'"):
        build_model("vgg")


def test_config_knows_exactly_the_models_that_can_be_built():
    assert MODELS == tuple(BUILDERS)


@pytest.mark.slow
def test_inference_mode_does_not_collapse_after_a_short_run():
    """BatchNorm's moving statistics must keep up with a few dozen training steps.

    With Keras's default momentum (0.99) this baseline predicts a single class in
    inference mode after such a run (validation accuracy 0.125, chance), while its
    batch statistics would score well above it.
    """
    import keras

    from fer.data.synthetic import load_synthetic

    splits = load_synthetic(train_size=800, seed=1)
    keras.utils.set_random_seed(1)
    model = build_model("baseline")
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(splits.train.images[..., None].astype("float32"), splits.train.labels, epochs=3, batch_size=32, verbose=0)
    predicted = model.predict(splits.val.images[..., None].astype("float32"), verbose=0).argmax(axis=1)
    assert len(np.unique(predicted)) >= 4
    assert (predicted == splits.val.labels).mean() > 0.3


def test_flip_averaging_predicts_the_mean_of_the_face_and_its_mirror_and_survives_saving(tmp_path):
    from fer.models import build_model, with_flip_averaging
    from fer.serving.pyfunc import load_network

    keras.utils.set_random_seed(0)
    network = build_model("baseline")
    faces = np.random.default_rng(0).uniform(0, 255, (5, 48, 48, 1)).astype(np.float32)
    plain, mirrored = network.predict_on_batch(faces), network.predict_on_batch(faces[:, :, ::-1])
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the test means something: the mirror differs
    tta = with_flip_averaging(network)
    np.testing.assert_allclose(tta.predict_on_batch(faces), (plain + mirrored) / 2, atol=1e-6)
    assert tta.count_params() == network.count_params()  # the same weights, shared

    tta.save(tmp_path / "tta.keras")
    loaded = load_network(str(tmp_path / "tta.keras"))
    np.testing.assert_allclose(loaded.predict_on_batch(faces), (plain + mirrored) / 2, atol=1e-6)


PRIOR = np.array([0.3, 0.25, 0.15, 0.12, 0.1, 0.04, 0.03, 0.01])


def _temperature_2_5():
    from fer.evaluation.calibration import apply_temperature
    from fer.models import with_temperature

    return (lambda network: with_temperature(network, 2.5)), (lambda p: apply_temperature(p, 2.5))


def _logit_adjustment_0_8():
    from fer.evaluation.logit_adjustment import adjust, offsets
    from fer.models import with_logit_adjustment

    return (lambda network: with_logit_adjustment(network, offsets(PRIOR, 0.8))), (lambda p: adjust(p, PRIOR, 0.8))


@pytest.mark.parametrize("post_processing", [_temperature_2_5, _logit_adjustment_0_8],
                         ids=["temperature", "logit-adjustment"])
def test_a_post_processing_wrapper_serves_what_its_numpy_twin_computes_and_survives_saving(tmp_path, post_processing):
    """with_temperature / with_logit_adjustment around a flip network: fer.evaluation.calibration's and
    fer.evaluation.logit_adjustment's numbers, no weights of their own, the same after saving and loading."""
    from fer.models import with_flip_averaging
    from fer.serving.pyfunc import load_network

    wrap, twin = post_processing()
    keras.utils.set_random_seed(0)
    network = with_flip_averaging(build_model("baseline"))
    faces = np.random.default_rng(0).uniform(0, 255, (5, 48, 48, 1)).astype(np.float32)
    plain = network.predict_on_batch(faces)
    expected = twin(plain)
    assert np.abs(expected - plain).max() > 1e-3  # the test means something: the wrapper moves the probabilities
    wrapped = wrap(network)
    np.testing.assert_allclose(wrapped.predict_on_batch(faces), expected, atol=1e-6)
    assert wrapped.count_params() == network.count_params()

    wrapped.save(tmp_path / "wrapped.keras")
    loaded = load_network(str(tmp_path / "wrapped.keras"))
    np.testing.assert_allclose(loaded.predict_on_batch(faces), expected, atol=1e-6)


def test_temperature_scaling_keeps_every_face_s_emotion(tmp_path):
    from fer.models import with_flip_averaging, with_temperature

    keras.utils.set_random_seed(0)
    network = with_flip_averaging(build_model("baseline"))
    faces = np.random.default_rng(0).uniform(0, 255, (5, 48, 48, 1)).astype(np.float32)
    calibrated = with_temperature(network, 2.5)
    np.testing.assert_array_equal(calibrated.predict_on_batch(faces).argmax(axis=1),
                                  network.predict_on_batch(faces).argmax(axis=1))
    assert calibrated.get_layer("temperature").temperature == 2.5


def test_a_temperature_layer_refuses_a_temperature_that_is_not_above_zero():
    from fer.models import TemperatureScaling

    with pytest.raises(ValueError, match="temperature must be a finite number above 0; got 0.0"):
        TemperatureScaling(0)


# -- fused batch norm: the same layer as Keras's, computed in one pass ----------------------------


def _twin_batch_norms(channels: int, dtype_policy: str = "float32"):
    """A Keras BatchNormalization and a FusedBatchNormalization with the same (non-trivial) weights."""
    from fer.training.acceleration import dtype_policy as policy

    with policy(dtype_policy):
        keras_layer = keras.layers.BatchNormalization(momentum=0.9)
        fused_layer = FusedBatchNormalization(momentum=0.9)
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels), rng.normal(size=channels),
               rng.uniform(0.5, 2.0, channels)]  # gamma, beta, moving mean, moving variance
    for layer in (keras_layer, fused_layer):
        layer.build((None, 5, 5, channels))
        layer.set_weights([w.astype(np.float32) for w in weights])
    return keras_layer, fused_layer


def _train_step(layer, inputs):
    """One training-mode call: the outputs, the gradients of a weighted sum of them by input, gamma and beta."""
    import tensorflow as tf

    inputs = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        weights = tf.reshape(tf.range(tf.size(outputs), dtype=tf.float32), tf.shape(outputs)) / 100.0
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * weights)  # uneven weights: a non-trivial gradient
    gradients = tape.gradient(loss, [inputs, layer.gamma.value, layer.beta.value])
    return outputs, gradients


def test_fused_batch_norm_trains_like_keras_s_own_layer_moving_statistics_included():
    # 2x2x2 values per channel: the fused kernel's unbiased variance is 8/7 of Keras's biased one,
    # so a layer that forgot the correction would be 14 % off in its batch-variance term.
    faces = np.random.default_rng(1).normal(2.0, 3.0, size=(2, 2, 2, 3)).astype(np.float32)
    keras_layer, fused_layer = _twin_batch_norms(3)
    keras_out, keras_grads = _train_step(keras_layer, faces)
    fused_out, fused_grads = _train_step(fused_layer, faces)
    np.testing.assert_allclose(fused_out, keras_out, rtol=1e-5, atol=1e-5)
    for fused_grad, keras_grad in zip(fused_grads, keras_grads):
        np.testing.assert_allclose(fused_grad, keras_grad, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused_layer.moving_mean, keras_layer.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(fused_layer.moving_variance, keras_layer.moving_variance, rtol=1e-6)


def test_fused_batch_norm_in_inference_and_on_a_dense_head_is_keras_s_computation():
    keras_layer, fused_layer = _twin_batch_norms(3)
    faces = np.random.default_rng(2).normal(size=(4, 5, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(fused_layer(faces, training=False), keras_layer(faces, training=False))
    dense_keras, dense_fused = keras.layers.BatchNormalization(), FusedBatchNormalization()
    features = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    np.testing.assert_array_equal(dense_fused(features, training=True), dense_keras(features, training=True))


def test_fused_batch_norm_under_mixed_bfloat16_keeps_bfloat16_activations_and_float32_statistics():
    faces = np.random.default_rng(4).normal(size=(8, 5, 5, 3)).astype(np.float32)
    keras_layer, fused_layer = _twin_batch_norms(3, "mixed_bfloat16")
    keras_out, _ = _train_step(keras_layer, faces)
    fused_out, _ = _train_step(fused_layer, faces)
    assert fused_out.dtype == keras_out.dtype == "bfloat16"
    assert fused_layer.moving_variance.dtype == "float32"
    np.testing.assert_allclose(np.float32(fused_out), np.float32(keras_out), atol=0.05)  # bfloat16: 8 bits of mantissa
    np.testing.assert_allclose(fused_layer.moving_variance, keras_layer.moving_variance, rtol=1e-3)


def test_networks_use_fused_batch_norm_unless_keras_s_is_asked_for():
    def kinds(model):
        return {type(layer) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}

    assert kinds(build_model("final")) == {FusedBatchNormalization}
    assert kinds(build_model("baseline", batch_norm="keras")) == {keras.layers.BatchNormalization}
    assert build_model("final", batch_norm="keras").count_params() == 5_873_096
    with pytest.raises(ValueError, match="batch_norm must be one of fused, keras; got 'sync'"):
        build_model("final", batch_norm="sync")


def test_a_plain_keras_config_rebuilds_the_network_with_keras_s_layer_and_the_same_predictions():
    network = build_model("baseline")
    plain = keras.Model.from_config(plain_keras_config(network.get_config()))
    plain.set_weights(network.get_weights())
    assert FusedBatchNormalization not in {type(layer) for layer in plain.layers}
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers) == 4
    faces = np.random.default_rng(5).uniform(0, 255, size=(3, 48, 48, 1)).astype(np.float32)
    np.testing.assert_array_equal(plain.predict(faces, verbose=0), network.predict(faces, verbose=0))
