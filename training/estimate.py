"""Memory and time per step of a training config, computed from the FLUX transformer's shapes.

Shapes come from ``<model.flux>/transformer/config.json`` when that folder exists, otherwise
from FLUX.1-dev's published config (hidden 3072 = 24 heads x 128, 19 double + 38 single
blocks, MLP ratio 4, T5 width 4096, CLIP pooled 768). Everything else is counted from the
layer list: parameters, LoRA parameters of the configured targets and rank, gradients and
optimizer state of the trainable part, and activations saved for backward per sample.

Assumptions (stated in every report):
* frozen base linears save no inputs for backward (autograd keeps a matmul's input only when
  its weight needs a gradient); LoRA layers save their input and their rank-r bottleneck;
* attention is SDPA/flash (no S x S matrix kept): q, k, v, output per token;
* with gradient checkpointing (diffusers: per block) only block inputs are kept, plus one
  block's full activations while it is recomputed, and a transient of two blocks' worth;
* FLOPs: forward = 2 x (params a token passes through) x tokens + 4 S^2 D per block (attention);
  backward = forward (activation grads) + 2 x LoRA params x tokens (LoRA weight grads) + one
  more attention; checkpointing recomputes the forward once;
* time = FLOPs / (GPUs x peak x MFU); H100 SXM dense bf16 peak 989 TFLOP/s, MFU 0.35 by default;
* multi-reference mixes (``training.references``): memory at the largest k (its canvas of k + 1 frames
  is the longest sequence), time at the mix's mean FLOPs per sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .config import TrainConfig

GIB = 1024**3
H100_BF16_PEAK = 989e12

# FLUX.1-dev transformer/config.json (black-forest-labs/FLUX.1-dev), the shapes the estimate uses by default.
FLUX_DEV_CONFIG = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
MLP_RATIO = 4.0  # diffusers' FluxTransformerBlock / FluxSingleTransformerBlock
TIME_PROJ_DIM = 256


@dataclass(frozen=True)
class Linear:
    name: str  # diffusers suffix inside its block
    fan_in: int
    fan_out: int
    bias: bool = True
    per_token: bool = True  # False: acts on the per-sample embedding (modulation), not on tokens


def transformer_config(cfg: TrainConfig) -> tuple[dict, str]:
    for folder in (Path(cfg.model.transformer) if cfg.model.transformer else None,
                   Path(cfg.model.flux) / "transformer" if cfg.model.flux else None):  # fmt: skip
        if folder is not None and (folder / "config.json").is_file():
            return json.loads((folder / "config.json").read_text()), str(folder / "config.json")
    return dict(FLUX_DEV_CONFIG), "FLUX.1-dev published config (model.flux not found here)"


def block_linears(tc: dict) -> tuple[list[Linear], list[Linear], list[Linear]]:
    d = tc["num_attention_heads"] * tc["attention_head_dim"]
    m = int(d * MLP_RATIO)
    double = [Linear("norm1.linear", d, 6 * d, per_token=False), Linear("norm1_context.linear", d, 6 * d, per_token=False)]
    double += [Linear(f"attn.{n}", d, d) for n in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")]
    double += [Linear("ff.net.0.proj", d, m), Linear("ff.net.2", m, d), Linear("ff_context.net.0.proj", d, m), Linear("ff_context.net.2", m, d)]
    single = [Linear("norm.linear", d, 3 * d, per_token=False), Linear("proj_mlp", d, m)]
    single += [Linear(f"attn.{n}", d, d) for n in ("to_q", "to_k", "to_v")] + [Linear("proj_out", d + m, d)]
    out_ch = tc.get("out_channels") or tc["in_channels"]
    top = [Linear("x_embedder", tc["in_channels"], d), Linear("context_embedder", tc["joint_attention_dim"], d),
           Linear("timestep_embedder.linear_1", TIME_PROJ_DIM, d, per_token=False),
           Linear("timestep_embedder.linear_2", d, d, per_token=False),
           Linear("text_embedder.linear_1", tc["pooled_projection_dim"], d, per_token=False),
           Linear("text_embedder.linear_2", d, d, per_token=False),
           Linear("norm_out.linear", d, 2 * d, per_token=False),
           Linear("proj_out", d, tc["patch_size"] ** 2 * out_ch)]  # fmt: skip
    if tc.get("guidance_embeds", True):
        top += [Linear("guidance_embedder.linear_1", TIME_PROJ_DIM, d, per_token=False),
                Linear("guidance_embedder.linear_2", d, d, per_token=False)]  # fmt: skip
    return double, single, top


def _params(layers: list[Linear]) -> int:
    return sum(x.fan_in * x.fan_out + (x.fan_out if x.bias else 0) for x in layers)


@dataclass
class Estimate:
    source: str
    hidden: int
    double_blocks: int
    single_blocks: int
    text_tokens: int
    image_tokens: int
    base_params: int
    lora_params: int
    c_embedder_params: int
    world_size: int
    micro_batch: int
    grad_accumulation: int
    effective_batch: int
    base_weights_gib: float
    trainable_gib: float
    gradients_gib: float
    optimizer_gib: float
    ema_gib: float
    activations_per_sample_gib: float
    activations_gib: float
    total_ddp_gib: float
    total_fsdp_gib: float
    flops_per_sample: float
    seconds_per_step: float
    hours_total: float
    mfu: float
    peak_flops: float
    act_bytes: int
    checkpointing: bool
    references: int = 1  # the k the memory figures are for (the mix's largest)
    flops_by_k: dict[int, float] | None = None  # FLOPs per sample of a canvas of k references, k = 1..3 (and the mix's)


@dataclass(frozen=True)
class _Model:
    """The transformer's shapes and the LoRA layers one config trains: what each step of ``estimate`` reads."""

    source: str
    in_channels: int
    d: int  # hidden width
    hd: int  # attention head width
    m: int  # MLP width
    nd: int  # double blocks
    ns: int  # single blocks
    double: list[Linear]
    single: list[Linear]
    top: list[Linear]
    r: int  # LoRA rank
    lora_d: list[Linear]
    lora_s: list[Linear]


