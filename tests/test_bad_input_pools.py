"""Bad teacher pools: every way a brought-in (`pool.path`) or cached pool can be wrong is one
line naming the file, the teacher, the field and the value, and how to fix it, found before
any cell work (`check_pool_source`) and again by `load_pool`. Also: the thread-count note and
the planned pool key.

Each case copies the session's tiny pool (4 conv4 teachers on glyphs) and damages the copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from cli_harness import assert_one_line_error, call
from conftest import requires_omniglot
from dfmlbench.errors import UserError
from dfmlbench.models import build_model
from dfmlbench.pool import PoolSpec, cache_folder, check_pool_source, load_pool, obtain_pool, planned_pool_key
from dfmlbench.pool.store import MANIFEST
from dfmlbench.records import cpu_model

SPEC = PoolSpec(num_teachers=4, epochs=2)  # the tiny pool's spec (tests/conftest.py)
FIX_FOLDER = "fix the pool folder"
REBUILD = "(the next run retrains it)"


def copy_pool(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))  # NaN stays NaN, as a hand-edited file may


def edit(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """A damage that edits the manifest dict in place."""
    def damage(folder: Path) -> None:
        manifest = manifest_of(folder)
        change(manifest)
        write_manifest(folder, manifest)
    return damage


def teacher(index: int, **fields: Any) -> Callable[[Path], None]:
    return edit(lambda m: m["teachers"][index].update(fields))


def top(**fields: Any) -> Callable[[Path], None]:
    return edit(lambda m: m.update(fields))


def drop(field: str, index: int | None = None) -> Callable[[Path], None]:
    return edit(lambda m: (m if index is None else m["teachers"][index]).pop(field))


def ids(index: int, change: Callable[[list], Any]) -> Callable[[Path], None]:
    return edit(lambda m: change(m["teachers"][index]["class_ids"]))


def weights(index: int, make: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor] | None],
            pickle: bool = False) -> Callable[[Path], None]:
    """Replace teacher `index`'s file with other weights (its sha256 updated, so only the
    tensors are wrong); `pickle` writes them with torch.save instead of safetensors."""
    def damage(folder: Path) -> None:
        manifest = manifest_of(folder)
        path = folder / manifest["teachers"][index]["file"]
        state = make({k: v.clone() for k, v in load_file(str(path)).items()})  # not views of the file
        torch.save(state, path) if pickle else save_file(state, str(path))
        manifest["teachers"][index]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        write_manifest(folder, manifest)
    return damage


def model_state(image_size: int = 32, in_channels: int = 3, classes: int = 5) -> Callable[[Any], Any]:
    return lambda _: build_model("conv4", classes, image_size, in_channels).state_dict()


def add_class(folder: Path) -> None:
    """A sixth class id (and name) for teacher 2, whose file still has 5 output units."""
    manifest = manifest_of(folder)
    entry = manifest["teachers"][2]
    entry["class_ids"].append(next(c for c in range(100) if c not in entry["class_ids"]))
    entry["class_names"].append("extra")
    write_manifest(folder, manifest)


def corrupt_bytes(folder: Path) -> None:
    path = folder / "teacher_001.safetensors"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")


# (id, damage, fragments of the one-line message, where: "both" = check_pool_source and
# load_pool, "load" = load_pool only (the pre-flight reads no weights, so it cannot see it))
CASES = [
    # class_ids: inside the dataset, integers, distinct, as many as names and output units
    ("class-id-too-big", ids(1, lambda c: c.__setitem__(2, 100)),
     ["teacher 1 field 'class_ids'", "holds 100 at position 2", "outside glyphs (class ids 0-99)"], "both"),
    ("class-id-of-meta-test", ids(1, lambda c: c.__setitem__(2, 90)),
     ["teacher 1 field 'class_ids'", "holds 90 at position 2", "glyphs's test split", "meta-train classes only"],
     "both"),
    ("class-id-of-meta-val", ids(0, lambda c: c.__setitem__(0, 70)), ["holds 70", "glyphs's val split"], "both"),
    ("class-id-negative", ids(1, lambda c: c.__setitem__(0, -3)),
     ["teacher 1 field 'class_ids'", "holds -3", "must be >= 0"], "both"),
    ("class-id-float", ids(0, lambda c: c.__setitem__(4, 3.5)),
     ["teacher 0 field 'class_ids'", "holds 3.5 at position 4", "must be integers"], "both"),
    ("class-id-string", ids(0, lambda c: c.__setitem__(0, "7")),
     ["teacher 0 field 'class_ids'", '"7" (string)', "must be integers"], "both"),
    ("class-id-bool", ids(3, lambda c: c.__setitem__(1, True)),
     ["teacher 3 field 'class_ids'", "true (boolean)", "must be integers"], "both"),
    ("class-id-twice", ids(2, lambda c: c.__setitem__(1, c[0])),
     ["teacher 2 field 'class_ids'", "twice", "different class"], "both"),
    ("class-ids-empty", teacher(0, class_ids=[]),
     ["teacher 0 field 'class_ids'", "non-empty list"], "both"),
    ("class-names-short", edit(lambda m: m["teachers"][1]["class_names"].pop()),
     ["teacher 1 field 'class_names'", "has 4 names but class_ids has 5 ids"], "both"),
    ("class-ids-vs-output-units", add_class,
     ["teacher_002.safetensors (teacher 2, conv4)", "'classifier.weight' has shape [5, 128]",
      "implies [6, 128]", "5 output units but class_ids lists 6 classes"], "both"),
    # heldout_acc: a number in [0, 100]
    ("acc-string", teacher(2, heldout_acc="high"),
     ["teacher 2 field 'heldout_acc'", '"high" (string)', "in [0, 100]"], "both"),
    ("acc-null", teacher(2, heldout_acc=None), ["teacher 2 field 'heldout_acc'", "is null"], "both"),
    ("acc-nan", teacher(2, heldout_acc=float("nan")), ["teacher 2 field 'heldout_acc'", "is nan"], "both"),
    ("acc-over-100", teacher(0, heldout_acc=150.0),
     ["teacher 0 field 'heldout_acc'", "150.0", "[0, 100]"], "both"),
    ("acc-negative", teacher(0, heldout_acc=-1), ["'heldout_acc' is -1"], "both"),
    # the image space: positive integers, one mean and std per channel, std > 0, the dataset's
    ("mean-length", top(mean=[0.156, 0.1595]), ["mean has 2 values but in_channels is 3"], "both"),
    ("std-zeros", top(std=[0, 0, 0]), ["std[0] is 0", "must be > 0"], "both"),
    ("std-negative", edit(lambda m: m["std"].__setitem__(2, -0.18)), ["std[2] is -0.18"], "both"),
    ("mean-not-number", edit(lambda m: m["mean"].__setitem__(1, "x")), ['mean[1] is "x" (string)'], "both"),
    ("mean-not-list", top(mean=0.5), ["mean is 0.5, must be a list of 3 numbers"], "both"),
    ("image-size-float", top(image_size=32.0), ["image_size is 32.0, must be a positive integer"], "both"),
    ("image-size-zero", top(image_size=0), ["image_size is 0, must be a positive integer"], "both"),
    ("channels-bool", top(in_channels=True), ["in_channels is true (boolean)"], "both"),
    ("stats-not-the-datasets", top(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
     ["statistics (mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225])",
      "differ from glyphs's (mean [0.156, 0.1595, 0.1582], std [0.1761, 0.1816, 0.1798])"], "both"),
    ("image-size-not-the-datasets", top(image_size=84), ["expects 3x84px images but glyphs has 3x32px"], "both"),
    # the weights do not fit what the manifest says
    ("weights-at-16px", weights(1, model_state(image_size=16)),
     ["teacher_001.safetensors (teacher 1, conv4)", "'classifier.weight' has shape [5, 32]",
      "implies [5, 128]", "image_size 32 gives a conv4 head of 128 inputs, the file's has 32",
      "fits image_size 16-31"], "both"),
    ("weights-one-channel", weights(0, model_state(in_channels=1)),
     ["teacher_000.safetensors (teacher 0, conv4)", "'features.0.0.weight' has shape [32, 1, 3, 3]",
      "implies [32, 3, 3, 3]", "takes 1 input channels, the manifest says in_channels 3"], "both"),
    ("weights-prefixed", weights(3, lambda s: {f"module.{k}": v for k, v in s.items()}),
     ["teacher_003.safetensors (teacher 3, conv4) lacks the tensor 'features.0.0.weight'",
      "without the prefix 'module.'"], "both"),
    ("arch-wrong", teacher(0, arch="resnet10"),
     ["teacher 0, resnet10) lacks the tensor 'stem.0.weight'", "is arch right?"], "both"),
    ("arch-unknown", teacher(0, arch="vit"), ["teacher 0 field 'arch' is \"vit\" (string)", "conv4"], "both"),
    ("weights-pickled", weights(2, lambda s: s, pickle=True),
     ["teacher_002.safetensors is not a safetensors file", "save_file"], "both"),
    # files and fields
    ("file-missing", lambda f: (f / "teacher_003.safetensors").unlink(),
     ["teacher_003.safetensors (teacher 3 of", "is missing"], "both"),
    ("file-outside", teacher(1, file="../teacher_001.safetensors"),
     ["teacher 1 field 'file'", "inside the pool folder"], "both"),
    ("sha-malformed", teacher(1, sha256="abc"), ["teacher 1 field 'sha256'", "64 lowercase hex"], "both"),
    ("sha-mismatch", corrupt_bytes, ["teacher_001.safetensors does not match its sha256"], "load"),
    ("teacher-field-missing", drop("heldout_acc", 2), ["teacher 2 lacks the field 'heldout_acc'"], "both"),
    ("manifest-field-missing", drop("std"), ["lacks the field 'std'"], "both"),
    ("teachers-not-list", top(teachers={"0": {}}), ["teachers is", "must be a list"], "both"),
    ("manifest-not-object", lambda f: (f / MANIFEST).write_text("[1, 2]"), ["must hold a JSON object"], "both"),
    ("manifest-not-json", lambda f: (f / MANIFEST).write_text("{not json"), ["is not valid JSON"], "both"),
    ("newer-format", top(format_version=99), ["format_version is 99", "upgrade dfmlbench"], "both"),
]


def _raise_message(action: Callable[[], Any]) -> str:
    with pytest.raises(UserError) as caught:
        action()
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("damage,fragments,where", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_brought_in_pool_is_one_line(tiny_pool, glyphs, tmp_path, damage, fragments, where):
    folder = copy_pool(tiny_pool.path, tmp_path / "pool")
    damage(folder)
    spec = replace(SPEC, path=str(folder))
    messages = [_raise_message(lambda: load_pool(folder, 4, dataset=glyphs)),
                _raise_message(lambda: obtain_pool(glyphs, spec))]
    if where == "both":
        messages.append(_raise_message(lambda: check_pool_source(glyphs, spec)))
    else:
        check_pool_source(glyphs, spec)  # what only the weights show is left to loading
    for message in messages:
        for fragment in fragments:
            assert fragment in message, (fragment, message)
        assert str(folder) in message and FIX_FOLDER in message and REBUILD not in message
    assert len(set(messages)) == 1  # one validation, one message


def test_a_sound_copy_passes_every_check(tiny_pool, glyphs, tmp_path):
    folder = copy_pool(tiny_pool.path, tmp_path / "pool")
    spec = replace(SPEC, path=str(folder))
    check_pool_source(glyphs, spec)
    assert len(obtain_pool(glyphs, spec)) == 4


def test_too_few_teachers_is_found_before_any_work(tiny_pool, glyphs, tmp_path):
    folder = copy_pool(tiny_pool.path, tmp_path / "pool")
    message = _raise_message(lambda: check_pool_source(glyphs, replace(SPEC, path=str(folder), num_teachers=9)))
    assert "has 4 teachers, 9 were asked for" in message and "pool.num_teachers" in message


def test_shapes_are_checked_against_the_manifest_even_without_a_dataset(tiny_pool, tmp_path):
    """load_pool without a dataset: the manifest's own image_size still has to fit the weights."""
    folder = copy_pool(tiny_pool.path, tmp_path / "pool")
    top(image_size=64)(folder)
    message = _raise_message(lambda: load_pool(folder))
    assert "'classifier.weight' has shape [5, 128] but the manifest implies [5, 512]" in message
    assert "image_size 64 gives a conv4 head of 512 inputs" in message and "fits image_size 32-47" in message


