"""Stage 1 - captions: stream real captions (LAION-style) from files, filter, sample, dedup.

Readers stream (parquet by row group via pyarrow, CSV/TSV/JSONL/text line by line), so a
multi-GB LAION shard never sits in memory. Sampling is decided by a seeded hash of the
normalised text ("hash", streams) or by a seeded reservoir ("reservoir", an exact sample size);
either is deterministic, so a rerun after a crash makes the same choices and the record log
(``captions/captions.jsonl``) skips what is already done.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import random
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsd.manifest import RecordLog

from .config import CaptionsConfig, DatagenInputError
from .llm import settle_failure, stage_provider
from .parquet_io import iter_batches, open_parquet
from .summary import ItemErrors, StageSummary

logger = logging.getLogger(__name__)

CAPTION_COLUMNS = ("TEXT", "caption", "text", "prompt")
SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".txt": "text"}

_EN_STOP = frozenset(
    "the a an of and in on with for to at by from is are this that his her its their over under into near".split()
)
_FOREIGN_STOP = frozenset(
    "de la le les des du et der die das und mit el los las con para una por il della che och och för ein eine".split()
)
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class RawCaption:
    text: str
    source: str  # "<file name>:<row>"


# ---------------------------------------------------------------- readers
def expand_sources(sources: tuple[str, ...] | list[str]) -> list[Path]:
    """Files named by ``sources`` (files, folders, globs), each list sorted for a stable order."""
    files: list[Path] = []
    for src in sources:
        path = Path(src)
        if any(ch in src for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(src, recursive=True))
            if not matches:
                raise DatagenInputError(f"caption source {src}: the pattern matches no file")
            files.extend(p for p in matches if p.is_file())
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise DatagenInputError(f"caption source {path}: the folder holds no {'/'.join(SUFFIXES)} file")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DatagenInputError(f"caption source {path} does not exist; fix captions.sources in the config")
    for path in files:
        if path.suffix.lower() not in SUFFIXES:
            raise DatagenInputError(f"caption source {path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    return files


def _pick_column(names: list[str], wanted: str | None, path: Path) -> str:
    if wanted is not None:
        if wanted not in names:
            raise DatagenInputError(
                f"{path}: no column {wanted!r} (columns: {', '.join(names) or 'none'}); set captions.column"
            )
        return wanted
    for name in CAPTION_COLUMNS:
        if name in names:
            return name
    raise DatagenInputError(
        f"{path}: no caption column found (looked for {', '.join(CAPTION_COLUMNS)}; "
        f"columns: {', '.join(names) or 'none'}); set captions.column"
    )


def _read_parquet(path: Path, column: str | None, batch_rows: int) -> Iterator[RawCaption]:
    pf = open_parquet(path)
    col = _pick_column(list(pf.schema_arrow.names), column, path)
    row = 0
    for batch in iter_batches(pf, path, [col], batch_rows):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield RawCaption(value, f"{path.name}:{row}")


def _read_csv(path: Path, column: str | None, delimiter: str) -> Iterator[RawCaption]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DatagenInputError(f"{path}: the file is empty (expected a header row and captions)")
        index = header.index(_pick_column(header, column, path))
        for row, values in enumerate(reader, 1):
            if index < len(values):
                yield RawCaption(values[index], f"{path.name}:{row}")


def _read_jsonl(path: Path, column: str | None) -> Iterator[RawCaption]:
    key: str | None = None
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatagenInputError(f"{path}:{row}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DatagenInputError(f"{path}:{row}: expected a JSON object per line")
            if key is None:
                key = _pick_column(list(obj), column, path)
            value = obj.get(key)
            if isinstance(value, str):
                yield RawCaption(value, f"{path.name}:{row}")


def _read_text(path: Path) -> Iterator[RawCaption]:
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh, 1):
            if line.strip():
                yield RawCaption(line.strip(), f"{path.name}:{row}")


def read_captions(path: Path, column: str | None = None, batch_rows: int = 8192) -> Iterator[RawCaption]:
    """Stream the captions of one file; raises DatagenInputError (naming ``path``) when unusable."""
    kind = SUFFIXES.get(path.suffix.lower())
    count = 0
    try:
        if kind == "parquet":
            it = _read_parquet(path, column, batch_rows)
        elif kind in ("csv", "tsv"):
            it = _read_csv(path, column, "," if kind == "csv" else "\t")
        elif kind == "jsonl":
            it = _read_jsonl(path, column)
        elif kind == "text":
            it = _read_text(path)
        else:
            raise DatagenInputError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
        for item in it:
            count += 1
            yield item
    except UnicodeDecodeError as exc:
        raise DatagenInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if count == 0:
        raise DatagenInputError(f"{path}: no captions in this file (empty, or the caption column is all null)")


def count_rows(path: Path) -> int | None:
    """Row count when it is free (parquet metadata); None otherwise."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # noqa: BLE001 - the real read reports the error properly
            return None
    return None


# ---------------------------------------------------------------- text checks
def clean_caption(text: str) -> str:
    return " ".join(text.replace("\u200b", " ").split())


