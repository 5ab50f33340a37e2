"""Uncertainty of ``dsd eval``'s figures: bootstrap intervals over subjects, and Bradley-Terry strengths.

Images of one subject are not independent (same reference, same identity to keep), so the unit a
benchmark samples is the subject: every interval resamples subjects with replacement (a percentile
bootstrap, ``BOOT`` draws, a fixed seed so a rerun prints the same interval) and recomputes the
figure from the images of the drawn subjects. Within one subject (the per-subject rows) the unit is
the prompt. A/B differences are paired: both systems' means come from the same drawn subjects, so a
subject that is hard for everyone does not widen the interval of the difference. A difference whose
interval holds 0 is "not significant" at ``LEVEL``.

Bradley-Terry (pairwise A/B): P(i beats j) = s_i / (s_i + s_j), fitted by Hunter's MM iteration on
win counts (a tie is half a win to each); a small prior (``PRIOR`` pseudo-games against every other
system, half won) keeps a system that won or lost everything finite. Strengths are reported as
log-strengths centred on 0 (a difference of 1 is e:1 odds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOT = 1000
LEVEL = 0.95
SEED = 1234
PRIOR = 0.5


def unit_sums(values: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit ids, per-unit sums [U, M], per-unit counts [U, M]) of ``values`` [N, M] (NaN not counted)."""
    ids, inverse = np.unique(units, return_inverse=True)
    finite = np.isfinite(values)
    sums = np.zeros((len(ids), values.shape[1]))
    counts = np.zeros_like(sums)
    np.add.at(sums, inverse, np.where(finite, values, 0.0))
    np.add.at(counts, inverse, finite.astype(float))
    return ids, sums, counts


def draws(n_units: int, boot: int = BOOT, seed: int = SEED) -> np.ndarray:
    """[boot, n_units] indices of units drawn with replacement (the same for the same size and seed)."""
    return np.random.default_rng(seed).integers(0, n_units, size=(boot, n_units))


def _ratio(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.nan)


def boot_means(sums: np.ndarray, counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[boot, M] means over the images of the drawn units."""
    return _ratio(sums[idx].sum(1), counts[idx].sum(1))


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0, ignoring NaN draws (a metric missing in some drawn subjects)."""
    tail = 100 * (1 - level) / 2
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
            return np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100 - tail, axis=0)


def mean_interval(values: np.ndarray, units: np.ndarray, boot: int = BOOT, seed: int = SEED):
    """(mean [M], lo [M], hi [M], boot means [boot, M]) of ``values`` [N, M] resampling ``units``."""
    _, sums, counts = unit_sums(values, units)
    point = _ratio(sums.sum(0), counts.sum(0))
    samples = boot_means(sums, counts, draws(len(sums), boot, seed))
    lo, hi = interval(samples)
    return point, lo, hi, samples


def paired_difference(a: np.ndarray, a_units: np.ndarray, b: np.ndarray, b_units: np.ndarray,
                      boot: int = BOOT, seed: int = SEED):  # fmt: skip
    """(mean(a) - mean(b) [M], lo, hi) over the units both have, both resampled with the same draws."""
    ids_a, sums_a, counts_a = unit_sums(a, a_units)
    ids_b, sums_b, counts_b = unit_sums(b, b_units)
    common, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
    sums_a, counts_a, sums_b, counts_b = sums_a[ia], counts_a[ia], sums_b[ib], counts_b[ib]
    point = _ratio(sums_a.sum(0), counts_a.sum(0)) - _ratio(sums_b.sum(0), counts_b.sum(0))
    idx = draws(len(common), boot, seed)
    lo, hi = interval(boot_means(sums_a, counts_a, idx) - boot_means(sums_b, counts_b, idx))
    return point, lo, hi


# -- Bradley-Terry ----------------------------------------------------------------------------------
def bradley_terry(wins: np.ndarray, prior: float = PRIOR, iters: int = 1000, tol: float = 1e-9) -> np.ndarray:
    """Centred log-strengths [..., K] from ``wins[..., i, j]`` = games i won against j (a tie is half to each);
    a stack of win matrices (bootstrap draws) is fitted at once."""
    w = np.asarray(wins, dtype=float)
    k = w.shape[-1]
    w = w + prior * (1 - np.eye(k)) / 2
    games = w + np.swapaxes(w, -1, -2)
    won = w.sum(-1)
    p = np.ones(w.shape[:-1])
    for _ in range(iters):
        denom = (games / (p[..., :, None] + p[..., None, :])).sum(-1)
        new = won / denom
        new = new / np.exp(np.log(new).mean(-1, keepdims=True))
        done = np.max(np.abs(new - p)) < tol
        p = new
        if done:
            break
    logp = np.log(p)
    return logp - logp.mean(-1, keepdims=True)


def bt_interval(wins_by_unit: np.ndarray, boot: int = BOOT, seed: int = SEED):
    """(log-strengths [K], lo [K], hi [K]) from per-unit win matrices [U, K, K], resampling units."""
    point = bradley_terry(wins_by_unit.sum(0))
    samples = bradley_terry(wins_by_unit[draws(len(wins_by_unit), boot, seed)].sum(1))
    lo, hi = interval(samples)
    return point, lo, hi


def significant(lo: float, hi: float) -> bool:
    """An interval that does not hold 0."""
    return bool(np.isfinite(lo) and np.isfinite(hi) and (lo > 0 or hi < 0))


__all__: Sequence[str] = ["bradley_terry", "bt_interval", "mean_interval", "paired_difference", "significant"]
