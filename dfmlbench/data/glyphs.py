"""Procedural "glyphs" dataset: coloured Bezier-stroke symbols, one symbol per class.

A dependency-free (numpy only), fully deterministic stand-in for CIFAR-FS-like 32x32 RGB
few-shot data, used as the default data of the quickstart and by the tests. Each class is a
fixed set of 2-4 coloured cubic Bezier strokes; each image of a class is that glyph under a
random affine jitter, control-point / stroke-width / colour jitter, often a distractor stroke,
a dim random background and pixel noise. The variation is tuned so that few-shot learning
across disjoint classes is possible but not trivial (see tests/test_glyphs.py for the
nearest-neighbour check).

Class ``c`` is rendered from ``np.random.default_rng([seed, c])`` alone, so it is identical
whatever ``num_classes`` or ``images_per_class`` is used (prefix stability).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["render_glyphs"]

# Per-instance variation (pixel amounts are for a 32 px image and scale with image_size).
_MAX_ROT_DEG = 30.0
_SCALE_RANGE = (0.8, 1.2)
_MAX_SHIFT_PX = 3.0
_MAX_SHEAR = 0.15
_POINT_JITTER_PX = 1.5
_WIDTH_JITTER = 0.3
_COLOUR_JITTER = 0.15  # per instance and stroke, added to each RGB channel
_DISTRACTOR_PROBABILITY = 0.7  # a random stroke of a random colour under the glyph
_NOISE_SIGMA = 10.0 / 255.0
# Budget (elements) of the instances x samples x pixels distance tensor per chunk.
_CHUNK_ELEMS = 8_000_000


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """Scalar HSV (all in [0, 1]) to an RGB float array in [0, 1]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float64)