def _model(cfg: TrainConfig) -> _Model:
    tc, source = transformer_config(cfg)
    d = tc["num_attention_heads"] * tc["attention_head_dim"]
    double, single, top = block_linears(tc)
    targets = set(cfg.network.target_modules)
    return _Model(
        source=source, in_channels=tc["in_channels"], d=d, hd=tc["attention_head_dim"], m=int(d * MLP_RATIO),
        nd=tc["num_layers"], ns=tc["num_single_layers"], double=double, single=single, top=top,
        r=cfg.network.rank, lora_d=[x for x in double if x.name in targets],
        lora_s=[x for x in single if x.name in targets],
    )  # fmt: skip


def _lora_params(layers: list[Linear], r: int) -> int:
    return sum(r * (x.fan_in + x.fan_out) for x in layers)


def _activations_per_sample(mo: _Model, s: int, act_bytes: int, checkpointing: bool) -> int:
    """Bytes saved for backward per sample of ``s`` tokens (see the module docstring)."""
    d, m, r = mo.d, mo.m, mo.r
    # Saved activations per token of one stream, in elements.
    # Layers reading the same tensor save it once: q/k/v (and single-block proj_mlp) share their input.
    shared = {"attn.to_q": "qkv", "attn.to_k": "qkv", "attn.to_v": "qkv", "proj_mlp": "qkv"}

    def lora_saved(layers: list[Linear]) -> int:
        groups = {shared.get(x.name, x.name): x.fan_in for x in layers}
        return sum(groups.values()) + r * len(layers)

    img_lora = [x for x in mo.lora_d if not x.name.startswith(("attn.add_", "attn.to_add", "ff_context"))]
    per_tok_double = lora_saved(img_lora) + 2 * d + 2 * d + 4 * d + m  # LoRA, 2 LN, q/k RMSNorm, SDPA, GELU
    per_tok_single = lora_saved(mo.lora_s) + d + 2 * d + 4 * d + m
    block_d = per_tok_double * s * act_bytes
    block_s = per_tok_single * s * act_bytes
    if checkpointing:
        kept = (mo.nd + mo.ns) * s * d * act_bytes  # block inputs
        per_sample = kept + max(block_d, block_s) + 2 * max(block_d, block_s)
    else:
        per_sample = mo.nd * block_d + mo.ns * block_s
    return per_sample + 4 * s * d * act_bytes  # embeddings, final norm/proj, loss


class _Memory(NamedTuple):
    """Bytes per GPU."""

    base: float
    trainable: int
    grads: int
    optimizer: int
    ema: int
    activations: int
    ddp: float
    fsdp: float


def _memory(cfg: TrainConfig, mo: _Model, base: int, trainable: int, per_sample: int, act_bytes: int,
            world_size: int) -> _Memory:  # fmt: skip
    base_bytes = {"float32": 4, "bfloat16": 2, "float8": 1}[cfg.model.base_dtype]
    scales = (mo.nd * sum(x.fan_out for x in mo.double) + mo.ns * sum(x.fan_out for x in mo.single)) * 4
    w_base = base * base_bytes + scales * (base_bytes == 1)
    w_train = trainable * 4
    grads = trainable * 4
    opt = trainable * (2 if cfg.optimizer.name == "adamw8bit" else 8)
    ema = trainable * 4 if cfg.training.ema_decay > 0 else 0
    autocast_copies = trainable * 2 if act_bytes == 2 else 0
    acts = per_sample * cfg.training.batch_size
    ddp = w_base + w_train + grads * 2 + opt + ema + autocast_copies + acts  # DDP keeps a bucket copy of the grads
    fsdp = (w_base + w_train + grads + opt + ema) / world_size + autocast_copies + acts
    return _Memory(w_base, w_train, grads, opt, ema, acts, ddp, fsdp)


