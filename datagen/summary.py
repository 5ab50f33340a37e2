"""The one-screen summary every datagen stage returns and the CLI prints.

A stage reports counts (in / out / already done / rejected with reasons), wall time and, for the
LLM/VLM stages, the provider's token and cost usage, so an operator can judge a run at a glance.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the providers package is only needed when a stage talks to an LLM
    from dsd.manifest import RecordLog
    from dsd.providers import Usage

logger = logging.getLogger(__name__)

_MAX_REASONS = 8
# The summary's reason for items whose input file cannot be decoded (ItemErrors.unreadable).
UNREADABLE = "unreadable image (undone: repair the file, then rerun)"


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


@dataclass
class StageSummary:
    """What one stage did. ``items_in`` counts inputs seen this run (including those already done)."""

    stage: str
    items_in: int = 0
    items_out: int = 0
    skipped_done: int = 0
    rejected: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    usage: Usage | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count one rejected item under a short reason (the first line, trimmed, keeps the table small)."""
        key = (reason or "unspecified").strip().splitlines()[0][:80] or "unspecified"
        self.rejected += 1
        self.reject_reasons[key] = self.reject_reasons.get(key, 0) + 1

    def __post_init__(self) -> None:
        self._started = time.monotonic()  # not a field: to_dict stays the report

    def stop(self) -> StageSummary:
        """Set ``seconds`` to the time since this summary was made (the stage's start); returns it."""
        self.seconds = time.monotonic() - self._started
        return self

    def add(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``extra[key]`` (answers to ask again, batches submitted, ...)."""
        self.extra[key] = self.extra.get(key, 0) + n

    def count_earlier(self, item_id: str, done: RecordLog, rejected: RecordLog) -> str | None:
        """How an earlier run decided ``item_id``, counted again so a resumed run's summary is whole:
        "done" (in ``done``), "rejected" (in ``rejected``, its reason counted), None when undecided."""
        if item_id in done:
            self.skipped_done += 1
            return "done"
        old = rejected.get(item_id)
        if old is not None:
            self.reject(old["reason"])
            return "rejected"
        return None

    def acceptance_rate(self) -> float:
        """Accepted / decided, over the items decided (accepted or rejected); 0.0 when nothing was decided."""
        decided = self.items_out + self.rejected
        return self.items_out / decided if decided else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "usage"}
        out["acceptance_rate"] = round(self.acceptance_rate(), 4)
        out["usage"] = _usage_dict(self.usage)
        return out

    def render(self) -> str:
        """A short table (fits one screen) for the end of a CLI stage."""
        rows: list[tuple[str, str]] = [
            ("items in", f"{self.items_in}"),
            ("items out", f"{self.items_out}"),
            ("already done (resumed)", f"{self.skipped_done}"),
            ("rejected", f"{self.rejected}"),
            ("acceptance rate", f"{100 * self.acceptance_rate():.1f} %"),
            ("time", _fmt_seconds(self.seconds)),
        ]
        if self.seconds > 0 and self.items_out:
            rows.append(("throughput", f"{self.items_out / self.seconds:.2f} items/s"))
        usage = _usage_dict(self.usage)
        if usage:
            rows.append(
                (
                    "LLM requests",
                    f"{usage.get('requests', 0)} ({usage.get('cached', 0)} cached, {usage.get('retries', 0)} retries)",
                )
            )
            rows.append(("tokens in / out", f"{usage.get('input_tokens', 0)} / {usage.get('output_tokens', 0)}"))
            rows.append(("cost", f"${usage.get('cost_usd', 0.0):.4f}"))
        for key, value in self.extra.items():
            rows.append((key, f"{value:.4g}" if isinstance(value, float) else str(value)))
        width = max(len(k) for k, _ in rows)
        title = f"== datagen stage: {self.stage} =="
        lines = [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
        if self.reject_reasons:
            lines.append("  reject reasons:")
            ordered = sorted(self.reject_reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            for reason, count in ordered[:_MAX_REASONS]:
                lines.append(f"    {count:>7}  {reason}")
            if len(ordered) > _MAX_REASONS:
                lines.append(f"    ... and {len(ordered) - _MAX_REASONS} more reasons")
        return "\n".join(lines)


def item_failure(stage: str, item_id: object, step: str, exc: Exception) -> tuple[str, str]:
    """(reason, summary category) for an item whose ``step`` raised ``exc``: ``"<step> failed
    (<Type>): <first line>"`` and ``"<step> failed (<Type>)"``. Logs a warning naming the item and,
    at debug level (``-vv``), the traceback."""
    category = f"{step} failed ({type(exc).__name__})"
    message = (str(exc).strip().splitlines() or [""])[0]
    reason = f"{category}: {message}" if message else category
    logger.warning("%s: item %s rejected: %s", stage, item_id, reason)
    logger.debug("%s: traceback of item %s", stage, item_id, exc_info=exc)
    return reason, category


class ItemErrors:
    """The per-item exception boundary of a batch stage: one bad item never stops the stage.

    A stage calls :meth:`failed` from ``except Exception`` around one item's work (decode, cut,
    view, verdict, ...); the exception becomes that item's reject, reason ``"<step> failed
    (<Type>): <message>"`` (summary key: the part before the colon), written by the stage's
    ``write(reason, category)`` into its record log like any other reject, so a rerun does not try
    it again. A warning names the item; the traceback is logged at debug level (``-vv``).

    Unless the stage itself is broken: while the summary holds no decided item (nothing accepted
    or rejected, in this run or counted from an earlier one), these rejects are held back, and
    when the first ``limit`` items all raise, the last exception propagates (a bug surfaces with
    its traceback) with nothing recorded for them, so the rerun after a fix does them all. Held rejects are written as soon
    as the stage decides any item, or when the ``with`` block ends normally. KeyboardInterrupt
    and SystemExit are never caught (``except Exception``), so Ctrl-C stops a stage as always.

    An item whose input file cannot be decoded is a fault of that file, not of the stage:
    :meth:`unreadable` counts it and records nothing, so the rerun after a repair does it.
    """

    def __init__(self, summary: StageSummary, limit: int = 8) -> None:
        self.summary = summary
        self.limit = limit
        self._held: list[tuple[Callable[[str, str], None], str, str]] = []
        self._unreadable = 0  # rejects counted by ``unreadable``: they say nothing of the stage

    def __enter__(self) -> ItemErrors:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._release()

    def failed(self, item_id: object, step: str, exc: Exception, write: Callable[[str, str], None]) -> None:
        """Reject ``item_id`` because ``step`` raised ``exc``; ``write(reason, category)`` records
        and counts it (now, or once the stage is known to work). Re-raises ``exc`` when the first
        ``limit`` items of the run all raised."""
        reason, category = item_failure(self.summary.stage, item_id, step, exc)
        self._held.append((write, reason, category))
        if self.summary.items_out or self.summary.rejected > self._unreadable:
            self._release()
        elif len(self._held) >= self.limit:
            self._held.clear()
            exc.add_note(
                f"datagen {self.summary.stage}: the first {self.limit} items all raised and none was decided: "
                "a fault of the stage, not of the items; nothing was recorded for them"
            )
            raise exc

    def unreadable(self, item_id: object, exc: Exception) -> None:
        """``item_id``'s input file cannot be decoded (``dsd.images.UnreadableImage``, its message
        names the file): a reject of this run under :data:`UNREADABLE`, with a warning and, for the
        first one, the message in the summary; nothing is recorded, so the item stays undone and
        the rerun after the file is repaired (or restored) does it, and only it."""
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        logger.warning("%s: item %s left undone: %s", self.summary.stage, item_id, reason)
        self.summary.reject(UNREADABLE)
        self.summary.extra.setdefault("first unreadable image", reason)
        self._unreadable += 1

    def _release(self) -> None:
        held, self._held = self._held, []
        for write, reason, category in held:
            write(reason, category)


def _usage_dict(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    if dataclasses.is_dataclass(usage):
        return dataclasses.asdict(usage)
    if isinstance(usage, dict):
        return dict(usage)
    return {k: getattr(usage, k) for k in ("requests", "input_tokens", "output_tokens", "cached", "retries", "cost_usd")
            if hasattr(usage, k)}
