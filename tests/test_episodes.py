import numpy as np
import pytest

from dfmlbench.episodes import make_episodes
from dfmlbench.errors import UserError


def test_episodes_are_fixed_by_their_seed(glyphs):
    a = make_episodes(glyphs, "test", 5, 1, 15, 30, seed=0)
    b = make_episodes(glyphs, "test", 5, 1, 15, 30, seed=0)
    c = make_episodes(glyphs, "test", 5, 1, 15, 30, seed=1)
    assert np.array_equal(a.indices, b.indices) and a.sha() == b.sha()
    assert not np.array_equal(a.indices, c.indices)


def test_episode_layout_is_shot_major_within_the_split(glyphs):
    way, shot, query = 5, 2, 3
    episodes = make_episodes(glyphs, "val", way, shot, query, 10)
    labels = glyphs.labels.numpy()
    val_classes = set(glyphs.splits["val"])
    for classes, indices in zip(episodes.classes, episodes.indices):
        assert set(classes) <= val_classes and len(set(classes)) == way
        assert len(set(indices)) == len(indices)  # support and query never share an image
        # position p holds class p % way (the official sampler's layout)
        assert np.array_equal(labels[indices], np.tile(classes, shot + query))
    assert episodes.labels().tolist() == list(range(way)) * (shot + query)
    assert episodes.support_size == way * shot


def test_too_many_queries_is_a_clear_error(glyphs):
    with pytest.raises(UserError, match="lower protocol.query"):
        make_episodes(glyphs, "test", 5, 5, 60, 1)
