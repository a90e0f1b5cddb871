from dataclasses import FrozenInstanceError

import pytest

from ltrbench.config import load_config
from ltrbench.errors import ConfigError


def test_defaults_yaml_and_overrides_in_order(tmp_path):
    (tmp_path / "toy.yaml").write_text(
        "data: {augment: none}\nbaseline: {train: {epochs: 3, lr: 0.5}}\n"
        "backbones:\n  ViT-B-16: {baseline: {train: {epochs: 7}}}\n"
    )
    cfg = load_config("toy", config_dir=tmp_path)
    assert cfg.data.augment == "none" and cfg.baseline.train.epochs == 3 and cfg.baseline.train.lr == 0.5
    cfg = load_config("toy", backbone="ViT-B-16", config_dir=tmp_path)
    assert cfg.baseline.train.epochs == 7 and cfg.backbone.name == "ViT-B-16"
    cfg = load_config("toy", config_dir=tmp_path, overrides=["baseline.train.epochs=9", "data.root=/x"])
    assert cfg.baseline.train.epochs == 9 and cfg.data.root == "/x"


def test_config_is_frozen():
    cfg = load_config("synthetic_lt")
    with pytest.raises(FrozenInstanceError):
        cfg.data.augment = "none"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("baseline.train.epoch=3", "unknown config key 'baseline.train.epoch'. Did you mean 'epochs'?"),
        ("baseline.train.epochs=three", "baseline.train.epochs must be an integer, got 'three'"),
        ("baseline.train.lr=fast", "baseline.train.lr must be a number"),
        ("data.preload=maybe", "data.preload must be true or false"),
        ("nosuch.x=1", "unknown config section 'nosuch'"),
        ("baseline.train=3", "is a group; set one of its fields: epochs"),
        ("data.augment", "expected key=value"),
        ("data=3", "the key must be section.field"),
    ],
)
def test_bad_overrides_name_key_and_allowed_fields(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("synthetic_lt", overrides=[override])
    assert needle in str(e.value)


def test_unknown_key_lists_allowed_fields():
    with pytest.raises(ConfigError) as e:
        load_config("synthetic_lt", overrides=["data.nosuch=1"])
    assert "Allowed fields: root," in str(e.value)


def test_yaml_unknown_key_names_the_file(tmp_path):
    (tmp_path / "toy.yaml").write_text("data: {augmentt: none}\n")
    with pytest.raises(ConfigError) as e:
        load_config("toy", config_dir=tmp_path)
    assert "toy.yaml" in str(e.value) and "augmentt" in str(e.value)


def test_effective_lr_scales_linearly_with_batch():
    cfg = load_config("synthetic_lt", overrides=["baseline.train.batch_size=64", "baseline.train.ref_batch_size=128",
                                                 "baseline.train.lr=0.002"])
    assert cfg.baseline.train.effective_lr == pytest.approx(0.001)


def test_none_and_optional_values():
    cfg = load_config("synthetic_lt", overrides=["data.root=null", "data.image_size=48"])
    assert cfg.data.root is None and cfg.data.image_size == 48


def test_builtin_vlltr_budget_does_not_exceed_the_baselines():
    """Issue rule: VL-LTR's epochs in all (CVLP + LGR) are no more than the baseline's, as shipped."""
    cfg = load_config("synthetic_lt")
    assert cfg.cvlp.enabled and cfg.cvlp.train.epochs + cfg.lgr.train.epochs <= cfg.baseline.train.epochs
