"""ltrbench.peft and ltrbench.heads.cosine_logits against LIFT (github:shijxcs/LIFT @ 661ead9,
``models/peft_vit.py``, ``models/peft_modules.py``, ``models/classifiers.py``): parameter counts
on ViT-B/16, the tower unchanged right after attaching, and LIFT's forward re-implemented here."""
from __future__ import annotations

import copy
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ltrbench import peft
from ltrbench.errors import ConfigError
from ltrbench.heads import CosineHead, cosine_logits
from ltrbench.registry import BACKBONES

BACKBONES.get("mini-clip")  # imports its plugin, which registers mini-clip's open_clip model config


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()


@pytest.fixture(scope="module")
def mini():
    torch.manual_seed(0)
    return open_clip.create_model("mini-clip", pretrained=None).visual.eval()


@pytest.mark.parametrize("classes,expected", [(1000, 617_868), (365, 175_212), (8142, 4_749_324)])
def test_adaptformer_parameter_counts_on_vit_b16(vit_b16, classes, expected):
    """LIFT's counts for ImageNet-LT / Places-LT / iNat (r = 32 / 8 / 256), head excluded."""
    v = copy.deepcopy(vit_b16)
    added = peft.attach(v, "adaptformer", classes)
    assert peft.count(added) == expected
    assert peft.count(peft.trainable_parameters(v)) == expected  # the tower itself is frozen


def test_vit_b16_unchanged_after_adaptformer(vit_b16):
    v = copy.deepcopy(vit_b16)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = v(x)
        peft.attach(v, "adaptformer", 1000)
        after = v(x)
    assert torch.equal(before, after)


ZERO_INIT = ["none", "full", "partial", "bitfit", "ln", "lora", "adapter", "adaptformer", "mask"]


@pytest.mark.parametrize("name", ZERO_INIT + ["ssf_identity"])
def test_tower_unchanged_right_after_attaching(mini, name):
    v = copy.deepcopy(mini)
    x = torch.randn(3, 3, 32, 32)
    opts = {"ssf_init": "identity"} if name == "ssf_identity" else {}
    with torch.no_grad():
        before = v(x)
        added = peft.attach(v, name.replace("_identity", ""), 40, **opts)
        after = v(x)
    assert torch.allclose(before, after, atol=1e-6, rtol=0), (before - after).abs().max()
    assert (len(added) > 0) == (name in ("lora", "adapter", "adaptformer", "mask", "ssf_identity"))


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep", "ssf"])
def test_modules_lift_initialises_randomly_change_the_output(mini, name):
    """LIFT's VPT prompts and SSF (N(1, 0.02), N(0, 0.02)) are not zero-initialised: documented."""
    v = copy.deepcopy(mini)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = v(x)
        peft.attach(v, name, 40)
        after = v(x)
    assert not torch.allclose(before, after, atol=1e-6)


def test_trainable_sets(mini):
    info = peft.tower_info(mini)
    L, D = info["layers"], info["dim"]
    counts = {}
    for name in peft.PEFT_MODULES:
        v = copy.deepcopy(mini)
        added = peft.attach(v, name, 40)
        counts[name] = (peft.count(added), peft.count(peft.trainable_parameters(v)))
    blocks = sum(p.numel() for p in mini.transformer.resblocks.parameters())
    assert counts["none"] == (0, 0)
    assert counts["full"] == (0, blocks)
    assert counts["partial"] == (0, sum(p.numel() for p in mini.transformer.resblocks[-1].parameters()))
    r = peft.default_bottleneck(40, L)
    assert counts["adaptformer"][0] == L * (2 * D + D * r + r + r * D + D + 1)
    assert counts["adapter"][0] == L * (2 * D + D * r + r + r * D + D)
    assert counts["lora"][0] == L * 2 * 2 * D * r
    assert counts["vpt_shallow"][0] == 10 * D and counts["vpt_deep"][0] == L * 10 * D
    bias = sum(p.numel() for n, p in mini.transformer.resblocks.named_parameters() if n.endswith("bias"))
    assert counts["bitfit"] == (0, bias)
    ratio = peft.default_mask_ratio(40, L, D)
    per_block = sum(int((o * i + o) * ratio) for o, i in [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)])
    assert counts["mask"][0] == L * per_block
    for name, (added, trainable) in counts.items():
        assert trainable >= added


def test_bottleneck_rule():
    assert [peft.default_bottleneck(c, 12) for c in (1000, 365, 8142, 10)] == [32, 8, 256, 1]


def test_resnet_gets_a_clear_error():
    torch.manual_seed(0)
    visual = open_clip.create_model("RN50", pretrained=None).visual
    with pytest.raises(ConfigError, match="needs a ViT image tower.*none, full, bitfit"):
        peft.attach(visual, "adaptformer", 100)
    assert peft.attach(visual, "bitfit", 100) == []
    assert all(n.endswith("bias") for n, p in visual.named_parameters() if p.requires_grad)


def test_unknown_module_is_refused(mini):
    with pytest.raises(ConfigError, match="Unknown fine-tuning module 'prefix'.*adaptformer"):
        peft.attach(copy.deepcopy(mini), "prefix", 10)


