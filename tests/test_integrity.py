"""The cache is trusted only as far as it verifies, and nothing in it (or in a weights file) runs code.

* every finished artifact carries a manifest (size + SHA-256 of each file, a hash of stage.json);
  flipped bytes, truncated files, a folder without stage.json, a stage.json from before manifests
  are each caught, moved aside with one warning, and rebuilt to the same numbers;
* a crafted pickle (its unpickling would create a marker file) as a ``backbone.pretrained`` file,
  as a finished artifact with a matching manifest, as a resume ``last.pt`` and as ``best.pt``
  never runs: the run refuses with a clear error, or discards the checkpoint and restarts;
* a weights file rewritten in its middle at the same path gets a new key.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import ltrbench
from conftest import TINY, write_evil_pickle
from ltrbench import cli, stages
from ltrbench.errors import CacheError, RunFailedError
from ltrbench.execute import execute
from ltrbench.stages import Stage, artifact_dir, is_done, run_stage, stage_kind, verify

CALLS: list[str] = []


@stage_kind("test_integrity", version="1")
def _write(ctx):
    CALLS.append(ctx.config["name"])
    (ctx.out / "a.txt").write_text(ctx.config["name"] * 100)
    (ctx.out / "sub").mkdir()
    (ctx.out / "sub" / "b.bin").write_bytes(bytes(range(256)))
    return {"n": 1}


def _forget_verified():
    """What a new process starts with: no stage verified yet (full hashes at first use)."""
    stages._VERIFIED.clear()


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_stage_json_holds_a_manifest_of_every_file(tmp_path):
    s = Stage("test_integrity", {"name": "m"})
    info = run_stage(s, tmp_path, progress=False)
    assert set(info["files"]) == {"a.txt", "sub/b.bin", "log.txt"}  # log.txt: the stage's own log lines
    assert info["files"]["sub/b.bin"]["size"] == 256
    import hashlib

    assert info["files"]["a.txt"]["sha256"] == hashlib.sha256(b"m" * 100).hexdigest()
    assert info["stage_sha256"] and info["manifest_s"] >= 0
    assert s.key == Stage("test_integrity", {"name": "m"}).key  # hashing is no part of the key


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_file", "stage_json", "no_stage_json", "legacy"])
def test_a_damaged_artifact_is_moved_aside_and_rebuilt(tmp_path, caplog, damage):
    s = Stage("test_integrity", {"name": damage})
    CALLS.clear()
    run_stage(s, tmp_path, progress=False)
    final = artifact_dir(tmp_path, s)
    meta = final / "stage.json"
    if damage == "flip":
        _flip(final / "sub" / "b.bin")
    elif damage == "truncate":
        (final / "a.txt").write_text("x")
    elif damage == "delete_file":
        (final / "sub" / "b.bin").unlink()
    elif damage == "stage_json":
        info = json.loads(meta.read_text())
        info["n"] = 2  # a value a later stage or the result would read
        meta.write_text(json.dumps(info))
    elif damage == "no_stage_json":  # a finished folder without stage.json: once "Directory not empty"
        meta.unlink()
    elif damage == "legacy":  # written before manifests existed: unverifiable, so not trusted
        info = json.loads(meta.read_text())
        del info["files"], info["stage_sha256"]
        meta.write_text(json.dumps(info))
    _forget_verified()
    assert not verify(tmp_path, s)
    with caplog.at_level(logging.WARNING, logger="ltrbench.stages"):
        infos = execute([s], tmp_path, progress=False).infos
    assert CALLS == [damage, damage] and infos[s.key]["ran"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if damage == "no_stage_json":
        assert len(warnings) == 1 and "no stage.json" in warnings[0]
    else:
        assert len(warnings) == 1
    assert "test_integrity" in warnings[0] and s.key in warnings[0] and str(final) in warnings[0]
    aside = [p.name for p in final.parent.iterdir() if p.name.startswith(f"{s.key}.corrupt-")
             or p.name.startswith(f"{s.key}.unverified-")]
    assert len(aside) == 1 and (damage == "legacy") == aside[0].startswith(f"{s.key}.unverified-")
    _forget_verified()
    assert verify(tmp_path, s) and (final / "a.txt").read_text() == damage * 100


def test_sizes_are_checked_on_every_use_hashes_once_per_process(tmp_path):
    s = Stage("test_integrity", {"name": "once"})
    run_stage(s, tmp_path, progress=False)
    final = artifact_dir(tmp_path, s)
    _flip(final / "a.txt")  # same size: only a hash sees it, and this process hashed it already
    assert verify(tmp_path, s)
    _forget_verified()
    assert not verify(tmp_path, s) and is_done(tmp_path, s)  # is_done: the cheap check only
    (final / "a.txt").write_text("short")
    assert not is_done(tmp_path, s)


def test_a_stale_partial_folder_and_lock_file_are_recovered(tmp_path):
    """What a killed process leaves: a .partial with half an artifact, a lock file naming a dead pid."""
    s = Stage("test_integrity", {"name": "stale"})
    final = artifact_dir(tmp_path, s)
    partial = final.with_name(final.name + ".partial")
    (partial / "sub").mkdir(parents=True)
    (partial / "half.npy").write_bytes(b"half")
    (partial / "sub" / "b.bin").write_bytes(b"old")
    final.with_name(final.name + ".lock").write_text("999999 deadhost\n")
    info = run_stage(s, tmp_path, progress=False)
    assert set(info["files"]) == {"a.txt", "sub/b.bin", "log.txt"}  # the half artifact is not part of the new one
    assert not partial.exists() and (final / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert final.with_name(final.name + ".lock").read_text().split()[0] == str(os.getpid())


@stage_kind("test_holder", version="1")
def _hold(ctx):
    import time

    time.sleep(float(ctx.config["seconds"]))
    (ctx.out / "x.txt").write_text("x")
    return {"pid": os.getpid()}


def _build_in_child(stage, cache):
    run_stage(stage, cache, progress=False)


def test_a_lock_wait_names_the_stage_and_the_holder_at_once_and_beats(tmp_path, capfd, monkeypatch):
    import multiprocessing as mp
    import time

    s = Stage("test_holder", {"seconds": 2.5})
    lock = artifact_dir(tmp_path, s).with_name(s.key + ".lock")
    child = mp.get_context("fork").Process(target=_build_in_child, args=(s, tmp_path))
    child.start()
    t0 = time.time()
    while not (lock.is_file() and lock.read_text().strip()) and time.time() - t0 < 30:
        time.sleep(0.05)
    monkeypatch.setattr(stages, "HEARTBEAT_S", 0.8)
    info = run_stage(s, tmp_path, progress=False)
    child.join(30)
    assert child.exitcode == 0 and info["pid"] == child.pid
    err = capfd.readouterr().err.splitlines()
    assert err[0].startswith(f"waiting for stage {s.describe()}") and f"pid {child.pid}" in err[0]
    assert any(line.startswith("still waiting for stage") for line in err[1:])


# --------------------------------------------------------------------------- end to end


def _metrics(res):
    return {r["method"]: r["metrics"] for r in res.records}


METHODS = ["baseline", "zeroshot"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One untouched run of the tiny built-in benchmark: its cache (copied by each test) and metrics."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    old = os.environ.get("LTRBENCH_CACHE")
    os.environ["LTRBENCH_CACHE"] = str(cache)
    try:
        df = ltrbench.run(ltrbench.Request(METHODS, "synthetic_lt", overrides=TINY))
    finally:
        if old is None:
            os.environ.pop("LTRBENCH_CACHE", None)
        else:
            os.environ["LTRBENCH_CACHE"] = old  # the session's private cache (conftest)
    return cache, _metrics(df)


@pytest.fixture
def cache_copy(built, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(built[0], cache)
    monkeypatch.setenv("LTRBENCH_CACHE", str(cache))
    _forget_verified()  # a later process
    return cache


def _corrupt_every_file(cache: Path, plan) -> int:
    n = 0
    for s in plan.stages:
        for rel in json.loads((artifact_dir(cache, s) / "stage.json").read_text())["files"]:
            p = artifact_dir(cache, s) / rel
            if p.stat().st_size:
                _flip(p)
                n += 1
    return n


def test_flipped_bytes_in_every_artifact_are_caught_and_the_rebuild_gives_the_same_metrics(built, cache_copy):
    plan = ltrbench.plan(ltrbench.Request(METHODS, "synthetic_lt", overrides=TINY))
    assert _corrupt_every_file(cache_copy, plan) >= 10  # weights.pt, model.pt, feats/logits .npy, result.json ...
    _forget_verified()
    again = ltrbench.run(ltrbench.Request(METHODS, "synthetic_lt", overrides=TINY))
    assert again.execution["executed"] == len(plan.stages)  # every damaged stage was rebuilt
    assert _metrics(again) == built[1]
    assert len(list(cache_copy.glob("*/*.corrupt-*"))) == len(plan.stages)


@pytest.mark.parametrize("kind, name", [("finetune", "model.pt"), ("clip_weights", "weights.pt")])
def test_a_malicious_finished_artifact_with_a_matching_manifest_never_runs(tmp_path, cache_copy, kind, name):
    """Someone who can write a shared cache can also write stage.json: the manifest then matches,
    and the loader itself must refuse. The finetune stage's model.pt (a classifier) and the
    clip_weights stage's weights.pt (a CLIP model, as CVLP's) are replaced by a crafted pickle; the
    stages that read them are removed, so they must load it again."""
    marker = tmp_path / "PWNED"
    plan = ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY))
    target = next(s for s in plan.stages if s.kind == kind)
    folder = artifact_dir(cache_copy, target)
    write_evil_pickle(folder / name, marker, wrap="module")
    info = json.loads((folder / "stage.json").read_text())
    info["files"] = stages.file_manifest(folder)  # the attacker's manifest matches
    info["stage_sha256"] = stages._info_hash(info)
    (folder / "stage.json").write_text(json.dumps(info))
    _forget_verified()
    assert verify(cache_copy, target)
    for s in plan.stages:  # every stage after it must read it again
        if target in s.inputs:
            shutil.rmtree(artifact_dir(cache_copy, s))
    # A CacheError in the stage that reads it: a user error, so not retried; the run fails with it.
    with pytest.raises(RunFailedError, match=f"CacheError: .*Delete {re.escape(str(folder))}") as e:
        ltrbench.run(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY))
    assert e.value.failures[0]["attempts"] == 1
    assert not marker.exists()


def test_a_malicious_resume_checkpoint_is_discarded_and_the_stage_restarts(built, tmp_path, cache_copy, caplog):
    """A last.pt planted in <cache>/finetune/<key>.partial/work/ckpt/ (a shared cache) never runs;
    the stage trains from scratch to the untouched run's numbers."""
    marker = tmp_path / "PWNED"
    plan = ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY))
    ft = next(s for s in plan.stages if s.kind == "finetune")
    for s in plan.stages:  # the finetune stage and what follows it are to be built again
        if s.kind != "clip_weights":
            shutil.rmtree(artifact_dir(cache_copy, s))
    ckpt = artifact_dir(cache_copy, ft).with_name(ft.key + ".partial") / "work" / "ckpt"
    ckpt.mkdir(parents=True)
    write_evil_pickle(ckpt / "last.pt", marker, wrap="module")
    torch.load(ckpt / "last.pt", weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()
    with caplog.at_level(logging.WARNING):
        df = ltrbench.run(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY))
    assert not marker.exists()
    assert any("resume checkpoint" in r.getMessage() and "discarded" in r.getMessage() for r in caplog.records)
    assert _metrics(df)["baseline"] == built[1]["baseline"]


