"""The Time-column script (dfmlbench.recovery_time) in smoke size: it measures each method's
own recovery code and extrapolates to the paper budgets."""

import re

import torch

from dfmlbench.methods import METHODS
from dfmlbench.recovery_time import PAPER_HOURS, main, measure, untrained_pool


def test_the_methods_with_a_time_column_are_those_that_declare_a_recovery_unit():
    from dfmlbench.recovery_time import recovering_methods
    assert recovering_methods() == [n for n in METHODS.names() if METHODS.get(n).load().name in ("free", "purer", "bidf-mkd")]


def test_untrained_pool_matches_the_paper_pool_shape():
    pool = untrained_pool(32, 5, torch.device("cpu"))
    assert len(pool) == 5 and pool.architectures == ["conv4"]
    assert all(len(t.class_ids) == 5 and max(t.class_ids) < 64 for t in pool)
    assert not any(p.requires_grad for t in pool for p in t.model.parameters())


def test_a_mixed_pool_draws_each_teachers_architecture_as_pool_building_does():
    from dfmlbench.pool import PoolSpec
    pool = untrained_pool(32, 12, torch.device("cpu"), arch="mix")
    expected = [PoolSpec(arch="mix").arch_of(i) for i in range(12)]
    assert [t.arch for t in pool] == expected and len(set(expected)) > 1
    sizes = {t.arch: sum(p.numel() for p in t.model.parameters()) for t in pool}
    assert len(set(sizes.values())) == len(sizes)  # each teacher built as its own architecture


def test_units_at_paper_budget_follow_each_methods_paper_settings():
    pool = untrained_pool(32, 100, torch.device("cpu"))
    units = {name: measure(name, pool, 1, torch.device("cpu"), smoke=True)
             for name in ("free", "purer", "bidf-mkd")}
    assert (units["free"].unit, units["free"].paper_units) == ("epoch", 980)
    assert (units["purer"].unit, units["purer"].paper_units) == ("iteration", 15000)
    assert (units["bidf-mkd"].unit, units["bidf-mkd"].paper_units) == ("event", 60000 // 200 * 4)
    assert all(m.seconds_per_unit > 0 for m in units.values())


def test_script_prints_hours_beside_the_paper_and_the_ratios(tmp_path, capsys):
    out = tmp_path / "time.md"
    assert main(["--smoke", "--span", "1", "--sizes", "32", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert out.read_text().strip() == table.strip()
    assert "measured on cpu" in table
    for name in ("free", "free-2", "purer", "bidf-mkd"):
        row = re.search(rf"^\| {name} \| 32 \| ([\d.]+) per \w+ \| \d+ \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$",
                        table, re.MULTILINE)
        assert row, table
        assert float(row.group(3)) == PAPER_HOURS[32][name]
    assert re.search(r"^\| free \| 32 .* \| 1\.0 \| 1\.0 \|$", table, re.MULTILINE)
    assert re.search(r"^\| purer \| 32 .* \| 11\.0 \|$", table, re.MULTILINE)  # 1.21 h / 0.11 h


def test_the_table_names_a_pool_other_than_conv4(capsys):
    assert main(["--smoke", "--span", "1", "--sizes", "32", "--methods", "purer", "--arch", "mix"]) == 0
    assert "with Table 4's mixed teachers (conv4, resnet10, resnet18); paper: one RTX 3090 with Conv4 teachers" \
        in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(capsys):
    for argv in (["--arch", "vgg"], ["--span", "0"], ["--sizes", "30"], ["--device", "bogus"], ["--methods", "nope"],
                 ["--methods", "average"]):  # recovers no data: no Time column
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dfmlbench: error: "), err
