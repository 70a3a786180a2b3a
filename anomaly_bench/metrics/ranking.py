"""The ranking core: every curve metric (ROC, PR, PRO, sPRO) is read off the same counts.

A curve point is "flag every pixel whose score passes a threshold" and records, cumulatively,
how many negatives and positives are flagged and how much of each per-pixel *weight* (PRO's
1/region-area, sPRO's 1/saturation) is flagged. Two ways to choose the thresholds:

* **exact**: every distinct score. One global sort of all scores; positives (and weighted
  entries, which are always positives) are few, so their counts come from a second small sort
  and ``searchsorted``. Only the thresholds at distinct *positive* scores can change a
  positive-side count, so the curve is kept exactly (same polyline, hence same areas, same AP,
  same F1-max) with two points per distinct positive score: just above it (``>``) and at it
  (``>=``). Memory: one float32 copy of the scores, nothing per pixel beyond that.
* **binned**: thresholds are data-driven edges (quantiles of a sample of all scores united with
  quantiles of the positive scores, see :func:`quantile_edges`; never fixed uniform edges,
  which one outlier collapses). Counts are accumulated chunk by chunk (``count_above``), so
  memory is O(#edges) plus one chunk. Within a bin, scores act as ties (half credit in AUROC).

Why sort + searchsorted instead of ``torch.bucketize``: on CPU numpy's vectorised sort of a chunk
followed by a binary search of the few edges into it is 4-8x faster than bucketising every
pixel against 20k edges (measured: 100 M px, 2 cores). On CUDA, torch's sort is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

EXACT = "exact"
BINNED = "binned"
AUTO = "auto"
MODES = (AUTO, EXACT, BINNED)


def resolve_mode(mode: str, num_pixels: int, exact_max_pixels: int) -> str:
    """``auto`` -> exact up to ``exact_max_pixels`` pixels, binned above."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == AUTO:
        return EXACT if num_pixels <= exact_max_pixels else BINNED
    return mode


@dataclass
class WeightedEntries:
    """A subset of the positive pixels with a weight each (all ones for plain positives)."""

    scores: Tensor  # float [M]
    weights: np.ndarray  # float64 [M]

    @staticmethod
    def empty() -> "WeightedEntries":
        return WeightedEntries(torch.empty(0), np.empty(0, dtype=np.float64))


@dataclass
class CurvePoints:
    """Cumulative counts at thresholds in decreasing order.

    The first point flags nothing (threshold +inf), the last flags everything (-inf). ``negatives``
    and ``positives`` are pixel counts; ``weights[name]`` is the flagged total of that weighted
    entry set. Everything is float64 so totals of billions of pixels stay exact.
    """

    thresholds: np.ndarray
    negatives: np.ndarray
    positives: np.ndarray
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def total_negatives(self) -> float:
        return float(self.negatives[-1])

    @property
    def total_positives(self) -> float:
        return float(self.positives[-1])


# --------------------------------------------------------------------------- device helpers
def _sorted_numpy(values: Tensor) -> np.ndarray:
    """Ascending float32 copy of a CPU tensor (numpy's vectorised sort is much faster than torch's)."""
    array = values.detach().reshape(-1).to(torch.float32).cpu().numpy().copy()
    array.sort(kind="quicksort")
    return array


def _check_sorted(sorted_values: Tensor) -> Tensor:
    """NaN sorts last: one look at the end finds any NaN score (it would otherwise rank on top)."""
    if sorted_values.numel() and bool(torch.isnan(sorted_values[-1])):
        raise ValueError("anomaly scores contain NaN")
    return sorted_values


def sort_ascending(values: Tensor) -> Tensor:
    """Ascending sort of a flat tensor on its own device (numpy on CPU, torch elsewhere)."""
    values = values.detach().reshape(-1)
    if values.device.type == "cpu":
        return _check_sorted(torch.from_numpy(_sorted_numpy(values)))
    return _check_sorted(torch.sort(values.to(torch.float32)).values)


