"""Methods register themselves (a decorator in their own module); a package outside this
repository adds methods through the `dfmlbench.methods` entry-point group."""

from __future__ import annotations

import sys
import types

import pytest

import dfmlbench.methods as methods
from dfmlbench.errors import UserError
from dfmlbench.reporting.paper import display_name


class FakeEntryPoint:
    def __init__(self, name, load):
        self.name, self.value, self.load = name, f"plugin_pkg.{name}", load


def plugin_module():
    """What a plug-in package's module does at import: subclass Method, decorate it."""
    from dfmlbench.learner import Learner
    from dfmlbench.method import Method

    @methods.register("plugin-method", "a method from another package", "Plug-In",
                      {"plugin-method-fast": methods.Variant({"steps": 1}, "its fast variant")})
    class PluginMethod(Method):
        uses_teachers = False
        paper_budget = {}
        defaults = {"steps": 3}

        def fit(self, pool, ctx):
            return Learner(ctx.build_learner_model())
    module = types.ModuleType("plugin_pkg.plugin")
    module.PluginMethod = PluginMethod
    sys.modules[module.__name__] = module
    return module


@pytest.fixture
def restored_registry():
    before = dict(methods.METHODS._entries)
    yield
    methods.METHODS._entries.clear()
    methods.METHODS._entries.update(before)


def test_builtin_methods_register_from_their_own_modules():
    entry = methods.METHODS.get("free-2")
    assert entry.load().__module__ == "dfmlbench.methods.free" and entry.settings == {"k": 2}
    assert display_name("free") == "FREE_5 (free)" and display_name("free-official") == "free-official"
    assert methods.METHODS.names()[:2] == ["random", "random-reinit"]  # module order, as `list` shows


def test_an_entry_point_plugin_adds_a_method_and_its_variant(monkeypatch, restored_registry):
    monkeypatch.setattr(methods, "entry_points", lambda group: [FakeEntryPoint("plugin", plugin_module)]
                        if group == methods.ENTRY_POINT_GROUP else [])
    methods._discover()  # the built-in modules are imported already; the plug-in registers
    method = methods.create_method("plugin-method-fast")
    assert method.name == "plugin-method-fast" and method.settings["steps"] == 1
    assert display_name("plugin-method") == "Plug-In (plugin-method)"


def test_a_broken_plugin_is_one_clear_line(monkeypatch):
    def broken():
        raise ImportError("No module named 'missing_dependency'")
    monkeypatch.setattr(methods, "entry_points", lambda group: [FakeEntryPoint("broken", broken)])
    with pytest.raises(UserError, match=r"method plug-in 'broken' \(plugin_pkg.broken\) failed to load: "
                                        r"ImportError: .*fix or uninstall its package"):
        methods._discover()
