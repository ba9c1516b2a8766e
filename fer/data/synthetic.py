"""Drawn cartoon faces: the embedded default data set, so the project trains offline.

Each image is a 48x48 grayscale line drawing of a face -- an oval head on a
darker background, two eyes, two brows, a nose and a mouth -- whose brow, eye and
mouth geometry follows the usual way a person would sketch each of the 8 FER+
expressions (a smile for happiness, a V of brows for anger, a one-sided smirk
for contempt, ...). Every face then gets random pose, scale, lighting, noise and
small changes of each feature, so the classes overlap a little and a small CNN
has something to learn rather than a lookup.

This is a stand-in for demos, smoke tests and a fresh machine without the real
data. It is not a benchmark: accuracy on it says nothing about accuracy on real
faces.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from fer.data.splits import EMOTIONS, IMAGE_SIZE, NUM_CLASSES, LabelMode, Split, Splits

# Faces are drawn at twice the output size and box-downsampled, which gives
# anti-aliased strokes without drawing them by hand.
_SUPERSAMPLE = 2
_CANVAS = IMAGE_SIZE * _SUPERSAMPLE
_CENTER = (_CANVAS / 2, _CANVAS / 2 + 2)

# Canonical layout on the 96 px canvas, before pose jitter.
_HEAD_HALF_W, _HEAD_HALF_H = 30.0, 38.0
_EYE_Y, _EYE_DX = 40.0, 13.0
_BROW_GAP = 9.0  # brow height above the eye centre
_BROW_INNER_DX, _BROW_OUTER_DX = 6.0, 20.0
_MOUTH_Y = 66.0
_STROKE = 4

# Expression parameters, one column per feature, in canvas pixels.
_FEATURES = (
    "brow_raise",  # both brow ends up
    "brow_tilt",  # inner brow ends up (>0, worried) or down into a V (<0, angry)
    "eye_h",  # eye half-height: wide open vs narrowed
    "eye_w",  # eye half-width
    "mouth_w",  # mouth half-width
    "mouth_curve",  # corners up (>0, smile) or down (<0)
    "mouth_open",  # half-height of the opening between the lips
    "mouth_asym",  # extra raise of one corner (smirk)
    "lip_raise",  # one-sided raise of the upper lip (snarl)
    "wrinkle",  # length of the nose wrinkles
)
_F = {name: i for i, name in enumerate(_FEATURES)}

# fmt: off
_CLASS_MEANS = {  # brow_raise tilt eye_h eye_w mouth_w curve open asym lip wrinkle
    "neutral":   (0.0,  0.0, 3.5, 6.0, 11.0,  0.0, 0.0, 0.0, 0.0, 0.0),
    "happiness": (0.5,  0.0, 3.0, 6.0, 13.0,  6.0, 1.0, 0.0, 0.0, 0.0),
    "surprise":  (6.0,  1.0, 5.5, 6.5,  5.5,  0.0, 7.0, 0.0, 0.0, 0.0),
    "sadness":   (1.0,  4.0, 3.0, 6.0, 10.0, -5.0, 0.0, 0.0, 0.0, 0.0),
    "anger":     (-3.0, -5.0, 2.5, 6.0, 8.0, -0.5, 0.0, 0.0, 0.0, 1.0),
    "disgust":   (-2.0, -1.5, 1.8, 6.0, 10.0, -2.0, 1.5, 0.0, 4.0, 4.0),
    "fear":      (4.5,  3.0, 5.0, 6.5, 13.0, -1.5, 4.0, 0.0, 0.0, 0.0),
    "contempt":  (0.0,  0.0, 3.2, 6.0, 10.0,  0.0, 0.0, 5.0, 0.0, 0.0),
}
# fmt: on
_MEANS = np.array([_CLASS_MEANS[name] for name in EMOTIONS], dtype=np.float64)
# Per-feature spread within a class: large enough that neighbouring classes
# (neutral / contempt, surprise / fear, anger / disgust) sometimes overlap.
_FEATURE_SD = np.array([1.0, 1.0, 0.5, 0.4, 1.0, 1.2, 0.8, 1.0, 0.8, 0.8])
_FEATURE_MIN = np.array([-np.inf, -np.inf, 0.8, 4.0, 4.0, -np.inf, 0.0, 0.0, 0.0, 0.0])


def make_faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n drawn 48x48 uint8 grayscale faces and their labels (int64 indices into EMOTIONS).

    Classes are balanced (round-robin, then shuffled with the seed).
    Deterministic: the same (n, seed) gives identical arrays.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)
    features = _sample_features(rng, labels)
    tones = _sample_tones(rng, n)
    poses = _sample_poses(rng, n)
    drawn = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i in range(n):
        drawn[i] = _draw_face(features[i], tones[i], poses[i])
    # Expressions have no handedness; flipping keeps contempt/disgust one-sided
    # without tying the class to a side.
    flip = rng.random(n) < 0.5
    drawn[flip] = drawn[flip, :, ::-1]
    return _light_and_noise(rng, drawn), labels


def faces_on_noise(size: tuple[int, int], faces: np.ndarray, places, rng: np.random.Generator) -> np.ndarray:
    """A grayscale "photo" (height x width, uint8) for face detection: gray noise (mean 128, sd 20) drawn
    from `rng`, with each of `faces` scaled up (bicubic) into its square of `places`, (x, y, side) each.

    `size` is (width, height), as PIL gives it. The README's example photo, the serving tests' photos and
    the video tests' frames are made so; OpenCV's face detector finds drawn faces as it finds real ones.

    Example:
        drawn, _ = make_faces(2, seed=7)
        photo = faces_on_noise((320, 240), drawn, [(30, 60, 96), (190, 50, 112)], np.random.default_rng(7))
    """
    width, height = size
    photo = np.clip(rng.normal(128, 20, (height, width)), 0, 255).astype(np.uint8)
    for face, (x, y, side) in zip(faces, places, strict=True):
        photo[y:y + side, x:x + side] = np.asarray(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC))
    return photo


def load_synthetic(
    train_size: int = 4000,
    val_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    label_mode: str | LabelMode = LabelMode.MAJORITY,
) -> Splits:
    """Train / val / test splits of drawn faces (see `make_faces`).

    val and test default to train_size // 5 each (at least 8, one per class).
    Each split is drawn from its own seed derived from `seed`, so splits do not
    share images. Labels are hard, so targets are one-hot in either label mode.
    """
    mode = LabelMode.parse(label_mode)
    default_eval = max(8, train_size // 5)
    sizes = (
        train_size,
        default_eval if val_size is None else val_size,
        default_eval if test_size is None else test_size,
    )
    split_seeds = np.random.SeedSequence(seed).generate_state(len(sizes))
    train, val, test = (
        Split.from_labels(*make_faces(size, int(split_seed))) for size, split_seed in zip(sizes, split_seeds)
    )
    return Splits(train, val, test, source="synthetic", label_mode=mode, location=f"synthetic:{train_size}")


def _sample_features(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    noise = rng.normal(size=(len(labels), len(_FEATURES))) * _FEATURE_SD
    return np.maximum(_MEANS[labels] + noise, _FEATURE_MIN)


def _sample_tones(rng: np.random.Generator, n: int) -> np.ndarray:
    """Grey levels (background, skin, ink, eye white) per face, skin lighter than background."""
    background = rng.uniform(20, 120, n)
    skin = np.minimum(background + rng.uniform(45, 110, n), 235)
    ink = np.maximum(skin - rng.uniform(80, 150, n), 0)
    eye_white = np.minimum(skin + rng.uniform(10, 40, n), 255)
    return np.stack([background, skin, ink, eye_white], axis=1).round().astype(int)


def _sample_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """(angle in radians, scale, dx, dy in canvas px, head aspect) per face.

    Pose is the jitter a small CNN finds hardest, so it is kept modest (about 4
    degrees, 1 px): more makes the data set unlearnable in a few epochs.
    """
    angle = np.deg2rad(rng.normal(0, 4, n))
    # Above 1 so the face fills most of the crop, as in face-detector crops.
    scale = rng.uniform(1.08, 1.22, n)
    shift = rng.normal(0, 1.0 * _SUPERSAMPLE, (n, 2))
    aspect = rng.uniform(0.85, 1.1, n)
    return np.column_stack([angle, scale, shift, aspect])


def _draw_face(f: np.ndarray, tones: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """One face as float 48x48, drawn upright then moved by the pose."""
    background, skin, ink, eye_white = (int(t) for t in tones)
    canvas = Image.new("L", (_CANVAS, _CANVAS), background)
    draw = ImageDraw.Draw(canvas)
    cx, cy = _CENTER
    half_w = _HEAD_HALF_W * pose[4]
    draw.ellipse((cx - half_w, cy - _HEAD_HALF_H, cx + half_w, cy + _HEAD_HALF_H), fill=skin)
    for side in (-1, 1):
        _draw_eye_and_brow(draw, f, side, ink, eye_white)
    _draw_nose(draw, f, ink, skin)
    _draw_mouth(draw, f, ink)
    moved = canvas.transform(
        canvas.size, Image.Transform.AFFINE, _inverse_affine(pose), Image.Resampling.BILINEAR, fillcolor=background
    )
    return np.asarray(moved.reduce(_SUPERSAMPLE), dtype=np.float32)


def _draw_eye_and_brow(draw: ImageDraw.ImageDraw, f: np.ndarray, side: int, ink: int, eye_white: int) -> None:
    cx = _CENTER[0]
    ex, ew, eh = cx + side * _EYE_DX, f[_F["eye_w"]], f[_F["eye_h"]]
    draw.ellipse((ex - ew, _EYE_Y - eh, ex + ew, _EYE_Y + eh), fill=eye_white, outline=ink, width=3)
    pupil = min(eh, 2.8)
    draw.ellipse((ex - pupil, _EYE_Y - pupil, ex + pupil, _EYE_Y + pupil), fill=ink)
    brow_y = _EYE_Y - _BROW_GAP - f[_F["brow_raise"]]
    inner = (cx + side * _BROW_INNER_DX, brow_y - f[_F["brow_tilt"]])
    outer = (cx + side * _BROW_OUTER_DX, brow_y)
    draw.line((inner, outer), fill=ink, width=_STROKE)


def _draw_nose(draw: ImageDraw.ImageDraw, f: np.ndarray, ink: int, skin: int) -> None:
    cx = _CENTER[0]
    # Fainter than the features so the nose does not compete with the mouth.
    shade = (ink + skin) // 2
    draw.line(((cx, 45), (cx - 3, 55), (cx + 2, 56)), fill=shade, width=2)
    length = f[_F["wrinkle"]]
    if length > 1.0:
        for side in (-1, 1):
            start = (cx + side * 4, 46)
            draw.line((start, (start[0] + side * length, start[1] + length)), fill=shade, width=2)


def _mouth_lips(f: np.ndarray, points: int = 11) -> tuple[list, list]:
    """Upper and lower lip polylines, left to right."""
    x = np.linspace(-1.0, 1.0, points)
    base = (
        _MOUTH_Y
        - f[_F["mouth_curve"]] * x**2
        - f[_F["mouth_asym"]] * np.clip(x, 0, None) ** 2
    )
    snarl = f[_F["lip_raise"]] * np.exp(-(((x - 0.35) / 0.3) ** 2))
    upper = base - snarl
    lower = base + 2 * f[_F["mouth_open"]] * np.sqrt(1 - x**2)
    xs = _CENTER[0] + f[_F["mouth_w"]] * x
    return list(zip(xs, upper)), list(zip(xs, lower))


def _draw_mouth(draw: ImageDraw.ImageDraw, f: np.ndarray, ink: int) -> None:
    upper, lower = _mouth_lips(f)
    draw.polygon(upper + lower[::-1], fill=ink)
    draw.line(upper, fill=ink, width=_STROKE, joint="curve")
    draw.line(lower, fill=ink, width=_STROKE, joint="curve")


def _inverse_affine(pose: np.ndarray) -> tuple[float, ...]:
    """PIL wants the output->input map: undo shift, rotation and scale about the face centre."""
    angle, scale, dx, dy = pose[:4]
    cos, sin = np.cos(angle), np.sin(angle)
    inv = np.array([[cos, sin], [-sin, cos]]) / scale
    center = np.array(_CENTER)
    offset = center - inv @ (center + (dx, dy))
    return (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])


def _light_and_noise(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    """Per-image contrast, brightness, a linear light gradient and sensor noise (in place)."""
    n = len(images)
    contrast = rng.uniform(0.6, 1.3, (n, 1, 1)).astype(np.float32)
    brightness = rng.normal(0, 15, (n, 1, 1)).astype(np.float32)
    coords = np.linspace(-1.0, 1.0, IMAGE_SIZE, dtype=np.float32)
    gx, gy = rng.normal(0, 15, (2, n, 1, 1)).astype(np.float32)
    noise_sd = rng.uniform(2, 10, (n, 1, 1)).astype(np.float32)
    # float32 and in-place arithmetic: this is most of the cost of a large batch.
    mean = images.mean(axis=(1, 2), keepdims=True)
    images -= mean
    images *= contrast
    images += mean + brightness
    images += gx * coords[None, None, :] + gy * coords[None, :, None]
    noise = rng.standard_normal(images.shape, dtype=np.float32)
    noise *= noise_sd
    images += noise
    np.clip(images, 0, 255, out=images)
    return np.rint(images, out=images).astype(np.uint8)
