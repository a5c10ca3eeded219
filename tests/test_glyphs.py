"""Tests for the procedural glyphs dataset."""

import numpy as np
import pytest

from dfmlbench.data.glyphs import render_glyphs


def test_shapes_dtypes_labels_and_names():
    images, labels, names = render_glyphs(seed=0, num_classes=4, images_per_class=3, image_size=20)
    assert images.shape == (12, 20, 20, 3)
    assert images.dtype == np.uint8
    assert labels.shape == (12,)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat(np.arange(4), 3))
    assert names == ["glyph-000", "glyph-001", "glyph-002", "glyph-003"]
    # Not blank: glyph strokes are bright against a dim background.
    assert images.max() > 150


def test_default_image_size_is_32():
    images, labels, names = render_glyphs(num_classes=2, images_per_class=2)
    assert images.shape == (4, 32, 32, 3)
    assert len(names) == 2


def test_deterministic_per_seed():
    a = render_glyphs(seed=3, num_classes=3, images_per_class=4)
    b = render_glyphs(seed=3, num_classes=3, images_per_class=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    c = render_glyphs(seed=4, num_classes=3, images_per_class=4)
    assert not np.array_equal(a[0], c[0])


def test_class_prefix_stability():
    small, _, _ = render_glyphs(seed=1, num_classes=5, images_per_class=4)
    large, _, _ = render_glyphs(seed=1, num_classes=10, images_per_class=4)
    np.testing.assert_array_equal(small, large[: len(small)])


def test_within_class_variation_and_separation():
    n_cls, per = 6, 8
    images, labels, _ = render_glyphs(seed=0, num_classes=n_cls, images_per_class=per)
    x = images.reshape(len(images), -1).astype(np.float32)
    # Instances of a class are all different images.
    for c in range(n_cls):
        block = x[labels == c]
        assert len({row.tobytes() for row in block}) == per
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    same = labels[:, None] == labels[None]
    off_diag = ~np.eye(len(x), dtype=bool)
    within = d[same & off_diag].mean()
    between = d[~same].mean()
    assert within > 0
    assert within < between


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"num_classes": -1},
        {"images_per_class": 0},
        {"image_size": 15},
        {"image_size": 32.0},
        {"num_classes": 2.5},
        {"seed": -1},
        {"seed": "0"},
        {"num_classes": True},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        render_glyphs(**kwargs)


def _within_class_spread(images: np.ndarray, per_class: int) -> float:
    """Mean pixel distance of each image to its class mean."""
    x = images.astype(np.float64).reshape(-1, per_class, images[0].size)
    return float(np.abs(x - x.mean(axis=1, keepdims=True)).mean())


def test_difficulty_one_is_the_built_in_glyphs_and_more_spreads_each_class():
    base, _, _ = render_glyphs(seed=2, num_classes=3, images_per_class=12)
    np.testing.assert_array_equal(base, render_glyphs(seed=2, num_classes=3, images_per_class=12, difficulty=1.0)[0])
    harder, _, _ = render_glyphs(seed=2, num_classes=3, images_per_class=12, difficulty=2.0)
    easier, _, _ = render_glyphs(seed=2, num_classes=3, images_per_class=12, difficulty=0.5)
    spreads = [_within_class_spread(x, 12) for x in (easier, base, harder)]
    assert spreads[0] < spreads[1] < spreads[2]


@pytest.mark.parametrize("difficulty", [0, -1, 11, "hard"])
def test_difficulty_must_be_a_positive_number(difficulty):
    with pytest.raises(ValueError, match="difficulty must be a number"):
        render_glyphs(num_classes=1, images_per_class=1, difficulty=difficulty)