def _flops_per_sample(mo: _Model, s: int, checkpointing: bool) -> float:
    nd, ns, d = mo.nd, mo.ns, mo.d
    lin_tok = nd * sum(x.fan_in * x.fan_out for x in mo.double if x.per_token) / 2  # each token passes one stream
    lin_tok += ns * sum(x.fan_in * x.fan_out for x in mo.single if x.per_token)
    lora_tok = nd * _lora_params(mo.lora_d, mo.r) / 2 + ns * _lora_params(mo.lora_s, mo.r)
    fwd = 2 * (lin_tok + lora_tok) * s + 4 * s * s * d * (nd + ns)
    bwd = 2 * (lin_tok + lora_tok) * s + 2 * lora_tok * s + 4 * s * s * d * (nd + ns)
    return fwd + bwd + (fwd if checkpointing else 0)


def estimate(cfg: TrainConfig, world_size: int | None = None, mfu: float = 0.35, peak_flops: float = H100_BF16_PEAK) -> Estimate:
    world_size = world_size or cfg.training.gpus
    mo = _model(cfg)
    norms = mo.nd * 4 * mo.hd + mo.ns * 2 * mo.hd
    base = mo.nd * _params(mo.double) + mo.ns * _params(mo.single) + _params(mo.top) + norms
    lora = mo.nd * _lora_params(mo.lora_d, mo.r) + mo.ns * _lora_params(mo.lora_s, mo.r)
    c_emb = (mo.in_channels * mo.d + mo.d) if cfg.network.train_c_embedder else 0

    mix = cfg.training.reference_mix
    k_max = max(mix)
    n_img = canvas_image_tokens(cfg, k_max)
    n_txt = cfg.model.max_sequence_length
    act_bytes = 2 if cfg.training.mixed_precision == "bf16" else 4
    checkpointing = cfg.training.gradient_checkpointing
    per_sample = _activations_per_sample(mo, n_img + n_txt, act_bytes, checkpointing)
    mem = _memory(cfg, mo, base, lora + c_emb, per_sample, act_bytes, world_size)
    by_k = {k: _flops_per_sample(mo, canvas_image_tokens(cfg, k) + n_txt, checkpointing) for k in sorted({1, 2, 3, *mix})}
    flops = sum(share * by_k[k] for k, share in mix.items())

    accum = cfg.grad_accumulation(world_size)
    b = cfg.training.batch_size
    eff = b * accum * world_size
    sec = flops * eff / (world_size * peak_flops * mfu)
    return Estimate(
        source=mo.source, hidden=mo.d, double_blocks=mo.nd, single_blocks=mo.ns, text_tokens=n_txt, image_tokens=n_img,
        base_params=base, lora_params=lora, c_embedder_params=c_emb, world_size=world_size, micro_batch=b,
        grad_accumulation=accum, effective_batch=eff, base_weights_gib=mem.base / GIB, trainable_gib=mem.trainable / GIB,
        gradients_gib=mem.grads / GIB, optimizer_gib=mem.optimizer / GIB, ema_gib=mem.ema / GIB,
        activations_per_sample_gib=per_sample / GIB, activations_gib=mem.activations / GIB,
        total_ddp_gib=mem.ddp / GIB, total_fsdp_gib=mem.fsdp / GIB, flops_per_sample=flops,
        seconds_per_step=sec, hours_total=sec * cfg.training.steps / 3600, mfu=mfu, peak_flops=peak_flops,
        act_bytes=act_bytes, checkpointing=checkpointing, references=k_max, flops_by_k=by_k,
    )  # fmt: skip


