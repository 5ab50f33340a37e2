"""The recipe probe (benchmarks/toy_recipe.py) runs: pairs from the toy domain, the shipped objective, its report."""

from __future__ import annotations

import json
import math

from benchmarks import toy_recipe


def test_probe_reports_reference_gain_and_judged_samples(tmp_path) -> None:
    assert toy_recipe.main(["--out", str(tmp_path), "--steps", "2", "--eval-every", "2", "--pairs", "8",
                            "--heldout", "4", "--width", "64", "--heads", "2"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]
    gain = rows[0]["gain"]
    assert set(gain) == {"t0.5", "t0.9"} and all(math.isfinite(v) and v > 0 for pair in gain.values() for v in pair)
    assert 0.0 <= rows[0]["cp"] <= 1.0 and 0.0 <= rows[0]["pf_no_ref"] <= 1.0
    assert (tmp_path / "samples_00002.png").is_file()


def test_lora_probe_trains_only_the_adapter(tmp_path) -> None:
    model = toy_recipe.make_model(64, 2, lora=8)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("c_embedder.") for n in trainable)
