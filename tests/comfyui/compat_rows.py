"""The compatibility matrix: one row per core ComfyUI node, the claim the README makes about it.

``tests/comfyui/test_compat_matrix.py`` proves every row (each test names its row with ``covers``) and checks
that the README table is ``render()`` of these rows, so the table cannot drift from what the tests hold.
After changing a row: ``python -m tests.comfyui.compat_rows`` rewrites the README table.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- compat-table:begin (python -m tests.comfyui.compat_rows) -->", "<!-- compat-table:end -->"
NEUTRAL_EQ = "neutral settings equal DSD alone, active settings change the result"


@dataclass(frozen=True)
class Row:
    node: str
    works: str  # "yes", "yes (with note)", "no: raises"
    checked: str
    notes: str = ""


ROWS: dict[str, Row] = {
    "EasyCache": Row("`EasyCache`", "yes, with true CFG from step 0", "s_i 1 and 2 (3 batched branches): threshold 0 equals "
                     "DSD alone; a high threshold skips steps and changes the result; the three branches stay distinct "
                     "on skipped steps; stock KSampler (cfg 1) likewise", "caches per branch; with `cfg_start_step` > 0 the first true-CFG step has no "
                     "cache for the new branches: DSD Guider refuses and says why"),
    "LazyCache": Row("`LazyCache`", "yes", "s_i 1 and 2: threshold 0 equals DSD alone; a high threshold skips steps and "
                     "changes the result; stock KSampler (cfg 1) likewise",
                     "caches the guider's combined prediction, so branches cannot mix"),
    "TorchCompileModel": Row("`TorchCompileModel`", "yes", "the compiled DSD model keeps DSD's patch and wrappers "
                             "(compile is one more APPLY_MODEL wrapper) and DSD Guider accepts it",
                             "a compiled run (inductor, CPU) is not in the tests: by hand it matched DSD alone "
                             "(max abs diff 1.9e-6) after 221 s of compiling on this 2-core machine"),
    "CFGZeroStar": Row("`CFGZeroStar`", "yes", "s_i 2 changes the result; s_i 1 (one pass) equals DSD alone; stock KSampler "
                       "(cfg 2) changes"),
    "CFGNorm": Row("`CFGNorm`", "yes", "strength 1: s_i 2 changes the result; s_i 1 (one pass) equals DSD alone",
                   "no neutral strength: 0 zeroes the prediction"),
    "APG": Row("`APG`", "yes", "eta 1 at s_i 2 equals DSD at s_i 3 (core's formula); other settings change the result; "
               "stock KSampler (cfg 2) changes", "pre-CFG patch: acts on the image guidance pair"),
    "TCFG": Row("`TCFG`", "yes", "s_i 2 changes the result; s_i 1 equals DSD alone; stock KSampler (cfg 2) changes", "pre-CFG patch: acts on the image guidance pair"),
    "Mahiro": Row("`Mahiro`", "yes", "s_i 2 changes the result; s_i 1 (one pass) equals DSD alone"),
    "FreSca": Row("`FreSca`", "yes", NEUTRAL_EQ + "; stock KSampler (cfg 2) changes", "pre-CFG patch: acts on the image guidance pair"),
    "SkipLayerGuidanceDiT": Row("`SkipLayerGuidanceDiT`", "yes", NEUTRAL_EQ, "its extra pass uses the image guidance's cond"),
    "SkipLayerGuidanceDiTSimple": Row("`SkipLayerGuidanceDiTSimple`", "yes", NEUTRAL_EQ,
                                      "skips layers in the zero-token branch; costs a second model call per step"),
    "PerpNegGuider": Row("`PerpNegGuider`", "yes (instead of DSD Guider)", "DSD model + DSD conditioning: cfg 1 / neg_scale 0 "
                         "equals DSD alone, active settings change the result",
                         "a guider of its own: DSD's two-scale CFG is not applied"),
    "RescaleCFG": Row("`RescaleCFG`", "yes", "multiplier 0 equals DSD alone, 0.7 changes the result; stock KSampler "
                      "(cfg 2) changes"),
    "LoraLoaderModelOnly": Row("`LoraLoaderModelOnly`", "yes", "a style LoRA before or after DSD Adapter Loader: strength 0 "
                               "equals DSD alone, strength 1 changes it", "order does not matter (both are weight patches)"),
    "ModelMergeSimple": Row("`ModelMergeSimple`", "yes (DSD as model1)", "DSD model1 + plain model2 at ratio 1 equals DSD "
                            "alone, 0.5 changes it; two DSD models (adapter strength 1 and 0.5) merge; plain model1 + DSD "
                            "model2: DSD Guider raises", "the embedder patch comes from model1 only; LoRA weights merge"),
    "CreateHookLora": Row("`CreateHookLora` + `ConditioningSetProperties`", "yes", "hook LoRA on the positive: strength 0 "
                          "equals DSD alone, strength 1 changes the result"),
    "ModelSamplingFlux": Row("`ModelSamplingFlux`", "yes", "another shift changes the result", "in every DSD graph"),
    "FluxGuidance": Row("`FluxGuidance`", "yes", "3.5 (the default) equals DSD alone, 5 changes the result"),
    "DifferentialDiffusion": Row("`DifferentialDiffusion`", "yes", "without a noise mask equals DSD alone; with a mask on "
                                 "frame two changes it"),
    "SetLatentNoiseMask": Row("`SetLatentNoiseMask` (img2img / inpaint frame two)", "yes", "denoise 0.6, mask on frame two: "
                              "frame one keeps the reference latent, frame two changes"),
    "InpaintModelConditioning": Row("`InpaintModelConditioning`", "yes", "as above, mask on frame two with noise_mask",
                                    "the concat image is ignored by FLUX dev (not a Fill model)"),
    "HiResPass": Row("hi-res pass (`LatentCrop` + `LatentUpscaleBy` + `KSampler`)", "yes", "frame two upscaled 2x, a plain "
                     "FLUX pass at denoise 0.4 refines it at that size", "workflow `dsd_hires` does the same in pixels"),
    "StyleModelApply": Row("`StyleModelApply` (Redux)", "yes", "on DSD's positive: multiply 1 and attn_bias 0.5 change "
                           "the result", "attn_bias at strength 0 gives NaN with plain FLUX too (core)"),
}


def render(rows: dict[str, Row] = ROWS) -> str:
    lines = ["| node | works | what the test checks | notes |", "|---|---|---|---|"]
    lines += [f"| {r.node} | {r.works} | {r.checked} | {r.notes} |" for r in rows.values()]
    return "\n".join(lines)


def readme_table(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip("\n")


def write_readme() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + render() + "\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":
    write_readme()
    sys.stdout.write("README compatibility table rewritten\n")
