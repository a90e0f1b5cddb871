"""The library API (``ltrbench.run``, ``ltrbench.plan``) and the CLI in-process: what a script or a
notebook gets, and bad input failing before any work with nothing created."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import ltrbench
from conftest import TINY
from ltrbench import cli
from ltrbench.errors import ConfigError, LtrBenchError, RegistryError
from ltrbench.results import load_results


def test_run_returns_a_result_with_one_row_per_run():
    res = ltrbench.run(ltrbench.Request(["baseline", "zeroshot"], "synthetic_lt", seeds=[0], overrides=TINY))
    assert isinstance(res, ltrbench.RunResult) and not res.frame.attrs  # nothing travels in DataFrame.attrs
    df = res.frame
    assert len(df) == 2 and list(df["method"]) == ["baseline", "zeroshot"] and list(df["seed"]) == [0, 0]
    assert df["overall"].between(0, 100).all() and res.failures == []
    assert [r["method"] for r in res.records] == ["baseline", "zeroshot"]
    # the same tidy frame as load_results over the records
    assert df.equals(load_results(res.records))
    again = ltrbench.run(ltrbench.Request(["baseline", "zeroshot"], "synthetic_lt", seeds=[0], overrides=TINY))
    assert again.execution["executed"] == 0 and again.frame["overall"].tolist() == df["overall"].tolist()
    assert again.execution["stages"] == res.execution["stages"] > 0


def test_a_request_is_a_value_and_takes_no_bare_string():
    r = ltrbench.Request(["baseline"], "synthetic_lt", seeds=[0, 1], overrides=["a.b=1"], data_root="rel")
    assert r.methods == ("baseline",) and r.seeds == (0, 1) and r.overrides == ("a.b=1",)
    assert Path(r.data_root).is_absolute() and hash(r) == hash(ltrbench.Request(**r.__dict__))
    with pytest.raises(ConfigError, match="pass a list of names"):
        ltrbench.Request("baseline", "synthetic_lt")


def test_no_code_reads_dataframe_attrs():
    repo = Path(__file__).resolve().parents[1]
    files = [p for d in ("ltrbench", "methods", "datasets", "bench", "tests") for p in (repo / d).rglob("*.py")]
    found = [f"{p.relative_to(repo)}" for p in files if p != Path(__file__) and ".attrs" in p.read_text()]
    assert len(files) > 50 and not found, found


def test_run_and_sweep_share_one_builder_for_their_common_flags():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices

    def flags(name):
        return {o for a in subs[name]._actions for o in a.option_strings}

    common = {"--dataset", "--backbone", "--seeds", "--set", "--config", "--data-root", "--out", "--ray-address",
              "--retries", "--device", "--cpus-per-stage", "--no-ship-code", "--quiet"}
    assert common <= flags("run") and common <= flags("sweep")
    assert {"--methods", "--table", "--executor"} <= flags("run") - flags("sweep")


def test_plan_is_the_deduplicated_dag_without_running(tmp_path, monkeypatch):
    monkeypatch.setenv("LTRBENCH_CACHE", str(tmp_path / "empty"))
    plan = ltrbench.plan(ltrbench.Request(["crt", "lws", "ncm", "tau_norm"], "synthetic_lt", seeds=[0, 1], overrides=TINY))
    assert len(plan.runs) == 8
    kinds = [s.kind for s in plan.stages]
    assert kinds.count("clip_weights") == 1
    assert kinds.count("finetune") == 2  # one stage-1 model per seed, shared by the four heads
    keys = [s.key for s in plan.stages]
    assert len(keys) == len(set(keys))
    for i, s in enumerate(plan.stages):  # inputs come first
        assert all(keys.index(x.key) < i for x in s.inputs)
    frame = plan.to_frame()
    assert len(frame) == len(plan.stages) and not frame["cached"].any()
    # planning ran no stage (it only read the data set: the built-in world is generated on first read)
    assert {p.name for p in (tmp_path / "empty").iterdir()} == {"worlds"}


def test_table_plans_every_row():
    plan = ltrbench.plan(ltrbench.Request(None, "synthetic_lt", table=4, overrides=TINY))
    assert [r.spec.variant for r in plan.runs] == [f"t4r{i}" for i in range(1, 8)]
    with pytest.raises(ConfigError, match="either methods or table"):
        ltrbench.plan(ltrbench.Request(["vlltr"], "synthetic_lt", table=4))


@pytest.mark.parametrize("methods, dataset, error, needle", [
    ([], "synthetic_lt", ConfigError, "The list of methods is empty"),
    (["basline"], "synthetic_lt", RegistryError, "Did you mean 'baseline'?"),
    (["baseline"], "places_ltt", RegistryError, "Did you mean 'places_lt'?"),
    (["baseline"], None, ConfigError, "No data set given"),
])
def test_bad_requests_raise_user_errors(methods, dataset, error, needle):
    with pytest.raises(error, match=needle):
        ltrbench.plan(ltrbench.Request(methods, dataset))


@pytest.mark.parametrize("args, needle", [
    (["--methods", "basline"], "Unknown method 'basline'. Did you mean 'baseline'?"),
    (["--methods", ""], "The list of methods is empty"),
    (["--set", "baseline.train.epochz=3"], "unknown config key 'baseline.train.epochz'"),
    (["--set", "baseline.train.epochs=many"], "must be an integer"),
    (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    (["--table", "4", "--methods", "vlltr"], "leave out --methods"),
])
def test_cli_bad_input_is_one_paragraph_exit_2_nothing_written(tmp_path, capsys, args, needle):
    out = tmp_path / "out"
    argv = ["--methods", "baseline", "--out", str(out), "--quiet", *[a for t in TINY for a in ("--set", t)], *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.startswith("error: ")
    assert not list(out.glob("runs/*.json"))


def test_cli_run_and_tables_in_process(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--methods", "baseline,zeroshot", "--out", str(out), "--quiet", *[a for t in TINY for a in ("--set", t)]]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| baseline " in printed and "decoupling convention" in printed
    assert len(list((out / "runs").glob("*.json"))) == 2 and list((out / "tables").glob("summary__*.md"))
    assert cli.main(["tables", "--out", str(out)]) == 0
    assert "| zeroshot " in capsys.readouterr().out


def test_the_session_cache_is_private():
    assert Path(os.environ["LTRBENCH_CACHE"]).name.startswith("ltrbench-cache")


def test_errors_are_user_errors():
    assert issubclass(ConfigError, LtrBenchError) and issubclass(RegistryError, LtrBenchError)