def canvas_image_tokens(cfg: TrainConfig, references: int = 1) -> int:
    """Image tokens of the first bucket's canvas with ``references`` reference frames (k + 1 frames in a row)."""
    fh, fw = cfg.dataset.frame_buckets[0]
    return (fh // 16) * ((references + 1) * fw // 16)


def references_table(e: Estimate, cfg: TrainConfig) -> list[str]:
    """Per k: canvas, image tokens, activations and memory (DDP) per GPU, FLOPs per sample (vs k = 1)."""
    from dataclasses import replace

    fh, fw = cfg.dataset.frame_buckets[0]
    rows = ["| references k | canvas | image tokens | activations / sample | per GPU, DDP | TFLOP / sample | vs k = 1 |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    assert e.flops_by_k is not None
    for k, flops in e.flops_by_k.items():
        one = estimate(replace(cfg, training=replace(cfg.training, references={str(k): 1.0})), e.world_size, e.mfu, e.peak_flops)
        rows.append(f"| {k} | {fh}x{(k + 1) * fw} | {canvas_image_tokens(cfg, k)} | {one.activations_per_sample_gib:.2f} GiB | "
                    f"{one.total_ddp_gib:.1f} GiB | {flops / 1e12:.0f} | {flops / e.flops_by_k[1]:.2f}x |")  # fmt: skip
    return rows


def render_markdown(e: Estimate, cfg: TrainConfig, config_name: str) -> str:
    doc = (__doc__ or "").split("Assumptions (stated in every report):")[-1].strip()
    rows = [
        ("base FLUX parameters", f"{e.base_params / 1e9:.2f} B ({cfg.model.base_dtype})", f"{e.base_weights_gib:.1f} GiB"),
        ("LoRA parameters", f"{e.lora_params / 1e6:.0f} M (rank {cfg.network.rank}, {len(cfg.network.target_modules)} targets)", ""),
        ("trainable weights (fp32)", f"{(e.lora_params + e.c_embedder_params) / 1e6:.0f} M incl. c_embedder", f"{e.trainable_gib:.1f} GiB"),
        ("gradients (fp32)", "", f"{e.gradients_gib:.1f} GiB"),
        ("optimizer state", cfg.optimizer.name, f"{e.optimizer_gib:.1f} GiB"),
        ("EMA", f"decay {cfg.training.ema_decay}", f"{e.ema_gib:.1f} GiB"),
        ("activations / sample", f"{e.image_tokens}+{e.text_tokens} tokens, checkpointing {'on' if e.checkpointing else 'off'}",
         f"{e.activations_per_sample_gib:.2f} GiB"),
        ("activations / micro-batch", f"batch {e.micro_batch}", f"{e.activations_gib:.1f} GiB"),
        ("**per GPU, DDP**", f"{e.world_size} GPU(s)", f"**{e.total_ddp_gib:.1f} GiB**"),
        ("**per GPU, FSDP (full shard)**", f"{e.world_size} GPU(s)", f"**{e.total_fsdp_gib:.1f} GiB**"),
    ]  # fmt: skip
    other = estimate_variant(cfg, e.world_size, not e.checkpointing)
    lines = [
        f"# Estimate for `{config_name}`",
        "",
        f"Generated by `python -m training estimate --config {config_name}` from the transformer shapes "
        f"({e.source}): hidden {e.hidden}, {e.double_blocks} double + {e.single_blocks} single blocks, "
        f"T5 {e.text_tokens} tokens, canvas {cfg.dataset.frame_buckets[0][0]}x{(e.references + 1) * cfg.dataset.frame_buckets[0][1]} "
        f"({e.image_tokens} image tokens). Activations in {'bf16' if e.act_bytes == 2 else 'fp32'}.",
        "",
        "| item | detail | memory |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"With gradient checkpointing {'off' if e.checkpointing else 'on'} instead: activations "
        f"{other.activations_per_sample_gib:.2f} GiB / sample, per GPU {other.total_ddp_gib:.1f} GiB (DDP), "
        f"{other.flops_per_sample / 1e12:.0f} TFLOP / sample.",
        "",
        f"**Time**: {e.flops_per_sample / 1e12:.0f} TFLOP per sample; effective batch {e.effective_batch} "
        f"({e.micro_batch} x {e.grad_accumulation} accumulation x {e.world_size} GPUs) -> "
        f"**{e.seconds_per_step:.1f} s per optimizer step**, {e.hours_total:.0f} h for {cfg.training.steps} steps "
        f"(MFU {e.mfu:.2f} of {e.peak_flops / 1e12:.0f} TFLOP/s per GPU).",
        "",
        f"**Multi-reference DSD** (a row canvas of k + 1 frames; `training.references` = "
        f"{ {k: round(v, 3) for k, v in cfg.training.reference_mix.items()} }, memory above at k = {e.references}):",
        "",
        *references_table(e, cfg),
        "",
        "Assumptions:",
        "",
        doc,
        "",
    ]
    return "\n".join(lines)


def estimate_variant(cfg: TrainConfig, world_size: int, checkpointing: bool) -> Estimate:
    from dataclasses import replace

    return estimate(replace(cfg, training=replace(cfg.training, gradient_checkpointing=checkpointing)), world_size)
