"""cifar-fs, miniimagenet and cub on tiny fixtures in the real formats, made here: CIFAR-100
python pickles (read by torchvision's own CIFAR100 reader), miniImageNet in both layouts
(images/ + csv, and class folders), a CUB_200_2011/images tree. Every split class is present
with a few images each; the loaders accept fewer images per class than the real datasets.

CIFAR-100 and torchvision's md5 check: torchvision compares each file's md5 with the published
archive's before unpickling it (`CIFAR100._check_integrity`, `_load_meta`). The fixture files
cannot have those digests, so `register_md5` puts the fixture's own digests in torchvision's
table (`CIFAR100.train_list`, `test_list`, `meta`) for the test's duration. The check itself,
the reader and the loader run unchanged, and a fixture file damaged after registration is
caught by the same check as a damaged download.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dfmlbench.cli import main
from dfmlbench.data import cifar_fs as cifar_module
from dfmlbench.data import cub as cub_module
from dfmlbench.data import image_files as image_files_module
from dfmlbench.data.cifar_fs import load_cifar_fs
from dfmlbench.data.cub import load_cub
from dfmlbench.data.miniimagenet import load_miniimagenet
from dfmlbench.data.sources import class_split
from dfmlbench.errors import UserError

CIFAR = class_split("cifar_fs")
MINI = class_split("miniimagenet")
CUB = class_split("cub")
# The fixture's fine-label order differs from the split's, so mapping by name is exercised.
CIFAR_NAMES = sorted(CIFAR.class_names, reverse=True)
CIFAR_PER_CLASS = {"train": 5, "test": 1}
PER_CLASS = 3


# --- fixture writers -----------------------------------------------------------------------------


def write_cifar(root: Path, names: list[str] = CIFAR_NAMES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`root/cifar-100-python/{train,test,meta}` with the real files' keys, pickled as CIFAR's."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for file_name, n in CIFAR_PER_CLASS.items():
        labels = rng.permutation(np.repeat(np.arange(len(names)), n))  # interleaved, as in CIFAR
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        entry = {"filenames": [f"fixture_{file_name}_{i:05d}.png" for i in range(len(labels))],
                 "batch_label": f"{file_name}ing batch 1 of 1", "fine_labels": labels.tolist(),
                 "coarse_labels": (labels % 20).tolist(), "data": data}
        (folder / file_name).write_bytes(pickle.dumps(entry, protocol=2))
        written[file_name] = (data, labels)
    meta = {"fine_label_names": list(names), "coarse_label_names": [f"super_{i}" for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


@pytest.fixture
def register_md5(monkeypatch):
    from torchvision.datasets import CIFAR100

    def register(root: Path) -> None:
        folder = root / "cifar-100-python"

        def md5(name: str) -> str:
            return hashlib.md5((folder / name).read_bytes()).hexdigest()

        monkeypatch.setattr(CIFAR100, "train_list", [["train", md5("train")]])
        monkeypatch.setattr(CIFAR100, "test_list", [["test", md5("test")]])
        monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5("meta")})
    return register


@lru_cache(maxsize=None)
def jpeg(seed: str, j: int, mode: str = "RGB") -> bytes:
    """A small noise JPEG, not square, so the loaders must resize it."""
    rng = np.random.default_rng([j, *seed.encode()])
    pixels = rng.integers(0, 256, (18, 20 + j, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_mini(folder: Path, layout: str) -> Path:
    """layout: 'csv' (images/ + {split}.csv), 'folders' (<wnid>/), 'split-folders' (meta_<split>/<wnid>/)."""
    for split, wnids in MINI.names.items():
        rows = []
        for wnid in wnids:
            for j in range(PER_CLASS):
                name = f"{wnid}{j + 1:08d}.jpg"
                path = {"csv": folder / "images" / name, "folders": folder / wnid / name,
                        "split-folders": folder / f"meta_{split}" / wnid / name}[layout]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(jpeg(wnid, j))
                rows.append(f"{name},{wnid}\n")
        if layout == "csv":  # rows out of order: the loader sorts each class's files
            (folder / f"{split}.csv").write_text("filename,label\n" + "".join(reversed(rows)))
    return folder


def write_cub(root: Path) -> Path:
    images = root / "CUB_200_2011" / "images"
    for name in CUB.class_names:
        bird = name.split(".", 1)[1]
        (images / name).mkdir(parents=True)
        for j in range(PER_CLASS):
            (images / name / f"{bird}_{j + 1:04d}_{7000 + j}.jpg").write_bytes(jpeg(name, j))
    first = images / "001.Black_footed_Albatross"
    (first / "Black_footed_Albatross_0001_7000.jpg").write_bytes(jpeg("grey", 0, "L"))  # CUB has some
    (first / "._Black_footed_Albatross_0001_7000.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS junk
    return images


@dataclass
class Result:
    code: int
    out: str
    err: str


def call(*argv: object) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("DFMLBENCH_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def mini_csv(tmp_path_factory) -> Path:
    return write_mini(tmp_path_factory.mktemp("data") / "miniimagenet", "csv")


# --- cifar-fs ------------------------------------------------------------------------------------


def test_cifar_fs_reads_the_pickles_with_torchvision_and_caches(tmp_path, own_cache, register_md5,
                                                                monkeypatch):
    import torchvision.datasets as tvd

    written = write_cifar(tmp_path)
    register_md5(tmp_path)
    reads = []

    class Spy(tvd.CIFAR100):
        def __init__(self, *args, **kwargs):
            reads.append(kwargs["train"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tvd, "CIFAR100", Spy)
    data = load_cifar_fs(str(tmp_path))
    assert reads == [True, False]
    assert data.images.dtype == torch.uint8 and data.images.shape == (600, 3, 32, 32)
    assert data.class_names == CIFAR.class_names
    assert [data.splits[s] for s in ("train", "val", "test")] == [
        list(range(64)), list(range(64, 80)), list(range(80, 100))]
    assert data.class_names[data.splits["test"][0]] in {"baby", "bed"}  # sorted test classes
    assert (data.mean, data.std) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    for name in ("apple", "whale", "beaver"):  # one class of each split
        k = CIFAR_NAMES.index(name)
        expected = np.concatenate([written[f][0][written[f][1] == k] for f in ("train", "test")])
        got = data.images[data.indices_of(data.class_names.index(name))].numpy()
        assert np.array_equal(got, expected.reshape(-1, 3, 32, 32))  # train images, then test

    again = load_cifar_fs(str(tmp_path))  # the cache: torchvision is not called again
    assert reads == [True, False] and torch.equal(again.images, data.images)
    os.utime(tmp_path / "cifar-100-python" / "test", ns=(1, 1))  # a changed source is re-read
    load_cifar_fs(str(tmp_path))
    assert reads == [True, False, True, False]
    assert len(list((own_cache / "datasets").glob("cifar-fs-*.npz"))) == 1  # the stale one is gone


def test_cifar_fs_damaged_or_foreign_files_are_named(tmp_path, register_md5):
    folder = tmp_path / "cifar-100-python"
    write_cifar(tmp_path)
    with pytest.raises(UserError) as error:  # the published md5 table: the fixture is not CIFAR-100
        load_cifar_fs(str(tmp_path))
    message = one_line_error(error)
    assert f"{folder / 'train'} is damaged or not the published CIFAR-100 file (md5 mismatch)" in message

    register_md5(tmp_path)
    with (folder / "test").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(UserError) as error:
        load_cifar_fs(str(tmp_path))
    assert f"{folder / 'test'} is damaged" in one_line_error(error)

    (folder / "meta").unlink()
    with pytest.raises(UserError) as error:
        load_cifar_fs(str(tmp_path))
    assert f"{folder / 'meta'} is missing" in one_line_error(error)


def test_cifar_fs_missing_class_names_the_meta_file(tmp_path, register_md5):
    write_cifar(tmp_path, [("wale" if n == "whale" else n) for n in CIFAR_NAMES])
    register_md5(tmp_path)
    with pytest.raises(UserError) as error:
        load_cifar_fs(str(tmp_path))
    message = one_line_error(error)
    assert "class whale (test)" in message and str(tmp_path / "cifar-100-python" / "meta") in message


def test_cifar_fs_absent_says_how_to_get_it(tmp_path):
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"")
    with pytest.raises(UserError) as error:
        load_cifar_fs(str(tmp_path))
    message = one_line_error(error)
    assert str(tmp_path) in message and "python -m dfmlbench data download cifar-fs" in message
    assert "is not extracted" in message and "--data-root" in message


def test_cifar_fs_download_through_torchvision(tmp_path, own_cache, register_md5, monkeypatch):
    """`data download`, `download=True` and DFMLBENCH_DOWNLOAD=1 all go through
    torchvision's `CIFAR100(..., download=True)`; its network fetch is replaced by the fixture."""
    from torchvision.datasets import CIFAR100

    fetched = []

    def fake_download(self) -> None:
        fetched.append(Path(self.root))
        write_cifar(Path(self.root))
        register_md5(Path(self.root))

    monkeypatch.setattr(CIFAR100, "download", fake_download)
    # Only the folders named here are searched, whatever ../shared/data holds.
    monkeypatch.setattr(cifar_module, "data_root_candidates",
                        lambda explicit: [Path(explicit)] if explicit else [])
    result = call("data", "download", "cifar-fs", "--data-root", tmp_path / "a")
    assert result.code == 0, result.err
    assert "cifar-fs: 600 images of 100 classes ready" in result.out
    assert fetched == [tmp_path / "a"] and (tmp_path / "a" / "cifar-100-python" / "meta").is_file()

    monkeypatch.setenv("DFMLBENCH_DOWNLOAD", "1")
    assert len(load_cifar_fs(str(tmp_path / "b")).images) == 600
    monkeypatch.delenv("DFMLBENCH_DATA", raising=False)
    load_cifar_fs(None, download=True)  # no data root: into the cache folder, never the package
    assert fetched == [tmp_path / "a", tmp_path / "b", own_cache / "data"]


