"""The multi-domain benchmark (Table 3): one label space over several datasets, teachers that
take the shared image space as if it were their own domain's, a meta-test per domain."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import requires_omniglot
from dfmlbench.data.base import ImageDataset
from dfmlbench.data.multidomain import DomainTeacher, compose
from dfmlbench.models import build_model
from dfmlbench.pool import PoolSpec, obtain_pool
from dfmlbench.pool.pretrain import derive_seed


def small_domain(glyphs: ImageDataset, name: str, size: int, mean: float) -> ImageDataset:
    """glyphs under another name, size and statistics: a second domain without more data."""
    images = glyphs.images if size == glyphs.image_size else torch.nn.functional.interpolate(
        glyphs.images.float(), size=(size, size), mode="area").round().to(torch.uint8)
    return ImageDataset(name, images, glyphs.labels, [f"{name}-{c}" for c in glyphs.class_names], glyphs.splits,
                        (mean,) * 3, (0.2,) * 3)


def test_compose_offsets_class_ids_and_shares_one_normalisation(glyphs):
    a, b = small_domain(glyphs, "a", 32, 0.1), small_domain(glyphs, "b", 16, 0.3)
    mix = compose("ab", [a, b])
    assert [d.offset for d in mix.domains] == [0, len(a.class_names)]
    assert mix.image_size == 32 and mix.mean == pytest.approx((0.2,) * 3) and mix.std == pytest.approx((0.2,) * 3)
    assert all(d.dataset.mean == mix.mean for d in mix.domains)
    assert mix.domains[1].source is b and b.mean == (0.3,) * 3  # teachers train on the source
    assert mix.fingerprint() != compose("ab", [b, a]).fingerprint()


@pytest.mark.parametrize("teacher_size", [32, 16])
def test_domain_teacher_sees_shared_images_as_its_own(teacher_size):
    model = build_model("conv4", image_size=teacher_size, generator=torch.Generator().manual_seed(0)).eval()
    own_mean, own_std, shared_mean, shared_std = (0.3, 0.2, 0.1), (0.2, 0.25, 0.3), (0.5,) * 3, (0.25,) * 3
    wrapped = DomainTeacher(model, teacher_size, own_mean, own_std, shared_mean, shared_std)
    pixels = torch.rand(4, 3, 32, 32)
    shared = (pixels - torch.tensor(shared_mean).view(1, 3, 1, 1)) / torch.tensor(shared_std).view(1, 3, 1, 1)
    native = torch.nn.functional.interpolate(pixels, size=(teacher_size,) * 2, mode="area")
    own = (native - torch.tensor(own_mean).view(1, 3, 1, 1)) / torch.tensor(own_std).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(shared), model(own), rtol=1e-4, atol=1e-5)


def test_multidomain_pool_draws_domains_per_teacher_from_their_own_pools(glyphs):
    a, b = small_domain(glyphs, "dom-a", 32, 0.1), small_domain(glyphs, "dom-b", 16, 0.3)
    mix = compose("ab", [a, b])
    spec = PoolSpec(num_teachers=5, epochs=1)
    pool = obtain_pool(mix, spec)
    domains = [derive_seed("teacher-domain", 0, i) % 2 for i in range(5)]
    assert len(pool) == 5 and pool.image_size == 32 and pool.mean == mix.mean
    own = {d: obtain_pool(mix.domains[d].source, replace(spec, num_teachers=domains.count(d)))
           for d in set(domains)}
    seen = {0: 0, 1: 0}
    for teacher, d in zip(pool, domains):
        source = own[d][seen[d]]
        seen[d] += 1
        assert teacher.class_ids == [mix.domains[d].offset + c for c in source.class_ids]
        assert teacher.class_names[0].startswith(f"dom-{'ab'[d]}/")
        assert isinstance(teacher.model, DomainTeacher) and teacher.model.size == mix.domains[d].source.image_size
        assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())


@requires_omniglot
def test_a_multidomain_run_reports_each_domain_and_the_pooled_score(tmp_path):
    from test_report import call
    runs = tmp_path / "runs"
    code, stdout, _ = call("run", "--suite", "table3", "--profile", "smoke", "--method", "random",
                           "--out", runs, "--no-progress")
    assert code == 0, stdout
    record = json.loads(next((runs / "table3" / "smoke" / "random").glob("*.json")).read_text())
    assert list(record["per_domain"]) == ["omniglot", "glyphs"]
    assert [d["n"] for d in record["per_domain"].values()] == [10, 10] and record["accuracy"]["n"] == 20
    pooled = np.mean([d["mean"] for d in record["per_domain"].values()])
    assert record["accuracy"]["mean"] == pytest.approx(pooled)  # equal episode counts
    code, stdout, _ = call("report", "--suite", "table3", "--profile", "smoke", "--runs", runs,
                           "--out", tmp_path / "report")
    assert code == 0 and "· omniglot 5-way 1-shot" in stdout and "· glyphs 5-way 1-shot" in stdout


def test_verify_checks_each_dataset_of_a_multidomain_name(tmp_path):
    from dfmlbench.data.verify import verify
    lines, ok = verify(["mix"], str(tmp_path))
    assert not ok and [line.split(":")[0] for line in lines] == ["cifar-fs", "miniimagenet", "cub"]
