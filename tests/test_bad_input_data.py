"""Damaged dataset files (the bad-input battery's data part).

A damaged *cache* entry (written by dfmlbench under $DFMLBENCH_CACHE) is rebuilt, with one
stderr line naming it, and the data afterwards is the same as before the damage. A damaged
*source* file (the user's data: the Omniglot .npz, CIFAR-100 pickles, image files, miniImageNet
csv files) is a one-line UserError naming the file and the fix; through the CLI it is one
`dfmlbench: error:` line and nothing written. The fixtures are the real formats: a copy of the
real Omniglot file, and the CIFAR-100 / miniImageNet / CUB layouts of test_real_datasets.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from cli_harness import assert_one_line_error, call
from conftest import requires_omniglot
from dfmlbench.data import load_dataset
from dfmlbench.data.cifar_fs import load_cifar_fs
from dfmlbench.data.cub import load_cub
from dfmlbench.data.glyphs_dataset import GLYPHS, load_glyphs
from dfmlbench.data.miniimagenet import load_miniimagenet
from dfmlbench.data.npz import read_npz
from dfmlbench.data.omniglot import FILE_NAME as OMNIGLOT_FILE
from dfmlbench.data.omniglot import load_omniglot
from dfmlbench.data.sources import labelled_images
from dfmlbench.errors import UserError
from dfmlbench.paths import cache_dir, data_root_candidates
from test_real_datasets import MINI, own_cache, register_md5, write_cifar, write_cub, write_mini  # noqa: F401


@pytest.fixture(autouse=True)
def fresh_loads(monkeypatch):
    """`load_dataset` memoises what it loaded: start each test without it, so files are read."""
    monkeypatch.setattr("dfmlbench.data._loaded", {})


# --- how a file is damaged -----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _corrupt_middle(path: Path) -> None:  # the archive's structure intact, a member's bytes not
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _rewrite(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    """A damage that rewrites an .npz with its arrays changed (a valid archive, wrong content)."""
    def damage(path: Path) -> None:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        change(arrays)
        with path.open("wb") as handle:
            np.savez(handle, **arrays)
    return damage


def _single_array(path: Path) -> None:  # an .npy written under the .npz name
    with np.load(path, allow_pickle=False) as npz:
        images = npz["images"]
    with path.open("wb") as handle:
        np.save(handle, images)


def _out_of_range(arrays: dict[str, np.ndarray]) -> None:
    arrays["labels"] = arrays["labels"].copy()
    arrays["labels"][0] = 10**6


# damage -> (how, the reason in the message)
NPZ_DAMAGE = {
    "truncated": (_truncate, "a damaged .npz archive (File is not a zip file)"),
    "garbage": (_garbage, "not an .npz archive (it does not start like a zip file)"),
    "corrupted": (_corrupt_middle, "a damaged .npz archive ("),
    "empty": (_empty, "the file is empty"),
    "no-labels": (_rewrite(lambda a: a.pop("labels")), "no array 'labels' in it (it holds "),
    "float-images": (_rewrite(lambda a: a.update(images=a["images"].astype(np.float32))),
                     "array 'images' has dtype float32, expected uint8"),
    "short-labels": (_rewrite(lambda a: a.update(labels=a["labels"][:-1])), "array 'labels' has shape ("),
    "labels-out-of-range": (_rewrite(_out_of_range), "array 'labels' holds values 0..1000000, expected 0.."),
    "npy": (_single_array, "it is a single .npy array, not an .npz archive"),
}


# --- a source .npz: Omniglot ---------------------------------------------------------------------


@pytest.fixture
def omniglot_copy(tmp_path) -> Path:
    """A copy of the real file in its own data folder (../shared is never modified)."""
    source = next(f / OMNIGLOT_FILE for f in data_root_candidates(None) if (f / OMNIGLOT_FILE).is_file())
    folder = tmp_path / "data"
    folder.mkdir()
    copy = folder / OMNIGLOT_FILE
    shutil.copyfile(source, copy)
    return copy


@requires_omniglot
@pytest.mark.parametrize("damage", list(NPZ_DAMAGE))
def test_damaged_omniglot_is_a_one_line_error(omniglot_copy, damage):
    how, reason = NPZ_DAMAGE[damage]
    how(omniglot_copy)
    with pytest.raises(UserError) as error:
        load_omniglot(str(omniglot_copy.parent))
    message = str(error.value)
    assert "\n" not in message
    for fragment in (f"cannot read {omniglot_copy}: ", reason, f"re-copy {OMNIGLOT_FILE}",
                     "python -m dfmlbench data verify omniglot"):
        assert fragment in message, (fragment, message)
    assert omniglot_copy.exists()  # a source file is never deleted or rewritten
    with pytest.raises(UserError, match="cannot read"):  # also as a member of mix-small
        load_dataset("mix-small", str(omniglot_copy.parent))


@requires_omniglot
def test_omniglot_without_a_split_alphabet_is_named(omniglot_copy):
    _rewrite(lambda a: a.update(alphabets=np.where(a["alphabets"] == "Greek", "Greco", a["alphabets"])
                                .astype(a["alphabets"].dtype)))(omniglot_copy)
    _rewrite(lambda a: a.update(alphabets=np.where(a["alphabets"] == "Tagalog", "Tag", a["alphabets"])
                                .astype(a["alphabets"].dtype)))(omniglot_copy)
    with pytest.raises(UserError) as error:
        load_omniglot(str(omniglot_copy.parent))
    assert f"{omniglot_copy} holds no class of the val alphabets (Greek, Tagalog)" in str(error.value)


@requires_omniglot
@pytest.mark.parametrize("damage", ["truncated", "empty", "no-labels"])
def test_cli_run_on_damaged_omniglot_stops_before_writing(omniglot_copy, tmp_path, damage):
    NPZ_DAMAGE[damage][0](omniglot_copy)
    out = tmp_path / "runs"
    result = call("run", "--suite", "quickstart", "--profile", "smoke", "--method", "random",
                  "--set", "datasets=omniglot", "--data-root", omniglot_copy.parent, "--out", out)
    assert_one_line_error(result, f"cannot read {omniglot_copy}", NPZ_DAMAGE[damage][1],
                          f"re-copy {OMNIGLOT_FILE}")
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


# --- cache entries: rebuilt ----------------------------------------------------------------------


def _glyphs(src: Path, register, session_cache: Path) -> Callable[[], object]:
    """The session's glyphs cache (made by the `glyphs` fixture) copied in, so only the rebuild
    renders (about 5 s)."""
    (cache_dir() / "datasets").mkdir(parents=True)
    for entry in (session_cache / "datasets").glob("glyphs-v*.npz"):  # not glyphs-paper
        shutil.copyfile(entry, cache_dir() / "datasets" / entry.name)
    return load_glyphs


def _cifar(src: Path, register, session_cache: Path) -> Callable[[], object]:
    write_cifar(src)
    register(src)
    return lambda: load_cifar_fs(str(src))


def _mini(src: Path, register, session_cache: Path) -> Callable[[], object]:
    write_mini(src / "miniimagenet", "folders")
    return lambda: load_miniimagenet(str(src))


def _cub(src: Path, register, session_cache: Path) -> Callable[[], object]:
    write_cub(src)
    return lambda: load_cub(str(src))


CACHED = {"glyphs": (_glyphs, GLYPHS.cache_arrays()), "cifar-fs": (_cifar, labelled_images(32, 100)),
          "miniimagenet": (_mini, labelled_images(84, 100)), "cub": (_cub, labelled_images(84, 200))}
CACHE_CASES = ([("cifar-fs", damage) for damage in NPZ_DAMAGE]
               + [("glyphs", "truncated"), ("miniimagenet", "no-labels"), ("cub", "corrupted")])


@pytest.mark.parametrize("dataset,damage", CACHE_CASES)
def test_damaged_cache_is_rebuilt_with_one_stderr_line(dataset, damage, glyphs, tmp_path, own_cache,
                                                       isolated_cache, register_md5, capsys):
    make, spec = CACHED[dataset]
    load = make(tmp_path / "src", register_md5, isolated_cache)
    before = load()
    (entry,) = (own_cache / "datasets").glob("*.npz")
    capsys.readouterr()

    how, reason = NPZ_DAMAGE[damage]
    how(entry)
    after = load()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"dfmlbench: note: damaged cache file {entry} ({reason}"), err
    assert err.rstrip().endswith("; rebuilding it")
    assert torch.equal(after.images, before.images) and torch.equal(after.labels, before.labels)
    assert after.class_names == before.class_names and after.fingerprint() == before.fingerprint()

    read_npz(entry, spec)  # rewritten whole: the next load is a quiet cache hit
    assert list((own_cache / "datasets").glob("*.npz")) == [entry]
    written = entry.stat().st_mtime_ns
    assert torch.equal(load().images, before.images) and capsys.readouterr().err == ""
    assert entry.stat().st_mtime_ns == written


# --- other source files: CIFAR-100 pickles, images, csv ------------------------------------------


def _cifar_case(file_name: str, damage: Callable[[Path], None], md5_after: bool):
    """Damage one CIFAR-100 python file; `md5_after`: register the damaged file's own md5, so
    torchvision's check passes and its unpickling meets the damage."""
    def make(root: Path, register) -> tuple[Callable[[], object], list[str]]:
        write_cifar(root)
        folder = root / "cifar-100-python"
        if not md5_after:
            register(root)
        damage(folder / file_name)
        if md5_after:
            register(root)
        fragments = ([f"cannot read {folder / ('test' if file_name == 'test' else 'train')}",
                      f"{folder / 'meta'} as CIFAR-100 python files", "download CIFAR-100 again"]
                     if md5_after else
                     [f"{folder / file_name} is damaged or not the published CIFAR-100 file (md5 mismatch)",
                      f"delete {folder} and download it again"])
        return lambda: load_cifar_fs(str(root)), fragments
    return make


