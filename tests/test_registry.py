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