def sort_in_place(values: Tensor) -> Tensor:
    """Sort a flat float32 tensor that the caller owns, without a copy on CPU."""
    if values.device.type == "cpu" and values.dtype == torch.float32 and values.is_contiguous():
        values.numpy().sort(kind="quicksort")
        return _check_sorted(values)
    return sort_ascending(values)


def count_above(sorted_values: Tensor, queries: Tensor, strict: bool = True) -> np.ndarray:
    """Number of values ``> q`` (``strict``) or ``>= q`` for each query, given ascending values."""
    n = sorted_values.numel()
    if sorted_values.device.type == "cpu":
        below = np.searchsorted(sorted_values.numpy(), queries.cpu().numpy(), side="right" if strict else "left")
        return (n - below).astype(np.int64)
    below = torch.searchsorted(sorted_values, queries.to(sorted_values.device, sorted_values.dtype), right=strict)
    return (n - below).cpu().numpy().astype(np.int64)


def chunk_count_above(chunk: Tensor, edges: Tensor) -> np.ndarray:
    """Count the scores of one chunk above each edge (strict): the binned accumulation step."""
    return count_above(sort_ascending(chunk), edges, strict=True)


class _SortCache:
    """One argsort per score tensor: plain positives and PRO weights share the same scores."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[Tensor, np.ndarray, np.ndarray]] = {}

    def get(self, scores: Tensor) -> tuple[np.ndarray, np.ndarray]:
        hit = self._items.get(id(scores))
        if hit is not None and hit[0] is scores:
            return hit[1], hit[2]
        values = scores.detach().reshape(-1).to(torch.float32).cpu().numpy()
        order = np.argsort(values)  # order within ties never matters: queries land on tie boundaries
        sorted_values = values[order]
        self._items[id(scores)] = (scores, order, sorted_values)
        return order, sorted_values


def _weighted_above(
    entries: WeightedEntries, queries: np.ndarray, strict: bool, cache: _SortCache | None = None
) -> np.ndarray:
    """Sum of entry weights whose score is ``> q`` (or ``>= q``) for each query."""
    if entries.scores.numel() == 0:
        return np.zeros(len(queries), dtype=np.float64)
    order, sorted_scores = (cache or _SortCache()).get(entries.scores)
    prefix = np.concatenate([[0.0], np.cumsum(entries.weights[order], dtype=np.float64)])
    below = np.searchsorted(sorted_scores, queries.astype(np.float32), side="right" if strict else "left")
    return prefix[-1] - prefix[below]


# ------------------------------------------------------------------------------- exact mode
def exact_points(
    scores: Tensor,
    positives: Tensor,
    weighted: dict[str, WeightedEntries] | None = None,
    sorted_scores: Tensor | None = None,
) -> CurvePoints:
    """Exact curve points from all scores (one global sort) and the positive pixels' scores.

    ``positives`` must hold the very values found in ``scores`` (gathered from it), so that
    comparisons between the two are exact.
    """
    weighted = weighted or {}
    sorted_all = sorted_scores if sorted_scores is not None else sort_ascending(scores)
    total = sorted_all.numel()
    pos = positives.detach().reshape(-1).to(torch.float32).cpu().numpy()
    cache = _SortCache()
    _, sorted_pos = cache.get(positives)
    distinct = np.unique(sorted_pos)[::-1].copy()  # distinct positive scores, decreasing
    queries = torch.from_numpy(distinct)
    ones = WeightedEntries(positives, np.ones(len(pos), dtype=np.float64))

    # Interleave, for each distinct positive score u: the point just above u (> u), then at u (>= u).
    n_points = 2 * len(distinct) + 2

    def interleave(above: np.ndarray, at: np.ndarray, end: float) -> np.ndarray:
        out = np.empty(n_points, dtype=np.float64)
        out[0] = 0.0
        out[1:-1:2] = above
        out[2:-1:2] = at
        out[-1] = end
        return out

    all_gt = count_above(sorted_all, queries, strict=True)
    all_ge = count_above(sorted_all, queries, strict=False)
    pos_gt = _weighted_above(ones, distinct, strict=True, cache=cache)
    pos_ge = _weighted_above(ones, distinct, strict=False, cache=cache)
    positives_c = interleave(pos_gt, pos_ge, float(len(pos)))
    negatives_c = interleave(all_gt - pos_gt, all_ge - pos_ge, float(total - len(pos)))
    thresholds = interleave(np.nextafter(distinct, np.inf), distinct, -np.inf)
    thresholds[0] = np.inf
    weights = {
        name: interleave(
            _weighted_above(entries, distinct, strict=True, cache=cache),
            _weighted_above(entries, distinct, strict=False, cache=cache),
            float(entries.weights.sum()),
        )
        for name, entries in weighted.items()
    }
    return CurvePoints(thresholds, negatives_c, positives_c, weights)


# ------------------------------------------------------------------------------ binned mode
def quantile_edges(
    sample: Tensor, positives: Tensor, num_bins: int = 16384, num_positive_bins: int = 4096
) -> Tensor:
    """Data-driven bin edges: quantiles of a sample of all scores united with quantiles of the
    positive scores (AP lives among the top-scoring positives, so they get their own resolution).

    The edges are actual score values (and their float32 predecessors for positives), so no
    rounding moves a score across an edge.
    """
    parts = []
    for values, count, is_positive in ((sample, num_bins, False), (positives, num_positive_bins, True)):
        if values.numel() == 0 or count <= 0:
            continue
        ordered = _sorted_numpy(values)
        index = np.unique(np.linspace(0, len(ordered) - 1, num=min(count, len(ordered))).round().astype(np.int64))
        parts.append(ordered[index])
        if is_positive:
            # "score > nextafter(q, -inf)" is "score >= q": with both edges, the binned curve has
            # the exact curve's two points at q, so it is exact when positives are few.
            parts.append(np.nextafter(ordered[index], np.float32(-np.inf)))
    if not parts:
        raise ValueError("cannot choose bin edges: no scores were given")
    return torch.from_numpy(np.unique(np.concatenate(parts)).astype(np.float32))


def binned_points(
    edges: Tensor,
    counts_above_edges: np.ndarray,
    total: int,
    positives: Tensor,
    weighted: dict[str, WeightedEntries] | None = None,
) -> CurvePoints:
    """Curve points at the edges (``score > edge``), given the summed :func:`chunk_count_above`
    of all chunks and the positives' scores."""
    weighted = weighted or {}
    queries = edges.cpu().numpy()[::-1].copy()  # decreasing thresholds
    all_gt = counts_above_edges[::-1].astype(np.float64)
    pos = positives.detach().reshape(-1)
    cache = _SortCache()
    ones = WeightedEntries(positives, np.ones(pos.numel(), dtype=np.float64))
    pos_gt = _weighted_above(ones, queries, strict=True, cache=cache)

    def framed(values: np.ndarray, end: float) -> np.ndarray:
        return np.concatenate([[0.0], values, [end]])

    positives_c = framed(pos_gt, float(pos.numel()))
    negatives_c = framed(all_gt - pos_gt, float(total - pos.numel()))
    thresholds = np.concatenate([[np.inf], queries.astype(np.float64), [-np.inf]])
    weights = {
        name: framed(_weighted_above(entries, queries, strict=True, cache=cache), float(entries.weights.sum()))
        for name, entries in weighted.items()
    }
    return CurvePoints(thresholds, negatives_c, positives_c, weights)


def binned_points_from_chunks(
    chunks: Iterable[Tensor],
    edges: Tensor,
    positives: Tensor,
    weighted: dict[str, WeightedEntries] | None = None,
) -> CurvePoints:
    """Convenience: accumulate ``chunks`` (any iterable of score tensors) against ``edges``."""
    counts = np.zeros(edges.numel(), dtype=np.int64)
    total = 0
    for chunk in chunks:
        counts += chunk_count_above(chunk.reshape(-1), edges.to(chunk.device))
        total += chunk.numel()
    return binned_points(edges, counts, total, positives, weighted)
