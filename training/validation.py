"""Validation during training: fixed references + prompts sampled with the dsd sampler every K steps, scored.

Every ``sampling.every`` steps each fixed item is sampled; with ``[validation]`` model folders the
samples are scored like ``python -m dsd eval`` scores outputs (:mod:`dsd.eval.embeddings`: CLIP-I and
DINO against the item's reference, CLIP-T against its prompt; :mod:`dsd.eval.judge` when a VLM is
configured) and the means go to TensorBoard as ``val/<metric>`` and to
``<output_dir>/validation/step-<N>.json``. With ``validation.best_metric`` the loop exports
``best.safetensors`` whenever that mean improves; ``best.json`` records which step it is and is read
back on resume, so a resumed run only replaces the best with a better one.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dsd.io import atomic_write_json

from .cache import Encoders
from .config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)

BEST_ADAPTER = "best.safetensors"
BEST_RECORD = "best.json"


@dataclass
class ValidationItem:
    name: str
    cond: torch.Tensor  # canvas latent [16, h, w]: reference in frame one, black frame two
    text: Any  # dsd.sampler.TextConditioning
    prompt: str | None = None  # the text, when known (sampling.references + prompts): CLIP-T and the judge
    references: int = 1  # k reference frames (a dataset tuple): the canvas has k + 1 frames


class Validator:
    """Fixed references + prompts sampled with the dsd sampler every ``sampling.every`` steps."""

    def __init__(self, cfg: TrainConfig, source: Any, encoders: Encoders | None) -> None:
        self.cfg = cfg
        self.encoders = encoders
        self.items = self._items_from_references(cfg, encoders) if cfg.sampling.references else [
            self._item_from_dataset(source, i) for i in range(min(cfg.sampling.from_dataset, len(source)))
        ]  # fmt: skip
        self.scorer: SampleScorer | None = None
        if cfg.validation.enabled:
            if encoders is None:
                raise ConfigError("validation metrics need model.flux (the VAE decodes the samples they score)")
            self.scorer = SampleScorer(cfg)
        self.best = BestTracker(Path(cfg.saving.output_dir), cfg.validation.best_metric)

    @staticmethod
    def _items_from_references(cfg: TrainConfig, encoders: Encoders | None) -> list[ValidationItem]:
        from dsd.canvas import CanvasLayout, compose_canvas
        from dsd.images import read_image
        from dsd.sampler import TextConditioning

        if encoders is None:
            raise ConfigError("sampling.references need model.flux (VAE + text encoders)")
        fh, fw = cfg.dataset.frame_buckets[0]
        layout = CanvasLayout(height=fh, width=2 * fw, fit=cfg.dataset.fit)
        prompts = list(cfg.sampling.prompts) or [""]
        items = []
        for i, ref in enumerate(cfg.sampling.references):
            cond = encoders.encode_canvas(compose_canvas(read_image(ref), layout))[0]
            prompt = prompts[i % len(prompts)]
            emb, pooled = encoders.encode_prompt([prompt])
            items.append(ValidationItem(Path(ref).stem, cond, TextConditioning(emb, pooled), prompt or None))
        return items

    @staticmethod
    def _item_from_dataset(source: Any, i: int) -> ValidationItem:
        from dsd.sampler import TextConditioning

        x = source.get(i)
        return ValidationItem(source.keys[i], x["cond"], TextConditioning(x["prompt_embeds"][None], x["pooled"][None]),
                              references=int(x.get("references", 1)))  # fmt: skip

    @torch.no_grad()
    def run(self, model: Any, step: int, writer: Any, out_dir: Path, write: bool = True) -> list[Path]:
        """Sample (and score) every item; ``write=False`` (FSDP ranks > 0) only joins the sharded forward passes."""
        from dsd.canvas import split_frames, tensor_to_pil
        from dsd.tokens import unpack

        was_training = model.training
        model.eval()
        written, scored = [], []
        for item in self.items:
            tokens = self._sample(model, item)
            if self.encoders is None or not write:
                continue
            h, w = item.cond.shape[-2:]
            image = self._decode(unpack(tokens, h, w))
            if writer is not None:
                writer.add_image(f"samples/{item.name}", image, step)
            path = out_dir / "samples" / f"step-{step:06d}-{item.name.replace('/', '_')}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            tensor_to_pil(image).save(path)
            written.append(path)
            if self.scorer is not None:  # the sample's last frame against frame one of the condition canvas
                reference = split_frames(self._decode(item.cond[None]), item.references + 1)[0]
                scored.append((item, tensor_to_pil(reference), tensor_to_pil(split_frames(image, item.references + 1)[-1])))
        model.train(was_training)
        if scored and self.scorer is not None:
            self._record(self.scorer.score(scored), step, writer, out_dir)
        return written

    def _sample(self, model: Any, item: ValidationItem) -> torch.Tensor:
        from dsd.sampler import GuidanceConfig, make_noise, sample_tokens
        from dsd.tokens import image_ids, pack, text_ids

        h, w = item.cond.shape[-2:]
        s = self.cfg.sampling
        return sample_tokens(
            model, pack(make_noise(1, h, w, s.seed)), pack(item.cond[None].float()), item.text, image_ids(h, w),
            text_ids(item.text.prompt_embeds.shape[1]), steps=s.steps, guidance=GuidanceConfig(guidance=s.guidance),
        )  # fmt: skip

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        assert self.encoders is not None
        return ((self.encoders.decode_latent(latent) + 1) / 2).clamp(0, 1)[0].cpu()

    def _record(self, per_item: list[dict[str, Any]], step: int, writer: Any, out_dir: Path) -> None:
        means = mean_metrics(per_item)
        if writer is not None:
            for key, value in means.items():
                writer.add_scalar(f"val/{key}", value, step)
        atomic_write_json(out_dir / "validation" / f"step-{step:06d}.json", {"step": step, "mean": means, "items": per_item})
        logger.info("validation at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items())))
        self.best.offer(means, step)

    def improved(self, collective: bool = False) -> bool:
        """Whether the last run set a new best; ``collective`` (FSDP: every rank has a Validator and the export
        gathers shards) sends rank 0's answer to all ranks."""
        flag = self.best.pending
        self.best.pending = False
        if collective:
            from accelerate.utils import broadcast_object_list

            flag = broadcast_object_list([flag], from_process=0)[0]
        return bool(flag)

    def commit_best(self) -> None:
        """Record the best after its adapter is on disk (main process)."""
        self.best.save()