# --- a damaged cached pool says how to rebuild it, and stays on disk ------------------------------

CACHED_CASES = [
    ("not-json", lambda f: (f / MANIFEST).write_text("{\"teachers\": ["), ["is not valid JSON"], "both"),
    ("field-missing", drop("teachers"), ["lacks the field 'teachers'"], "both"),
    ("teacher-field-missing", drop("sha256", 1), ["teacher 1 lacks the field 'sha256'"], "both"),
    ("file-missing", lambda f: (f / "teacher_002.safetensors").unlink(), ["teacher_002.safetensors", "is missing"],
     "both"),
    ("not-safetensors", weights(0, lambda s: s, pickle=True), ["is not a safetensors file"], "both"),
    ("sha-mismatch", corrupt_bytes, ["does not match its sha256"], "load"),
]


@pytest.mark.parametrize("damage,fragments,where", [c[1:] for c in CACHED_CASES], ids=[c[0] for c in CACHED_CASES])
def test_damaged_cached_pool_names_the_command_that_rebuilds_it(tiny_pool, glyphs, tmp_path, monkeypatch,
                                                                damage, fragments, where):
    monkeypatch.setenv("DFMLBENCH_CACHE", str(tmp_path / "cache"))
    folder = copy_pool(tiny_pool.path, cache_folder(glyphs, SPEC))
    damage(folder)
    messages = [_raise_message(lambda: obtain_pool(glyphs, SPEC))]
    if where == "both":
        messages.append(_raise_message(lambda: check_pool_source(glyphs, SPEC)))
    for message in messages:
        for fragment in fragments:
            assert fragment in message, (fragment, message)
        assert message.endswith(f"; rebuild it with: rm -r '{folder}'  {REBUILD}"), message
    assert folder.is_dir()  # never deleted behind the user's back


