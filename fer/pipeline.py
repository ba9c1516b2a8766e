"""tf.data input pipeline: batching, shuffling, augmentation (training only) and prefetch.

Images stay uint8 until they are batched; augmentation runs once per batch
with Keras preprocessing layers (vectorised over the batch, not per image),
in parallel with training thanks to prefetch. Pixel scaling is the model's
first layer (see `fer.models`), so the pipeline feeds raw 0-255 values and a
served model takes the same input as training did.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import layers

from fer.config import Augmentation
from fer.data.splits import Split


def build_augmenter(aug: Augmentation, seed: int) -> list[layers.Layer]:
    """Keras preprocessing layers for the configured transforms; inactive ones are left out."""
    steps: list[layers.Layer] = []
    if aug.horizontal_flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed))
    if aug.rotation:
        steps.append(layers.RandomRotation(aug.rotation / 360.0, fill_mode="nearest", seed=seed + 1))
    if aug.width_shift or aug.height_shift:
        steps.append(
            layers.RandomTranslation(aug.height_shift, aug.width_shift, fill_mode="nearest", seed=seed + 2)
        )
    if aug.shear:
        steps.append(layers.RandomShear(x_factor=aug.shear, y_factor=aug.shear, fill_mode="nearest", seed=seed + 3))
    if aug.zoom:
        steps.append(layers.RandomZoom(aug.zoom, fill_mode="nearest", seed=seed + 4))
    return steps


def make_dataset(
    split: Split,
    batch_size: int,
    *,
    training: bool,
    augmentation: Augmentation | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """(images, targets) batches: images float32 Bx48x48x1 in 0-255, targets Bx8.

    training=True shuffles every epoch and applies `augmentation`;
    validation / test batches are neither shuffled nor augmented.
    """
    images = split.images[..., np.newaxis]
    dataset = tf.data.Dataset.from_tensor_slices((images, split.targets))
    if training:
        dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training and augmentation is not None:
        augmenter = build_augmenter(augmentation, seed)
        if augmenter:
            dataset = dataset.map(
                lambda x, y: (_apply(augmenter, x), y), num_parallel_calls=tf.data.AUTOTUNE
            )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _to_float(images, targets):
    return tf.cast(images, tf.float32), targets


def _apply(augmenter: list[layers.Layer], images):
    for layer in augmenter:
        images = layer(images, training=True)
    # Interpolation can overshoot a little; keep pixels in the range the model was built for.
    return tf.clip_by_value(images, 0.0, 255.0)
