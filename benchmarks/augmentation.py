"""Augmentation throughput: images per second of four ways to apply the same random transforms.

    python benchmarks/augmentation.py [--images N] [--batch 64] [--seconds 1.5] [--rounds 5]

(a) reference: Keras's legacy `ImageDataGenerator` (keras.src.legacy.preprocessing.image,
    the class tf.keras had), iterating `.flow(x, y, batch_size)`; one image at a time
    through scipy.ndimage.affine_transform.
(b) the project's previous pipeline: `fer.training.pipeline.make_dataset` as it was, a chain of
    Keras RandomFlip, RandomRotation, RandomTranslation, RandomShear and RandomZoom
    layers mapped over tf.data batches (copied below, so the comparison stays possible).
(c) `fer.training.pipeline.make_dataset`: one `fer.training.augment.RandomAffine` warp per batch, iterated
    afresh every pass, as model.fit iterated the training set before it was given
    `repeat=True` and `steps_per_epoch` (each new iterator re-instantiates and re-optimizes
    the map function, some tens of milliseconds);
(d) the same pipeline as `fer.training.train` feeds model.fit now: `make_dataset(..., repeat=True)`,
    one iterator for the whole run, a pass being `batches_per_epoch` batches.

The transforms are those of `fer.config.Augmentation()` (the defaults every phase uses):
rotation +/-15 degrees, shifts +/-10 % of width and height, shear, zoom +/-10 %,
horizontal flip, fill "nearest", bilinear interpolation. ImageDataGenerator's
`shear_range` is an angle in DEGREES while the project's `shear` is a shear factor,
so the generator gets shear_range = degrees(arctan(shear)) (0.1 -> 5.71 degrees).
Its zoom draws separate x and y factors in [1 - zoom, 1 + zoom]; RandomAffine and
RandomZoom draw one: the same amount of work either way.

All of them produce float32 batches of 48x48x1 pixels in 0-255 from the same synthetic
faces (`fer.data.synthetic.make_faces`), shuffled each pass, and are consumed the same
way, by a Python loop over batches (the only way to use .flow()). A pass is one epoch:
(b) and (c) pay their per-iterator cost (function instantiation and graph optimization,
some tens of milliseconds) every pass, (d) once. Each method is warmed up for one pass (excluded: tracing, XLA compilation), then
timed over whole passes for at least --seconds; the rounds are interleaved (a, b, c,
a, b, c, ...) so that load from other processes on the machine hits all of them, and
the table gives the median round. Besides images per second (wall clock) it gives
images per CPU-second of the process (all its threads): the legacy generator uses one
core, the tf.data pipelines as many as they get, so that ratio is the work per image,
whatever the number of free cores. Ratios are against (a) in the same run: absolute
rates depend on the machine and whatever else it is doing.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from keras.src.legacy.preprocessing.image import ImageDataGenerator  # noqa: E402

from fer.config import Augmentation  # noqa: E402
from fer.data.splits import Split  # noqa: E402
from fer.data.synthetic import make_faces  # noqa: E402
from fer.training.pipeline import batches_per_epoch, make_dataset  # noqa: E402
from machine import describe  # noqa: E402  (benchmarks/machine.py)


# -- (a) the reference -----------------------------------------------------------------------


def legacy_generator(aug: Augmentation) -> ImageDataGenerator:
    return ImageDataGenerator(
        rotation_range=aug.rotation,
        width_shift_range=aug.width_shift,
        height_shift_range=aug.height_shift,
        shear_range=math.degrees(math.atan(aug.shear)),  # degrees, see the module docstring
        zoom_range=aug.zoom,
        horizontal_flip=aug.horizontal_flip,
        fill_mode="nearest",
        interpolation_order=1,  # bilinear
    )


def legacy_batches(split: Split, batch: int, aug: Augmentation):
    """A function that yields one pass of augmented batches each time it is called."""
    x = split.images[..., np.newaxis].astype(np.float32)
    flow = legacy_generator(aug).flow(x, split.targets, batch_size=batch, shuffle=True, seed=0)
    steps = len(flow)

    def one_pass():
        for _ in range(steps):
            yield next(flow)

    return one_pass


# -- (b) the previous pipeline, as fer.training.pipeline had it ---------------------------------------


def chain_of_layers(aug: Augmentation, seed: int) -> list[layers.Layer]:
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


def previous_make_dataset(split: Split, batch_size: int, augmentation: Augmentation, seed: int = 0):
    chain = chain_of_layers(augmentation, seed)

    def apply(images, targets):
        for layer in chain:
            images = layer(images, training=True)
        return tf.clip_by_value(images, 0.0, 255.0), targets

    dataset = tf.data.Dataset.from_tensor_slices((split.images[..., np.newaxis], split.targets))
    dataset = dataset.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE
    )
    dataset = dataset.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


# -- measuring -------------------------------------------------------------------------------


def python_loop(make_pass):
    """One pass consumed by a Python for-loop: the way .flow() is used, and a user's own loop."""

    def one_pass() -> int:
        n = 0
        for images, _ in make_pass():
            n += images.shape[0]
        last = np.asarray(images)
        assert last.dtype == np.float32 and last.shape[1:] == (48, 48, 1), (last.dtype, last.shape)
        return n

    return one_pass


