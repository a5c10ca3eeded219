import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dfmlbench.errors import UserError
from dfmlbench.config import load_suite, resolve
from dfmlbench.planning import expand_cells, twinned_pools
from dfmlbench.pool import PoolSpec, build_pool, cache_folder, load_pool, obtain_pool, pool_key
from dfmlbench.pool.pretrain import PretrainSettings, pretrain_teacher, split_train_heldout, teacher_classes
from dfmlbench.pool.store import MANIFEST


def test_manifest_describes_every_teacher(tiny_pool, glyphs):
    manifest = json.loads((tiny_pool.path / MANIFEST).read_text())
    assert manifest["dataset"] == "glyphs" and manifest["image_size"] == 32
    assert len(manifest["teachers"]) >= len(tiny_pool) == 4
    for entry, teacher in zip(manifest["teachers"], tiny_pool):
        assert entry["file"].endswith(".safetensors")
        assert entry["class_names"] == [glyphs.class_names[c] for c in entry["class_ids"]]
        assert set(entry["class_ids"]) <= set(glyphs.splits["train"])
        assert 0 <= entry["heldout_acc"] <= 100 and len(entry["sha256"]) == 64
        assert teacher.class_ids == entry["class_ids"]


def test_teachers_are_frozen_and_in_eval_mode(tiny_pool):
    teacher = tiny_pool[0]
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_teacher_draws_do_not_depend_on_pool_size(glyphs):
    train = glyphs.splits["train"]
    first = [teacher_classes(train, 5, 0, i) for i in range(3)]
    assert first == [teacher_classes(train, 5, 0, i) for i in range(3)]
    assert all(len(set(c)) == 5 for c in first)
    assert first[0] != teacher_classes(train, 5, 1, 0)


def test_eighty_twenty_split_uses_the_class_order(glyphs):
    classes = glyphs.splits["train"][:5]
    train_idx, train_y, held_idx, held_y = split_train_heldout(glyphs, classes)
    assert len(train_idx) == 5 * 48 and len(held_idx) == 5 * 12
    assert set(train_idx).isdisjoint(held_idx)
    assert list(train_idx[:48]) == list(glyphs.indices_of(classes[0])[:48])
    assert set(train_y) == set(held_y) == set(range(5))


@pytest.mark.parametrize("count, train", [(41, 32), (42, 33), (60, 48), (20, 16), (2, 1)])
def test_split_takes_the_official_first_int_80_percent(count, train):
    class Classes:  # a dataset whose one class holds `count` images
        def indices_of(self, class_id):
            return np.arange(count)
    train_idx, _, held_idx, _ = split_train_heldout(Classes(), [0])
    assert (len(train_idx), len(held_idx)) == (train, count - train)


def test_select_best_keeps_the_best_epoch_and_final_the_last(glyphs):
    classes = teacher_classes(glyphs.splits["train"], 5, 0, 0)
    best = pretrain_teacher(glyphs, classes, "conv4", PretrainSettings(epochs=4), seed=1)
    final = pretrain_teacher(glyphs, classes, "conv4", PretrainSettings(epochs=4, select="final"), seed=1)
    assert best.heldout_acc == final.heldout_acc  # the quirk records the best epoch's accuracy
    if best.best_epoch != 3:  # the weights differ exactly when the best epoch was not the last
        assert not torch.equal(best.state["classifier.weight"], final.state["classifier.weight"])


def test_one_build_fills_the_select_twin_as_its_own_build_would(glyphs, tmp_path):
    spec = PoolSpec(num_teachers=2, epochs=2, seed=11)
    twin = replace(spec, select="final")
    obtain_pool(glyphs, spec, fill_twin=True)  # the best pool's build fills the final one
    build_pool(glyphs, twin, tmp_path)  # the twin built on its own, for comparison
    filled = json.loads((cache_folder(glyphs, twin) / MANIFEST).read_text())
    own = json.loads((tmp_path / MANIFEST).read_text())
    assert filled["key"] == own["key"] == pool_key(glyphs, twin)
    assert [t["sha256"] for t in filled["teachers"]] == [t["sha256"] for t in own["teachers"]]
    trained = []
    obtain_pool(glyphs, twin, on_teacher=lambda done, total: trained.append(done))
    assert trained == []  # nothing left to train