def _image_case(dataset: str, damage: Callable[[Path], None]):
    def make(root: Path, register) -> tuple[Callable[[], object], list[str]]:
        if dataset == "cub":
            bad = write_cub(root) / "010.Red_winged_Blackbird" / "Red_winged_Blackbird_0002_7001.jpg"
            load = lambda: load_cub(str(root))  # noqa: E731
        else:
            bad = write_mini(root / "miniimagenet", "csv") / "images" / f"{MINI.names['val'][1]}00000003.jpg"
            load = lambda: load_miniimagenet(str(root))  # noqa: E731
        damage(bad)
        return load, [f"cannot decode image {bad}: ", "replace the file (re-extract the dataset)"]
    return make


def _csv_case(content: bytes, reason: str):
    def make(root: Path, register) -> tuple[Callable[[], object], list[str]]:
        bad = write_mini(root / "miniimagenet", "csv") / "train.csv"
        bad.write_bytes(content)
        return lambda: load_miniimagenet(str(root)), [f"{bad}", reason]
    return make


SOURCE_CASES = {
    "cifar-train-truncated": _cifar_case("train", _truncate, md5_after=False),
    "cifar-meta-garbage": _cifar_case("meta", _garbage, md5_after=False),
    "cifar-test-empty-unpickled": _cifar_case("test", _empty, md5_after=True),
    "cifar-train-truncated-unpickled": _cifar_case("train", _truncate, md5_after=True),
    "cifar-meta-garbage-unpickled": _cifar_case("meta", _garbage, md5_after=True),
    "cub-image-empty": _image_case("cub", _empty),
    "cub-image-garbage": _image_case("cub", _garbage),
    "cub-image-truncated": _image_case("cub", _truncate),
    "mini-image-empty": _image_case("miniimagenet", _empty),
    "mini-csv-not-utf8": _csv_case(b"filename,label\n\xff\xfe\xfa,n01532829\n",
                                   "'utf-8' codec can't decode byte 0xff"),
    "mini-csv-empty": _csv_case(b"", "expected the header 'filename,label', got ''"),
}


