"""Parameter-efficient fine-tuning of open_clip's image transformer: the modules LIFT compares
(Shi et al., ICML 2024; github:shijxcs/LIFT ``models/peft_vit.py``, ``models/peft_modules.py``;
docs/algorithms.md#peft-modules), *added to the existing model*, never a copy of it.

:func:`attach` freezes the tower, adds the chosen module to it and returns the parameters it added
(the tower's own parameters it unfreezes, for BitFit, LayerNorm tuning, partial and full
fine-tuning, are trainable but not added). How the modules enter the model:

* the block's ``forward`` is replaced by :func:`_block_forward` (bound to that block), which
  computes exactly open_clip's ``ResidualAttentionBlock.forward`` for a vision tower and calls the
  modules the block holds as ``peft_*`` children: AdaptFormer (in parallel with the MLP, on the
  residual stream before ``ln_2``: h' = h + MLP(ln_2 h) + A(h)), the serial Adapter (on the MLP's
  output: m + Adapter(m)), VPT prompts (appended after the patch tokens; deep VPT truncates and
  re-appends at every block), SSF after ``ln_1``/``ln_2`` and after the MLP's two linears;
* weights that ``nn.MultiheadAttention`` reads directly get a :mod:`torch.nn.utils.parametrize`
  parametrization: LoRA on q and v (W_q + s·(AB)ᵀ), SSF after the qkv and output projections
  (diag(γ)W, γ⊙b + β), and the random sparse mask (chosen entries of W and b replaced by trained
  values, as LIFT's ``MaskedLinear``).

Initialisation is LIFT's: the modules that LIFT zero-initialises (AdaptFormer, Adapter, LoRA's B,
the mask, which starts from the frozen values) leave the tower's output unchanged right after
attaching. LIFT's SSF (scale ~ N(1, 0.02), shift ~ N(0, 0.02)) and VPT (prompts ~ U(±√(6/(3p²+D))),
which the class token attends to) do change it; ``ssf_init="identity"`` starts SSF at (1, 0) (default ``"random"``, LIFT's).

On a ResNet tower only ``none``, ``full`` and ``bitfit`` apply (LIFT's ``peft_rn.py`` also has
BatchNorm tuning and SSF, not ported); any other name is refused with that list.
"""
from __future__ import annotations

import math
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .errors import ConfigError

#: Every module name :func:`attach` knows (``lift.peft``).
PEFT_MODULES = ("none", "full", "partial", "bitfit", "ln", "lora", "adapter", "adaptformer",
                "vpt_shallow", "vpt_deep", "ssf", "mask")
#: The names that apply to a ResNet tower.
RESNET_MODULES = ("none", "full", "bitfit")


def default_bottleneck(num_classes: int, num_layers: int) -> int:
    """LIFT's bottleneck r = 2^max(0, ⌊log2(C / (2L))⌋) (``peft_vit.py``; ``int`` truncates)."""
    return 2 ** max(0, int(math.log2(num_classes / (num_layers * 2))))


