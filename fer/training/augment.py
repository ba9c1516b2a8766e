"""One random affine warp per image: rotation, shifts, shear, zoom and flip composed.

Keras's separate preprocessing layers (RandomFlip, RandomRotation,
RandomTranslation, RandomShear, RandomZoom) each resample the whole batch, so
a chain of five interpolates every image five times (slow, and a little
blurrier each time). `RandomAffine` draws every transform per image, composes
them into a single 3x3 affine matrix about the image centre and warps the
batch once: bilinear sampling written as gathers and compiled with XLA
(`tf.function(jit_compile=True)`), which on CPU is 3-4x faster than
`tf.raw_ops.ImageProjectiveTransformV3`, the kernel behind
`keras.ops.image.affine_transform` on the TensorFlow backend, and samples the
same points. (That kernel still serves the fill modes "reflect" and "wrap"
and nearest-neighbour interpolation.) The layer is written for TensorFlow, the
project's backend, and runs inside `tf.data` graphs as well as in a model.

The transforms are one `fer.config.Augmentation` (the configuration's
`augmentation` section), passed whole: `RandomAffine(config.augmentation)`.
Standalone, the same names may be given as keywords, every other transform
then off: `RandomAffine(rotation=10, horizontal_flip=True)`. Units:

- rotation: degrees; the angle is drawn from U(-rotation, +rotation), and a
  positive angle turns the content counter-clockwise as it appears on screen.
- width_shift, height_shift: fractions of the width / height; the shift in
  pixels is drawn from U(-width_shift * W, +width_shift * W) (likewise for the
  height); positive moves the content right / down.
- shear: a horizontal shear factor k drawn from U(-shear, +shear): a point y
  pixels below the centre moves right by k * y (one above it, left). (Keras's legacy
  ImageDataGenerator takes a shear *angle* in degrees; k = tan(angle).)
- zoom: a fraction; one scale factor z per image from U(1 - zoom, 1 + zoom),
  the same for both axes (as the project's previous RandomZoom layer), z > 1
  enlarges the content.
- horizontal_flip: mirror left-right with probability 1/2.

Order (forward, as applied to the content): flip, zoom, shear, rotation, all
about the centre, then the shift. Pixels that come from outside the image take
`fill_mode` ("nearest" repeats the edge pixel, as ImageDataGenerator's
default); values are bilinearly interpolated.

Seeding: `RandomAffine(seed=...)` owns a `keras.random.SeedGenerator`; each
call draws a fresh stateless seed from it. `augment(images, seed)` takes an
explicit stateless seed (a length-2 integer tensor) instead, which is how
`fer.training.pipeline` makes every batch's transforms a function of the run's seed
alone, whatever order tf.data's parallel map calls run in.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from fer.config import Augmentation, check_augmentation

FILL_MODES = ("nearest", "constant", "reflect", "wrap")
INTERPOLATIONS = ("bilinear", "nearest")
TRANSFORMS = tuple(field.name for field in dataclasses.fields(Augmentation))
# Every transform off (0.0, False): what a standalone layer starts from, not the configuration's defaults.
NO_TRANSFORMS = Augmentation(**{field.name: type(field.default)() for field in dataclasses.fields(Augmentation)})


@keras.saving.register_keras_serializable(package="fer")
class RandomAffine(keras.layers.Layer):
    """Random rotation, shifts, shear, zoom and horizontal flip as one affine warp per image.

    Input: images B x H x W x C (or one image H x W x C), any real dtype; output
    float in the layer's compute dtype (float32), same shape. Identity when
    `training` is False (inference, `model.predict`).

    `augmentation`: the transforms as one `Augmentation` (or its dict, as
    `get_config` writes it); or give them as keywords (`rotation=10`), the
    others off. Out-of-range values raise `fer.config.ConfigError` (a ValueError).

    >>> RandomAffine(Augmentation(rotation=10)).augmentation.rotation
    10
    >>> RandomAffine(zoom=0.2).augmentation == dataclasses.replace(NO_TRANSFORMS, zoom=0.2)
    True
    """

    def __init__(
        self,
        augmentation: Augmentation | dict | None = None,
        fill_mode: str = "nearest",
        interpolation: str = "bilinear",
        fill_value: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        keywords = {name: kwargs.pop(name) for name in TRANSFORMS if name in kwargs}
        super().__init__(**kwargs)
        if augmentation is not None and keywords:
            raise ValueError(f"RandomAffine: give the transforms as one Augmentation or as keywords, not both "
                             f"(keywords given: {sorted(keywords)})")
        if isinstance(augmentation, dict):
            augmentation = Augmentation(**augmentation)
        self.augmentation = augmentation or dataclasses.replace(NO_TRANSFORMS, **keywords)
        check_augmentation(self.augmentation, prefix="")
        if fill_mode not in FILL_MODES:
            raise ValueError(f"fill_mode must be one of {FILL_MODES}; got {fill_mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}; got {interpolation!r}")
        self.fill_mode = fill_mode
        self.interpolation = interpolation
        self.fill_value = float(fill_value)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)
        self.supports_masking = False

    # -- Keras API -------------------------------------------------------------------------

    def call(self, inputs, training=True):
        images = tf.cast(inputs, self.compute_dtype)
        if not training:
            return images
        return self.augment(images, self.generator.next())

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            augmentation=dataclasses.asdict(self.augmentation),
            fill_mode=self.fill_mode,
            interpolation=self.interpolation,
            fill_value=self.fill_value,
            seed=self.seed,
        )
        return config

    # -- the work --------------------------------------------------------------------------

    def augment(self, images, seed):
        """`images` warped by freshly drawn transforms; `seed`: a stateless seed, int tensor of shape [2]."""
        images = tf.convert_to_tensor(images)
        single = images.shape.rank == 3
        if single:
            images = images[tf.newaxis]
        seed = tf.cast(seed, tf.int64)
        if self._compiled_warp:
            warped = self._draw_and_warp_compiled(images, seed)  # casts inside, e.g. uint8 batches
        else:
            images = tf.cast(images, self.compute_dtype)
            warped = self.transform(images, self.draw(tf.shape(images)[0], seed))
        return warped[0] if single else warped

    @property
    def _compiled_warp(self) -> bool:
        return self.interpolation == "bilinear" and self.fill_mode in ("nearest", "constant")

    @tf.function(jit_compile=True)
    def _draw_and_warp_compiled(self, images, seed):
        # Draws, matrices and warp in one XLA cluster: one launch per batch instead of
        # a hundred small TensorFlow ops, and fused loops instead of temporaries.
        images = tf.cast(images, self.compute_dtype)
        params = self.draw(tf.shape(images)[0], seed)
        return _bilinear_warp(images, _matrices_for(images, params), self.fill_mode, self.fill_value)

    def draw(self, batch_size, seed) -> dict[str, tf.Tensor]:
        """Per-image transform parameters (float32 tensors of shape [batch_size]).

        angle (degrees), shift_x / shift_y (fractions of width / height),
        shear (factor), zoom (scale factor) and flip (1.0 mirrored, 0.0 not).
        All from one uniform draw of shape [batch_size, 6].
        """
        u = tf.random.stateless_uniform([batch_size, 6], seed=seed, minval=-1.0, maxval=1.0)
        angle, shift_x, shift_y, shear, zoom, flip = tf.unstack(u, axis=1)  # one op, not six slices
        aug = self.augmentation
        return {
            "angle": angle * float(aug.rotation),
            "shift_x": shift_x * float(aug.width_shift),
            "shift_y": shift_y * float(aug.height_shift),
            "shear": shear * float(aug.shear),
            "zoom": 1.0 + zoom * float(aug.zoom),
            "flip": tf.cast(flip < 0.0, tf.float32) if aug.horizontal_flip else tf.zeros_like(flip),
        }

    def transform(self, images, params: dict[str, tf.Tensor]):
        """Warp a batch B x H x W x C once with the given per-image parameters (see `draw`)."""
        images = tf.cast(images, self.compute_dtype)
        matrices = _matrices_for(images, params)
        if self._compiled_warp:
            return _compiled_bilinear_warp(images, matrices, self.fill_mode, self.fill_value)
        warped = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=matrices,
            output_shape=tf.shape(images)[1:3],
            fill_value=tf.cast(self.fill_value, tf.float32),
            interpolation=self.interpolation.upper(),
            fill_mode=self.fill_mode.upper(),
        )
        return tf.ensure_shape(warped, images.shape)


def _matrices_for(images, params):
    shape = tf.shape(images)
    height = images.shape[1] if images.shape[1] is not None else shape[1]
    width = images.shape[2] if images.shape[2] is not None else shape[2]
    return inverse_matrices(params, height, width)


def _bilinear_warp(images, matrices, fill_mode: str, fill_value: float):
    """ImageProjectiveTransformV3's bilinear warp (affine rows only), as gathers XLA can fuse.

    TensorFlow's kernel spends ~13 ns per output pixel on CPU (index arithmetic
    and bounds checks for each of the four reads); compiled by XLA this is 3-4x
    faster. Same sampling convention: pixel centres at integer coordinates;
    "nearest" clamps the sampling point into the image (so the edge pixel
    repeats), "constant" reads `fill_value` for every neighbour outside it.
    """
    shape = tf.shape(images)
    # Static sizes where known (always, under XLA): constants fold into the compiled loops.
    batch, height, width, channels = (
        static if static is not None else shape[i] for i, static in enumerate(images.shape)
    )
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    a0, a1, a2, b0, b1, b2 = (tf.reshape(m, [-1, 1, 1]) for m in tf.unstack(matrices[:, :6], axis=1))
    xo = tf.cast(tf.range(width), tf.float32)[tf.newaxis, tf.newaxis, :]
    yo = tf.cast(tf.range(height), tf.float32)[tf.newaxis, :, tf.newaxis]
    xs = a0 * xo + (a1 * yo + a2)  # B x H x W sampling points
    ys = b0 * xo + (b1 * yo + b2)
    if fill_mode == "nearest":
        xs = tf.clip_by_value(xs, 0.0, w - 1.0)
        ys = tf.clip_by_value(ys, 0.0, h - 1.0)
    x0f, y0f = tf.floor(xs), tf.floor(ys)
    fx, fy = xs - x0f, ys - y0f
    x0, y0 = tf.cast(x0f, tf.int32), tf.cast(y0f, tf.int32)
    x1, y1 = x0 + 1, y0 + 1
    if fill_mode == "nearest":
        # x0, y0 are inside already; x1, y1 may be one past the edge, where their weight is 0.
        rows = (y0 * width, tf.minimum(y1, height - 1) * width)
        cols = (x0, tf.minimum(x1, width - 1))
    else:
        rows = tuple(tf.clip_by_value(y, 0, height - 1) * width for y in (y0, y1))
        cols = tuple(tf.clip_by_value(x, 0, width - 1) for x in (x0, x1))
    # Gathers within each image (batch_dims=1) at its H x W sampling positions; the pixels
    # are B x HW for one channel (the project's faces), else B x C x HW (channels first).
    single = images.shape[-1] == 1
    if single:
        pixels = tf.reshape(images, [batch, height * width])
        spatial = lambda t: tf.reshape(t, [batch, height, width])  # noqa: E731
    else:
        pixels = tf.reshape(tf.transpose(images, [0, 3, 1, 2]), [batch, channels, height * width])
        spatial = lambda t: tf.reshape(t, [batch, -1, height, width])  # noqa: E731
        fx, fy = fx[:, tf.newaxis], fy[:, tf.newaxis]

    def read(i, j):
        index = tf.reshape(rows[i] + cols[j], [batch, height * width])
        values = spatial(tf.gather(pixels, index, axis=pixels.shape.rank - 1, batch_dims=1))
        if fill_mode == "nearest":
            return values
        y, x = (y0, y1)[i], (x0, x1)[j]
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        return tf.where(inside if single else inside[:, tf.newaxis], values, tf.cast(fill_value, values.dtype))

    v00, v01, v10, v11 = read(0, 0), read(0, 1), read(1, 0), read(1, 1)
    top = v00 + fx * (v01 - v00)
    bottom = v10 + fx * (v11 - v10)
    warped = top + fy * (bottom - top)
    return warped[..., tf.newaxis] if single else tf.transpose(warped, [0, 2, 3, 1])


_compiled_bilinear_warp = tf.function(_bilinear_warp, jit_compile=True)


def inverse_matrices(params: dict[str, tf.Tensor], height, width) -> tf.Tensor:
    """B x 8 rows [a0, a1, a2, b0, b1, b2, 0, 0] mapping each OUTPUT pixel (x, y) to where it is read from.

    ImageProjectiveTransformV3 samples input (a0 x + a1 y + a2, b0 x + b1 y + b2)
    for output pixel (x, y), pixel centres at integer coordinates, so the
    image centre is ((W - 1) / 2, (H - 1) / 2). The forward map (content) is

        p_out = c + t + R(angle) Shear(k) Zoom(z) Flip (p_in - c)

    and its inverse, written out here so that no matrix product or inversion runs:

        p_in = c + Flip Zoom(1/z) Shear(-k) R(-angle) (p_out - c - t)
    """
    theta = params["angle"] * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    k = params["shear"]
    inv_z = 1.0 / params["zoom"]
    f = 1.0 - 2.0 * params["flip"]  # -1 mirrored, +1 not
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    tx = params["shift_x"] * tf.cast(width, tf.float32)
    ty = params["shift_y"] * tf.cast(height, tf.float32)
    # R(-angle) in (x right, y down) with counter-clockwise-on-screen angles:
    #   v = [[cos, -sin], [sin, cos]] u ; then Shear(-k): w = (v_x - k v_y, v_y).
    a0 = f * inv_z * (cos - k * sin)
    a1 = -f * inv_z * (sin + k * cos)
    b0 = inv_z * sin
    b1 = inv_z * cos
    ox, oy = cx + tx, cy + ty
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def from_config_augmentation(aug: Augmentation, seed: int | None = None) -> RandomAffine | None:
    """The RandomAffine layer for a configuration's `augmentation` section; None when every transform is off."""
    if not any(dataclasses.astuple(aug)):
        return None
    return RandomAffine(aug, fill_mode="nearest", seed=seed)
