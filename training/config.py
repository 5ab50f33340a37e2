"""The typed training configuration: kohya-style TOML sections, unknown keys rejected.

Sections: ``[model] [dataset] [network] [training] [optimizer] [saving] [sampling] [validation] [logging]``.
Build with :func:`load_config` (TOML + ``--set section.key=value`` overrides); every value is
checked by ``dsd.config.from_dict`` so a typo or a wrong type fails before any model loads.
Paths follow the one rule of ``dsd.config.load_config_file``: relative to the config file's folder
when written in it, to the current directory when given with ``--set``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dsd.config import ConfigError, from_dict, load_config_file, path_field, resolve_paths, to_dict

# Every linear of FLUX's attention and MLP inside the transformer blocks (diffusers names).
DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp", "proj_out",
)  # fmt: skip


MAX_TRAIN_REFERENCES = 3  # k of multi-reference DSD training (the canvas is a row of k + 1 frames)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    # A diffusers FLUX.1-dev folder (model_index.json, vae/, text encoders, transformer/); needed for
    # caching, on-the-fly encoding and validation sampling.
    flux: str = path_field("")
    # Optional transformer override: a transformer folder (config.json + safetensors) of plain FLUX.
    transformer: str = path_field("")
    # The authors' release (root or its transformer/ folder) to continue training it.
    release: str = path_field("")
    base_dtype: Literal["float32", "bfloat16", "float8"] = "bfloat16"  # float8: torchao weight-only (pip install torchao)
    max_sequence_length: int = 512  # T5 tokens


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    # Datagen output folders (shard-*.tar [+ index.parquet]) and/or the authors' parquet files/folders.
    paths: list[str] = path_field([])
    # Frame sizes (height, width) of ONE frame; the canvas is [height, (k + 1) * width] for k references.
    frame_buckets: list[list[int]] = field(default_factory=lambda: [[512, 512]])
    fit: Literal["crop", "pad", "stretch"] = "crop"
    cache_dir: str = path_field("")  # empty: encode on the fly every step (slow; for debugging and benchmarks)
    cache_shard_size: int = 256  # samples per cache shard
    cache_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    on_bad_image: Literal["error", "skip"] = "error"
    num_workers: int = 0

    def __post_init__(self) -> None:
        for b in self.frame_buckets:
            if len(b) != 2 or min(b) <= 0 or b[0] % 16 or b[1] % 8:
                raise ConfigError(
                    f"dataset.frame_buckets: {b} must be [height, width] with height a multiple of 16 and width a "
                    "multiple of 8 (the canvas [h, 2w] must be a multiple of 16)"
                )
        if self.cache_shard_size < 1:
            raise ConfigError("dataset.cache_shard_size must be >= 1")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    rank: int = 512
    alpha: float = 512.0  # LoRA scale = alpha / rank
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    train_c_embedder: bool = True
    init_from_release: bool = True  # with model.release: start the LoRA from the released one (same rank)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"network.rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ConfigError("network.target_modules is empty; list the linear layers to adapt (e.g. 'attn.to_q')")


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    steps: int = 100_000  # optimizer steps
    batch_size: int = 1  # per device, per micro-step
    effective_batch_size: int = 0  # 0: batch_size x world size; else must be a multiple of it
    seed: int = 0
    mixed_precision: Literal["no", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    gpus: int = 1  # GPUs this config is written for (estimate, effective batch); accelerate launch decides the real count
    device: str = "auto"  # auto | cpu | cuda (single process; accelerate launch picks devices itself)
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    resolution_shift: bool = False  # shift t like FLUX's sampling schedule for the canvas token count
    # Per-sample loss weight over t (diffusers' compute_loss_weighting_for_sd3); "none" is plain MSE.
    loss_weighting: Literal["none", "sigma_sqrt", "cosmap"] = "none"
    # FLUX.1-dev's distilled-guidance input during training. 1.0 is what common FLUX.1-dev LoRA trainers
    # use; set 3.5 to train at the guidance the DSD sampler uses. Ignored for models without it.
    guidance: float = 1.0
    caption_dropout: float = 0.1  # p(empty-prompt embedding): enables text CFG
    reference_dropout: float = 0.0  # p(condition tokens zeroed): enables image CFG (e_00 branch)
    # Multi-reference DSD: share of training examples per reference count k (TOML: {1 = 0.5, 2 = 0.25, 3 = 0.25}).
    # A tuple of K references trains at one k <= K per epoch, drawn by these shares among the k it can give;
    # pairs are k = 1. The default trains one reference only, as DSD.
    references: dict[str, float] = field(default_factory=lambda: {"1": 1.0})
    reference_frame_dropout: float = 0.0  # p(one reference frame's condition tokens zeroed), per frame, k > 1 only
    ema_decay: float = 0.0  # 0 = no EMA

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("training.steps and training.batch_size must be >= 1")
        for name in ("caption_dropout", "reference_dropout", "reference_frame_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"training.{name} must be in [0, 1]")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("training.ema_decay must be in [0, 1)")
        _ = self.reference_mix  # checked here, before any model loads

    @property
    def reference_mix(self) -> dict[int, float]:
        """``references`` as {k: share} with k ascending and shares summing to 1 (k with share 0 left out)."""
        mix: dict[int, float] = {}
        for key, share in self.references.items():
            k = int(key) if str(key).isdigit() else 0
            if not 1 <= k <= MAX_TRAIN_REFERENCES or isinstance(share, bool) or not isinstance(share, int | float) \
                    or not math.isfinite(share) or share < 0:  # fmt: skip
                raise ConfigError(f"training.references: {key!r} = {share!r}; keys are reference counts 1..{MAX_TRAIN_REFERENCES}, "
                                  "values shares >= 0, e.g. {1 = 0.5, 2 = 0.25, 3 = 0.25}")  # fmt: skip
            if share > 0:
                mix[k] = float(share)
        if not mix:
            raise ConfigError("training.references has no k with a share > 0; the default is {1 = 1.0}")
        total = sum(mix.values())
        return {k: mix[k] / total for k in sorted(mix)}


@dataclass(frozen=True, slots=True)
class OptimizerConfig:
    name: Literal["adamw", "adamw8bit"] = "adamw"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0  # 0 = no clipping
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: int = 0


@dataclass(frozen=True, slots=True)
class SavingConfig:
    output_dir: str = path_field("output/dsd_training")
    save_every: int = 1000
    keep_last: int = 3
    adapter_name: str = "dsd_adapter.safetensors"
    export_diffusers: bool = False  # also write the authors' release layout at the end


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    every: int = 0  # 0 = no validation sampling
    references: list[str] = path_field([])  # image files; empty: the first dataset pairs
    prompts: list[str] = field(default_factory=list)
    from_dataset: int = 2
    steps: int = 28
    guidance: float = 3.5
    seed: int = 0


# Which validation figure picks best.safetensors, and what each one needs.
_METRIC_NEEDS = {"clip_i": "clip", "clip_t": "clip", "dino": "dino", "judge_cp": "judge_provider",
                 "judge_pf": "judge_provider", "judge_cp_x_pf": "judge_provider"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ValidationConfig:
    """Quality figures of the validation samples (every ``sampling.every`` steps, on sampling's fixed set).

    The fixed held-out set is ``sampling.references`` + ``sampling.prompts`` (images kept out of the
    dataset); without references the first ``sampling.from_dataset`` pairs are used (seen in training, no
    prompt text, so no CLIP-T or judge). Model folders are local transformers checkpoints, never downloaded.
    """

    clip: str = path_field("")  # CLIP folder -> val/clip_i (reference vs sample) and val/clip_t (prompt vs sample)
    dino: str = path_field("")  # DINOv2 folder -> val/dino
    best_metric: Literal["", "clip_i", "clip_t", "dino", "judge_cp", "judge_pf", "judge_cp_x_pf"] = ""
    embed_batch: int = 16
    # The VLM judge (dsd.eval.judge): "openai" (any OpenAI-compatible server) or "gemini"; keys come from
    # the environment (OPENAI_API_KEY / GEMINI_API_KEY), never from this file.
    judge_provider: Literal["", "openai", "gemini"] = ""
    judge_model: str = ""
    judge_base_url: str = ""
    judge_repeats: int = 1
    judge_concurrency: int = 8

    def __post_init__(self) -> None:
        if self.best_metric and not getattr(self, _METRIC_NEEDS[self.best_metric]):
            raise ConfigError(f"validation.best_metric = {self.best_metric!r} needs validation."
                              f"{_METRIC_NEEDS[self.best_metric]} to be set")  # fmt: skip
        if self.judge_provider and not self.judge_model:
            raise ConfigError("validation.judge_provider is set but validation.judge_model is empty: name the "
                              "VLM (e.g. 'gpt-4o' or 'gemini-2.5-flash')")  # fmt: skip
        if self.judge_repeats < 1 or self.judge_concurrency < 1 or self.embed_batch < 1:
            raise ConfigError("validation.judge_repeats, judge_concurrency and embed_batch must be >= 1")

    @property
    def enabled(self) -> bool:
        return bool(self.clip or self.dino or self.judge_provider)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    tensorboard: bool = True
    log_every: int = 10
    log_dir: str = path_field("")  # empty: <output_dir>/logs


@dataclass(frozen=True, slots=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    saving: SavingConfig = field(default_factory=SavingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        odd = [b for b in self.dataset.frame_buckets if b[1] % 16]
        if max(self.training.reference_mix) > 1 and odd:
            raise ConfigError(f"dataset.frame_buckets {odd}: with several references (training.references) every frame "
                              "width must be a multiple of 16, so that each frame is whole tokens")  # fmt: skip

    def grad_accumulation(self, world_size: int) -> int:
        per_step = self.training.batch_size * world_size
        eff = self.training.effective_batch_size or per_step
        if eff % per_step:
            raise ConfigError(
                f"training.effective_batch_size={eff} is not a multiple of batch_size x GPUs = "
                f"{self.training.batch_size} x {world_size}; change one of them"
            )
        return eff // per_step


_SECRET_HINTS = ("api_key", "token", "secret", "password")


def public_dict(cfg: TrainConfig) -> dict:
    """The config as plain data, with anything that looks like a secret removed (for metadata and logs)."""

    def scrub(node):
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items() if not any(h in k.lower() for h in _SECRET_HINTS)}
        return node

    return scrub(to_dict(cfg))


def config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(json.dumps(public_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """TOML file (or defaults) + ``section.key=value`` overrides, paths resolved by the one rule."""
    return load_config_file(TrainConfig, path, overrides)


__all__ = [
    "ConfigError", "TrainConfig", "ModelConfig", "DatasetConfig", "NetworkConfig", "TrainingConfig",
    "OptimizerConfig", "SavingConfig", "SamplingConfig", "ValidationConfig", "LoggingConfig", "DEFAULT_LORA_TARGETS",
    "load_config", "resolve_paths", "public_dict", "config_hash", "from_dict",
]  # fmt: skip