def normalise(text: str) -> str:
    """Dedup key: NFKC, case-folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def caption_id(text: str) -> str:
    return hashlib.sha1(normalise(text).encode("utf-8")).hexdigest()[:16]


def _unit_hash(seed: int, norm: str) -> float:
    digest = hashlib.blake2b(f"{seed}\0{norm}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def looks_english(text: str) -> bool:
    """Cheap language check: mostly ASCII letters and not dominated by common foreign stopwords."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if sum(c.isascii() for c in letters) / len(letters) < 0.9:
        return False
    words = [w.casefold() for w in _WORD.findall(text)]
    en = sum(w in _EN_STOP for w in words)
    foreign = sum(w in _FOREIGN_STOP for w in words)
    return not (foreign >= 2 and foreign > en)


def check_caption(text: str, cfg: CaptionsConfig) -> str | None:
    """None when the caption passes the cheap filters, else the reason it does not."""
    if len(text) < cfg.min_chars:
        return "too short"
    if len(text) > cfg.max_chars:
        return "too long"
    n_words = len(text.split())
    if n_words < cfg.min_words:
        return "too few words"
    if n_words > cfg.max_words:
        return "too many words"
    if cfg.language == "en" and not looks_english(text):
        return "not English"
    return None


# ---------------------------------------------------------------- LLM filter
FILTER_SYSTEM = (
    "You screen image captions for a dataset of identity-preserving image grids. Keep a caption only if it "
    "names a clear main subject (an object, a character or person, a specific scene or a distinctive style) "
    "whose identity could be kept the same across several pictures. Reject captions that are lists of "
    "keywords, file names, text-only graphics, logos, abstract patterns, or scenes with no single subject."
)
FILTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "keep": {"type": "boolean"},
                    "subject": {"type": "string"},
                },
                "required": ["index", "keep", "subject"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["results"],
    "additionalProperties": False,
}


def filter_request(captions: list[str]):  # -> ChatRequest
    from dsd.providers import ChatRequest

    listing = "\n".join(f"{i}. {c}" for i, c in enumerate(captions))
    prompt = (
        "For each numbered caption below answer with its index, keep (true/false) and the main subject "
        f"(empty when none).\n\n{listing}"
    )
    return ChatRequest(prompt=prompt, system=FILTER_SYSTEM, json_schema=FILTER_SCHEMA, schema_name="caption_filter",
                       max_output_tokens=64 + 48 * len(captions))


# ---------------------------------------------------------------- the stage
def _candidates(cfg: CaptionsConfig, summary: StageSummary, progress: bool) -> Iterator[tuple[str, RawCaption]]:
    """(id, caption) after cheap filters, sampling and dedup, in a deterministic order."""
    from tqdm import tqdm

    files = expand_sources(cfg.sources)
    if not files:
        raise DatagenInputError("captions.sources is empty: name caption files (.parquet/.csv/.jsonl/.txt)")
    totals = [count_rows(p) for p in files]
    total = sum(totals) if all(t is not None for t in totals) else None
    seen: set[bytes] = set()
    bar = tqdm(total=total, desc="captions: read", unit="row", disable=not progress, mininterval=0.5)
    try:
        for path in files:
            for raw in read_captions(path, cfg.column, cfg.parquet_batch_rows):
                bar.update(1)
                summary.items_in += 1
                text = clean_caption(raw.text)
                reason = check_caption(text, cfg)
                if reason is not None:
                    summary.reject(reason)
                    continue
                norm = normalise(text)
                if cfg.sampling == "hash" and cfg.sample_rate < 1.0 and _unit_hash(cfg.seed, norm) >= cfg.sample_rate:
                    summary.add("not sampled")
                    continue
                digest = hashlib.sha1(norm.encode("utf-8")).digest()
                if cfg.dedup:
                    if digest in seen:
                        summary.reject("duplicate")
                        continue
                    seen.add(digest)
                yield digest.hex()[:16], RawCaption(text, raw.source)
    finally:
        bar.close()


def _reservoir(items: Iterator[tuple[str, RawCaption]], k: int, seed: int) -> list[tuple[str, RawCaption]]:
    """Seeded Algorithm R; the sample is returned in input order."""
    rng = random.Random(seed)
    kept: list[tuple[int, tuple[str, RawCaption]]] = []
    for n, item in enumerate(items):
        if n < k:
            kept.append((n, item))
        else:
            j = rng.randint(0, n)
            if j < k:
                kept[j] = (n, item)
    return [item for _, item in sorted(kept, key=lambda t: t[0])]


