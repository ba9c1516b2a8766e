"""RandomAffine: one composed affine warp per image (fer.training.augment), and the pipeline that uses it."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer.training.augment import RandomAffine, from_config_augmentation
from fer.config import Augmentation
from fer.data.splits import Split
from fer.data.synthetic import make_faces
from fer.training.pipeline import make_dataset

SIZE = 48
CENTRE = (SIZE - 1) / 2  # pixel centres at integer coordinates


@pytest.fixture(scope="module")
def faces():
    images, labels = make_faces(64, seed=3)
    return images[..., np.newaxis].astype(np.float32), labels


def params(batch=1, angle=0.0, shift_x=0.0, shift_y=0.0, shear=0.0, zoom=1.0, flip=0.0):
    """Transform parameters as RandomAffine.draw returns them, the same for every image."""
    values = dict(angle=angle, shift_x=shift_x, shift_y=shift_y, shear=shear, zoom=zoom, flip=flip)
    return {name: tf.fill([batch], float(value)) for name, value in values.items()}


def dot(x, y, value=255.0, batch=1):
    image = np.zeros((batch, SIZE, SIZE, 1), np.float32)
    image[:, y, x, 0] = value
    return image


def blob(x, y, sigma=1.5):
    """A smooth spot centred at (x, y), so that bilinear resampling keeps its centroid."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    return (255 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))).astype(np.float32)[None, ..., None]


def centroids(images):
    """(x, y) intensity centroid of each image in a batch."""
    images = np.asarray(images)[..., 0]
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    total = images.sum(axis=(1, 2))
    return np.stack([(images * xs).sum(axis=(1, 2)) / total, (images * ys).sum(axis=(1, 2)) / total], axis=1)


def forward_rotation(x, y, degrees):
    """Where (x, y) goes when the content turns `degrees` counter-clockwise on screen about the centre."""
    t = math.radians(degrees)
    dx, dy = x - CENTRE, y - CENTRE  # y grows downwards
    return CENTRE + math.cos(t) * dx + math.sin(t) * dy, CENTRE - math.sin(t) * dx + math.cos(t) * dy


def test_inference_is_the_identity(faces):
    layer = RandomAffine(rotation=30, width_shift=0.2, height_shift=0.2, shear=0.3, zoom=0.3, horizontal_flip=True)
    np.testing.assert_array_equal(layer(faces[0], training=False).numpy(), faces[0])


def test_zero_ranges_leave_training_batches_unchanged(faces):
    layer = RandomAffine(seed=1)  # every range 0, no flip: the warp runs with the identity matrix
    np.testing.assert_array_equal(layer(faces[0], training=True).numpy(), faces[0])


def test_flip_mirrors_left_right(faces):
    layer = RandomAffine(horizontal_flip=True)
    batch = faces[0][:8]
    np.testing.assert_array_equal(layer.transform(batch, params(8, flip=1.0)).numpy(), batch[:, :, ::-1, :])
    np.testing.assert_array_equal(layer.transform(batch, params(8, flip=0.0)).numpy(), batch)


def test_random_flip_gives_each_image_either_itself_or_its_mirror_and_both_happen(faces):
    batch = faces[0]
    out = RandomAffine(horizontal_flip=True, seed=5)(batch, training=True).numpy()
    same = np.all(out == batch, axis=(1, 2, 3))
    mirrored = np.all(out == batch[:, :, ::-1, :], axis=(1, 2, 3))
    assert np.all(same | mirrored)
    assert same.any() and mirrored.any()  # 64 fair coins


@pytest.mark.parametrize("dx, dy", [(3, 0), (0, -5), (-4, 2)])
def test_a_shift_of_k_pixels_moves_a_dot_by_k_pixels(dx, dy):
    layer = RandomAffine(width_shift=0.2, height_shift=0.2)
    out = layer.transform(dot(20, 24), params(shift_x=dx / SIZE, shift_y=dy / SIZE)).numpy()[0, ..., 0]
    assert out[24 + dy, 20 + dx] == 255.0
    assert np.count_nonzero(out) == 1


