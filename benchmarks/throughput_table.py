"""The efficiency table the throughput benchmarks print: achieved rate over concurrency / latency."""

from __future__ import annotations

import statistics


def print_efficiency_table(title: str, unit: str, rows: list[tuple[int, int, float, list[float], int]], latency_s: float) -> None:
    """``rows``: (concurrency, items, median seconds, efficiencies of the reps, peak in flight)."""
    print(title)
    print(f"{'conc':>5} {unit:>9} {'median s':>9} {'ideal/s':>8} {'efficiency median [min..max]':>30} {'peak':>5}")
    for c, n, dt, effs, peak in rows:
        spread = f"{100 * statistics.median(effs):.1f}% [{100 * min(effs):.1f}..{100 * max(effs):.1f}]"
        print(f"{c:>5} {n:>9} {dt:>9.2f} {c / latency_s:>8.1f} {spread:>30} {peak:>5}")
    worst = min(statistics.median(r[3]) for r in rows)
    print(f"worst median efficiency {100 * worst:.1f}% (goal >= 80%)")
