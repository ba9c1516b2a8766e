"""tf.data input pipeline: batching, shuffling, augmentation (training only) and prefetch.

Images stay uint8 until they are batched; augmentation runs once per batch
with one `fer.training.augment.RandomAffine` layer: every image's rotation, shifts,
shear, zoom and flip composed into one affine matrix and the batch warped
once, in parallel with training thanks to prefetch. Pixel scaling is the model's
first layer (see `fer.models`), so the pipeline feeds raw 0-255 values and a
served model takes the same input as training did.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from fer.training.augment import RandomAffine, from_config_augmentation
from fer.config import Augmentation
from fer.data.splits import Split


def build_augmenter(aug: Augmentation, seed: int) -> RandomAffine | None:
    """The one-warp RandomAffine layer for the configured transforms; None when all are off."""
    return from_config_augmentation(aug, seed)


def make_dataset(
    split: Split,
    batch_size: int,
    *,
    training: bool,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    repeat: bool = False,
    mixup_alpha: float = 0.0,
) -> tf.data.Dataset:
    """(images, targets) batches: images float32 Bx48x48x1 in 0-255, targets Bx8.

    training=True shuffles every epoch and applies `augmentation`;
    validation / test batches are neither shuffled nor augmented.

    repeat=True (training only) makes one endless dataset, epoch after epoch,
    each a new permutation: give `model.fit` `steps_per_epoch=batches_per_epoch(...)`.
    Keras then keeps one iterator for the whole run, so tf.data instantiates and
    optimizes the augmentation function once, instead of at the start of every
    epoch (40-60 ms each time on 2 CPU cores; BENCHMARKS.md). Without it, each
    iteration over the dataset is one epoch.

    Training batches come from one random permutation of the whole split per
    epoch (seeded by `seed`: new every epoch, the same every run), cut into
    batches of indices that are gathered from the split, rather than from a
    shuffle buffer filled image by image before each epoch's first batch
    (~12 ms less per epoch for 4,000 images; see BENCHMARKS.md). Batch i of an
    epoch is augmented with the stateless seed (epoch seed, i), so parallel
    map calls cannot change which batch gets which transforms.

    mixup_alpha > 0 (training only) then blends every augmented batch with a
    permutation of itself, faces and targets alike, with Keras's `MixUp` layer
    (weights from Beta(alpha, alpha)); its draws are stateless too, from the
    same batch seed.
    """
    images = split.images[..., np.newaxis]
    if not training:
        dataset = tf.data.Dataset.from_tensor_slices((images, split.targets)).batch(batch_size)
        return dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    n = len(split)
    num_batches = batches_per_epoch(n, batch_size)

    def epoch_order(epoch_seed):
        """The epoch's permutation as num_batches rows of indices (-1 pads the last), and each batch's seed."""
        # Seed (epoch seed, -1): batches use (epoch seed, i >= 0), so no draw shares a key with the shuffle.
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([epoch_seed, tf.constant(-1, tf.int64)])
        )
        padded = tf.concat([order, -tf.ones([num_batches * batch_size - n], tf.int64)], axis=0)
        batch_seeds = tf.stack([tf.fill([num_batches], epoch_seed), tf.range(num_batches, dtype=tf.int64)], axis=1)
        return tf.reshape(padded, [num_batches, batch_size]), batch_seeds

    # One random int64 per epoch (from `seed`): endless when repeating; else one epoch, and a new
    # permutation each time the dataset is iterated.
    epoch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    batches = (epoch_seeds if repeat else epoch_seeds.take(1)).map(epoch_order).unbatch()
    data = tf.data.Dataset.from_tensors((images, split.targets)).repeat()
    augmenter = build_augmenter(augmentation, seed) if augmentation is not None else None
    mixer = keras.layers.MixUp(alpha=mixup_alpha) if mixup_alpha else None

    def load(batch, data):
        (indices, batch_seed), (all_images, all_targets) = batch, data
        indices = indices[indices >= 0]
        batch = tf.gather(all_images, indices), tf.gather(all_targets, indices)
        batch = _to_float(*batch) if augmenter is None else _augment(augmenter, batch, batch_seed)
        return batch if mixer is None else _mix_up(mixer, batch, batch_seed)

    dataset = tf.data.Dataset.zip(batches, data).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def batches_per_epoch(size: int, batch_size: int) -> int:
    """How many batches one epoch over `size` images has (the last may be smaller)."""
    return -(-size // batch_size)


def _to_float(images, targets):
    return tf.cast(images, tf.float32), targets


def _augment(augmenter: RandomAffine, batch, batch_seed):
    images, targets = batch
    images = augmenter.augment(images, batch_seed)  # uint8 in, float32 out
    # Keep pixels in the range the model was built for (bilinear weights are
    # convex, so this is a guard for other interpolations and fill values).
    return tf.clip_by_value(images, 0.0, 255.0), targets


def _mix_up(mixer, batch, batch_seed):
    """Keras's MixUp on one batch, its partners and weights drawn from `batch_seed` (not the layer's generator).

    The layer's own draws come from a stateful seed generator, which tf.data's
    parallel map calls would consume in any order; the same draws made
    statelessly keep a run reproducible. Beta(a, a) is X / (X + Y) for X, Y ~ Gamma(a).
    """
    images, targets = batch
    size = tf.shape(images)[0]
    shuffle_seed, x_seed, y_seed = (tf.random.experimental.stateless_fold_in(batch_seed, k) for k in (1, 2, 3))
    x = tf.random.stateless_gamma([size], x_seed, alpha=mixer.alpha)
    y = tf.random.stateless_gamma([size], y_seed, alpha=mixer.alpha)
    transformation = {
        "mix_weight": x / (x + y),
        "permutation_order": tf.random.experimental.stateless_shuffle(tf.range(size, dtype=tf.int64), seed=shuffle_seed),
    }
    return mixer.transform_images(images, transformation), mixer.transform_labels(targets, transformation)