# -- LIFT's forward, re-implemented from models/peft_vit.py (Peft_ViT.forward, l. 296-450) and
#    models/peft_modules.py (AdaptFormer, l. 52-78; LoRA l. 80-98), on the same weights ---------


def _lift_forward(visual, adaptformers=None, loras=None, adapters=None):
    x = visual.conv1(_IMG)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.ln_pre(x)
    bsz, seq, dim = x.shape
    for i, block in enumerate(visual.transformer.resblocks):
        x = x.permute(1, 0, 2)  # NLD -> LND
        attn = block.attn
        heads = attn.num_heads
        identity = x
        x = block.ln_1(x)
        w_in = attn.parametrizations.in_proj_weight.original if loras else attn.in_proj_weight
        qkv = F.linear(x, w_in, attn.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        if loras:
            lq, lv = loras[i]
            q = q + lq.scaling * (x @ lq.lora_A @ lq.lora_B)
            v = v + lv.scaling * (x @ lv.lora_A @ lv.lora_B)
        q = q.contiguous().view(q.shape[0], q.shape[1] * heads, dim // heads).transpose(0, 1)
        k = k.contiguous().view(k.shape[0], k.shape[1] * heads, dim // heads).transpose(0, 1)
        v = v.contiguous().view(v.shape[0], v.shape[1] * heads, dim // heads).transpose(0, 1)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.transpose(0, 1).contiguous().view(-1, dim)
        x = F.linear(x, attn.out_proj.weight, attn.out_proj.bias).view(seq, bsz, dim)
        x = x + identity
        identity = x
        x = block.ln_2(x)
        x = F.linear(x, block.mlp.c_fc.weight, block.mlp.c_fc.bias)
        x = block.mlp.gelu(x)
        x = F.linear(x, block.mlp.c_proj.weight, block.mlp.c_proj.bias)
        if adapters:
            a = adapters[i]
            x = x + a.up_proj(F.relu(a.down_proj(a.ln(x))))
        if adaptformers:
            a = adaptformers[i]
            x = x + a.up_proj(F.relu(a.down_proj(a.ln(identity)))) * a.scale
        x = x + identity
        x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0, :])  # no proj


_IMG = None


def _randomise(params):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["adaptformer", "adapter", "lora"])
def test_forward_equals_lifts_on_the_same_weights(mini, name):
    global _IMG
    torch.manual_seed(2)
    _IMG = torch.randn(4, 3, 32, 32)
    v = copy.deepcopy(mini)
    added = peft.attach(v, name, 40)
    _randomise(added)  # away from the zero init, so the module's path is exercised
    v.proj = None  # LIFT's feature: ln_post(CLS) without the projection
    blocks = v.transformer.resblocks
    with torch.no_grad():
        ours = v(_IMG)
        if name == "adaptformer":
            ref = _lift_forward(v, adaptformers=[b.peft_adaptformer for b in blocks])
        elif name == "adapter":
            ref = _lift_forward(v, adapters=[b.peft_adapter for b in blocks])
        else:
            lo = [b.attn.parametrizations.in_proj_weight[0] for b in blocks]
            ref = _lift_forward(v, loras=[(m.q, m.v) for m in lo])
        plain = _lift_forward(mini) if name != "lora" else None
    assert (ours - ref).abs().max() < 1e-5
    if plain is not None:
        assert (ours - plain).abs().max() > 1e-3  # the module did something


def test_adaptformer_module_matches_lift():
    """``AdaptFormer(dim, bottleneck)``: ln → down → ReLU → up → × scale, LIFT's init."""
    torch.manual_seed(0)
    a = peft.AdaptFormer(16, 4)
    assert set(dict(a.named_children())) == {"ln", "down_proj", "up_proj"} and a.scale.item() == 1.0
    assert torch.count_nonzero(a.up_proj.weight) == 0 and torch.count_nonzero(a.down_proj.bias) == 0
    # kaiming_normal_(a=√5) on a 4×16 weight: std = gain/√fan_in, gain = √(2/(1+5))
    torch.manual_seed(0)
    big = peft.AdaptFormer(768, 256)
    assert big.down_proj.weight.std().item() == pytest.approx(math.sqrt(2 / 6) / math.sqrt(768), rel=0.02)
    _randomise(a.parameters())
    x = torch.randn(5, 16)
    ref = F.linear(F.relu(F.linear(F.layer_norm(x, (16,), a.ln.weight, a.ln.bias), a.down_proj.weight,
                                   a.down_proj.bias)), a.up_proj.weight, a.up_proj.bias) * a.scale
    assert torch.allclose(a(x), ref, atol=1e-6)


def test_cosine_logits_equals_lifts_cosine_classifier():
    """models/classifiers.py ``CosineClassifier.forward``: F.linear(normalize(x), normalize(W)) * scale."""
    torch.manual_seed(0)
    x, w = torch.randn(7, 32, dtype=torch.float64), torch.randn(5, 32, dtype=torch.float64)
    xn = x / x.norm(dim=1, keepdim=True)
    wn = w / w.norm(dim=1, keepdim=True)
    ref = 25.0 * xn @ wn.T
    assert (cosine_logits(x, w, 25.0) - ref).abs().max() < 1e-12
    head = CosineHead(32, 5, 25.0).double()
    with torch.no_grad():
        head.weight.copy_(w)
    assert (head(x) - ref).abs().max() < 1e-12
