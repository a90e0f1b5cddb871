import pytest

from ltrbench.errors import RegistryError
from ltrbench.registry import Registry


def test_register_and_get():
    r = Registry("widget")

    @r.register("alpha")
    class Alpha:
        pass

    assert r.get("alpha") is Alpha
    assert "alpha" in r and r.names() == ["alpha"] and len(r) == 1


def test_duplicate_name_raises_naming_both():
    r = Registry("widget")
    r.add("alpha", int)
    with pytest.raises(RegistryError, match="registered twice"):
        r.add("alpha", float)


def test_unknown_name_lists_known_and_suggests():
    r = Registry("method")
    for n in ("baseline", "crt", "tau_norm"):
        r.add(n, object())
    with pytest.raises(RegistryError) as e:
        r.get("basline")
    msg = str(e.value)
    assert "Did you mean 'baseline'?" in msg
    assert "baseline, crt, tau_norm" in msg


def test_unknown_name_without_close_match_has_no_suggestion():
    r = Registry("method")
    r.add("crt", object())
    with pytest.raises(RegistryError) as e:
        r.get("zzzzzz")
    assert "Did you mean" not in str(e.value)


def test_harness_registries_are_populated():
    from ltrbench.registry import BACKBONES, DATASETS, METHODS  # the registries load the plugins

    assert {"baseline", "zeroshot"} <= set(METHODS.names())
    assert {"synthetic_lt", "imagenet_lt", "places_lt", "inat2018"} <= set(DATASETS.names())
    assert {"RN50", "ViT-B-16", "mini-clip"} <= set(BACKBONES.names())


def test_plugin_index_equals_the_registries_after_loading():
    """The names (and a method's description, a backbone's spec) that `list`, `--help` and name
    errors read from the plugin files' syntax trees are exactly what importing the plugins registers."""
    from ltrbench import plugins
    from ltrbench.registry import BACKBONES, DATASETS, METHODS, WEIGHTS

    ix = plugins.index()
    assert not ix.dynamic  # every shipped plugin registers a literal name
    for reg, key in ((METHODS, "METHODS"), (DATASETS, "DATASETS"), (BACKBONES, "BACKBONES"), (WEIGHTS, "WEIGHTS")):
        reg.get(reg.names()[0])  # loads every plugin
        assert set(ix.entries[key]) == set(reg._items), key
    for name, e in ix.entries["METHODS"].items():
        assert e.info["description"] == METHODS.get(name).description
        assert e.info.get("default_run", True) is METHODS.get(name).default_run, name
    for name, e in ix.entries["BACKBONES"].items():
        assert e.info["spec"] == BACKBONES.get(name)


def test_index_marks_a_computed_name_dynamic_and_a_lookup_then_loads(tmp_path):
    from ltrbench import plugins

    f = tmp_path / "m.py"
    f.write_text('N = "lit"\n@METHODS.register(N)\nclass A:\n    description = "d"\n'
                 'for n in ("x",):\n    METHODS.add(n, object())\n')
    dynamic: set = set()
    entries = plugins._read(f, dynamic)
    assert [(e.name, dict(e.info)) for e in entries] == [("lit", {"description": "d"})]
    assert dynamic == {"METHODS"}
    reg = Registry("thing", loader=lambda: reg.add("late", 1))
    assert reg.known("late")  # no index: a lookup loads


LIGHT = """
import sys
from ltrbench.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = [m for m in ("torch", "open_clip", "timm", "ray") if m in sys.modules]
print("HEAVY", heavy, file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["run", "--help"], ["tables", "--help"],
                                  ["run", "--methods", "vltr"], ["run", "--dataset", "nope"],
                                  ["run", "--backbone", "RN5"], ["run", "--seeds", "a"]])
def test_help_list_and_name_errors_import_no_torch(argv):
    import subprocess
    import sys

    from conftest import REPO

    p = subprocess.run([sys.executable, "-c", LIGHT.format(argv=argv)], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert "HEAVY []" in p.stderr, p.stderr[-2000:]
    if argv[0] == "run" and "--help" not in argv:
        assert "error:" in p.stderr  # the error itself was found, before any import


LOSS_FAMILY = {"bs", "cb", "focal", "grw", "la", "lade", "ldam_drw"}


def test_a_run_naming_no_methods_runs_all_but_the_loss_family_and_all_names_every_one():
    """``python run_bench.py`` runs the paper's comparison and LIFT (the loss family is left out by
    ``default_run = False``, read from the files unimported); ``--methods all`` runs every method."""
    from ltrbench import plugins
    from ltrbench.errors import ConfigError
    from ltrbench.registry import METHODS
    from ltrbench.resolve import Request, default_methods, run_specs

    assert set(default_methods()) == set(METHODS.names()) - LOSS_FAMILY
    assert {"zeroshot", "baseline", "crt", "ncm", "tau_norm", "lws", "knn", "fc", "vlltr", "lift"} <= set(default_methods())
    plain = {s.method for s in run_specs(Request(dataset="synthetic_lt"))}
    assert plain == set(default_methods())
    every = [s.method for s in run_specs(Request(["all"], "synthetic_lt", seeds=[0, 1]))]
    assert sorted(set(every)) == METHODS.names() and len(every) == 2 * len(METHODS.names())
    with pytest.raises(ConfigError, match="stands alone"):
        run_specs(Request(["all", "baseline"], "synthetic_lt"))
    METHODS.get("baseline")  # loaded: the registered classes answer the same
    assert plugins.loaded() and set(default_methods()) == set(METHODS.names()) - LOSS_FAMILY