def test_a_twin_ahead_of_the_build_is_left_alone(glyphs):
    spec = PoolSpec(num_teachers=1, epochs=1, seed=12)
    twin = replace(spec, select="final", num_teachers=2)
    obtain_pool(glyphs, twin)
    before = (cache_folder(glyphs, twin) / MANIFEST).read_text()
    obtain_pool(glyphs, spec, fill_twin=True)
    assert (cache_folder(glyphs, twin) / MANIFEST).read_text() == before


def test_a_suite_with_both_selects_builds_its_pool_once():
    cells = expand_cells(resolve(load_suite("table2"), "smoke", []), ["free", "free-official", "average"])
    twinned = twinned_pools(cells)
    assert len(twinned) == 2  # the best pool and the final one, each the other's twin
    assert not twinned_pools([c for c in cells if c.method.name != "free-official"])


def test_second_request_hits_the_cache_and_smaller_pools_are_prefixes(glyphs, tiny_pool):
    again = obtain_pool(glyphs, PoolSpec(num_teachers=2, epochs=2))
    assert again.path == tiny_pool.path
    for a, b in zip(again, tiny_pool):
        assert a.sha256 == b.sha256


def test_interrupted_build_resumes_without_redoing_teachers(glyphs, tmp_path):
    spec = PoolSpec(num_teachers=1, epochs=1, seed=7)
    build_pool(glyphs, spec, tmp_path)
    first = json.loads((tmp_path / MANIFEST).read_text())["teachers"][0]
    trained = []
    build_pool(glyphs, PoolSpec(num_teachers=2, epochs=1, seed=7), tmp_path,
               on_teacher=lambda done, total: trained.append(done))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert trained == [2] and manifest["teachers"][0] == first and len(manifest["teachers"]) == 2
    with pytest.raises(UserError, match="different pool"):
        build_pool(glyphs, PoolSpec(num_teachers=2, epochs=3, seed=7), tmp_path)


def test_bring_your_own_pool_folder(tiny_pool, glyphs, tmp_path):
    for item in tiny_pool.path.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    pool = obtain_pool(glyphs, PoolSpec(num_teachers=2, path=str(tmp_path)))
    assert len(pool) == 2 and pool.path == tmp_path
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(pool[1].model(x), tiny_pool[1].model(x))


def test_corrupt_or_incomplete_pools_are_one_line_errors(tiny_pool, tmp_path):
    for item in tiny_pool.path.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    with pytest.raises(UserError, match="has 4 teachers|teachers, 9 were"):
        load_pool(tmp_path, limit=9)
    weights = tmp_path / "teacher_000.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(UserError, match="sha256"):
        load_pool(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_pool(tmp_path)
    with pytest.raises(UserError, match="manifest.json is missing"):
        load_pool(tmp_path / "nowhere")


def test_pool_files_are_safetensors_not_pickles(tiny_pool):
    data = (tiny_pool.path / "teacher_000.safetensors").read_bytes()
    assert not data.startswith(b"\x80") and not data.startswith(b"PK")  # neither pickle nor zip
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_length])
    assert "classifier.weight" in header


def test_pool_key_changes_with_what_determines_the_teachers(glyphs):
    base = PoolSpec()
    assert pool_key(glyphs, base) == pool_key(glyphs, PoolSpec(num_teachers=7))
    assert pool_key(glyphs, base) != pool_key(glyphs, PoolSpec(epochs=61))
    assert pool_key(glyphs, base) != pool_key(glyphs, PoolSpec(seed=1))


def test_bad_pool_settings_are_user_errors():
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        PoolSpec.from_config({"epoch": 3})
    with pytest.raises(UserError, match="select"):
        PoolSpec.from_config({"select": "median"})
