"""The baseline end to end through the CLI on miniature roots in each real layout."""
import json

import pytest

from conftest import run_cli, tiny_set
from test_real_data import make_imagenet_lt, make_inat2018, make_places_lt

pytestmark = pytest.mark.slow  # CLI subprocesses

MAKERS = {"imagenet_lt": make_imagenet_lt, "places_lt": make_places_lt, "inat2018": make_inat2018}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_baseline_runs_on_a_miniature_real_root(tmp_path, name):
    (tmp_path / "root").mkdir()
    root = MAKERS[name](tmp_path / "root")
    out = tmp_path / "out"
    # mini-CLIP stands in for RN50 (no weights can be downloaded here); everything else is the real path.
    r = run_cli("--methods", "baseline", "--dataset", name, "--data-root", str(root), "--backbone", "mini-clip",
                "--out", str(out), "--quiet", *tiny_set(["data.augment=light", "data.num_workers=0",
                                                           "baseline.train.batch_size=4"]))
    assert r.returncode == 0, r.stderr[-3000:]
    (f,) = (out / "runs").glob("*.json")
    rec = json.loads(f.read_text())
    assert rec["dataset"] == name and rec["eval_split"] == ("val" if name == "inat2018" else "test")
    assert rec["effective"]["baseline"]["effective_batch_size"] == 4
    assert rec["effective"]["baseline"]["effective_lr"] == pytest.approx(
        rec["config"]["baseline"]["train"]["lr"] * 4 / rec["config"]["baseline"]["train"]["ref_batch_size"])


def test_bad_data_root_is_a_clear_error(tmp_path):
    r = run_cli("--methods", "baseline", "--dataset", "places_lt", "--data-root", str(tmp_path / "nope"),
                "--backbone", "mini-clip", "--out", str(tmp_path / "out"), "--quiet", *tiny_set())
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
