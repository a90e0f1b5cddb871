"""Bad input fails before any work: one paragraph on stderr, exit 2, no traceback (unless --debug),
and nothing created in the cache or in --out. Each case is a mistake a user makes."""
from __future__ import annotations

from pathlib import Path

import pytest

import ltrbench
from conftest import TINY
from ltrbench import backbones, cli
from ltrbench.config import TrainConfig
from ltrbench.errors import ConfigError
from ltrbench.validate import check_output, train_problems
from test_real_data import make_imagenet_lt, make_places_lt

REAL = ["--backbone", "mini-clip", "--set", "data.augment=light", "--set", "baseline.train.batch_size=4"]


def _run(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> tuple[int, str, Path, Path]:
    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setenv("LTRBENCH_CACHE", str(cache))
    rc = cli.main(["--out", str(out), "--quiet", *[a for t in TINY for a in ("--set", t)], *argv])
    return rc, capsys.readouterr().err, cache, out


def _nothing_created(cache: Path, out: Path) -> bool:
    return not out.exists() and not (cache.exists() and any(cache.iterdir()))


def _one_paragraph(err: str) -> bool:
    return err.startswith("error: ") and "Traceback" not in err and "\n\n" not in err.strip()


@pytest.mark.parametrize("args, needle", [
    (["--set", "baseline.train.epochs=-1"], "baseline.train.epochs=-1: must be at least 1"),
    (["--set", "baseline.train.lr=0"], "baseline.train.lr=0.0: must be greater than 0"),
    (["--set", "baseline.train.batch_size=0"], "baseline.train.batch_size=0: must be at least 1"),
    (["--set", "baseline.train.warmup_epochs=-2"], "baseline.train.warmup_epochs=-2: must be at least 0"),
    (["--set", "baseline.train.optimizer=adam"], "baseline.train.optimizer=adam: unknown optimizer; use one of adamw, sgd"),
    (["--set", "baseline.train.sampler=balanced"], "baseline.train.sampler=balanced: unknown sampler"),
    (["--set", "baseline.train.schedule_shift=5"], "baseline.train.schedule_shift=5: unknown schedule"),
    (["--set", "cvlp.train.epochs=0"], "cvlp.train.epochs=0: must be at least 1"),  # a section the run does not use
    (["--set", "lgr.alpha=1.5"], "lgr.alpha=1.5: the fusion weight must lie in [0, 1]"),
    (["--set", "data.augment=heavy"], "data.augment=heavy: unknown augmentation"),
    (["--set", "anss.mode=best"], "anss.mode must be one of"),
    (["--set", "miniclip.epochs=0"], "miniclip.epochs=0: must be at least 1"),
    (["--set", "backbone.pretrained=/nonexistent/RN50.pt"], "/nonexistent/RN50.pt does not exist"),
    (["--methods", ""], "The list of methods is empty"),
    (["--methods", ","], "The list of methods is empty"),
    (["--executor", "ray", "--set", "baseline.train.lr=-1"], "baseline.train.lr=-1.0: must be greater than 0"),
])
def test_a_bad_value_exits_2_before_anything_is_created(tmp_path, monkeypatch, capsys, args, needle):
    rc, err, cache, out = _run(["--methods", "baseline", *args], tmp_path, monkeypatch, capsys)
    assert rc == 2 and needle in err and _one_paragraph(err), err
    assert _nothing_created(cache, out)


def test_every_problem_of_a_config_is_named_at_once(tmp_path, monkeypatch, capsys):
    rc, err, *_ = _run(["--methods", "baseline", "--set", "baseline.train.epochs=0", "--set", "baseline.train.lr=-1"],
                       tmp_path, monkeypatch, capsys)
    assert rc == 2 and "baseline.train.epochs=0" in err and "baseline.train.lr=-1.0" in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    rc, err, *_ = _run(["--methods", "baseline", "--set", "baseline.train.epochs=-1", "--debug"], tmp_path,
                       monkeypatch, capsys)
    assert rc == 2 and "Traceback" in err and "baseline.train.epochs=-1: must be at least 1" in err


def test_an_uncached_tag_offline_exits_2_before_anything_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(backbones, "_cached_tag_file", lambda cfg, cache_dir: None)
    rc, err, cache, out = _run(["--methods", "baseline", "--backbone", "RN50"], tmp_path, monkeypatch, capsys)
    assert rc == 2 and "offline" in err and "RN50.pt" in err and _one_paragraph(err), err
    assert _nothing_created(cache, out)  # the built-in world was not generated either


def test_an_output_folder_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("LTRBENCH_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["--methods", "baseline", "--out", str(tmp_path / "afile" / "sub"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be created" in err and _one_paragraph(err)
    with pytest.raises(Exception, match="is a file"):
        check_output(tmp_path / "afile")
    check_output(tmp_path / "new" / "deeper")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- data roots


def _real(root: Path, tmp_path, monkeypatch, capsys, methods: str, dataset: str):
    return _run(["--methods", methods, "--dataset", dataset, "--data-root", str(root), *REAL], tmp_path,
                monkeypatch, capsys)


def test_a_missing_image_exits_2_before_any_stage(tmp_path, monkeypatch, capsys):
    (tmp_path / "root").mkdir()
    root = make_imagenet_lt(tmp_path / "root")
    (root / "train/n00000020/n00000020_1.JPEG").unlink()
    rc, err, cache, out = _real(root, tmp_path, monkeypatch, capsys, "baseline", "imagenet_lt")
    assert rc == 2 and "1 of the 12 images of the train split of imagenet_lt are absent" in err, err
    assert "n00000020_1.JPEG" in err and "check-data" in err and _one_paragraph(err)
    assert _nothing_created(cache, out)


@pytest.mark.parametrize("content, needle", [(b"", "is empty"), (b"\xff\xfe\x80\x81 bad", "neither UTF-8 nor GBK")])
def test_a_bad_wiki_file_exits_2_when_the_corpus_is_used(tmp_path, monkeypatch, capsys, content, needle):
    (tmp_path / "root").mkdir()
    root = make_places_lt(tmp_path / "root")
    (root / "wiki" / "desc_1.txt").write_bytes(content)
    rc, err, cache, out = _real(root, tmp_path, monkeypatch, capsys, "vlltr", "places_lt")
    assert rc == 2 and needle in err and "desc_1.txt" in err and _one_paragraph(err), err
    assert _nothing_created(cache, out)
    # The baseline reads no corpus: the same root plans fine for it.
    monkeypatch.setenv("LTRBENCH_CACHE", str(tmp_path / "cache2"))
    ltrbench.plan(ltrbench.Request(["baseline"], "places_lt", data_root=str(root), backbone="mini-clip", overrides=TINY))


def test_train_problems_cover_every_range():
    assert train_problems(TrainConfig(), "x.train") == []
    bad = TrainConfig(epochs=0, lr=-1, batch_size=0, ref_batch_size=0, warmup_epochs=-1, min_lr=-1,
                      weight_decay=-1, momentum=1.0, optimizer="adam", sampler="x", samples_per_class=0,
                      schedule_shift=2, devices=0, accumulate=0)
    fields = [p.split("=")[0] for p in train_problems(bad, "x.train")]
    assert fields == [f"x.train.{f}" for f in ("epochs", "lr", "batch_size", "ref_batch_size", "warmup_epochs",
                                               "min_lr", "weight_decay", "momentum", "optimizer", "sampler",
                                               "samples_per_class", "devices", "accumulate", "schedule_shift")]


def test_plan_raises_the_config_error_in_the_library_too():
    with pytest.raises(ConfigError, match="baseline.train.epochs=-1: must be at least 1"):
        ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=[*TINY, "baseline.train.epochs=-1"]))


@pytest.mark.parametrize("method,setting,says", [
    ("ldam_drw", "ldam_drw.variant=bad", "variant must be one of"),
    ("cb", "cb.loss_type=nope", "loss_type must be one of"),
    ("focal", "focal.gamma=-1", "gamma must be >= 0"),
    ("focal", "focal.sampler=bogus", "unknown sampler 'bogus'"),
    ("la", "la.sampler=bogus", "unknown sampler 'bogus'"),
])
def test_a_bad_loss_setting_is_refused_at_planning_not_in_the_stage(method, setting, says):
    """The loss family's own settings (a sampler, a variant, a loss parameter) are not TrainConfig
    fields: the finetune stage's loss is built and called once while planning, so a bad one is a
    user error before any work, not three failed attempts."""
    with pytest.raises(ConfigError, match=says) as e:
        ltrbench.plan(ltrbench.Request([method], "synthetic_lt", overrides=[*TINY, setting]))
    assert f"finetune[{method}]" in str(e.value)