@pytest.mark.parametrize("case", list(SOURCE_CASES))
def test_damaged_source_file_is_a_one_line_error(case, tmp_path, own_cache, register_md5):
    load, fragments = SOURCE_CASES[case](tmp_path / "data", register_md5)
    with pytest.raises(UserError) as error:
        load()
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not list(own_cache.rglob("*.npz"))  # nothing cached from damaged sources


# --- data verify ---------------------------------------------------------------------------------


@requires_omniglot
def test_data_verify_reports_damaged_files_as_problem_lines(omniglot_copy, glyphs, tmp_path, own_cache,
                                                            isolated_cache, register_md5):
    _truncate(omniglot_copy)
    root = omniglot_copy.parent
    write_cifar(root)
    register_md5(root)
    _garbage(root / "cifar-100-python" / "meta")
    _glyphs(tmp_path, register_md5, isolated_cache)
    (glyphs_cache,) = (own_cache / "datasets").glob("glyphs-v*.npz")
    _empty(glyphs_cache)

    result = call("data", "verify", "mix-small", "cifar-fs", "--data-root", root)
    assert result.code == 1, result.out + result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"omniglot: FAILED: cannot read {omniglot_copy}: a damaged .npz archive")
    assert lines[1].startswith("glyphs: ok: 6000 images")  # the damaged cache was rebuilt
    assert lines[2].startswith(f"cifar-fs: FAILED: {root / 'cifar-100-python' / 'meta'} is damaged")
    assert len(lines) == 3 and "Traceback" not in result.err
    assert result.err.splitlines() == [
        f"dfmlbench: note: damaged cache file {glyphs_cache} (the file is empty); "
        f"rebuilding it"]