def test_a_cached_pool_not_built_yet_passes_the_preflight(glyphs, tmp_path, monkeypatch):
    monkeypatch.setenv("DFMLBENCH_CACHE", str(tmp_path / "cache"))
    check_pool_source(glyphs, SPEC)
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing written


# --- through the CLI ----------------------------------------------------------------------------

CLI_CASES = ["class-id-too-big", "std-zeros", "stats-not-the-datasets", "weights-at-16px", "manifest-not-json"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_a_bad_pool_before_any_cell(tiny_pool, tmp_path, case):
    _, damage, fragments, _ = next(c for c in CASES if c[0] == case)
    folder = copy_pool(tiny_pool.path, tmp_path / "pool")
    damage(folder)
    out = tmp_path / "runs"
    result = call("run", "--suite", "quickstart", "--profile", "smoke", "--method", "average",
                  "--set", f"pool.path={folder}", "--set", "pool.num_teachers=4", "--out", out,
                  "--no-progress")
    assert_one_line_error(result, *fragments, str(folder), FIX_FOLDER)
    assert not list(out.rglob("*.json"))


# --- the thread-count note ------------------------------------------------------------------------

def test_teachers_record_what_they_were_trained_on_and_a_different_thread_count_is_noted(glyphs, capsys):
    spec = PoolSpec(num_teachers=2, epochs=1, seed=31)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        obtain_pool(glyphs, replace(spec, num_teachers=1))
        capsys.readouterr()
        torch.set_num_threads(2)
        pool = obtain_pool(glyphs, spec)  # extends the cached pool by teacher 1, under 2 threads
        err = capsys.readouterr().err.splitlines()
        torch.set_num_threads(1)
        again = obtain_pool(glyphs, spec)  # now teacher 1 is the odd one
    finally:
        torch.set_num_threads(before)
    trained = [t["trained_on"] for t in manifest_of(pool.path)["teachers"]]
    assert [t["num_threads"] for t in trained] == [1, 2] and all(t["device"] == "cpu" for t in trained)
    assert all(t["device_name"] for t in trained)
    cpu = f"cpu ({cpu_model()})"  # the CPU type is named: it changes the last digits too
    line = (f"dfmlbench: note: pool {pool.path}: teacher 0 was trained on {cpu} with 1 thread(s), "
            f"this run uses {cpu} with 2 thread(s); results can differ in the last digits")
    assert len(err) == 1 and err[0].startswith(line), err
    assert pool.metadata["run_on"]["num_threads"] == 2 and pool.metadata["training_note"] in err[0]
    assert [t["num_threads"] for t in pool.metadata["teachers_trained_on"]] == [1, 2]
    note = again.metadata["training_note"]
    assert f"teacher 1 was trained on {cpu} with 2 thread(s), this run uses {cpu} with 1" in note


def test_old_manifests_without_trained_on_load_quietly(tiny_pool, glyphs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFMLBENCH_CACHE", str(tmp_path / "cache"))
    folder = copy_pool(tiny_pool.path, cache_folder(glyphs, SPEC))
    edit(lambda m: [t.pop("trained_on", None) for t in m["teachers"]])(folder)
    capsys.readouterr()
    pool = obtain_pool(glyphs, SPEC)
    assert len(pool) == 4 and pool.metadata["training_note"] is None and capsys.readouterr().err == ""


# --- the planned pool key -------------------------------------------------------------------------

def test_planned_key_of_a_cached_pool(tiny_pool, glyphs):
    assert planned_pool_key(glyphs, SPEC) == obtain_pool(glyphs, SPEC).key == tiny_pool.key


def test_planned_key_of_a_brought_in_pool_with_and_without_a_manifest_key(tiny_pool, glyphs, tmp_path):
    folder = copy_pool(tiny_pool.path, tmp_path / "pool")
    spec = replace(SPEC, path=str(folder))
    assert planned_pool_key(glyphs, spec) == obtain_pool(glyphs, spec).key == tiny_pool.key
    drop("key")(folder)
    keyless = planned_pool_key(glyphs, spec)
    assert keyless == obtain_pool(glyphs, spec).key and keyless != tiny_pool.key and len(keyless) == 16
    assert planned_pool_key(glyphs, replace(spec, num_teachers=3)) != keyless  # other teachers used
    teacher(0, sha256="0" * 64)(folder)
    assert planned_pool_key(glyphs, spec) != keyless  # the key follows the weights


def test_planned_key_of_a_multidomain_pool(glyphs):
    from test_multidomain import small_domain
    from dfmlbench.data.multidomain import compose
    mix = compose("ab", [small_domain(glyphs, "dom-a", 32, 0.1), small_domain(glyphs, "dom-b", 16, 0.3)])
    spec = PoolSpec(num_teachers=3, epochs=1)
    assert planned_pool_key(mix, spec) == obtain_pool(mix, spec).key
    check_pool_source(mix, spec)
    with pytest.raises(UserError, match="pool.path cannot serve the multi-domain dataset"):
        planned_pool_key(mix, replace(spec, path="/somewhere"))


@requires_omniglot
def test_planned_key_of_mix_small():
    from dfmlbench.data import load_dataset
    mix = load_dataset("mix-small")
    spec = PoolSpec(num_teachers=2, epochs=1)
    check_pool_source(mix, spec)
    assert planned_pool_key(mix, spec) == obtain_pool(mix, spec).key
