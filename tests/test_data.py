import numpy as np
import pytest
import torch

from dfmlbench.data import DATASETS, load_dataset
from dfmlbench.data.glyphs_dataset import load_glyphs
from dfmlbench.data.omniglot import load_omniglot
from dfmlbench.errors import UserError
from dfmlbench.paths import cache_dir


def test_glyphs_layout_and_split(glyphs):
    assert glyphs.images.dtype == torch.uint8 and glyphs.images.shape == (6000, 3, 32, 32)
    assert [len(glyphs.splits[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    all_classes = sum((glyphs.splits[s] for s in ("train", "val", "test")), [])
    assert sorted(all_classes) == list(range(100))
    assert all(len(glyphs.indices_of(c)) == 60 for c in range(100))


def test_glyphs_are_cached_and_reload_identically(glyphs):
    cached = list((cache_dir() / "datasets").glob("glyphs-v*.npz"))
    assert len(cached) == 1
    again = load_glyphs()
    assert torch.equal(again.images, glyphs.images) and again.fingerprint() == glyphs.fingerprint()


def test_normalisation_uses_meta_train_statistics(glyphs):
    train = torch.cat([glyphs.images[torch.from_numpy(glyphs.indices_of(c))] for c in glyphs.splits["train"]])
    x = glyphs.normalize(train)
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=0.01)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=0.01)


def test_omniglot_alphabet_disjoint_split(omniglot):
    assert omniglot.images.shape == (4840, 3, 32, 32)
    assert [len(omniglot.splits[s]) for s in ("train", "val", "test")] == [155, 41, 46]
    alphabets = {s: {omniglot.class_names[c].split("/")[0] for c in omniglot.splits[s]}
                 for s in ("train", "val", "test")}
    assert alphabets["val"] == {"Greek", "Tagalog"}
    assert alphabets["test"] == {"Balinese", "Early_Aramaic"}
    assert not (alphabets["train"] & alphabets["test"])
    # Ink is bright after inversion: the background (most pixels) is dark.
    assert np.median(omniglot.images.numpy()) < 50
    assert torch.equal(omniglot.images[:, 0], omniglot.images[:, 2])


def test_missing_omniglot_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(UserError) as error:
        load_omniglot(str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "--data-root" in message and "\n" not in message


def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'omniglot'"):
        load_dataset("omniglott")
    assert {"glyphs", "omniglot"} <= set(DATASETS.names())