def _class_spec(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Draw one class: control points (S, 4, 2) in pixels, colours (S, 3), base width (px)."""
    n_strokes = int(rng.integers(2, 5))
    lo, hi = 0.2 * size, 0.8 * size
    ctrl = rng.uniform(lo, hi, size=(n_strokes, 4, 2))
    colours = np.stack(
        [_hsv_to_rgb(rng.uniform(), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0)) for _ in range(n_strokes)]
    )
    width = float(rng.uniform(1.5, 3.0)) * size / 32.0
    return ctrl, colours, width


def _affine_matrices(rng: np.random.Generator, m: int, difficulty: float) -> np.ndarray:
    """(m, 2, 2) matrices rotation @ shear @ scale."""
    rotation, shear_max = _MAX_ROT_DEG * difficulty, _MAX_SHEAR * difficulty
    angles = rng.uniform(-rotation, rotation, size=m) * (math.pi / 180.0)
    scales = rng.uniform(*_scale_range(difficulty), size=m)
    shears = rng.uniform(-shear_max, shear_max, size=m)
    # Python's math (correctly rounded in practice) rather than numpy's SIMD trig, for
    # bit-identical output across machines.
    cos = np.array([math.cos(a) for a in angles])
    sin = np.array([math.sin(a) for a in angles])
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear = np.zeros((m, 2, 2))
    shear[:, 0, 0] = shear[:, 1, 1] = 1.0
    shear[:, 0, 1] = shears
    return rot @ shear * scales[:, None, None]


def _bezier(ctrl: np.ndarray, n: int) -> np.ndarray:
    """Sample cubic Bezier curves: ctrl (m, 4, 2) -> points (m, n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    u = 1.0 - t
    basis = np.concatenate([u**3, 3 * u * u * t, 3 * u * t * t, t**3], axis=1)  # (n, 4)
    return np.einsum("nk,mkd->mnd", basis, ctrl)


def _coverage(points: np.ndarray, widths: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased stroke coverage: points (m, n, 2) as (x, y), widths (m,) -> (m, size, size)."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    pts = points.astype(np.float32)
    m, n = pts.shape[:2]
    d2 = np.empty((m, size, size), dtype=np.float32)
    step = max(1, _CHUNK_ELEMS // (n * size * size))
    for s in range(0, m, step):
        p = pts[s : s + step]
        dx2 = (centres[None, None, :] - p[:, :, 0:1]) ** 2  # (k, n, W)
        dy2 = (centres[None, None, :] - p[:, :, 1:2]) ** 2  # (k, n, H)
        d2[s : s + step] = (dy2[:, :, :, None] + dx2[:, :, None, :]).min(axis=1)
    dist = np.sqrt(d2)
    return np.clip(widths[:, None, None].astype(np.float32) / 2 - dist + 0.5, 0.0, 1.0)


def _scale_range(difficulty: float) -> tuple[float, float]:
    """The glyph scale range, widened about 1 with the difficulty (never below 0.4x)."""
    low, high = _SCALE_RANGE
    return max(0.4, 1 - (1 - low) * difficulty), 1 + (high - 1) * difficulty


def _render_class(seed: int, c: int, m: int, size: int, difficulty: float = 1.0) -> np.ndarray:
    """Render m instances of class c as float images in [0, 1], shape (m, size, size, 3).
    `difficulty` multiplies every per-instance variation (1: the built-in glyphs)."""
    rng = np.random.default_rng([seed, c])
    ctrl, colours, base_width = _class_spec(rng, size)
    px = size / 32.0
    centre = size / 2.0

    # Whole-glyph affine jitter about the image centre, plus per-point jitter.
    mats = _affine_matrices(rng, m, difficulty)
    max_shift, width_jitter = _MAX_SHIFT_PX * difficulty, min(0.9, _WIDTH_JITTER * difficulty)
    shift = rng.uniform(-max_shift, max_shift, size=(m, 1, 2)) * px
    widths = base_width * rng.uniform(1 - width_jitter, 1 + width_jitter, size=(m, len(ctrl)))
    widths *= np.sqrt(np.abs(np.linalg.det(mats)))[:, None]  # strokes scale with the glyph

    # Dim background: grey level plus a small colour tint, per instance.
    grey = rng.uniform(0.0, 0.2, size=(m, 1))
    bg = np.clip(grey + rng.uniform(-0.06, 0.06, size=(m, 3)), 0.0, 1.0)
    img = np.broadcast_to(bg[:, None, None, :], (m, size, size, 3)).astype(np.float32)

    # Clutter: a distractor stroke, not part of the class, in some instances.
    distractor = rng.uniform(0.1 * size, 0.9 * size, size=(m, 4, 2))
    distractor_colour = rng.uniform(0.3, 1.0, size=(m, 3)).astype(np.float32)
    has_distractor = rng.uniform(size=m) < min(1.0, _DISTRACTOR_PROBABILITY * difficulty)
    n = max(8, int(math.ceil(1.5 * np.linalg.norm(np.diff(_bezier(distractor, 17), axis=1), axis=-1)
                              .sum(axis=1).max())) + 1)
    alpha = _coverage(_bezier(distractor, n), np.full(m, base_width * 0.8), size)[..., None]
    alpha *= has_distractor[:, None, None, None]
    img = img * (1.0 - alpha) + distractor_colour[:, None, None, :] * alpha

    colour_jitter, point_jitter = _COLOUR_JITTER * difficulty, _POINT_JITTER_PX * difficulty
    for k in range(len(ctrl)):
        colour = np.clip(colours[k] + rng.uniform(-colour_jitter, colour_jitter, size=(m, 3)), 0, 1)
        pts = ctrl[k][None] + rng.uniform(-point_jitter, point_jitter, size=(m, 4, 2)) * px
        pts = np.einsum("mij,mkj->mki", mats, pts - centre) + centre + shift
        # Sample spacing <= ~0.7 px along the longest instance (length from a coarse pass).
        length = np.linalg.norm(np.diff(_bezier(pts, 17), axis=1), axis=-1).sum(axis=1).max()
        n = max(8, int(math.ceil(1.5 * length)) + 1)
        alpha = _coverage(_bezier(pts, n), widths[:, k], size)[..., None]
        img = img * (1.0 - alpha) + colour.astype(np.float32)[:, None, None, :] * alpha

    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(_NOISE_SIGMA * difficulty)
    return img


def render_glyphs(seed: int = 0, num_classes: int = 100, images_per_class: int = 60,
                  image_size: int = 32, difficulty: float = 1.0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (images uint8 (N, H, W, 3), labels int64 (N,), class_names) with N = num_classes*images_per_class,
    images sorted by class (class 0's images first). `difficulty` scales every per-instance
    variation (rotation, scale, shift, shear, point / width / colour jitter, distractor
    probability, pixel noise); 1 is the built-in glyphs, bit for bit."""
    seed = _check_int("seed", seed, 0)
    num_classes = _check_int("num_classes", num_classes, 1)
    images_per_class = _check_int("images_per_class", images_per_class, 1)
    image_size = _check_int("image_size", image_size, 16)
    if not (isinstance(difficulty, (int, float)) and 0 < difficulty <= 10):
        raise ValueError(f"difficulty must be a number in (0, 10], got {difficulty!r}")

    images = np.empty((num_classes * images_per_class, image_size, image_size, 3), dtype=np.uint8)
    for c in range(num_classes):
        img = _render_class(seed, c, images_per_class, image_size, difficulty)
        images[c * images_per_class : (c + 1) * images_per_class] = np.rint(np.clip(img, 0.0, 1.0) * 255.0)
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)
    class_names = [f"glyph-{c:03d}" for c in range(num_classes)]
    return images, labels, class_names
