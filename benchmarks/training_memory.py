"""Activation memory of one training step at small scale, measured vs `training estimate` for the same shapes.

Measured: the bytes autograd saves for backward during the forward pass (saved_tensors_hooks, each
storage counted once), for a FLUX-architecture transformer small enough for a CPU (hidden 256,
2 double + 2 single blocks, canvas 128x256 = 128 image tokens, 64 text tokens, fp32), with and
without gradient checkpointing; plus the trainable / gradient / AdamW-state bytes after one step.
Predicted: training.estimate for a config pointing at the same transformer folder.
Run: .venv/bin/python -m benchmarks.training_memory
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from dsd.tiny import TINY_TRANSFORMER_CONFIG, make_tiny_transformer
from training.config import TrainConfig, load_config
from training.estimate import estimate
from training.loop import make_optimizer
from training.model import build_model, trainable_parameters
from training.objective import Batch, flow_matching_loss

torch.set_num_threads(1)

SHAPES = {**TINY_TRANSFORMER_CONFIG, "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 64,
          "num_attention_heads": 4, "axes_dims_rope": [16, 24, 24], "joint_attention_dim": 32}  # fmt: skip
TEXT = 64
MB = 1024**2


def saved_bytes(fn, model: torch.nn.Module) -> int:
    """New memory autograd keeps for backward: saved storages, excluding the model's own weights and buffers."""
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    make_tiny_transformer(0, SHAPES).save_pretrained(tmp / "transformer")
    (tmp / "cfg.toml").write_text("")
    rows = []
    for ckpt in (False, True):
        cfg: TrainConfig = load_config(None, [
            f"model.transformer='{tmp / 'transformer'}'", "model.base_dtype='float32'", f"model.max_sequence_length={TEXT}",
            "dataset.frame_buckets=[[128, 128]]", "network.rank=16", "network.alpha=16.0", "training.batch_size=1",
            "training.mixed_precision='no'", f"training.gradient_checkpointing={'true' if ckpt else 'false'}",
            "training.caption_dropout=0.0", "training.reference_dropout=0.0",
        ])  # fmt: skip
        model = build_model(cfg.model, cfg.network, gradient_checkpointing=ckpt).train()
        g = torch.Generator().manual_seed(0)
        batch = Batch(cond=torch.randn(1, 16, 16, 32, generator=g), target=torch.randn(1, 16, 16, 32, generator=g),
                      prompt_embeds=torch.randn(1, TEXT, 32, generator=g), pooled=torch.randn(1, 32, generator=g), keys=["x"])  # fmt: skip
        empty = (torch.zeros(1, TEXT, 32), torch.zeros(1, 32))
        measured, (loss, _) = saved_bytes(lambda m=model, b=batch, c=cfg, gen=g, e=empty: flow_matching_loss(m, b, c.training, gen, e), model)
        loss.backward()
        named = trainable_parameters(model)
        opt = make_optimizer(cfg.optimizer, list(named.values()))
        opt.step()
        opt_bytes = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.ndim > 0)
        train_bytes = sum(p.nbytes for p in named.values())
        e = estimate(cfg, world_size=1)
        rows.append((ckpt, measured, e.activations_per_sample_gib * 1024**3, train_bytes, e.trainable_gib * 1024**3,
                     opt_bytes, e.optimizer_gib * 1024**3, e.lora_params, sum(p.numel() for n, p in named.items() if "lora" in n),
                     e.base_params, sum(p.numel() for n, p in model.named_parameters() if "lora" not in n and "c_embedder" not in n)))  # fmt: skip
    print(f"shapes: hidden {SHAPES['num_attention_heads'] * SHAPES['attention_head_dim']}, {SHAPES['num_layers']} double + "
          f"{SHAPES['num_single_layers']} single blocks, 128 image + {TEXT} text tokens, fp32, LoRA rank 16")
    print(f"{'checkpointing':>13} | {'activations measured':>20} | {'estimated':>9} | ratio est/meas")
    for ckpt, meas, est, *_ in rows:
        print(f"{str(ckpt):>13} | {meas / MB:>17.2f} MB | {est / MB:>6.2f} MB | {est / meas:.2f}")
    _, _, _, tb, te, ob, oe, le, lm, be, bm = rows[0]
    print(f"trainable weights: measured {tb / MB:.3f} MB, estimated {te / MB:.3f} MB")
    print(f"AdamW state:       measured {ob / MB:.3f} MB, estimated {oe / MB:.3f} MB")
    print(f"LoRA params:       measured {lm:,}, estimated {le:,};  base params: measured {bm:,}, estimated {be:,}")
    print("note: with checkpointing the forward keeps only block inputs; the estimate adds one block being")
    print("recomputed plus a two-block transient, which a forward-only measurement does not see.")


if __name__ == "__main__":
    main()
