"""DSDIdentityScore: rank a batch of candidates by how close they stay to the reference (best-of-N in the graph).

The embedding is whatever CLIP_VISION the user already loads with ComfyUI's stock CLIPVisionLoader
(CLIP, SigLIP or DINOv2 files, e.g. the one Redux uses); the score is the cosine similarity of
candidate and reference embeddings, the CLIP-I of the DSD paper when the model is CLIP.
"""

from __future__ import annotations

import logging
import math

import torch
from comfy_api.latest import io

from ..dsd.eval.embeddings import cosine_scores
from .errors import DSDInputError, DSDNodeError, require_finite

logger = logging.getLogger(__name__)

EMBEDDINGS = ["image_embeds", "penultimate_mean"]
# Candidates are encoded in chunks so a large N does not hold every activation of the vision tower at once.
ENCODE_CHUNK = 8


def _embed(clip_vision, images: torch.Tensor, embedding: str, crop: bool) -> torch.Tensor:
    parts = []
    for start in range(0, images.shape[0], ENCODE_CHUNK):
        out = clip_vision.encode_image(images[start : start + ENCODE_CHUNK], crop=crop)
        if embedding == "image_embeds":
            embeds = out["image_embeds"].float()
            # ComfyUI's SigLIP gives one embedding per token (no pooled token): their mean stands for the image.
            parts.append(embeds.mean(dim=1) if embeds.ndim == 3 else embeds)
        else:  # mean over tokens: also defined for models without a CLS token (SigLIP)
            parts.append(out["penultimate_hidden_states"].float().mean(dim=1))
    return torch.cat(parts)


def rank(reference_embeds: torch.Tensor, candidate_embeds: torch.Tensor) -> tuple[list[float], list[int]]:
    """Scores (mean cosine over the reference images) in candidate order and the order best-first."""
    per_ref = torch.stack([cosine_scores(r, candidate_embeds) for r in reference_embeds])
    scores = per_ref.mean(dim=0).tolist()
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:  # a NaN would sort anywhere and be reported as a ranking
        raise DSDInputError(
            f"DSD Identity Score: the vision encoder gave non-finite embeddings, so candidate(s) {bad[:8]} have no "
            "score (NaN/inf). The CLIP_VISION file is damaged or overflows in its dtype; load another encoder."
        )
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return scores, order


def summary(scores: list[float], order: list[int], embedding: str) -> str:
    lines = [f"{len(scores)} candidates, cosine similarity to the reference ({embedding}), best first:"]
    for place, i in enumerate(order, 1):
        lines.append(f"{place}. candidate {i}: {scores[i]:.4f}")
    if len(scores) > 1:
        lines.append(f"spread best - worst: {scores[order[0]] - scores[order[-1]]:.4f}")
    return "\n".join(lines)


class DSDIdentityScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DSDIdentityScore",
            display_name="DSD Identity Score",
            category="DSD/eval",
            description="Scores each candidate by the cosine similarity of its image embedding to the reference's "
            "(CLIP-I with a CLIP model) and picks the best: generate N seeds in one batch, keep the one that "
            "preserves the subject best.",
            inputs=[
                io.ClipVision.Input(
                    "clip_vision",
                    tooltip="Any vision encoder from the stock Load CLIP Vision node "
                    "(CLIP ViT-L/H/G, SigLIP, DINOv2; e.g. the one Redux uses).",
                ),
                io.Image.Input(
                    "reference",
                    tooltip="The reference image. With several, a candidate's score is its "
                    "mean similarity to all of them.",
                ),
                io.Image.Input(
                    "candidates",
                    tooltip="The batch of generated images to rank (e.g. the result "
                    "output of DSD Split Canvas for N seeds).",
                ),
                io.Combo.Input(
                    "embedding",
                    options=EMBEDDINGS,
                    default="image_embeds",
                    tooltip="image_embeds: the model's projected pooled embedding (CLIP-I as in the "
                    "paper). penultimate_mean: the mean of the penultimate layer's tokens, more "
                    "sensitive to layout and fine detail.",
                ),
                io.Boolean.Input(
                    "center_crop",
                    default=True,
                    tooltip="Center-crop to the encoder's square input "
                    "(as Load CLIP Vision's encode does); off squashes the whole image instead.",
                ),
            ],  # fmt: skip
            outputs=[
                io.Float.Output(
                    display_name="scores",
                    is_output_list=True,
                    tooltip="One score per candidate, in the candidates' order.",
                ),
                io.String.Output(display_name="summary", tooltip="The ranking as text, best first."),
                io.Image.Output(display_name="best", tooltip="The candidate with the highest score."),
                io.Image.Output(display_name="sorted", tooltip="All candidates, best first."),
                io.Int.Output(display_name="best_index", tooltip="Index of the best candidate in the batch."),
            ],  # fmt: skip
        )

    @classmethod
    def execute(
        cls, clip_vision, reference, candidates, embedding="image_embeds", center_crop=True
    ) -> io.NodeOutput:
        if embedding not in EMBEDDINGS:
            raise DSDNodeError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {embedding!r}")
        if candidates.shape[0] == 0 or reference.shape[0] == 0:
            raise DSDNodeError("DSD Identity Score needs at least one reference and one candidate image")
        require_finite("DSD Identity Score", reference=reference, candidates=candidates)
        ref = _embed(clip_vision, reference, embedding, center_crop)
        cand = _embed(clip_vision, candidates, embedding, center_crop)
        scores, order = rank(ref, cand)
        text = summary(scores, order, embedding)
        logger.info("DSD Identity Score: %s", text.replace("\n", "; "))
        index = torch.tensor(order, device=candidates.device)
        best = candidates[order[0] : order[0] + 1]
        return io.NodeOutput(scores, text, best, candidates.index_select(0, index), order[0])
