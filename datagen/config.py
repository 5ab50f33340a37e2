"""The typed datagen configuration: one frozen dataclass per stage, composed into DatagenConfig.

Loaded from TOML (unknown keys rejected, wrong types named with the file), then ``--set
section.key=value`` overrides from the CLI. Relative caption sources resolve against the config
file's folder so a config and its data can travel together (see ``datagen/configs/toy.toml``).
API keys never appear here: a provider section names the environment variable that holds one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dsd.config import ConfigError, apply_overrides, from_dict, load_toml
from dsd.providers import ProviderConfig

from .panels import PanelsConfig
from .teacher.config import TeacherConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TOY_CONFIG = CONFIG_DIR / "toy.toml"

# "RxC" = rows x columns; 1x2 is two panels side by side.
LAYOUTS: dict[str, tuple[int, int]] = {"2x2": (2, 2), "1x2": (1, 2), "2x1": (2, 1), "1x3": (1, 3), "3x3": (3, 3)}
SUBJECT_KINDS = ("object", "character", "scene", "style")


class DatagenInputError(ValueError):
    """An input file is unusable (missing, corrupt, wrong column); the message names the file and the fix."""


def parse_layout(layout: str) -> tuple[int, int]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown grid layout {layout!r}; supported layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[layout]


@dataclass(frozen=True, slots=True)
class CaptionsConfig:
    """Stage 1: real captions (LAION-style) as content references."""

    sources: tuple[str, ...] = ()  # files, folders or globs: .parquet, .csv, .tsv, .jsonl, .txt
    column: str | None = None  # None: the first of TEXT, caption, text, prompt that exists
    sampling: Literal["hash", "reservoir"] = "hash"
    sample_rate: float = 1.0  # "hash": keep a caption when hash(seed, text) falls below this fraction
    max_captions: int = 0  # 0 = no cap; with "reservoir" the exact sample size (required)
    seed: int = 0
    min_chars: int = 10
    max_chars: int = 400
    min_words: int = 3
    max_words: int = 80
    language: Literal["en", "any"] = "en"
    dedup: bool = True
    llm_filter: bool = False  # ask the `llm` provider whether a caption has a clear subject to preserve
    llm_filter_batch: int = 16  # captions per request
    parquet_batch_rows: int = 8192

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"captions.sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.sampling == "reservoir" and self.max_captions <= 0:
            raise ValueError("captions.sampling = 'reservoir' needs captions.max_captions > 0 (the sample size)")
        if self.llm_filter_batch < 1:
            raise ValueError("captions.llm_filter_batch must be >= 1")


@dataclass(frozen=True, slots=True)
class PromptsConfig:
    """Stage 2: caption -> grid prompt (LLM structured output, or fixed templates offline)."""

    mode: Literal["template", "llm"] = "template"
    layouts: tuple[str, ...] = ("2x2",)
    seed: int = 0
    max_prompts: int = 0  # 0 = one prompt per caption
    dedup: bool = True
    dedup_threshold: float = 0.7  # estimated Jaccard of word 3-shingles above which a prompt is a near duplicate
    dedup_capacity: int = 200_000  # prompts the constant-size LSH Bloom filters are sized for
    diversity_sample: int = 500  # prompts kept (reservoir) to measure the batch's diversity
    llm_chunk: int = 64  # requests handed to the provider at once (bounds memory, keeps order)

    def __post_init__(self) -> None:
        if not self.layouts:
            raise ValueError("prompts.layouts is empty; use e.g. [\"2x2\"]")
        for layout in self.layouts:
            if layout not in LAYOUTS:
                raise ValueError(f"prompts.layouts: unknown layout {layout!r}; supported: {', '.join(LAYOUTS)}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError(f"prompts.dedup_threshold must be in (0, 1], got {self.dedup_threshold}")


@dataclass(frozen=True, slots=True)
class CurateConfig:
    """Stage 5: VLM verdict (chain of thought) + training caption per pair."""

    min_confidence: float = 0.7
    max_pairs: int = 0  # 0 = all pairs
    chunk: int = 256  # pairs handed to the provider at once (bounds memory; results logged in order)
    # Panels are downscaled before upload, never upscaled: APIs downscale anyway, and 512 px is one
    # image tile (fewer input tokens, lower cost). JPEG q90 is ~8x smaller and ~10x cheaper to encode
    # than PNG, which is what keeps 32 requests in flight fed on a small machine.
    max_image_side: int = 512
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 90
    # OpenAI Batch API (vlm.use_batch_api = true): requests per submitted batch, and how long one run
    # waits for a batch before leaving it running server-side (its id is logged; a rerun collects it).
    batch_size: int = 2000
    batch_wait_s: float = 0.0
    batch_poll_s: float = 30.0
    # A refusal is asked again this many times, each with a rephrased request, before it is final.
    refusal_retries: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"curate.min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"curate.jpeg_quality must be in [1, 95], got {self.jpeg_quality}")
        if self.max_image_side < 64:
            raise ValueError(f"curate.max_image_side must be >= 64, got {self.max_image_side}")
        if not 0 <= self.refusal_retries <= 5:
            raise ValueError(f"curate.refusal_retries must be in [0, 5], got {self.refusal_retries}")


@dataclass(frozen=True, slots=True)
class DatasetConfig:
    """Stage 6: webdataset shards + parquet index."""

    shard_size: int = 1000
    include_rejected: bool = False  # never for training; useful to inspect the VLM's decisions

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ValueError("dataset.shard_size must be >= 1")


@dataclass(frozen=True, slots=True)
class DatagenConfig:
    toy: bool = False  # a tiny offline demo: makes a tiny FLUX teacher in the workdir
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    panels: PanelsConfig = field(default_factory=PanelsConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    llm: ProviderConfig | None = None  # caption filter + prompt generation (the paper: GPT-4o)
    vlm: ProviderConfig | None = None  # curation + captioning (the paper: Gemini 1.5)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DatagenConfig:
    """DatagenConfig from ``path`` (or defaults) with ``section.key=value`` overrides applied."""
    cfg = load_toml(DatagenConfig, path) if path is not None else DatagenConfig()
    if overrides:
        cfg = _apply_overrides(cfg, list(overrides))
    if path is not None:
        base = Path(path).resolve().parent
        sources = tuple(s if Path(s).is_absolute() else str(base / s) for s in cfg.captions.sources)
        cfg = dataclasses.replace(cfg, captions=dataclasses.replace(cfg.captions, sources=sources))
    return cfg


def _apply_overrides(cfg: DatagenConfig, overrides: list[str]) -> DatagenConfig:
    # A provider section that is absent in the file may be created from the command line
    # (`--set vlm.kind=openai --set vlm.model=...`): collect those keys first.
    new_sections: dict[str, dict[str, object]] = {}
    rest: list[str] = []
    for item in overrides:
        head = item.split("=", 1)[0].strip()
        section = head.split(".", 1)[0]
        if section in ("llm", "vlm") and getattr(cfg, section) is None and "." in head and "=" in item:
            from dsd.config import parse_override_value

            new_sections.setdefault(section, {})[head.split(".", 1)[1]] = parse_override_value(
                item.split("=", 1)[1].strip()
            )
        else:
            rest.append(item)
    for section, values in new_sections.items():
        cfg = dataclasses.replace(cfg, **{section: from_dict(ProviderConfig, values, where=f"--set {section}")})
    return apply_overrides(cfg, rest) if rest else cfg


__all__ = [
    "LAYOUTS",
    "SUBJECT_KINDS",
    "TOY_CONFIG",
    "CaptionsConfig",
    "ConfigError",
    "CurateConfig",
    "DatagenConfig",
    "DatagenInputError",
    "DatasetConfig",
    "PromptsConfig",
    "load_config",
    "parse_layout",
]
