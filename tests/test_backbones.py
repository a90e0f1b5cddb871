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
    convert_to_state_dict(ts, out)
    sd = torch.load(out, weights_only=True)
    assert torch.equal(sd["w"], src.state_dict()["text_projection"])


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
