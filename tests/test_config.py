"""Suites, profiles and `--set` overrides (dfmlbench.config), the registries and cell expansion.

Nothing here trains or evaluates a model: these tests run in well under a second.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest

from dfmlbench.config import (DEFAULTS, Suite, config_hash, load_suite, parse_assignment, resolve,
                              suite_names)
from dfmlbench.data import DATASETS
from dfmlbench.errors import UserError
from dfmlbench.methods import METHODS, create_method
from dfmlbench.registry import Registry, did_you_mean
from dfmlbench.planning import expand_cells


def write_suite(tmp_path: Path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def quickstart() -> Suite:
    return load_suite("quickstart")


LAYERED_SUITE = """\
suite: layered
version: 3
description: one value set at every level
default_profile: base
methods: [random, best-model]
protocol: {query: 7, test_episodes: 30, steps: 2, lr: 0.5}
pool: {epochs: 9}
profiles:
  base: {}
  fast:
    protocol.test_episodes: 40
    protocol.steps: 3
    pool.num_teachers: 4
"""


# --- resolve: defaults < suite < profile < --set -------------------------------------------------


def test_resolve_priority_defaults_suite_profile_set(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, LAYERED_SUITE)))
    config = resolve(suite, "fast", [("protocol.steps", 4)])
    protocol = config["protocol"]
    assert protocol["val_episodes"] == DEFAULTS["protocol"]["val_episodes"] == 100  # defaults only
    assert protocol["query"] == 7  # suite over defaults (15)
    assert protocol["lr"] == 0.5  # suite over defaults (0.01)
    assert protocol["test_episodes"] == 40  # profile over suite (30)
    assert protocol["steps"] == 4  # --set over profile (3) over suite (2)
    # a suite's partial section is merged into the defaults, not substituted for them
    assert config["pool"]["epochs"] == 9
    assert config["pool"]["num_teachers"] == 4
    assert config["pool"]["batch_size"] == DEFAULTS["pool"]["batch_size"]
    assert config["profile"] == "fast"
    assert config["suite"] == {"name": "layered", "version": 3, "path": str(tmp_path / "mine.yaml")}


def test_resolve_profile_only_applies_when_chosen(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, LAYERED_SUITE)))
    config = resolve(suite, "base", [])
    assert config["protocol"]["test_episodes"] == 30
    assert config["protocol"]["steps"] == 2
    assert config["pool"]["num_teachers"] == DEFAULTS["pool"]["num_teachers"]


def test_resolve_default_profile(quickstart):
    assert quickstart.default_profile == "cpu"
    config = resolve(quickstart, None, [])
    assert config["profile"] == "cpu"
    assert config["pool"]["num_teachers"] == 20 and config["pool"]["epochs"] == 20
    assert config["protocol"]["test_episodes"] == 600
    assert config == resolve(quickstart, "cpu", [])


def test_resolve_smoke_profile_of_quickstart(quickstart):
    config = resolve(quickstart, "smoke", [])
    assert config["methods"] == ["random", "best-model", "average", "free"]
    assert config["datasets"] == ["glyphs"]
    assert config["shots"] == [1]
    assert config["pool"]["num_teachers"] == 3 and config["pool"]["epochs"] == 2
    assert config["protocol"]["test_episodes"] == 20
    assert config["protocol"]["query"] == 5
    # --set wins over the profile
    assert resolve(quickstart, "smoke", [parse_assignment("protocol.test_episodes=7")])[
        "protocol"]["test_episodes"] == 7


@pytest.mark.parametrize("text, key, expected", [
    ("datasets=omniglot", "datasets", ["omniglot"]),
    ("shots=5", "shots", [5]),
    ("seeds=3", "seeds", [3]),
    ("methods=average", "methods", ["average"]),
    ("seeds=[0, 1]", "seeds", [0, 1]),
])
def test_resolve_turns_scalar_list_keys_into_lists(quickstart, text, key, expected):
    assert resolve(quickstart, "smoke", [parse_assignment(text)])[key] == expected


def test_resolve_leaves_defaults_and_suite_untouched(quickstart):
    defaults, profiles, body = copy.deepcopy(DEFAULTS), copy.deepcopy(quickstart.profiles), \
        copy.deepcopy(quickstart.body)
    config = resolve(quickstart, "smoke", [("protocol.steps", 99), ("pool.epochs", 7),
                                           ("method_settings.random.reinit_per_task", True)])
    config["protocol"]["way"] = 42
    assert DEFAULTS == defaults
    assert quickstart.profiles == profiles and quickstart.body == body
    assert resolve(quickstart, "smoke", [])["protocol"]["steps"] == 10


def test_resolve_method_assignments(quickstart):
    config = resolve(quickstart, "smoke", [parse_assignment("method.variant=zero-step"),
                                           parse_assignment("method_settings.random.reinit_per_task=true")])
    assert config["method_overrides"] == {"variant": "zero-step"}
    assert config["method_settings"]["random"] == {"reinit_per_task": True}
    assert "free" not in config["method_settings"]  # FREE's smoke budget is Free.smoke_settings


@pytest.mark.parametrize("name", METHODS.names())
def test_a_smoke_profile_runs_every_method_at_its_smoke_settings(quickstart, name):
    """quickstart's smoke profile names no PURER or BiDf-MKD settings, yet runs them small."""
    method_class = METHODS.get(name).load()
    (cell,) = expand_cells(resolve(quickstart, "smoke", []), [name])
    fixed = METHODS.get(name).settings
    for key, value in method_class.smoke_settings.items():
        assert cell.method.settings[key] == fixed.get(key, value)
    (paper_cell, *_) = expand_cells(resolve(quickstart, "paper", []), [name])
    for key in method_class.smoke_settings:  # other profiles keep the paper settings
        assert paper_cell.method.settings[key] == fixed.get(key, method_class.defaults[key])