def test_rotation_by_90_degrees_is_exact_about_the_centre():
    layer = RandomAffine(rotation=90)
    out = layer.transform(dot(30, 20), params(angle=90.0)).numpy()[0, ..., 0]
    x, y = forward_rotation(30, 20, 90.0)  # (20, 17): a quarter turn maps pixel centres onto pixel centres
    assert (x, y) == pytest.approx((20.0, 17.0))
    # float32 cos(90 degrees) is 4e-8, not 0: the dot lands where expected up to that rounding.
    expected = dot(20, 17)[0, ..., 0]
    np.testing.assert_allclose(out, expected, atol=0.01)


@pytest.mark.parametrize("degrees", [30.0, -12.5])
def test_rotation_moves_a_spot_where_the_rotation_matrix_says(degrees):
    layer = RandomAffine(rotation=45)
    out = layer.transform(blob(33, 17), params(angle=degrees))
    np.testing.assert_allclose(centroids(out)[0], forward_rotation(33, 17, degrees), atol=0.1)


def test_zoom_and_shear_move_a_spot_as_documented():
    layer = RandomAffine(zoom=0.5, shear=0.5)
    zoomed = layer.transform(blob(30, 20), params(zoom=1.2))
    np.testing.assert_allclose(centroids(zoomed)[0], (CENTRE + 1.2 * 6.5, CENTRE - 1.2 * 3.5), atol=0.1)
    sheared = layer.transform(blob(23.5, 15.5), params(shear=0.25))  # 8 px above the centre
    np.testing.assert_allclose(centroids(sheared)[0], (23.5 + 0.25 * -8, 15.5), atol=0.1)


def test_drawn_parameters_stay_within_the_configured_ranges():
    layer = RandomAffine(rotation=20, width_shift=0.1, height_shift=0.2, shear=0.3, zoom=0.15, horizontal_flip=True)
    drawn = {name: [] for name in ("angle", "shift_x", "shift_y", "shear", "zoom", "flip")}
    for i in range(20):
        for name, values in layer.draw(1000, tf.constant([i, 7], tf.int64)).items():
            drawn[name].append(values.numpy())
    drawn = {name: np.concatenate(values) for name, values in drawn.items()}
    for name, low, high in [("angle", -20, 20), ("shift_x", -0.1, 0.1), ("shift_y", -0.2, 0.2),
                            ("shear", -0.3, 0.3), ("zoom", 0.85, 1.15)]:
        values = drawn[name]
        assert low <= values.min() and values.max() <= high, name
        # ... and cover the range (20,000 uniform draws)
        assert values.min() < low + 0.01 * (high - low) and values.max() > high - 0.01 * (high - low), name
    assert set(np.unique(drawn["flip"])) == {0.0, 1.0}
    assert 0.45 < drawn["flip"].mean() < 0.55


def test_random_shifts_never_move_a_dot_further_than_the_configured_fraction():
    layer = RandomAffine(width_shift=0.1, seed=11)  # at most 4.8 px sideways, never up or down
    spots = np.repeat(blob(CENTRE, CENTRE), 64, axis=0)
    moves = np.concatenate([centroids(layer(spots, training=True)) - CENTRE for _ in range(8)])
    assert np.abs(moves[:, 0]).max() <= 0.1 * SIZE + 1e-3
    assert np.abs(moves[:, 0]).max() > 4.0  # the range is used, not just a corner of it
    np.testing.assert_allclose(moves[:, 1], 0.0, atol=1e-3)


def test_output_dtype_shape_and_range(faces):
    layer = RandomAffine(rotation=15, width_shift=0.1, height_shift=0.1, shear=0.1, zoom=0.1,
                         horizontal_flip=True, seed=0)
    uint8_batch = faces[0].astype(np.uint8)
    out = layer(uint8_batch, training=True)
    assert out.dtype == tf.float32 and out.shape == (64, SIZE, SIZE, 1)
    # Bilinear weights are convex and "nearest" fill repeats edge pixels: nothing leaves the input's range.
    assert out.numpy().min() >= uint8_batch.min() and out.numpy().max() <= uint8_batch.max()
    single = layer(faces[0][0], training=True)
    assert single.shape == (SIZE, SIZE, 1)
    assert not np.array_equal(out.numpy(), uint8_batch.astype(np.float32))


