"""The Ray executor runs the same stage DAG as the inline one, into the same cache."""
import json
import os
from pathlib import Path

import pytest

from conftest import TINY, run_cli, tiny_set

pytestmark = pytest.mark.slow  # a CLI subprocess starting an embedded Ray

FAST = ["cvlp.train.epochs=1", "lgr.train.epochs=1", "cvlp.train.batch_size=64", "lgr.train.batch_size=64"]


def test_ray_executor_runs_vlltr_and_baseline_into_the_shared_cache(tmp_path):
    import ltrbench
    from ltrbench.stages import topological

    r = run_cli("--methods", "baseline,vlltr", "--executor", "ray", "--out", str(tmp_path), "--quiet",
                *tiny_set(FAST))
    assert r.returncode == 0, r.stderr[-3000:]
    recs = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in (tmp_path / "runs").glob("*.json")}
    assert set(recs) == {"baseline", "vlltr"}
    cache = Path(os.environ["LTRBENCH_CACHE"])
    for p in ltrbench.plan(["baseline", "vlltr"], "synthetic_lt", overrides=[*TINY, *FAST]).runs:
        planned = {s.key for s in topological([p.target])}
        recorded = {s["key"] for s in recs[p.spec.method]["stages"]}
        assert recorded == planned  # the Ray path ran exactly the planned DAG ...
        for s in recs[p.spec.method]["stages"]:  # ... and its workers wrote every stage to the cache
            assert (cache / s["kind"] / s["key"] / "stage.json").is_file(), s