def run_captions(
    cfg: CaptionsConfig, out_dir: Path, *, llm=None, progress: bool = True
) -> StageSummary:
    """Write ``out_dir/captions.jsonl`` ({"id","caption","source"}); resumable.

    ``llm`` is a ProviderConfig (needed only with ``cfg.llm_filter``); its answers are cached
    under ``out_dir/llm_cache`` so a rerun costs nothing.
    """
    summary = StageSummary("captions")
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.llm_filter and llm is None:
        raise DatagenInputError("captions.llm_filter = true needs an [llm] provider section in the config")
    with (
        stage_provider(llm if cfg.llm_filter else None, out_dir / "llm_cache", summary) as provider,
        RecordLog(out_dir / "captions.jsonl", flush_every=256) as log,
        RecordLog(out_dir / "rejected.jsonl", flush_every=256) as rejected,
        ItemErrors(summary) as errors,
    ):
        stream: Any = _candidates(cfg, summary, progress)
        if cfg.sampling == "reservoir":
            stream = iter(_reservoir(stream, cfg.max_captions, cfg.seed))
        _write_captions(stream, _CaptionSink(log, rejected, summary, errors, cfg.max_captions), provider, cfg)
    return summary.stop()


@dataclass
class _CaptionSink:
    """Where the stage's decisions go: the kept and rejected logs (resume), the cap, the summary."""

    log: RecordLog
    rejected: RecordLog
    summary: StageSummary
    errors: ItemErrors
    limit: int
    kept: int = 0

    def full(self) -> bool:
        return bool(self.limit) and self.kept >= self.limit

    def decided_before(self, cid: str) -> bool:
        """True when an earlier run kept or rejected ``cid``; counted again so the summary is whole."""
        earlier = self.summary.count_earlier(cid, self.log, self.rejected)
        if earlier == "done":
            self.kept += 1
        return earlier is not None

    def keep(self, cid: str, cap: RawCaption) -> None:
        self.log.append({"id": cid, "caption": cap.text, "source": cap.source})
        self.kept += 1
        self.summary.items_out += 1

    def reject(self, cid: str, cap: RawCaption, reason: str) -> None:
        self.rejected.append({"id": cid, "reason": reason, "caption": cap.text})
        self.summary.reject(reason)


def _write_captions(stream: Iterator[tuple[str, RawCaption]], sink: _CaptionSink, provider, cfg: CaptionsConfig) -> None:
    """Decide the candidates in windows (one window is many LLM requests in flight) until the cap."""
    window = cfg.llm_filter_batch * (provider.config.max_concurrency if provider is not None else 1) * 4
    pending: list[tuple[str, RawCaption]] = []
    for cid, cap in stream:
        if sink.decided_before(cid):
            if sink.full():
                return
            continue
        pending.append((cid, cap))
        if len(pending) >= window:
            _decide(pending, sink, provider, cfg)
            pending = []
            if sink.full():
                return
    if pending:
        _decide(pending, sink, provider, cfg)


def _decide(pending: list[tuple[str, RawCaption]], sink: _CaptionSink, provider, cfg: CaptionsConfig) -> None:
    decisions = _llm_decide(provider, pending, cfg, sink) if provider is not None else {}
    for cid, cap in pending:
        if sink.full():
            return
        verdict = decisions.get(cid)
        if provider is not None and verdict is None:
            continue  # transient failure: left undone, a rerun asks again
        if verdict is not None and not verdict[0]:
            sink.reject(cid, cap, verdict[1])
            continue
        sink.keep(cid, cap)


def _llm_decide(provider, pending: list[tuple[str, RawCaption]], cfg: CaptionsConfig, sink: _CaptionSink):
    """{caption id: (keep, reason)}; ids missing from the result failed transiently, or their
    answer raised (then ``sink.errors`` rejects them)."""
    batches = [pending[i : i + cfg.llm_filter_batch] for i in range(0, len(pending), cfg.llm_filter_batch)]
    requests = [filter_request([cap.text for _, cap in batch]) for batch in batches]
    decisions: dict[str, tuple[bool, str]] = {}
    for index, result in list(provider.map(requests)):  # all answered before any is decided (or raises)
        batch = batches[index]
        if isinstance(result, Exception):
            reason = settle_failure(result, sink.summary, "captions LLM filter", items=len(batch))
            if reason is not None:
                decisions.update((cid, (False, f"llm filter: {reason}")) for cid, _ in batch)
            continue
        try:
            decisions.update(dict(_batch_decisions(batch, result.data)))
        except Exception as exc:  # noqa: BLE001 - an answer that breaks the parser rejects its batch, not the stage
            sink.errors.failed(batch[0][0], "llm filter answer", exc, _batch_rejecter(sink, batch))
    return decisions


def _batch_rejecter(sink: _CaptionSink, batch: list[tuple[str, RawCaption]]):
    def write(reason: str, _category: str) -> None:
        for cid, cap in batch:
            sink.reject(cid, cap, reason)

    return write


def _batch_decisions(batch: list[tuple[str, RawCaption]], data: Any) -> Iterator[tuple[str, tuple[bool, str]]]:
    """(caption id, (keep, reason)) for one answered batch; a caption the answer skips is a reject."""
    answers = {}
    results = data.get("results") if isinstance(data, dict) else None
    for item in results if isinstance(results, list) else []:
        if isinstance(item, dict) and isinstance(item.get("index"), int):
            answers[item["index"]] = item
    for i, (cid, _) in enumerate(batch):
        item = answers.get(i)
        if item is None:
            yield cid, (False, "llm filter: no answer for this caption")
        elif item.get("keep") is True:
            yield cid, (True, "")
        else:
            yield cid, (False, "llm filter: no clear subject")