def test_seeded_layers_repeat_and_different_seeds_differ(faces):
    settings = dict(rotation=15, width_shift=0.1, height_shift=0.1, shear=0.1, zoom=0.1, horizontal_flip=True)
    a, b, c = RandomAffine(**settings, seed=7), RandomAffine(**settings, seed=7), RandomAffine(**settings, seed=8)
    first = [a(faces[0], training=True).numpy() for _ in range(2)]
    second = [b(faces[0], training=True).numpy() for _ in range(2)]
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], first[1])  # each call draws new transforms
    assert not np.array_equal(first[0], c(faces[0], training=True).numpy())
    seed = tf.constant([3, 4], tf.int64)
    np.testing.assert_array_equal(a.augment(faces[0], seed).numpy(), c.augment(faces[0], seed).numpy())


def test_works_inside_tf_data_map(faces):
    layer = RandomAffine(rotation=15, width_shift=0.1, horizontal_flip=True, seed=0)
    dataset = tf.data.Dataset.from_tensor_slices(faces[0]).batch(16).map(
        lambda images: layer(images, training=True), num_parallel_calls=tf.data.AUTOTUNE
    )
    batches = list(dataset.as_numpy_iterator())
    assert [b.shape for b in batches] == [(16, SIZE, SIZE, 1)] * 4
    assert not np.array_equal(np.concatenate(batches), faces[0])


def _split(faces):
    images, labels = faces
    return Split.from_labels(images[..., 0].astype(np.uint8), labels)


def test_make_dataset_augments_training_batches_reproducibly(faces):
    split = _split(faces)
    aug = Augmentation()

    def epochs(dataset, n=2):
        return [np.concatenate([x for x, _ in dataset.as_numpy_iterator()]) for _ in range(n)]

    run_1 = epochs(make_dataset(split, 16, training=True, augmentation=aug, seed=5))
    run_2 = epochs(make_dataset(split, 16, training=True, augmentation=aug, seed=5))
    for a, b in zip(run_1, run_2):
        np.testing.assert_array_equal(a, b)  # the same seed, the same batches, whatever the thread timing
    assert not np.array_equal(run_1[0], run_1[1])  # a new shuffle and new transforms each epoch
    other_seed = epochs(make_dataset(split, 16, training=True, augmentation=aug, seed=6), n=1)
    assert not np.array_equal(other_seed[0], run_1[0])
    x, y = next(iter(make_dataset(split, 16, training=True, augmentation=aug, seed=5)))
    assert x.dtype == tf.float32 and x.shape == (16, SIZE, SIZE, 1) and y.shape == (16, 8)
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255.0


def test_make_dataset_training_epochs_hold_every_image_once_in_a_new_order(faces):
    split = _split(faces)
    dataset = make_dataset(split, 24, training=True, seed=2)  # 64 images: batches of 24, 24, 16
    epochs = [list(dataset.as_numpy_iterator()) for _ in range(2)]
    for batches in epochs:
        assert [x.shape[0] for x, _ in batches] == [24, 24, 16]
        images = np.concatenate([x for x, _ in batches])[..., 0]
        targets = np.concatenate([y for _, y in batches])
        order = [int(np.flatnonzero((split.images == image).all(axis=(1, 2)))[0]) for image in images]
        assert sorted(order) == list(range(64))  # a permutation: each image once
        np.testing.assert_array_equal(targets, split.targets[order])  # labels travel with their images
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])


def test_make_dataset_leaves_evaluation_batches_alone(faces):
    split = _split(faces)
    out = np.concatenate([x for x, _ in make_dataset(split, 16, training=False, augmentation=Augmentation())])
    np.testing.assert_array_equal(out, split.images[..., np.newaxis].astype(np.float32))