def test_smoke_settings_yield_to_the_suite_and_to_set(quickstart):
    config = resolve(quickstart, "smoke", [parse_assignment("method_settings.purer.iterations=9")])
    (cell,) = expand_cells(config, ["purer"])
    assert cell.method.settings["iterations"] == 9
    assert cell.method.settings["candidate_teachers"] == METHODS.get("purer").load().smoke_settings["candidate_teachers"]


def test_unknown_profile(quickstart):
    with pytest.raises(UserError, match=r"has no profile 'smok'.*did you mean 'smoke'"):
        resolve(quickstart, "smok", [])
    with pytest.raises(UserError, match="no profile 'gpu'"):
        resolve(quickstart, "gpu", [])


def test_unknown_profile_of_a_suite_without_profiles(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, "suite: bare\nmethods: [random]\n")))
    with pytest.raises(UserError):
        resolve(suite, "smoke", [])


# --- parse_assignment ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("protocol.way=3", ("protocol.way", 3)),
    ("protocol.lr=0.05", ("protocol.lr", 0.05)),
    ("pool.clip=2.5", ("pool.clip", 2.5)),
    ("shots=[1, 5]", ("shots", [1, 5])),
    ("datasets=[glyphs, omniglot]", ("datasets", ["glyphs", "omniglot"])),
    ("pool.path=null", ("pool.path", None)),
    ("pool.path=", ("pool.path", None)),
    ("pool.select=best", ("pool.select", "best")),
    ("runtime.device=cuda:1", ("runtime.device", "cuda:1")),
    (" protocol.way = 3 ", ("protocol.way", 3)),
    ("method.variant=zero-step", ("method.variant", "zero-step")),
    ("method_settings.random.reinit_per_task=true", ("method_settings.random.reinit_per_task", True)),
])
def test_parse_assignment_reads_yaml_values(text, expected):
    key, value = parse_assignment(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


def test_parse_assignment_reads_exponent_floats():
    key, value = parse_assignment("protocol.lr=1e-3")
    assert value == pytest.approx(1e-3) and isinstance(value, float)


@pytest.mark.parametrize("text, fragment", [
    ("protocol.way", "write it as key=value"),
    ("=5", "write it as key=value"),
    ("protocl.way=5", "unknown setting 'protocl.way': did you mean 'protocol'?"),
    ("protocol.wya=5", "unknown setting 'protocol.wya': did you mean 'way'?"),
    ("pool.nonexistent=1", "unknown setting 'pool.nonexistent': choose one of: arch, batch_size"),
    ("protocol.way.x=1", "it has no sub-settings"),
    ("method=1", "must name a setting"),
    ("method_settings.random=1", "must name a setting"),
    ("shots=[1, 5", "not valid YAML"),
])
def test_parse_assignment_errors(text, fragment):
    with pytest.raises(UserError) as info:
        parse_assignment(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_assigning_a_whole_section_is_checked(quickstart):
    with pytest.raises(UserError):
        config = resolve(quickstart, "smoke", [parse_assignment("protocol={wya: 3}")])
        expand_cells(config, ["random"])


# --- load_suite ----------------------------------------------------------------------------------


def test_builtin_suites():
    assert {"quickstart", "baselines"} <= set(suite_names())
    suite = load_suite("quickstart")
    assert suite.name == "quickstart" and suite.version == 2
    assert {"paper", "cpu", "smoke"} <= set(suite.profiles)
    assert suite.body["methods"] == ["random", "best-model", "average", "free"]
    assert "profiles" not in suite.body and "description" not in suite.body


def test_load_suite_by_path(tmp_path):
    path = write_suite(tmp_path, LAYERED_SUITE)
    suite = load_suite(str(path))
    assert (suite.name, suite.version, suite.default_profile, suite.path) == ("layered", 3, "base", path)
    assert suite.profiles["fast"]["protocol.steps"] == 3


def test_load_suite_malformed_yaml_names_file_and_line(tmp_path):
    path = write_suite(tmp_path, "suite: broken\nmethods: [random]\n  datasets: [glyphs]\n", "broken.yaml")
    with pytest.raises(UserError) as info:
        load_suite(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "malformed YAML" in message and "line 3" in message
    assert "\n" not in message


def test_load_suite_unclosed_bracket(tmp_path):
    path = write_suite(tmp_path, "suite: broken\nmethods: [random\nshots: [1]\n", "unclosed.yaml")
    with pytest.raises(UserError, match=r"unclosed\.yaml: malformed YAML at line \d+"):
        load_suite(str(path))


@pytest.mark.parametrize("text, fragment", [
    ("suite: x\nprotocols: {way: 5}\n", "unknown setting 'protocols': did you mean 'protocol'?"),
    ("suite: x\nmethod: [random]\n", "unknown setting 'method': did you mean 'methods'?"),
    ("suite: x\nprotocol: {wya: 5}\n", "unknown setting 'protocol.wya'"),
    ("suite: x\nprotocol: 5\n", "'protocol' must be a mapping"),
    ("suite: x\nprofiles:\n  p: {protocol.wya: 5}\n", "profile 'p': unknown setting 'protocol.wya'"),
    ("suite: x\nprofiles:\n  p: [1]\n", "'profiles' must map profile names"),
    ("suite: x\ndefault_profile: q\nprofiles:\n  p: {}\n", "default_profile 'q' is not among its profiles"),
    ("- just\n- a list\n", "a suite must be a YAML mapping"),
])
def test_load_suite_rejects_bad_content(tmp_path, text, fragment):
    path = write_suite(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_suite(str(path))
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_load_suite_unknown_name():
    with pytest.raises(UserError, match=r"unknown suite 'quickstrat': did you mean 'quickstart'\?"):
        load_suite("quickstrat")
    with pytest.raises(UserError, match="unknown suite 'zzzz': choose one of: .*quickstart"):
        load_suite("zzzz")


def test_load_suite_missing_yaml_path(tmp_path):
    with pytest.raises(UserError, match="unknown suite"):
        load_suite(str(tmp_path / "absent.yaml"))


# --- config_hash ---------------------------------------------------------------------------------


def smoke_cells(quickstart, assignments=(), methods=None):
    config = resolve(quickstart, "smoke", [parse_assignment(a) for a in assignments])
    return {cell.method.name: cell for cell in expand_cells(config, methods)}


def test_config_hash_is_stable_and_short(quickstart):
    cell = smoke_cells(quickstart)["best-model"]
    assert cell.hash == config_hash(copy.deepcopy(cell.config))
    assert len(cell.hash) == 16 and int(cell.hash, 16) >= 0


def test_config_hash_ignores_runtime(quickstart):
    base = smoke_cells(quickstart)
    moved = smoke_cells(quickstart, ["runtime.device=cpu", "runtime.eval_chunk=7",
                                     "runtime.data_root=/somewhere/else"])
    for name in base:
        assert moved[name].config["runtime"] != base[name].config["runtime"]
        assert moved[name].hash == base[name].hash
    # nor the suite file's location
    config = copy.deepcopy(base["average"].config)
    config["suite"]["path"] = "/elsewhere/quickstart.yaml"
    assert config_hash(config) == base["average"].hash


@pytest.mark.parametrize("assignment", ["protocol.steps=5", "protocol.test_episodes=21",
                                        "protocol.episode_seed=1", "protocol.lr=0.02",
                                        "learner.arch=resnet10"])
def test_config_hash_changes_with_protocol(quickstart, assignment):
    base, changed = smoke_cells(quickstart), smoke_cells(quickstart, [assignment])
    for name in base:
        assert changed[name].hash != base[name].hash


def test_config_hash_changes_with_method_setting_and_seed(quickstart):
    base = smoke_cells(quickstart)
    reinit = smoke_cells(quickstart, ["method_settings.random.reinit_per_task=true"])
    assert reinit["random"].config["method"]["settings"] == {"reinit_per_task": True}
    assert reinit["random"].hash != base["random"].hash
    assert reinit["average"].hash == base["average"].hash  # another method's settings: no change

    config = copy.deepcopy(base["best-model"].config)
    config["seed"] = 1
    assert config_hash(config) != base["best-model"].hash
    seeded = smoke_cells(quickstart, ["seeds=1"])["best-model"]
    assert seeded.seed == 1 and seeded.hash == config_hash(config)


def test_config_hash_changes_with_best_model_variant(quickstart):
    base = smoke_cells(quickstart)["best-model"]
    variant = smoke_cells(quickstart, ["method_settings.best-model.variant=zero-step"])["best-model"]
    assert variant.config["method"]["settings"] == {"variant": "zero-step"}
    assert variant.hash != base.hash


# --- registries ----------------------------------------------------------------------------------


def test_registry_near_miss_names():
    with pytest.raises(UserError, match=r"unknown method 'best-modle': did you mean 'best-model'\?"):
        METHODS.get("best-modle")
    with pytest.raises(UserError, match=r"unknown method 'randm': did you mean 'random'\?"):
        METHODS.get("randm")
    with pytest.raises(UserError, match=r"unknown dataset 'omniglott': did you mean 'omniglot'\?"):
        DATASETS.get("omniglott")
    with pytest.raises(UserError, match="unknown dataset 'xyz': choose one of: cifar-fs, cub, glyphs, glyphs-paper, miniimagenet, mix, mix-small, omniglot"):
        DATASETS.get("xyz")


def test_registry_contents_and_duplicates():
    assert {"random", "random-reinit", "best-model", "best-model-zero-step",
            "best-model-hungarian", "average"} <= set(METHODS.names())
    assert "random" in METHODS and "nope" not in METHODS
    assert METHODS.get("average").name == "average"
    registry: Registry[int] = Registry("thing")
    registry.register("a", 1, summary="one")
    assert registry.get("a").load() == 1 and [e.name for e in registry] == ["a"]
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a", 2)


def test_did_you_mean():
    assert did_you_mean("quickstrat", ["baselines", "quickstart"]) == "did you mean 'quickstart'?"
    assert did_you_mean("q", ["b", "a"]) == "choose one of: a, b"


def test_create_method_variants():
    zero = create_method("best-model-zero-step")
    assert zero.name == "best-model-zero-step" and zero.settings == {"variant": "zero-step"}
    # repeating the fixed value is harmless, changing it is not
    assert create_method("best-model-zero-step", {"variant": "zero-step"}).settings["variant"] == "zero-step"
    with pytest.raises(UserError, match="'variant' is fixed by the variant 'best-model-zero-step'"):
        create_method("best-model-zero-step", {"variant": "finetune"})
    base = create_method("best-model")
    assert base.name == "best-model" and base.settings == {"variant": "finetune"}
    reinit = create_method("random-reinit")
    assert reinit.settings == {"reinit_per_task": True} and not reinit.uses_teachers


def test_create_method_base_best_model_variant_is_free():
    method = create_method("best-model", {"variant": "hungarian"})
    assert method.name == "best-model" and method.settings == {"variant": "hungarian"}


def test_create_method_unknown_setting():
    with pytest.raises(UserError, match=r"method 'random' has no setting 'reinit': "
                                        r"did you mean 'reinit_per_task'\?"):
        create_method("random", {"reinit": True})
    with pytest.raises(UserError, match="method 'average' has no setting 'x': it takes none"):
        create_method("average", {"x": 1})
    with pytest.raises(UserError, match="unknown method"):
        create_method("averag")


# --- expand_cells --------------------------------------------------------------------------------


def test_expand_cells_is_the_full_product(quickstart):
    config = resolve(quickstart, "smoke", [("datasets", ["glyphs", "omniglot"]), ("shots", [1, 5]),
                                           ("seeds", [0, 1, 2])])
    cells = expand_cells(config, ["random", "best-model"])
    assert len(cells) == 2 * 2 * 2 * 3
    assert {(c.method.name, c.dataset, c.shot, c.seed) for c in cells} == set(
        itertools.product(["random", "best-model"], ["glyphs", "omniglot"], [1, 5], [0, 1, 2]))
    assert len({c.hash for c in cells}) == len(cells)
    for cell in cells:
        assert cell.config["dataset"] == cell.dataset and cell.config["shot"] == cell.shot
        assert cell.config["seed"] == cell.seed and cell.config["method"]["name"] == cell.method.name
        assert cell.hash == config_hash(cell.config)
    assert cells[0].label == "random glyphs 5w1s seed 0"


def test_expand_cells_defaults_to_the_suite_methods(quickstart):
    cells = expand_cells(resolve(quickstart, "smoke", []))
    assert [c.method.name for c in cells] == ["random", "best-model", "average", "free"]


def test_expand_cells_without_methods(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, "suite: empty\n")))
    with pytest.raises(UserError, match="no methods to run"):
        expand_cells(resolve(suite, None, []))


def test_random_cells_ignore_the_pool(quickstart):
    base = smoke_cells(quickstart)
    assert "pool" not in base["random"].config
    assert base["best-model"].config["pool"]["num_teachers"] == 3
    assert base["average"].config["pool"]["epochs"] == 2
    for assignment in ("pool.epochs=3", "pool.num_teachers=5", "pool.seed=1"):
        changed = smoke_cells(quickstart, [assignment])
        assert changed["random"].hash == base["random"].hash, assignment
        assert changed["best-model"].hash != base["best-model"].hash, assignment
        assert changed["average"].hash != base["average"].hash, assignment


def test_method_override_applies_to_best_model(quickstart):
    base = smoke_cells(quickstart)
    cells = smoke_cells(quickstart, ["method.variant=zero-step"])
    assert cells["best-model"].method.settings == {"variant": "zero-step"}
    assert cells["best-model"].config["method"]["settings"] == {"variant": "zero-step"}
    assert cells["best-model"].hash != base["best-model"].hash
    # the methods without a 'variant' setting are untouched
    assert cells["random"].method.settings == {"reinit_per_task": False}
    assert cells["random"].hash == base["random"].hash
    assert cells["average"].hash == base["average"].hash


def test_method_override_wins_over_method_settings_of_best_model(quickstart):
    cells = smoke_cells(quickstart, ["method_settings.best-model.variant=hungarian",
                                     "method.variant=zero-step"], ["best-model"])
    assert cells["best-model"].method.settings["variant"] == "zero-step"


def test_method_override_applies_to_methods_that_have_the_setting(quickstart):
    base = smoke_cells(quickstart)
    cells = smoke_cells(quickstart, ["method.reinit_per_task=true"])
    assert cells["random"].method.settings == {"reinit_per_task": True}
    assert cells["random"].config["method"]["settings"] == {"reinit_per_task": True}
    assert cells["random"].hash != base["random"].hash
    # the methods without that setting are untouched
    assert cells["best-model"].method.settings == {"variant": "finetune"}
    assert cells["best-model"].hash == base["best-model"].hash
    assert cells["average"].hash == base["average"].hash


def test_method_override_wins_over_method_settings(quickstart):
    cells = smoke_cells(quickstart, ["method_settings.random.reinit_per_task=false",
                                     "method.reinit_per_task=true"], ["random"])
    assert cells["random"].method.settings == {"reinit_per_task": True}
    cells = smoke_cells(quickstart, ["method_settings.random.reinit_per_task=true"], ["random"])
    assert cells["random"].method.settings == {"reinit_per_task": True}


def test_method_override_on_a_fixed_variant_setting(quickstart):
    # --set method.KEY skips variants that fix KEY: they keep their fixed setting
    cells = smoke_cells(quickstart, ["method.variant=zero-step"], ["best-model", "best-model-hungarian"])
    assert cells["best-model"].method.settings == {"variant": "zero-step"}
    assert cells["best-model-hungarian"].method.settings == {"variant": "hungarian"}
    with pytest.raises(UserError, match="free to change"):
        smoke_cells(quickstart, ["method.variant=zero-step"], ["best-model-hungarian"])
    # naming the variant explicitly with another value is refused
    with pytest.raises(UserError, match="'variant' is fixed by the variant 'best-model-hungarian'"):
        smoke_cells(quickstart, ["method_settings.best-model-hungarian.variant=zero-step"],
                    ["best-model-hungarian"])


def test_method_override_no_method_has_the_setting(quickstart):
    config = resolve(quickstart, "smoke", [("method.variant", "zero-step")])
    with pytest.raises(UserError, match=r"--set method\.variant: none of the methods run \(random\)"):
        expand_cells(config, ["random"])
    with pytest.raises(UserError, match="has no setting 'variant'"):
        expand_cells(resolve(quickstart, "smoke", [("method_settings.random.variant", "x")]), ["random"])


# --- budget_fraction ------------------------------------------------------------------------------


def inversion_cells(profile: str, assignments=()) -> dict[str, object]:
    """The inversion suite's cells (the paper profile sets no method settings of its own)."""
    config = resolve(load_suite("inversion"), profile, [parse_assignment(a) for a in assignments])
    return {c.method.name: c for c in expand_cells(config)}


def test_budget_fraction_scales_every_methods_paper_budget_by_the_same_fraction():
    cells = inversion_cells("paper", ["budget_fraction=0.1"])
    free, purer, bidf = (cells[m].method.settings for m in ("free", "purer", "bidf-mkd"))
    assert (free["epochs"], free["warmup_epochs"]) == (98, 2)
    assert (purer["iterations"], purer["adv_start"]) == (1500, 400)
    assert (bidf["meta_iterations"], bidf["adv_start"]) == (6000, 400)
    assert bidf["generate_interval"] == 200  # per-event sizes stay: events shrink with the budget
    assert cells["purer"].config["budget_fraction"] == 0.1
    assert "budget_fraction" not in inversion_cells("paper")["purer"].config  # older hashes unchanged


def test_explicit_settings_win_over_the_scaled_budget():
    cells = inversion_cells("paper", ["budget_fraction=0.1", "method_settings.purer.iterations=7",
                                    "method.warmup_epochs=5"])
    assert cells["purer"].method.settings["iterations"] == 7
    assert cells["purer"].method.settings["adv_start"] == 400
    assert cells["free"].method.settings["warmup_epochs"] == 5


def test_budget_fraction_changes_the_hash_and_rounds_up_to_one():
    a, b = inversion_cells("paper", ["budget_fraction=0.1"]), inversion_cells("paper", ["budget_fraction=0.2"])
    assert a["free"].hash != b["free"].hash
    tiny = inversion_cells("paper", ["budget_fraction=0.00001"])["free"].method.settings
    assert (tiny["epochs"], tiny["warmup_epochs"]) == (1, 1)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "half", "true"])
def test_budget_fraction_must_be_a_fraction(value):
    with pytest.raises(UserError, match=r"budget_fraction must be null or a number in \(0, 1\]"):
        inversion_cells("paper", [f"budget_fraction={value}"])


def test_budget_fraction_refuses_a_method_that_declares_no_paper_budget():
    from dfmlbench.method import Method

    class Undeclared(Method):
        name = "undeclared"
        defaults = {"steps": 100}

    with pytest.raises(UserError, match="budget_fraction cannot scale 'undeclared': it declares no paper_budget"):
        Undeclared.budget_at(0.1)
    assert METHODS.get("random").load().budget_at(0.1) == {}  # trains nothing: nothing to scale


def test_under_smoke_a_budget_fraction_trains_at_most_the_smoke_budget():
    config = resolve(load_suite("fig5"), "smoke", [])  # budget_fraction 0.002 of the paper budgets
    cells = {cell.method.name: cell for cell in expand_cells(config, ["free", "bidf-mkd"])}
    assert cells["bidf-mkd"].method.settings["meta_iterations"] == 12  # not 0.002 x 60000 = 120
    assert cells["free"].method.settings["epochs"] == 2  # round(0.002 x 980) = 2, within the smoke budget
