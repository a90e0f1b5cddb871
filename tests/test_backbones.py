"""Backbones: mini-CLIP weights load through the same pretrained=<file> path as real CLIP weights,
and a missing tag is a quick, clear error offline."""
import time

import open_clip
import pytest
import torch

from ltrbench import backbones
from ltrbench.backbones import convert_to_state_dict, create_clip, resolve_pretrained
from ltrbench.errors import LtrBenchError


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mini_clip_checkpoint_loads_through_pretrained_file_path(tmp_path):
    torch.manual_seed(0)
    trained = create_clip("mini-clip", None)
    with torch.no_grad():
        trained.logit_scale.fill_(3.3)
    f = tmp_path / "mini.pt"
    torch.save(trained.state_dict(), f)
    again = open_clip.create_model("mini-clip", pretrained=str(f))  # what real weights go through
    assert _same_weights(trained, again)
    assert _same_weights(trained, create_clip("mini-clip", f))


def test_torchscript_archive_is_converted_to_a_state_dict(tmp_path):
    class Holder(torch.nn.Module):
        def __init__(self, sd):
            super().__init__()
            self.w = torch.nn.Parameter(sd["text_projection"].clone())

        def forward(self, x):
            return x @ self.w

    src = create_clip("mini-clip", None)
    scripted = torch.jit.script(Holder(src.state_dict()))
    ts = tmp_path / "ts.pt"
    scripted.save(str(ts))
    out = tmp_path / "sd.pt"
    with pytest.raises(LtrBenchError, match="trust_torchscript=true"):  # TorchScript is code: not by default
        convert_to_state_dict(ts, out)
    assert not out.exists()
    convert_to_state_dict(ts, out, trust_torchscript=True)  # the user's explicit opt-in
    sd = torch.load(out, weights_only=True)
    assert torch.equal(sd["w"], src.state_dict()["text_projection"])


def test_an_openai_release_is_recognised_by_its_published_sha256(tmp_path, monkeypatch):
    """OpenAI's .pt releases convert without the opt-in: open_clip's table publishes their SHA-256."""
    from ltrbench.fingerprints import sha256_file

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2, 2))

        def forward(self, x):
            return x @ self.w

    ts = tmp_path / "RN50.pt"
    torch.jit.script(Holder()).save(str(ts))
    assert backbones.official_release(ts) is None
    assert len(backbones._openai_releases()) >= 9  # the real table: RN50 … ViT-L-14-336, by SHA-256
    monkeypatch.setattr(backbones, "_openai_releases", lambda: {sha256_file(ts): "RN50/openai"})
    assert backbones.official_release(ts) == "RN50/openai"
    convert_to_state_dict(ts, tmp_path / "sd.pt")
    assert torch.equal(torch.load(tmp_path / "sd.pt", weights_only=True)["w"], torch.ones(2, 2))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(LtrBenchError, match="does not exist"):
        resolve_pretrained("RN50", str(tmp_path / "RN50.pt"))


def test_uncached_tag_offline_fails_fast_naming_file_and_place(monkeypatch, tmp_path):
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(backbones, "_cached_tag_file", lambda cfg, cache_dir: None)
    t = time.time()
    with pytest.raises(LtrBenchError) as e:
        resolve_pretrained("RN50", "openai")
    assert time.time() - t < 5
    msg = str(e.value)
    assert "RN50.pt" in msg and "offline" in msg and "backbone.pretrained=" in msg


def test_unknown_tag_lists_known_tags():
    with pytest.raises(LtrBenchError, match="openai"):
        resolve_pretrained("RN50", "nosuchtag")


# --------------------------------------------------------------------------- another input size (Table 3's 384 px)


def test_a_vit_checkpoint_loads_and_runs_at_another_input_size(tmp_path):
    torch.manual_seed(0)
    src = create_clip("mini-clip", None)  # 32 px, patch 8: a 4×4 grid
    f = tmp_path / "mini.pt"
    torch.save(src.state_dict(), f)
    big = create_clip("mini-clip", f, image_size=48)  # a 6×6 grid
    pos = big.visual.positional_embedding
    assert pos.shape[0] == 6 * 6 + 1 and src.visual.positional_embedding.shape[0] == 4 * 4 + 1
    assert torch.equal(pos[0], src.visual.positional_embedding[0])  # the class token's is kept
    with torch.no_grad():
        out = big.encode_image(torch.randn(2, 3, 48, 48))
    assert out.shape == (2, 64) and torch.isfinite(out).all()
    # every other weight is the checkpoint's; at the backbone's own size nothing changes
    sb = big.state_dict()
    assert all(torch.equal(v, sb[k]) for k, v in src.state_dict().items() if k != "visual.positional_embedding")
    assert _same_weights(src, create_clip("mini-clip", f, image_size=32))


def test_which_backbones_take_another_input_size():
    from ltrbench.backbones import check_input_size
    from ltrbench.errors import ConfigError

    check_input_size("ViT-B-16", 384)
    check_input_size("RN50", 224)
    with pytest.raises(ConfigError, match="RN50 runs only at 224 px"):
        check_input_size("RN50", 384)
    with pytest.raises(ConfigError, match="multiple of its patch size 16"):
        check_input_size("ViT-B-16", 380)


def test_the_384_row_plans_every_image_stage_at_384(monkeypatch):
    import ltrbench
    import ltrbench.validate
    from conftest import TINY

    # Planning only: OpenAI's ViT-B/16 weights are not on this machine (plan() checks them first).
    monkeypatch.setattr(ltrbench.validate, "check_weights", lambda *a, **k: None)

    plan = ltrbench.plan(ltrbench.Request(None, "synthetic_lt", table=3, backbone="ViT-B-16", overrides=TINY))
    runs = {r.spec.variant: r for r in plan.runs}
    row, base = runs["t3r23"], runs["t3r22"]
    assert row.ctx.img.image_size == 384 and row.ctx.img.eval_resize == 438 and row.cfg.backbone.name == "ViT-B-16"
    assert base.ctx.img.image_size == 224
    from ltrbench.planner import topological

    def image_stages(run):
        return [s for s in topological([run.target]) if hasattr(s.config, "image")]

    assert {s.kind for s in image_stages(row)} >= {"cvlp", "features", "lgr"}
    assert all(s.config.image["image_size"] == 384 for s in image_stages(row))
    assert not {s.key for s in image_stages(row)} & {s.key for s in image_stages(base)}
    clip = [s for s in topological([row.target]) if s.kind == "clip_weights"]
    assert clip[0].key == [s for s in topological([base.target]) if s.kind == "clip_weights"][0].key  # one CLIP


def test_a_run_at_another_input_size_trains_and_evaluates():
    import ltrbench
    from conftest import TINY

    df = ltrbench.run(ltrbench.Request(["baseline", "zeroshot"], "synthetic_lt", overrides=[*TINY, "data.image_size=48",
                                                                           "data.eval_resize=48"]))
    assert df.frame["overall"].between(0, 100).all() and len(df.frame) == 2
    ft = [s for s in df.records[0]["stages"] if s["kind"] == "finetune"]
    assert ft and df.records[0]["config"]["data"]["image_size"] == 48