def test_a_model_with_the_layer_saves_and_loads(tmp_path, faces):
    inputs = keras.Input((SIZE, SIZE, 1))
    x = RandomAffine(rotation=15, width_shift=0.1, height_shift=0.1, shear=0.1, zoom=0.1,
                     horizontal_flip=True, seed=3, name="augment")(inputs)
    outputs = keras.layers.Dense(8, activation="softmax")(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(x)))
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("augment")
    assert isinstance(layer, RandomAffine)
    assert layer.get_config() == model.get_layer("augment").get_config()
    np.testing.assert_allclose(loaded.predict(faces[0], verbose=0), model.predict(faces[0], verbose=0), rtol=1e-6)
    assert loaded.get_layer("augment")(faces[0], training=True).shape == faces[0].shape


def test_model_fit_augments_and_evaluate_does_not(faces):
    """model.fit runs the layer in training mode inside Keras's (possibly XLA-compiled) train step.

    With a frozen linear read-out (learning rate 0) and targets computed without augmentation,
    the loss is zero exactly when the layer leaves the images alone: evaluate (inference) must
    give zero, fit (training) must not.
    """
    images, _ = faces
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 1)),
        RandomAffine(rotation=15, width_shift=0.1, horizontal_flip=True, seed=0),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Flatten(),
        keras.layers.Dense(4, kernel_initializer=keras.initializers.RandomNormal(seed=1)),
    ])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse")
    targets = model.predict(images, verbose=0)  # inference: no augmentation
    assert model.evaluate(images, targets, batch_size=16, verbose=0) < 1e-8
    history = model.fit(images, targets, batch_size=16, epochs=1, verbose=0)
    assert history.history["loss"][0] > 1e-3


def test_config_round_trip_and_validation():
    layer = RandomAffine(rotation=10, width_shift=0.05, zoom=0.2, horizontal_flip=True, fill_mode="reflect", seed=9)
    config = layer.get_config()
    assert RandomAffine.from_config(config).get_config() == config
    assert config["augmentation"]["rotation"] == 10 and config["fill_mode"] == "reflect" and config["seed"] == 9
    with pytest.raises(ValueError, match="width_shift"):
        RandomAffine(width_shift=1.5)
    with pytest.raises(ValueError, match="fill_mode"):
        RandomAffine(fill_mode="smear")


def test_from_config_augmentation():
    assert from_config_augmentation(Augmentation(0, 0, 0, 0, 0, False), seed=1) is None
    layer = from_config_augmentation(Augmentation(), seed=4)
    assert isinstance(layer, RandomAffine)
    assert layer.augmentation == Augmentation()  # the configuration's object itself, every transform
    assert layer.fill_mode == "nearest" and layer.seed == 4
    only_flip = from_config_augmentation(Augmentation(0, 0, 0, 0, 0, True), seed=1)
    assert only_flip is not None and only_flip.augmentation.horizontal_flip


def test_transforms_are_one_object_or_keywords_and_round_trip_through_get_config():
    aug = Augmentation(rotation=12.0, zoom=0.2, horizontal_flip=False)
    layer = RandomAffine(aug, seed=3)
    assert layer.augmentation is aug
    assert RandomAffine.from_config(layer.get_config()).augmentation == aug
    keywords = RandomAffine(rotation=12.0, zoom=0.2)  # standalone: the transforms not named are off
    assert keywords.augmentation == Augmentation(12.0, 0.0, 0.0, 0.0, 0.2, False)
    with pytest.raises(ValueError, match="not both"):
        RandomAffine(aug, rotation=5)
    with pytest.raises(ValueError, match=r"rotation must be degrees in \[0, 180\]; got 200"):
        RandomAffine(Augmentation(rotation=200))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("fill_mode", ["nearest", "constant"])