def one_iterator(endless: tf.data.Dataset, steps: int):
    """Passes of `steps` batches drawn from one iterator over an endless dataset, as model.fit
    draws them when given steps_per_epoch: the iterator, and tf.data's per-iterator set-up, outlive the pass."""
    iterator = iter(endless)

    def one_pass():
        for _ in range(steps):
            yield next(iterator)

    return one_pass


def timed(one_pass, seconds: float) -> tuple[float, float]:
    """(images per second, images per CPU-second of this process) over whole passes lasting >= `seconds`."""
    images, started, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        images += one_pass()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return images / elapsed, images / (time.process_time() - cpu)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096, help="synthetic faces per pass (default 4096)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--seconds", type=float, default=1.5, help="minimum timed seconds per method per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    args = parser.parse_args(argv)

    aug = Augmentation()
    faces, labels = make_faces(args.images, seed=0)
    split = Split.from_labels(faces, labels)
    previous = previous_make_dataset(split, args.batch, aug)
    per_pass = make_dataset(split, args.batch, training=True, augmentation=aug, seed=0)
    methods = {
        "(a) ImageDataGenerator.flow (legacy, reference)": python_loop(legacy_batches(split, args.batch, aug)),
        "(b) tf.data + chain of 5 Keras Random* layers (previous)": python_loop(lambda: previous),
        "(c) tf.data + RandomAffine, new iterator each pass": python_loop(lambda: per_pass),
        "(d) tf.data + RandomAffine, one iterator (fer.training.pipeline + fit now)": python_loop(
            one_iterator(make_dataset(split, args.batch, training=True, augmentation=aug, seed=0, repeat=True),
                         batches_per_epoch(len(split), args.batch))
        ),
    }
    print(f"machine: {describe('tensorflow', 'keras')}")
    print(f"images per pass: {args.images}, batch: {args.batch}, augmentation: {aug}")
    for one_pass in methods.values():  # warm-up: tracing, XLA compilation, thread pools
        one_pass()
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, one_pass in methods.items():
            rates[name].append(timed(one_pass, args.seconds))

    def medians(name):
        return (statistics.median(r for r, _ in rates[name]), statistics.median(c for _, c in rates[name]))

    reference, reference_cpu = medians(next(iter(methods)))
    width = max(map(len, methods))
    print()
    print(f"| {'method':<{width}} | images/s | vs (a) | images/CPU-s | vs (a) | rounds, images/s |")
    print(f"| {'-' * width} | ---: | ---: | ---: | ---: | --- |")
    for name, values in rates.items():
        rate, cpu = medians(name)
        rounds = ", ".join(f"{r:,.0f}" for r, _ in values)
        print(f"| {name:<{width}} | {rate:,.0f} | {rate / reference:.1f}x "
              f"| {cpu:,.0f} | {cpu / reference_cpu:.1f}x | {rounds} |")


if __name__ == "__main__":
    main()
