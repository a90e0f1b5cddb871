"""Stage keys and seeds are part of the results. A key names a cached artifact, so a key that
changes recomputes it; a stage's seed (ltrbench.stages: from its kind and its run's seed, never
from the key or a config value) draws its initial weights and data order. This pins both for the
plans recorded in tests/data/stage_keys.json (the built-in world at the tiny sizes: the methods
named there, Table 4, Table 10), which are those of the runs behind the numbers of
docs/measurements.md#the-built-in-world. Only the methods named in the file are planned, so a new
method leaves this test as it is.

If a change of a key is intended (a stage's output really changes: bump its kind's version),
regenerate the file (``python tests/test_stage_keys.py``), rerun the built-in benchmark and say so
in the change. A change of a seed changes numbers: it needs the same care.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ltrbench  # noqa: E402
from conftest import REPO, TINY  # noqa: E402

DATA = REPO / "tests" / "data" / "stage_keys.json"
RECORDED = json.loads(DATA.read_text())


def planned(request: dict, extra: list[str] = ()) -> list:
    """The stages of a recorded request (``methods`` and/or ``table``) at the tiny sizes."""
    return ltrbench.plan(ltrbench.Request(request.get("methods"), "synthetic_lt", overrides=[*TINY, *extra], table=request.get("table"))).stages


def listing(stages) -> list[str]:
    return sorted(f"{s.kind} {s.key} {s.seed} {s.label}" for s in stages)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_builtin_stage_keys_and_seeds_are_unchanged(name):
    assert listing(planned(RECORDED[name]["request"])) == RECORDED[name]["stages"]


def _by_kind(stages, kind: str):
    (stage,) = [s for s in stages if s.kind == kind]
    return stage


@pytest.mark.parametrize("method, field, kind", [("baseline", "baseline.train.lr", "finetune"),
                                                 ("vlltr", "cvlp.train.lr", "cvlp"),
                                                 ("vlltr", "cvlp.beta", "cvlp"),
                                                 ("crt", "crt.train.lr", "head")])
def test_a_hyperparameter_changes_the_key_but_not_the_seed(method, field, kind):
    """Two rows of a sweep share initial weights and data order (common random numbers)."""
    a = _by_kind(planned({"methods": [method]}, [f"{field}=0.001"]), kind)
    b = _by_kind(planned({"methods": [method]}, [f"{field}=0.003"]), kind)
    assert a.key != b.key and a.seed == b.seed and a.run_seed == b.run_seed == 0


def test_the_run_seed_moves_the_seed_of_per_run_stages_only():
    one = {s.kind + s.label: s for s in ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY, seeds=[1])).stages}
    zero = {s.kind + s.label: s for s in planned({"methods": ["baseline"]})}
    ft0, ft1 = zero["finetunebaseline"], one["finetunebaseline"]
    assert ft0.seed != ft1.seed and ft0.key != ft1.key
    # The CLIP weights are the same stage for every seed, whichever run planned them first.
    assert zero["clip_weightsmini-clip/builtin"].key == one["clip_weightsmini-clip/builtin"].key
    assert zero["clip_weightsmini-clip/builtin"].seed == one["clip_weightsmini-clip/builtin"].seed


def test_every_stage_json_records_its_seed(tmp_path):
    from ltrbench.stages import read_info

    p = ltrbench.plan(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=TINY))
    ltrbench.run(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=TINY))
    for s in p.stages:
        info = read_info(p.cache, s)
        assert info["seed"] == s.seed and info["run_seed"] == s.run_seed


def regenerate() -> None:
    """Write the current keys and seeds of the recorded requests into the data file."""
    out = {name: {"request": rec["request"], "stages": listing(planned(rec["request"]))}
           for name, rec in RECORDED.items()}
    DATA.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    regenerate()


def test_each_method_plans_the_prior_its_scores_are_calibrated_to():
    """The oracle prior correction starts from it (EvaluateConfig.score_prior): the sampler's for
    plain CE, uniform for a balancing loss or class-aware sampling."""
    want = {"baseline": "sqrt", "la": "uniform", "bs": "uniform", "lade": "uniform", "ldam_drw": "uniform",
            "cb": "uniform", "grw": "uniform", "focal": "train", "crt": "uniform", "lws": "uniform",
            "fc": "sqrt", "vlltr": "sqrt", "lift": "uniform", "tau_norm": "uniform"}
    stages = planned({"methods": sorted(want)})
    got = {s.config.method: s.config.score_prior for s in stages if s.kind == "evaluate"}
    assert got == want
    scale = {s.config.method: s.config.params.get("score_scale") for s in stages if s.kind == "evaluate"}
    assert scale["ldam_drw"] == 30.0 and scale["la"] is None  # LDAM's logits are s · cos of its cosine head
    for loss, prior in (("ce", "train"), ("ldam", "train"), ("class_balanced", "uniform")):
        ev = [s for s in planned({"methods": ["lift"]}, [f"lift.loss={loss}"]) if s.kind == "evaluate"]
        assert ev[0].config.score_prior == prior, loss  # LIFT's LDAM has no deferred re-weighting