def test_compiled_warp_samples_like_tensorflows_projective_transform_kernel(faces, fill_mode, channels):
    """The XLA warp against tf.raw_ops.ImageProjectiveTransformV3 (the kernel behind
    keras.ops.image.affine_transform) on the same matrices, strong transforms included."""
    from fer.training.augment import inverse_matrices

    images = faces[0] if channels == 1 else np.concatenate([faces[0], 255 - faces[0], faces[0][:, ::-1]], axis=3)
    layer = RandomAffine(rotation=60, width_shift=0.4, height_shift=0.4, shear=0.5, zoom=0.5,
                         horizontal_flip=True, fill_mode=fill_mode, fill_value=17.0)
    drawn = layer.draw(64, tf.constant([1, 2], tf.int64))
    ours = layer.transform(images, drawn).numpy()
    reference = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=inverse_matrices(drawn, SIZE, SIZE), output_shape=[SIZE, SIZE],
        fill_value=17.0, interpolation="BILINEAR", fill_mode=fill_mode.upper(),
    ).numpy()
    assert ours.shape == reference.shape == images.shape
    np.testing.assert_allclose(ours, reference, atol=0.01)  # float rounding of the weights only


def test_other_fill_modes_and_nearest_interpolation_use_tensorflows_kernel(faces):
    for layer in (RandomAffine(rotation=30, fill_mode="reflect", seed=1),
                  RandomAffine(rotation=30, interpolation="nearest", seed=1)):
        out = layer(faces[0], training=True).numpy()
        assert out.shape == faces[0].shape and out.dtype == np.float32
        assert not np.array_equal(out, faces[0])
    nearest = RandomAffine(width_shift=0.2, interpolation="nearest")
    moved = nearest.transform(dot(20, 24), params(shift_x=3 / SIZE)).numpy()[0, ..., 0]
    assert moved[24, 23] == 255.0 and np.count_nonzero(moved) == 1


def test_repeated_training_dataset_gives_a_new_permutation_every_epoch_from_one_iterator(faces):
    from fer.training.pipeline import batches_per_epoch

    split = _split(faces)
    steps = batches_per_epoch(len(split), 24)  # 64 images: batches of 24, 24, 16
    assert steps == 3

    def three_epochs():
        iterator = iter(make_dataset(split, 24, training=True, augmentation=Augmentation(), seed=2, repeat=True))
        return [[next(iterator) for _ in range(steps)] for _ in range(3)]

    epochs, again = three_epochs(), three_epochs()
    for batches, same in zip(epochs, again):
        assert [x.shape[0] for x, _ in batches] == [24, 24, 16]  # epochs do not run into each other
        np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), np.concatenate([x for x, _ in same]))
        labels = np.concatenate([y for _, y in batches]).argmax(axis=1)
        assert sorted(labels) == sorted(split.labels)  # every image once per epoch
    firsts = [np.concatenate([y for _, y in batches]).argmax(axis=1) for batches in epochs]
    assert not np.array_equal(firsts[0], firsts[1]) and not np.array_equal(firsts[1], firsts[2])


def test_mixup_blends_each_face_with_another_and_its_target_by_the_same_weight():
    # Every face one flat grey level per class (class k: 20 k + 10), so a blended face's
    # pixels must equal its blended target's weights times those levels.
    labels = np.arange(40) % 8
    levels = 20.0 * np.arange(8) + 10.0
    images = np.broadcast_to(levels[labels][:, None, None], (40, SIZE, SIZE)).astype(np.uint8)
    split = Split.from_labels(images, labels)
    x, y = next(iter(make_dataset(split, 40, training=True, seed=3, mixup_alpha=0.4)))
    x, y = x.numpy()[..., 0], y.numpy()
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(x[:, 0, 0], y @ levels, rtol=1e-5)
    np.testing.assert_allclose(x.min(axis=(1, 2)), x.max(axis=(1, 2)))  # a blend of flat faces is flat
    assert (np.count_nonzero(y > 1e-6, axis=1) > 1).sum() >= 30  # most faces did blend with another class
    again = next(iter(make_dataset(split, 40, training=True, seed=3, mixup_alpha=0.4)))
    np.testing.assert_array_equal(again[1], y)  # stateless: the same seed, the same blends


def test_no_mixup_keeps_one_hot_targets():
    images, labels = make_faces(32, seed=4)
    _, y = next(iter(make_dataset(Split.from_labels(images, labels), 32, training=True, seed=3)))
    assert set(np.unique(y.numpy())) == {0.0, 1.0}
