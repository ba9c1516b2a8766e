"""The embedded synthetic face generator: deterministic, balanced, and learnable but not trivial."""

import numpy as np
import pytest

from fer.data.splits import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, LabelMode, Split, Splits
from fer.data.synthetic import load_synthetic, make_faces


def _standardize(images: np.ndarray) -> np.ndarray:
    """Per-image zero mean, unit variance, so lighting jitter does not swamp the features."""
    x = images.astype(np.float32)
    return (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)


def _image_set(split: Split) -> set[bytes]:
    return {image.tobytes() for image in split.images}


def test_same_seed_gives_identical_arrays():
    images_a, labels_a = make_faces(40, seed=7)
    images_b, labels_b = make_faces(40, seed=7)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)


def test_different_seed_gives_different_arrays():
    images_a, labels_a = make_faces(40, seed=7)
    images_b, labels_b = make_faces(40, seed=8)
    assert not np.array_equal(images_a, images_b)
    assert not np.array_equal(labels_a, labels_b)


def test_shapes_and_dtypes():
    images, labels = make_faces(20, seed=0)
    assert images.shape == (20, IMAGE_SIZE, IMAGE_SIZE)
    assert images.dtype == np.uint8
    assert labels.shape == (20,)
    assert labels.dtype == np.int64


def test_zero_faces_is_empty_and_negative_is_an_error():
    images, labels = make_faces(0)
    assert images.shape == (0, IMAGE_SIZE, IMAGE_SIZE) and labels.shape == (0,)
    with pytest.raises(ValueError, match="n must be"):
        make_faces(-1)


@pytest.mark.parametrize("n", [8, 83, 400])
def test_classes_are_balanced_and_all_present(n):
    _, labels = make_faces(n, seed=3)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    assert len(counts) == NUM_CLASSES
    assert counts.min() >= 1
    assert counts.max() - counts.min() <= 1


def test_labels_are_shuffled_not_round_robin():
    _, labels = make_faces(80, seed=0)
    assert not np.array_equal(labels, np.arange(80) % NUM_CLASSES)


def test_images_are_not_blank():
    images, _ = make_faces(64, seed=1)
    per_image_std = images.reshape(len(images), -1).std(axis=1)
    assert per_image_std.min() > 10
    # Each image uses a real range of grey levels (head, background and dark features).
    spread = images.reshape(len(images), -1).max(axis=1).astype(int) - images.reshape(len(images), -1).min(axis=1)
    assert spread.min() > 60


def test_class_mean_images_separate_held_out_faces():
    """Classes differ on average: class-mean images alone classify new faces far above chance."""
    images, labels = make_faces(800, seed=0)
    x = _standardize(images)
    class_means = np.stack([x[labels == c].mean(axis=0) for c in range(NUM_CLASSES)])

    held_out, held_out_labels = make_faces(400, seed=100)
    distances = ((_standardize(held_out)[:, None] - class_means[None]) ** 2).sum(axis=(2, 3))
    accuracy = (distances.argmin(axis=1) == held_out_labels).mean()
    assert accuracy > 0.3, f"nearest-class-mean accuracy {accuracy:.3f} (chance is {1 / NUM_CLASSES:.3f})"


def test_open_mouth_classes_have_darker_mouths():
    images, labels = make_faces(800, seed=0)
    x = _standardize(images)
    mouth = x[:, 30:42, 16:32].mean(axis=(1, 2))

    def mouth_mean(name):
        return mouth[labels == EMOTIONS.index(name)].mean()

    for open_mouth in ("surprise", "fear"):
        for closed_mouth in ("neutral", "anger"):
            assert mouth_mean(open_mouth) < mouth_mean(closed_mouth) - 0.1, (open_mouth, closed_mouth)


def test_load_synthetic_default_sizes_and_metadata():
    splits = load_synthetic(train_size=100, seed=0)
    assert isinstance(splits, Splits)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 20, 20)
    assert splits.source == "synthetic"
    assert splits.location == "synthetic:100"
    assert splits.label_mode is LabelMode.MAJORITY
    assert splits.class_names == EMOTIONS
    for _, split in splits.items():
        np.testing.assert_array_equal(split.targets.argmax(axis=1), split.labels)
        np.testing.assert_array_equal(split.targets.sum(axis=1), 1.0)


def test_load_synthetic_small_and_explicit_sizes():
    small = load_synthetic(train_size=16)
    assert (len(small.val), len(small.test)) == (8, 8)
    explicit = load_synthetic(train_size=16, val_size=24, test_size=0)
    assert (len(explicit.val), len(explicit.test)) == (24, 0)
    assert explicit.eval_split_name == "val"


def test_load_synthetic_label_mode_is_parsed():
    assert load_synthetic(train_size=16, label_mode="probability").label_mode is LabelMode.PROBABILITY
    with pytest.raises(ValueError, match="label_mode"):
        load_synthetic(train_size=16, label_mode="votes")


def test_load_synthetic_is_deterministic_and_seeded():
    a = load_synthetic(train_size=40, seed=5)
    b = load_synthetic(train_size=40, seed=5)
    c = load_synthetic(train_size=40, seed=6)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.images, c.train.images)


def test_splits_share_no_images():
    splits = load_synthetic(train_size=400, seed=0)
    train, val, test = (_image_set(split) for split in (splits.train, splits.val, splits.test))
    assert len(train) == len(splits.train)  # no duplicates within a split either
    assert not train & val
    assert not train & test
    assert not val & test


@pytest.mark.slow
def test_small_cnn_learns_it_but_not_instantly():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    splits = load_synthetic(train_size=800, seed=0)
    model = keras.Sequential(
        [
            keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(
        splits.train.images[..., None],
        splits.train.targets,
        validation_data=(splits.val.images[..., None], splits.val.targets),
        epochs=3,
        batch_size=32,
        verbose=0,
    )
    val_accuracy = history.history["val_accuracy"]
    assert val_accuracy[-1] >= 0.4, val_accuracy  # learnable (chance is 0.125)
    assert val_accuracy[0] < 0.9, val_accuracy  # but not a lookup after one epoch
