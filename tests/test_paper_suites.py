"""The paper suites: every profile resolves into cells, the paper profiles name the paper's
datasets and pools, and without the data a run stops at once with one line saying how to get it."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import dfmlbench

from dfmlbench.analysis.cells import expand_analysis_cells
from dfmlbench.cli import main
from dfmlbench.config import load_suite, resolve
from dfmlbench.planning import expand_cells

PAPER_SUITES = ["table2", "table3", "table4", "table5", "fig4", "fig5", "fig6", "fig7"]


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_every_profile_expands(name):
    suite = load_suite(name)
    regimes = {"cpu-glyphs"} if name in ("table2", "table5", "fig6") else set()  # the paper's teacher regime (issue 17)
    assert set(suite.profiles) == {"paper", "cpu", "smoke"} | regimes
    for profile in suite.profiles:
        config = resolve(suite, profile, [])
        assert expand_cells(config) or expand_analysis_cells(config)
        if profile == "cpu":  # laptops: real Omniglot images (with glyphs as a second domain)
            assert config["datasets"] in (["omniglot"], ["mix-small"])
        if profile == "cpu-glyphs":  # cpu's settings on glyphs-paper, with teachers trained as the paper's
            cpu = resolve(suite, "cpu", [])
            assert config["datasets"] == ["glyphs-paper"] and config["pool"]["epochs"] == 60
            assert {k: config[k] for k in ("method_settings", "budget_fraction", "shots", "protocol")} == {
                k: cpu[k] for k in ("method_settings", "budget_fraction", "shots", "protocol")}


def test_paper_profiles_are_the_paper_setting():
    table2 = resolve(load_suite("table2"), "paper", [])
    assert table2["datasets"] == ["cifar-fs", "miniimagenet", "cub"] and table2["shots"] == [1, 5]
    assert len(expand_cells(table2)) == 11 * 3 * 2 and table2["pool"]["num_teachers"] == 100  # nine + free-official + random-scaled
    assert resolve(load_suite("table4"), "paper", [])["pool"]["arch"] == "mix"
    assert {c.method.name for c in expand_cells(resolve(load_suite("table5"), "paper", []))} == {
        "free-baseline", "free-erm", "free-sequence", "free"}
    fig6 = expand_cells(resolve(load_suite("fig6"), "paper", []))
    assert sorted({c.config["pool"]["num_teachers"] for c in fig6}) == [10, 25, 50, 100]


@pytest.mark.parametrize("name", ["table2", "table3", "table4", "table5", "fig4"])
def test_without_the_data_a_paper_run_stops_at_once(name, tmp_path):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", "--suite", name, "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "runs")])
    assert code == 2 and err.getvalue().count("\n") == 1
    assert "dataset 'cifar-fs' not found" in err.getvalue() and "data download cifar-fs" in err.getvalue()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


LENGTH_SETTINGS = {"val_interval", "checkpoint_interval"}  # besides each method's paper_budget keys


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(dfmlbench.__file__).parent / "suites").glob("*.yaml")))
def test_no_cpu_profile_changes_a_per_step_setting(name):
    """docs/profiles.md, rule 1: a cpu profile scales a method's length (its paper_budget keys,
    the validation interval), never its per-step settings."""
    from dfmlbench.methods import METHODS

    suite = load_suite(name)
    cpu_profiles = [p for p in suite.profiles if p.startswith("cpu")]
    if not cpu_profiles:
        pytest.skip(f"{name} has no cpu profile")
    for profile in cpu_profiles:
        for method, settings in resolve(suite, profile, [])["method_settings"].items():
            allowed = set(METHODS.get(method).load().paper_budget) | LENGTH_SETTINGS
            assert set(settings) <= allowed, f"{name} {profile} sets {sorted(set(settings) - allowed)} of {method}"
