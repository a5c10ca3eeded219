"""`report`: records -> paper-layout tables and figures. Most tests write synthetic records for
exactly the cells a suite expands to, so they check the reporting, not the training."""

from __future__ import annotations

import contextlib
import csv
import io
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dfmlbench.cli import main
from dfmlbench.config import load_suite, parse_assignment, resolve
from dfmlbench.records import write_record
from dfmlbench.planning import cell_stem, expand_cells
from dfmlbench.runner import run_cells
from dfmlbench.stats import paired_test, summarize

SUITE = textwrap.dedent("""
    suite: mini-table
    description: a reporting test suite
    default_profile: smoke
    methods: [random, average, free]
    datasets: [glyphs]
    shots: [1]
    seeds: [0, 1]
    protocol: {test_episodes: 50}
    report:
      table: table2
      reference: {glyphs: cifar-fs}
    profiles:
      smoke: {}
      cpu: {}
    """)
MEANS = {"random": 40.0, "average": 50.0, "free": 52.0}


def call(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def write_suite(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


def fake_records(suite_path: Path, runs: Path, profile: str = "smoke", assignments=(),
                 skip: set[tuple[str, int]] = frozenset()) -> dict[tuple[str, int], np.ndarray]:
    """A record with per-episode accuracies for each cell, as the runner writes them."""
    config = resolve(load_suite(str(suite_path)), profile, [parse_assignment(a) for a in assignments])
    written = {}
    for cell in expand_cells(config):
        if (cell.method.name, cell.seed) in skip:
            continue
        rng = np.random.default_rng([cell.seed, len(cell.method.name)])
        acc = np.clip(MEANS[cell.method.name] + 10 * rng.standard_normal(50), 0, 100)
        recovery = 36.0 * (1 + cell.seed) if cell.method.name == "free" else None
        record = {"status": "ok", "config_hash": cell.hash, "suite": config["suite"]["name"],
                  "profile": profile, "method": cell.method.name, "dataset": cell.dataset,
                  "shot": cell.shot, "seed": cell.seed, "sweep": cell.sweep,
                  "accuracy": summarize(acc).as_dict(), "test_episodes": {"sha": "same-episodes", "count": acc.size},
                  "timings": {"recovery_seconds": recovery},
                  "curves": {"grad_inner_product": [[e, float(e * (1 + cell.seed))] for e in range(5)]}
                  if cell.method.name == "free" else {},
                  "environment": {"device_name": "test device"}, "config": cell.config}
        write_record(cell_stem(runs, cell), record, acc)
        written[(cell.method.name, cell.seed)] = acc
    return written


def test_table_in_paper_layout_with_seed_aggregation_best_and_paired_tests(tmp_path):
    suite, runs, out = write_suite(tmp_path), tmp_path / "runs", tmp_path / "report"
    acc = fake_records(suite, runs)
    code, stdout, _ = call("report", "--suite", suite, "--runs", runs, "--out", out)
    assert code == 0
    table = (out / "table.md").read_text()
    header = table.splitlines()[0]
    assert header == ("| method | glyphs 5-way 1-shot | paper (cifar-fs) | glyphs Time (h, test device) "
                      "| paper Time (h, cifar-fs, RTX 3090) |")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    free_avg = (acc[("free", 0)] + acc[("free", 1)]) / 2
    ci = 1.96 * free_avg.std() / np.sqrt(50)
    seed_sd = np.std([acc[("free", 0)].mean(), acc[("free", 1)].mean()], ddof=1)
    assert f"**{free_avg.mean():.2f} ± {ci:.2f} (2 seeds, sd {seed_sd:.2f})**" in rows["FREE_5 (free)"]
    assert "39.13 ± 0.85" in rows["FREE_5 (free)"] and "| 0.11 |" in rows["FREE_5 (free)"]  # the paper's values
    assert "| 0.015 |" in rows["FREE_5 (free)"]  # (36 + 72) s / 2 in hours
    random_avg = (acc[("random", 0)] + acc[("random", 1)]) / 2
    p = paired_test(random_avg, free_avg).p_value
    assert f"(p={p:.2g})" in rows["Random (random)"] and "28.59 ± 0.56" in rows["Random (random)"]
    assert stdout.startswith(header)

    latex = (out / "table.tex").read_text()
    assert r"\textbf{" in latex and r"$\pm$" in latex and r"\begin{tabular}" in latex
    csv_rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    free_row = next(r for r in csv_rows if r["method"] == "free")
    assert free_row["best"] == "1" and free_row["seeds"] == "0 1" and free_row["paper_mean"] == "39.1300"
    assert float(free_row["mean"]) == pytest.approx(free_avg.mean(), abs=1e-4)
    readme = (out / "README.md").read_text()
    assert "python -m dfmlbench report --suite" in readme and "test device" in readme


def test_report_is_byte_for_byte_reproducible(tmp_path):
    suite, runs = write_suite(tmp_path), tmp_path / "runs"
    fake_records(suite, runs)
    outputs = []
    for name in ("a", "b"):
        assert call("report", "--suite", suite, "--runs", runs, "--out", tmp_path / name)[0] == 0
        outputs.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())
                        if p.name != "README.md"})  # the README quotes the --out path
    assert outputs[0] == outputs[1] and set(outputs[0]) == {"table.md", "table.tex", "table.csv"}