# --------------------------------------------------------------------------- weights files


def _mini_clip_weights(path: Path, seed: int = 0) -> Path:
    from ltrbench.backbones import create_clip

    torch.manual_seed(seed)
    torch.save(create_clip("mini-clip", None).state_dict(), path)
    return path


def _cli(argv, cache: Path, out: Path, monkeypatch) -> int:
    monkeypatch.setenv("LTRBENCH_CACHE", str(cache))
    return cli.main(["--methods", "baseline", "--out", str(out), "--quiet", *[a for t in TINY for a in ("--set", t)],
                     *argv])


@pytest.mark.parametrize("kind", ["evil", "garbage_pt", "garbage_safetensors", "not_a_state_dict", "torchscript"])
def test_a_bad_weights_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys, kind):
    marker = tmp_path / "PWNED"
    f = tmp_path / ("w.safetensors" if kind == "garbage_safetensors" else "w.pt")
    if kind == "evil":
        write_evil_pickle(f, marker, wrap="visual.conv1.weight")
        needle = "refuses"
    elif kind == "not_a_state_dict":
        torch.save([1, 2, 3], f)
        needle = "does not hold a state dict"
    elif kind == "torchscript":
        class M(torch.nn.Module):
            def forward(self, x):
                return x

        torch.jit.script(M()).save(str(f))
        needle = "trust_torchscript=true"
    else:
        f.write_bytes(os.urandom(4096))
        needle = "cannot be read as weights"
    cache, out = tmp_path / "cache", tmp_path / "out"
    rc = _cli(["--backbone", "mini-clip", "--set", f"backbone.pretrained={f}"], cache, out, monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and str(f) in err and "Traceback" not in err, err
    assert not marker.exists()
    assert not out.exists() and not (cache.exists() and any(cache.iterdir()))


def test_a_weights_file_is_used_through_the_safe_path(tmp_path, cache_copy):
    w = _mini_clip_weights(tmp_path / "mini.pt")
    df = ltrbench.run(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=[*TINY, f"backbone.pretrained={w}"]))
    assert len(df.frame) == 1
    from safetensors.torch import save_file

    sd = torch.load(w, weights_only=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "mini.safetensors"))
    df2 = ltrbench.run(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=[*TINY, f"backbone.pretrained={tmp_path / 'mini.safetensors'}"]))
    assert df2.frame["overall"].tolist() == df.frame["overall"].tolist()  # the same weights through safetensors


def test_a_weights_file_changed_in_its_middle_at_the_same_path_gets_a_new_key(tmp_path, cache_copy):
    w = _mini_clip_weights(tmp_path / "mini.pt")
    over = [*TINY, f"backbone.pretrained={w}"]

    def clip_key():
        return next(s for s in ltrbench.plan(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=over)).stages
                    if s.kind == "clip_weights").key

    before = clip_key()
    size, st = w.stat().st_size, w.stat()
    assert size > 3 << 20  # more than the first and last MiB the old fingerprint read
    _flip(w, size // 2)  # the middle: what a head-and-tail fingerprint never saw
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert w.stat().st_size == size
    assert clip_key() != before
    assert json.loads((cache_copy / "file_hashes.json").read_text())  # hashes remembered