def mean_metrics(per_item: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric metric over the items that have it (None: the judge gave no valid run)."""
    sums: dict[str, list[float]] = {}
    for row in per_item:
        for key, value in row.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
                sums.setdefault(key, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in sums.items() if v}


class SampleScorer:
    """CLIP / DINO models and the judge, loaded once; scores (item, reference, sample) triples."""

    def __init__(self, cfg: TrainConfig) -> None:
        from dsd.eval.embeddings import EmbeddingModels

        v = cfg.validation
        self.models = None
        if v.clip or v.dino:
            self.models = EmbeddingModels.load(clip=v.clip or None, dino=v.dino or None, batch_size=v.embed_batch)
        self.judge = None
        self._provider = None
        if v.judge_provider:
            from dsd.eval.judge import Judge
            from dsd.providers import ProviderConfig, make_provider

            provider_cfg = ProviderConfig(kind=v.judge_provider, model=v.judge_model, base_url=v.judge_base_url or None,
                                          max_concurrency=v.judge_concurrency,
                                          cache_dir=str(Path(cfg.saving.output_dir) / "judge_cache"))  # fmt: skip
            self._provider = make_provider(provider_cfg)
            self.judge = Judge(self._provider, repeats=v.judge_repeats)

    def score(self, triples: list[tuple[ValidationItem, Any, Any]]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [{"name": item.name, "prompt": item.prompt} for item, _, _ in triples]
        if self.models is not None:
            for row, (item, ref, sample) in zip(rows, triples, strict=True):
                row.update(self.models.score(ref, [sample], [item.prompt] if item.prompt else [])[0])
        if self.judge is not None:
            for row, (item, ref, sample) in zip(rows, triples, strict=True):
                if item.prompt:  # prompt following needs the prompt's text
                    row.update(self._judge(ref, sample, item.prompt))
        return rows

    def _judge(self, ref: Any, sample: Any, prompt: str) -> dict[str, Any]:
        from dsd.eval.judge import JudgeUnavailable

        assert self.judge is not None
        try:
            result = self.judge.score_sync(ref, sample, prompt)
        except JudgeUnavailable as exc:  # a slow or down server must not stop training
            logger.warning("validation judge unavailable, item not judged: %s", exc)
            return {"judge_error": str(exc).splitlines()[0]}
        out: dict[str, Any] = {"judge_cp": result.cp, "judge_pf": result.pf, "judge_cp_x_pf": result.cp_x_pf}
        if result.failures:
            out["judge_failures"] = result.failures
        return out


class BestTracker:
    """The best mean of ``metric`` so far; ``best.json`` beside the adapter survives restarts."""

    def __init__(self, out_dir: Path, metric: str) -> None:
        self.path = out_dir / BEST_RECORD
        self.metric = metric
        self.value = -math.inf
        self.step = -1
        self.pending = False
        if metric and self.path.is_file():
            record = json.loads(self.path.read_text(encoding="utf-8"))
            if record.get("metric") == metric:
                self.value, self.step = float(record["value"]), int(record["step"])

    def offer(self, means: dict[str, float], step: int) -> None:
        value = means.get(self.metric) if self.metric else None
        if value is None or not math.isfinite(value):
            if self.metric:
                logger.warning("validation: no %s at step %d, best.safetensors unchanged", self.metric, step)
            return
        if value > self.value:
            self.value, self.step, self.pending = value, step, True

    def save(self) -> None:
        atomic_write_json(self.path, {"metric": self.metric, "value": self.value, "step": self.step,
                                      "adapter": BEST_ADAPTER})  # fmt: skip