def test_other_profiles_and_stale_configs_are_never_mixed_in(tmp_path):
    suite, runs, out = write_suite(tmp_path), tmp_path / "runs", tmp_path / "report"
    fake_records(suite, runs, profile="cpu")  # only cpu records exist
    code, _, err = call("report", "--suite", suite, "--runs", runs, "--out", out)  # smoke profile
    assert code == 2 and "no finished records" in err and "profile smoke" in err and "\n" == err[-1]
    # records made with other settings (another config hash) are not this table's cells
    fake_records(suite, runs, assignments=["protocol.lr=0.5"])
    assert call("report", "--suite", suite, "--runs", runs, "--out", out)[0] == 2
    assert call("report", "--suite", suite, "--runs", runs, "--out", out, "--set", "protocol.lr=0.5")[0] == 0


def test_missing_cells_show_as_dashes_and_are_listed(tmp_path):
    suite, runs, out = write_suite(tmp_path), tmp_path / "runs", tmp_path / "report"
    fake_records(suite, runs, skip={("average", 0), ("average", 1), ("random", 1)})
    code, _, err = call("report", "--suite", suite, "--runs", runs, "--out", out)
    assert code == 0 and "3 cell(s) have no finished record" in err
    rows = (out / "table.md").read_text().splitlines()
    assert "| Average (average) | – | 23.96 ± 0.53 |" in "\n".join(rows)
    readme = (out / "README.md").read_text()
    assert "## Missing cells" in readme and "average glyphs 5w1s seed 0" in readme


