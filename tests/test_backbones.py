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