# --- miniimagenet --------------------------------------------------------------------------------


def test_mini_csv_layout_resizes_like_torchvision(mini_csv):
    from torchvision import transforms

    data = load_miniimagenet(str(mini_csv.parent))
    assert data.images.shape == (100 * PER_CLASS, 3, 84, 84) and data.images.dtype == torch.uint8
    assert data.class_names == MINI.class_names and len(data.splits["train"]) == 64
    assert [len(data.splits[s]) for s in ("val", "test")] == [16, 20]
    assert (data.mean, data.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    wnid = MINI.names["val"][3]
    first = mini_csv / "images" / f"{wnid}00000001.jpg"  # sorted order, though the csv is reversed
    with Image.open(first) as image:
        expected = np.asarray(transforms.Resize((84, 84))(image.convert("RGB"))).transpose(2, 0, 1)
    assert np.array_equal(data.images[data.indices_of(data.class_names.index(wnid))[0]].numpy(), expected)


def test_mini_both_layouts_give_the_same_dataset(mini_csv, tmp_path):
    reference = load_miniimagenet(str(mini_csv))  # --data-root may name the dataset folder itself
    for layout in ("folders", "split-folders"):
        data = load_miniimagenet(str(write_mini(tmp_path / layout / "mini-imagenet", layout).parent))
        assert data.class_names == reference.class_names and data.splits == reference.splits
        assert torch.equal(data.images, reference.images) and torch.equal(data.labels, reference.labels)


def test_mini_second_load_is_from_the_cache(mini_csv, own_cache, monkeypatch):
    decoded = []
    decode = image_files_module.decode_images

    def counting(paths, *args):
        decoded.append(len(paths))
        return decode(paths, *args)

    monkeypatch.setattr(image_files_module, "decode_images", counting)  # read by the shared loader
    first = load_miniimagenet(str(mini_csv))
    second = load_miniimagenet(str(mini_csv))
    assert decoded == [100 * PER_CLASS] and torch.equal(first.images, second.images)
    assert len(list((own_cache / "datasets").glob("miniimagenet-v1-84px-*.npz"))) == 1


@pytest.mark.parametrize("damage", [b"not a jpeg", "truncated"])
def test_mini_corrupt_image_names_the_file(mini_csv, tmp_path, damage):
    folder = shutil.copytree(mini_csv, tmp_path / "miniimagenet")
    bad = folder / "images" / f"{MINI.names['test'][5]}00000002.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) * 3 // 4] if damage == "truncated" else damage)
    with pytest.raises(UserError) as error:
        load_miniimagenet(str(tmp_path))
    assert f"cannot decode image {bad}" in one_line_error(error)


def test_mini_missing_class_and_wrong_layouts_are_named(mini_csv, tmp_path):
    folders = write_mini(tmp_path / "f" / "miniimagenet", "folders")
    wnid = MINI.names["train"][0]
    shutil.rmtree(folders / wnid)
    with pytest.raises(UserError) as error:
        load_miniimagenet(str(folders.parent))
    assert f"class {wnid} (train) has no images: looked for images (.jpg, .jpeg, .png) in {folders / wnid}/" \
        in one_line_error(error)

    twice = write_mini(tmp_path / "t" / "miniimagenet", "split-folders")
    shutil.copytree(twice / "meta_val" / MINI.names["val"][0], twice / "meta_test" / MINI.names["val"][0])
    with pytest.raises(UserError, match=f"class {MINI.names['val'][0]} has two folders"):
        load_miniimagenet(str(twice.parent))

    csv_copy = shutil.copytree(mini_csv, tmp_path / "c" / "miniimagenet")
    lost = csv_copy / "images" / f"{MINI.names['test'][0]}00000003.jpg"
    lost.unlink()
    with pytest.raises(UserError) as error:
        load_miniimagenet(str(csv_copy.parent))
    assert f"the first {lost} (listed in {csv_copy / 'test.csv'})" in one_line_error(error)
    (csv_copy / "val.csv").write_text("file,class\nx.jpg,n01855672\n")
    with pytest.raises(UserError) as error:
        load_miniimagenet(str(csv_copy.parent))
    assert f"{csv_copy / 'val.csv'}: expected the header 'filename,label'" in one_line_error(error)

    (tmp_path / "e" / "miniimagenet" / "junk").mkdir(parents=True)
    with pytest.raises(UserError, match="holds neither train.csv, val.csv, test.csv nor class folders"):
        load_miniimagenet(str(tmp_path / "e"))
    with pytest.raises(UserError) as error:
        load_miniimagenet(str(tmp_path / "nothing"))
    assert "dataset 'miniimagenet' not found" in one_line_error(error)


# --- cub -----------------------------------------------------------------------------------------


def test_cub_split_rule_seeded_order_and_grey_images(tmp_path):
    images = write_cub(tmp_path)
    data = load_cub(str(tmp_path))
    assert data.images.shape == (200 * PER_CLASS, 3, 84, 84)  # the macOS '._' file is skipped
    folders = sorted(CUB.class_names)
    rule = {"train": folders[0::2], "val": folders[1::4], "test": folders[3::4]}
    assert {s: [data.class_names[c] for c in data.splits[s]] for s in rule} == rule
    name = "002.Laysan_Albatross"
    files = sorted((images / name).iterdir())
    order = cub_module.shuffled(files, name)
    assert sorted(order) == files and cub_module.shuffled(files, name) == order
    assert any(cub_module.shuffled(files, n) != files for n in CUB.class_names[:10])
    first = data.images[data.indices_of(data.class_names.index(name))[0]].numpy()
    with Image.open(order[0]) as image:
        expected = np.asarray(image.convert("RGB").resize((84, 84), Image.Resampling.BILINEAR))
    assert np.array_equal(first, expected.transpose(2, 0, 1))
    albatross = data.class_names.index("001.Black_footed_Albatross")
    grey = [i for i in data.indices_of(albatross) if torch.equal(data.images[i, 0], data.images[i, 2])]
    assert len(grey) == 1 and torch.equal(data.images[grey[0], 0], data.images[grey[0], 1])


def test_cub_missing_class_and_absence_are_named(tmp_path):
    images = write_cub(tmp_path / "a")
    shutil.rmtree(images / "200.Common_Yellowthroat")
    with pytest.raises(UserError) as error:
        load_cub(str(tmp_path / "a"))
    assert f"class 200.Common_Yellowthroat (test) has no images: looked for images (.jpg) in " \
           f"{images / '200.Common_Yellowthroat'}/" in one_line_error(error)
    with pytest.raises(UserError) as error:
        load_cub(str(tmp_path / "b"))
    message = one_line_error(error)
    assert "no CUB_200_2011/images/" in message and "CUB_200_2011.tgz" in message


def test_fixture_datasets_feed_pools_and_episodes(mini_csv):
    """Everything downstream works off the ImageDataset: an 84 px Conv4 teacher, episodes."""
    from dfmlbench.episodes import make_episodes
    from dfmlbench.pool import PoolSpec, obtain_pool

    data = load_miniimagenet(str(mini_csv))
    pool = obtain_pool(data, PoolSpec(num_teachers=1, epochs=1))
    assert len(pool) == 1 and pool.image_size == 84
    episodes = make_episodes(data, "test", 5, 1, PER_CLASS - 1, 2)
    assert set(np.unique(episodes.classes)) <= set(data.splits["test"])


# --- the command line ----------------------------------------------------------------------------


def test_data_verify_reports_counts_and_what_to_fix(tmp_path, register_md5):
    write_cifar(tmp_path)
    register_md5(tmp_path)
    write_mini(tmp_path / "miniimagenet", "split-folders")
    write_cub(tmp_path)
    result = call("data", "verify", "--data-root", tmp_path)
    assert result.code == 0, result.out + result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"cifar-fs: ok, with warnings: {tmp_path / 'cifar-100-python'}")
    assert "  classes  train 64/64  val 16/16  test 20/20  (of 100; splits disjoint)" in lines
    assert "  images   600: train 384  val 96  test 120; 6 per class (published: 600)" in lines
    assert any(line.startswith("cub: ok, with warnings") for line in lines)
    assert "  classes  train 100/100  val 50/50  test 50/50  (of 200; splits disjoint)" in lines
    assert any("100 class(es) have 3-3 images where the published dataset has 600" in line for line in lines)
    assert call("data", "verify", "cub", "--strict", "--data-root", tmp_path).code == 1

    shutil.rmtree(tmp_path / "miniimagenet" / "meta_test" / MINI.names["test"][2])
    result = call("data", "verify", "miniimagenet", "cifar-fs", "--data-root", tmp_path)
    assert result.code == 1
    assert result.out.startswith("miniimagenet: FAILED")
    assert f"  error: class {MINI.names['test'][2]} (test) has no images" in result.out
    assert "  classes  train 64/64  val 16/16  test 19/20" in result.out
    assert "cifar-fs: ok" in result.out  # the others are still checked

    result = call("data", "verify", "cub", "--data-root", tmp_path / "empty")
    assert result.code == 1 and result.out.startswith("cub: FAILED: dataset 'cub' not found")
    assert "CUB_200_2011.tgz" in result.out and len(result.out.splitlines()) == 1


def test_cli_bad_input_and_absent_data_are_one_line(tmp_path):
    for argv, expected in [
        (("data", "verify", "cubb"), "unknown dataset 'cubb': did you mean 'cub'?"),
        (("data", "download", "cub"), "dataset 'cub' cannot be downloaded by dfmlbench"),
        (("run", "--suite", "quickstart", "--profile", "smoke", "--set", "datasets=[cifar-fs]",
          "--data-root", tmp_path, "--out", tmp_path / "runs"),
         "dataset 'cifar-fs' not found: no cifar-100-python/ in"),
    ]:
        result = call(*argv)
        assert result.code == 2 and expected in result.err and result.err.count("\n") == 1, result.err
    assert "python -m dfmlbench data download cifar-fs" in result.err
    assert not list((tmp_path / "runs").rglob("*.json"))  # the suite stopped before any cell
    listed = call("list", "datasets").out
    assert all(name in listed for name in ("cifar-fs", "miniimagenet", "cub"))