@pytest.mark.parametrize("argv, message", [
    (["--runs", "nowhere"], "no records folder nowhere"),
    (["--profile", "gpu"], "has no profile 'gpu'"),
])
def test_bad_report_input_is_one_line_exit_2(tmp_path, argv, message):
    suite = write_suite(tmp_path)
    code, _, err = call("report", "--suite", suite, "--out", tmp_path / "r", *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_unknown_figure_kind_is_a_one_line_error(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("reference: {glyphs: cifar-fs}",
                                                "reference: {glyphs: cifar-fs}\n  figures: [tnse]"))
    fake_records(suite, tmp_path / "runs")
    code, _, err = call("report", "--suite", suite, "--runs", tmp_path / "runs", "--out", tmp_path / "r")
    assert code == 2 and "did you mean 'tsne'" in err


PAIRED_SUITE = SUITE.replace("reference: {glyphs: cifar-fs}",
                             "reference: {glyphs: cifar-fs}\n  comparisons: [[free, random], [average, free], "
                             "[free, purer]]")


def test_named_pairs_get_paired_tests_in_paired_md_and_the_readme(tmp_path):
    suite, runs, out = write_suite(tmp_path, PAIRED_SUITE), tmp_path / "runs", tmp_path / "report"
    acc = fake_records(suite, runs)
    assert call("report", "--suite", suite, "--runs", runs, "--out", out)[0] == 0
    rows = (out / "paired.md").read_text().splitlines()[2:]
    assert len(rows) == 2  # purer is not run by this profile: its pair has no row
    free, random, average = ((acc[(m, 0)] + acc[(m, 1)]) / 2 for m in ("free", "random", "average"))
    for row, (a, b) in zip(rows, ((free, random), (average, free))):
        test = paired_test(a, b)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "glyphs 5-way 1-shot" and cells[8] == "50"
        assert cells[3] == f"{a.mean():.2f}" and cells[4] == f"{b.mean():.2f}"
        assert cells[5] == f"{a.mean() - b.mean():+.2f} ± {1.96 * (a - b).std(ddof=1) / np.sqrt(50):.2f}"
        assert cells[6] == f"{test.p_value:.2g}" and cells[7] == f"{test.wilcoxon_p:.2g}"
    assert rows[0].split("|")[1].strip() == "FREE_5 (free)" and rows[0].endswith("| first above |")
    second = paired_test(average, free)
    assert rows[1].endswith("| first below |" if second.p_value < 0.05 else "| no significant difference |")
    assert "## Paired comparisons" in (out / "README.md").read_text()


@pytest.mark.parametrize("pairs, message", [
    ("[[free, purr]]", "did you mean 'purer'"),
    ("[[free]]", "each entry must be a pair of method names"),
])
def test_a_bad_comparison_is_a_one_line_error(tmp_path, pairs, message):
    suite = write_suite(tmp_path, PAIRED_SUITE.replace("[[free, random], [average, free], [free, purer]]", pairs))
    fake_records(suite, tmp_path / "runs")
    code, _, err = call("report", "--suite", suite, "--runs", tmp_path / "runs", "--out", tmp_path / "r")
    assert code == 2 and message in err and err.count("\n") == 1


def test_sweep_expands_cells_and_the_figure_plots_each_pool_size(tmp_path):
    text = (SUITE.replace("methods: [random, average, free]", "methods: [random, free]")
            .replace("seeds: [0, 1]", "seeds: [0]\nsweep: {pool.num_teachers: [2, 3]}")
            .replace("reference: {glyphs: cifar-fs}", "figures: [accuracy_vs_teachers, grad_inner_product]"))
    suite, runs, out = write_suite(tmp_path, text), tmp_path / "runs", tmp_path / "report"
    config = resolve(load_suite(str(suite)), None, [])
    cells = expand_cells(config)
    free = [c for c in cells if c.method.name == "free"]
    assert [c.sweep for c in free] == [{"pool.num_teachers": 2}, {"pool.num_teachers": 3}]
    assert [c.config["pool"]["num_teachers"] for c in free] == [2, 3] and free[0].hash != free[1].hash
    randoms = [c for c in cells if c.method.name == "random"]
    assert len(randoms) == 2 and randoms[0].hash == randoms[1].hash  # untouched by the sweep: one cell
    # --set can replace a sweep
    over = resolve(load_suite(str(suite)), None, [parse_assignment("sweep.pool.num_teachers=[4]")])
    assert {c.config["pool"]["num_teachers"] for c in expand_cells(over) if c.method.name == "free"} == {4}

    fake_records(suite, runs)
    code, stdout, _ = call("report", "--suite", suite, "--runs", runs, "--out", out)
    assert code == 0 and "FREE_5 (free) (pool.num_teachers=2)" in stdout and "(pool.num_teachers=3)" in stdout
    assert (out / "fig6-accuracy-vs-teachers-glyphs.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "fig5-grad-inner-product-glyphs-1shot.png").is_file()
    assert "![fig6-accuracy-vs-teachers-glyphs.png]" in (out / "README.md").read_text()


def test_a_sweep_must_list_values(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("seeds: [0, 1]", "seeds: [0]\nsweep: {pool.num_teachers: 3}"))
    code, _, err = call("run", "--suite", suite, "--out", tmp_path / "runs")
    assert code == 2 and "sweep.pool.num_teachers must be a non-empty list" in err
    suite = write_suite(tmp_path, SUITE.replace("seeds: [0, 1]", "seeds: [0]\nsweep: {pool.num_teacher: [3]}"))
    code, _, err = call("run", "--suite", suite, "--out", tmp_path / "runs")
    assert code == 2 and "did you mean 'num_teachers'" in err


def test_run_cells_runs_a_cell_shared_by_sweep_points_once(tmp_path, glyphs):
    text = (SUITE.replace("methods: [random, average, free]", "methods: [random]")
            .replace("seeds: [0, 1]", "seeds: [0]\nsweep: {pool.num_teachers: [2, 3]}")
            .replace("protocol: {test_episodes: 50}", "protocol: {test_episodes: 4, val_episodes: 2, query: 2}"))
    config = resolve(load_suite(str(write_suite(tmp_path, text))), None, [])
    outcomes = run_cells(expand_cells(config), tmp_path / "runs", show_progress=False)
    assert [o.status for o in outcomes] == ["ran"]


@pytest.mark.slow
def test_fig4_analysis_runs_and_reports_a_tsne(tmp_path, glyphs):
    runs, out = tmp_path / "runs", tmp_path / "report"
    code, stdout, _ = call("run", "--suite", "fig4", "--profile", "smoke", "--out", runs, "--no-progress")
    assert code == 0 and "teacher-features glyphs seed 0: ran" in stdout
    code, stdout, _ = call("run", "--suite", "fig4", "--profile", "smoke", "--out", runs, "--no-progress")
    assert "teacher-features glyphs seed 0: recorded" in stdout  # resumes, no rerun
    code, stdout, _ = call("report", "--suite", "fig4", "--profile", "smoke", "--runs", runs, "--out", out)
    assert code == 0 and (out / "fig4-tsne-glyphs-seed0.png").read_bytes()[:4] == b"\x89PNG"
    arrays = np.load(next((runs / "fig4" / "smoke" / "analysis-teacher-features").glob("*.arrays.npz")))
    assert arrays["features"].shape[:2] == (3, 4)  # smoke: 3 teachers x 4 images


def test_a_record_without_its_episodes_file_counts_as_missing(tmp_path):
    suite, runs, out = write_suite(tmp_path), tmp_path / "runs", tmp_path / "report"
    fake_records(suite, runs)
    for npy in (runs / "mini-table" / "smoke" / "average").glob("*.episodes.npy"):
        npy.unlink()
    code, _, err = call("report", "--suite", suite, "--runs", runs, "--out", out)
    assert code == 0 and "2 cell(s) have no finished record" in err
