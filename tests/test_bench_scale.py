"""bench/scale.py end to end in a test-sized generated Places-LT root: the generated root passes
check-data, the whole plan of vlltr, crt, baseline and zeroshot runs on the real data path (real
tokenizer, transforms and loaders, a tiny open_clip ViT at 224 px) and writes four results; and the
generator's split sizes follow the published lists and facts."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, SPLITS

sys.path.insert(0, str(REPO / "bench"))
from genroot import FACTS, split_lists, training_counts  # noqa: E402



def _bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}  # the checkout's ltrbench, not an install
    return subprocess.run([sys.executable, *args], cwd=REPO, env=e, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_scale_bench_runs_places_lt_end_to_end(tmp_path):
    root, out = tmp_path / "root", tmp_path / "out"
    args = ["bench/scale.py", "--dataset", "places_lt", "--fraction", "0.01", "--classes", "6", "--root", str(root),
            "--out", str(out), "--jobs", "1", "--target-rate", "3000", "--pipeline-images", "8"]
    r = _bench(*args, env={"LTRBENCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "usable: True" in r.stdout
    recs = [json.loads(f.read_text()) for f in (out / "runs").glob("*.json")]
    assert sorted(rec["method"] for rec in recs) == ["baseline", "crt", "vlltr", "zeroshot"]
    assert {rec["backbone"] for rec in recs} == {"scale-vit"} and {rec["dataset"] for rec in recs} == {"places_lt"}
    vl = next(rec for rec in recs if rec["method"] == "vlltr")
    assert vl["config"]["data"]["augment"] == "official" and vl["config"]["lgr"]["image_augment"] is True
    assert vl["config"]["backbone"]["pretrained"] == str(out / "scale-vit-random.pt")
    table = [ln for ln in r.stdout.splitlines() if ln.startswith("| ")]
    for kind in ("cvlp", "text_features", "anss", "lgr", "finetune stage1", "head crt", "finetune baseline",
                 "features scale-vit"):
        assert any(ln.startswith(f"| {kind}") for ln in table), kind
    assert any(ln.startswith("| train (float32) |") for ln in table)  # the pipeline rates
    assert any(ln.startswith("| 3,000 |") for ln in table)  # workers for the target rate
    info = json.loads((root / "genroot.json").read_text())
    assert info["classes"] == 6 and info["published_lists"] == ["test", "train", "val"]

    again = _bench(*args, "--methods", "zeroshot", env={"LTRBENCH_CACHE": str(tmp_path / "cache")})
    assert again.returncode == 0 and "(cached)" in again.stdout  # the root and the stages are reused


def test_generated_places_lists_are_the_published_ones_cut_per_class():
    lists, names, extra = split_lists("places_lt", 0.1, seed=0, splits_dir=SPLITS)
    assert len(names) == 365 and names[0] == "airfield" and extra["full_sizes"]["train"] == 62_500
    published = [ln.split() for ln in (SPLITS / "Places_LT_train.txt").read_text().splitlines()]
    first = [p for p, lab in published if lab == "0"]
    kept = [p for p, lab in lists["train"] if lab == 0]
    assert kept == first[: round(len(first) * 0.1)]  # the first ones of its list
    counts = np.bincount([lab for _, lab in lists["train"]], minlength=365)
    assert counts.min() >= 1 and len(lists["test"]) == 365 * 10 and len(lists["val"]) == 365 * 2


@pytest.mark.parametrize("dataset", ["imagenet_lt", "inat2018"])
def test_drawn_training_counts_follow_the_published_facts(dataset):
    f = FACTS[dataset]
    n = training_counts(f, seed=0)
    assert (len(n), n.sum(), n.min()) == (f.classes, f.train, f.train_min)
    assert abs(int(n.max()) - f.train_max) <= 1
    assert ((n > 100).sum(), (n < 20).sum()) == (f.many, f.few)


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_at_tiny_sizes():
    """bench/gpu_check.sh with its flags shrunk (tiny ResNet and ViT configs, 64 px): one table."""
    r = subprocess.run(["bash", "bench/gpu_check.sh", "--device", "cpu", "--archs", "scale-rn,scale-vit", "--size", "64",
                        "--batch", "4", "--steps", "2", "--warmup", "1", "--images", "16", "--jobs", "1",
                        "--inference-batch", "2", "--inference-repeats", "1"],
                       cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [ln.split("|")[1:-1] for ln in r.stdout.splitlines() if ln.startswith("| scale-")]
    assert [row[0].strip() for row in rows] == ["scale-rn", "scale-vit"]
    for row in rows:
        resident, only, fed, ratio, lgr = (float(v) for v in row[1:])
        assert resident > 0 and only > 0 and fed > 0 and lgr > 0
        assert ratio == pytest.approx(fed / resident, rel=0.05, abs=0.01)