def default_mask_ratio(num_classes: int, num_layers: int, dim: int) -> float:
    """LIFT's default share of block weights the sparse mask trains: C / (12·L·D), floored to 0.001."""
    ratio = num_classes / (12 * num_layers * dim)
    return max(0.001, ratio // 0.001 * 0.001)


# --------------------------------------------------------------------------- the modules


class Adapter(nn.Module):
    """LayerNorm → Linear(D→r) → ReLU → Linear(r→D); down kaiming-normal (a = √5), the rest zero."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, bottleneck)
        self.up_proj = nn.Linear(bottleneck, dim)
        nn.init.kaiming_normal_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up_proj(F.relu(self.down_proj(self.ln(x))))


class AdaptFormer(Adapter):
    """LIFT's default module: the :class:`Adapter` times a learnable scalar ``scale`` (init 1)."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__(dim, bottleneck)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.scale


class LoRA(nn.Module):
    """x ↦ (x A B)/r with A (D×r) kaiming-uniform (a = √5) and B (r×D) zero."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.zeros(dim, bottleneck))
        self.lora_B = nn.Parameter(torch.zeros(bottleneck, dim))
        self.scaling = 1.0 / bottleneck
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta_weight(self) -> Tensor:
        """The update of a weight W (out×in) that F.linear applies as x Wᵀ."""
        return (self.scaling * (self.lora_A @ self.lora_B)).T


class SSF(nn.Module):
    """Scale-and-shift x ↦ γ⊙x + β; LIFT's init γ ~ N(1, 0.02), β ~ N(0, 0.02), or identity."""

    def __init__(self, dim: int, init: str = "random") -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        if init == "random":
            nn.init.normal_(self.scale, mean=1.0, std=0.02)
            nn.init.normal_(self.shift, std=0.02)
        elif init != "identity":
            raise ConfigError(f"ssf_init={init!r}: use 'random' (LIFT's init) or 'identity'.")

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class VPT(nn.Module):
    """``length`` prompt tokens appended after the first ``seq_len`` tokens (earlier prompts dropped)."""

    def __init__(self, length: int, seq_len: int, patch: int, dim: int, seq_dim: int) -> None:
        super().__init__()
        self.seq_len, self.seq_dim = seq_len, seq_dim
        self.prompt = nn.Parameter(torch.empty(length, dim))
        bound = math.sqrt(6.0 / float(3 * patch * patch + dim))
        nn.init.uniform_(self.prompt, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if self.seq_dim == 1:  # N L D
            p = self.prompt.to(x.dtype).expand(x.shape[0], -1, -1)
            return torch.cat([x[:, : self.seq_len], p], dim=1)
        p = self.prompt.to(x.dtype)[:, None].expand(-1, x.shape[1], -1)  # L N D
        return torch.cat([x[: self.seq_len], p], dim=0)


# --------------------------------------------------------------------------- parametrizations


class _QVLoRA(nn.Module):
    """in_proj_weight (3D×D) + [ΔW_q; 0; ΔW_v]."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.q, self.v = LoRA(dim, bottleneck), LoRA(dim, bottleneck)

    def forward(self, w: Tensor) -> Tensor:
        d = w.shape[1]
        zero = torch.zeros(d, d, dtype=w.dtype, device=w.device)
        return w + torch.cat([self.q.delta_weight(), zero, self.v.delta_weight()]).to(w.dtype)


class _SSFWeight(nn.Module):
    def __init__(self, ssf: SSF) -> None:
        super().__init__()
        self.ssf = ssf

    def forward(self, w: Tensor) -> Tensor:
        return self.ssf.scale[:, None].to(w.dtype) * w


class _SSFBias(_SSFWeight):
    def forward(self, b: Tensor) -> Tensor:
        return self.ssf.scale.to(b.dtype) * b + self.ssf.shift.to(b.dtype)


class _MaskedValues(nn.Module):
    """A tensor whose entries under ``mask`` are the trained ``values`` (initialised from the tensor)."""

    def __init__(self, original: Tensor, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask, persistent=True)
        self.values = nn.Parameter(torch.masked_select(original.detach().clone(), mask))

    def forward(self, t: Tensor) -> Tensor:
        if not bool(self.mask.any()):
            return t
        return torch.masked_scatter(t, self.mask, self.values.to(t.dtype))


def _mask_linear(owner: nn.Module, wname: str, bname: str, ratio: float, gen: torch.Generator) -> list[nn.Parameter]:
    """LIFT's ``MaskedLinear``: one random permutation over the out×(in+1) weights and biases."""
    w, b = getattr(owner, wname), getattr(owner, bname)
    out_dim, in_dim = w.shape
    n = out_dim * in_dim + out_dim
    chosen = torch.randperm(n, generator=gen)[: int(n * ratio)]
    mask = torch.zeros(n, dtype=torch.bool).scatter(0, chosen, True).reshape(out_dim, in_dim + 1)
    mw, mb = _MaskedValues(w, mask[:, :-1].clone()), _MaskedValues(b, mask[:, -1].clone())
    parametrize.register_parametrization(owner, wname, mw)
    parametrize.register_parametrization(owner, bname, mb)
    return [mw.values, mb.values]


# --------------------------------------------------------------------------- the block


def _block_forward(self: nn.Module, q_x: Tensor, k_x: Tensor | None = None, v_x: Tensor | None = None,
                   attn_mask: Tensor | None = None) -> Tensor:
    """open_clip's ``ResidualAttentionBlock.forward`` (self-attention: a vision tower) with the
    block's ``peft_*`` modules where LIFT's ``Peft_ViT.forward`` puts them."""
    mods = self._modules
    if mods.get("peft_vpt") is not None:
        q_x = mods["peft_vpt"](q_x)
    h = self.ln_1(q_x)
    if mods.get("peft_ssf_ln_1") is not None:
        h = mods["peft_ssf_ln_1"](h)
    x = q_x + self.ls_1(self.attention(q_x=h, attn_mask=attn_mask))
    h = self.ln_2(x)
    if mods.get("peft_ssf_ln_2") is not None:
        h = mods["peft_ssf_ln_2"](h)
    mlp = self.mlp
    m = mlp.c_fc(h)
    if mods.get("peft_ssf_mlp_in") is not None:
        m = mods["peft_ssf_mlp_in"](m)
    m = mlp.c_proj(mlp.gelu(m))
    if mods.get("peft_ssf_mlp_out") is not None:
        m = mods["peft_ssf_mlp_out"](m)
    if mods.get("peft_adapter") is not None:
        m = m + mods["peft_adapter"](m)
    if mods.get("peft_adaptformer") is not None:
        m = m + mods["peft_adaptformer"](x)
    return x + self.ls_2(m)


def _patch_block(block: nn.Module) -> None:
    if not (hasattr(block, "mlp") and all(hasattr(block.mlp, k) for k in ("c_fc", "gelu", "c_proj"))):
        raise ConfigError(f"ltrbench.peft: the block {type(block).__name__} is not open_clip's "
                          "ResidualAttentionBlock with a c_fc/gelu/c_proj MLP; it cannot take these modules.")
    block.forward = types.MethodType(_block_forward, block)


# --------------------------------------------------------------------------- attach


def is_vit(visual: nn.Module) -> bool:
    return hasattr(visual, "transformer") and hasattr(visual, "class_embedding") and hasattr(visual, "conv1")


def tower_info(visual: nn.Module) -> dict[str, int]:
    blocks = visual.transformer.resblocks
    return {"layers": len(blocks), "dim": int(visual.positional_embedding.shape[1]),
            "seq_len": int(visual.positional_embedding.shape[0]), "patch": int(visual.conv1.kernel_size[0])}


def attach(visual: nn.Module, name: str, num_classes: int, *, bottleneck: int | None = None,
           vpt_len: int = 10, blocks: int = 1, mask_ratio: float | None = None, mask_seed: int = 0,
           ssf_init: str = "random") -> list[nn.Parameter]:
    """Freeze ``visual`` (an open_clip image tower), add the fine-tuning module ``name`` to it and
    return the parameters added (the tower's own that ``name`` unfreezes are trainable, not added).

    ``bottleneck`` (adapter, adaptformer, lora; None: :func:`default_bottleneck`), ``vpt_len``
    (prompts per layer), ``blocks`` (``partial``: the last k blocks trained), ``mask_ratio`` (None:
    :func:`default_mask_ratio`) and ``mask_seed``, ``ssf_init`` ("random", LIFT's, or "identity").
    """
    if name not in PEFT_MODULES:
        raise ConfigError(f"Unknown fine-tuning module {name!r}; use one of {', '.join(PEFT_MODULES)}.")
    for p in visual.parameters():
        p.requires_grad_(False)
    if not is_vit(visual):
        if name not in RESNET_MODULES:
            raise ConfigError(
                f"The fine-tuning module {name!r} needs a ViT image tower, and this one is "
                f"{type(visual).__name__} (a ResNet). On a ResNet use one of {', '.join(RESNET_MODULES)} "
                "(LIFT's peft_rn.py also has BatchNorm tuning and SSF, which ltrbench does not port), or pick a "
                "ViT backbone (e.g. --backbone ViT-B-16).")
        if name == "full":
            visual.requires_grad_(True)
        elif name == "bitfit":
            for n, p in visual.named_parameters():
                if n.endswith("bias"):
                    p.requires_grad_(True)
        return []
    info = tower_info(visual)
    L, D = info["layers"], info["dim"]
    res = visual.transformer.resblocks
    r = bottleneck or default_bottleneck(num_classes, L)
    seq_dim = 1 if getattr(visual.transformer, "batch_first", True) else 0
    added: list[nn.Parameter] = []

    def add(block: nn.Module, key: str, mod: nn.Module) -> None:
        block.add_module(key, mod)
        added.extend(mod.parameters())

    if name == "full":
        res.requires_grad_(True)
    elif name == "partial":
        if not 1 <= blocks <= L:
            raise ConfigError(f"lift.peft_options.blocks={blocks}: the tower has {L} blocks; use 1 … {L}.")
        res[L - blocks:].requires_grad_(True)
    elif name == "bitfit":
        for n, p in res.named_parameters():
            if n.endswith("bias"):
                p.requires_grad_(True)
    elif name == "ln":
        for m in res.modules():
            if isinstance(m, nn.LayerNorm):
                m.requires_grad_(True)
    gen = torch.Generator().manual_seed(int(mask_seed))
    ratio = mask_ratio if mask_ratio is not None else default_mask_ratio(num_classes, L, D)
    for i, block in enumerate(res):
        if name in ("adaptformer", "adapter"):
            add(block, f"peft_{name}", (AdaptFormer if name == "adaptformer" else Adapter)(D, r))
        elif name == "vpt_deep" or (name == "vpt_shallow" and i == 0):
            add(block, "peft_vpt", VPT(vpt_len, info["seq_len"], info["patch"], D, seq_dim))
        elif name == "ssf":
            for key, dim in (("ln_1", D), ("ln_2", D), ("mlp_in", block.mlp.c_fc.out_features), ("mlp_out", D)):
                add(block, f"peft_ssf_{key}", SSF(dim, ssf_init))
            for key, (owner, wn, bn) in {"attn_in": (block.attn, "in_proj_weight", "in_proj_bias"),
                                         "attn_out": (block.attn.out_proj, "weight", "bias")}.items():
                ssf = SSF(getattr(owner, bn).shape[0], ssf_init)
                parametrize.register_parametrization(owner, wn, _SSFWeight(ssf))
                parametrize.register_parametrization(owner, bn, _SSFBias(ssf))
                added.extend(ssf.parameters())
        elif name == "lora":
            lora = _QVLoRA(D, r)
            parametrize.register_parametrization(block.attn, "in_proj_weight", lora)
            added.extend(lora.parameters())
        elif name == "mask":
            for owner, wn, bn in ((block.attn, "in_proj_weight", "in_proj_bias"),
                                  (block.attn.out_proj, "weight", "bias"),
                                  (block.mlp.c_fc, "weight", "bias"), (block.mlp.c_proj, "weight", "bias")):
                added.extend(_mask_linear(owner, wn, bn, ratio, gen))
        if name in ("adaptformer", "adapter", "vpt_shallow", "vpt_deep", "ssf"):
            _patch_block(block)
    for p in added:
        p.requires_grad_(True)
    return added


def count(params) -> int:
    """Number of distinct scalars in ``params``."""
    seen, n = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def describe(visual: nn.Module, name: str, num_classes: int, **options: Any) -> dict[str, Any]:
    """The module's settings as recorded with a result (the defaults resolved)."""
    out: dict[str, Any] = {"module": name, **options}
    if is_vit(visual):
        info = tower_info(visual)
        if name in ("adaptformer", "adapter", "lora"):
            out["bottleneck"] = options.get("bottleneck") or default_bottleneck(num_classes, info["layers"])
        if name == "mask" and options.get("mask_ratio") is None:
            out["mask_ratio"] = default_mask_ratio(num_classes, info["layers"], info["dim"])
    return out
