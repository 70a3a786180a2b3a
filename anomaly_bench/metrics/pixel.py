"""Pixel-level evaluation of a set of images: maps resized lazily, one pass per mode.

Memory plan: maps are kept as the model returned them (any resolution) and resized to the
evaluation resolution only here, one image at a time, so no float32 copy of the full-resolution
test set is ever held in binned mode:

* pass 1 (both modes): resize each map, gather its positive pixels' scores (sparse), PRO and sPRO
  weights, and a strided sample of all its scores (binned mode: for the edges);
* exact: the resized scores of the evaluated images are concatenated (one float32 copy, bounded by
  ``exact_max_pixels``) and sorted once per evaluated subset;
* binned: pass 2 resizes again and counts each image's scores above the edges; counts are kept per
  image *tag* (e.g. good / logical / structural), so every subset of tags is a sum, not a new pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anomaly_bench.metrics.curves import PRO_WEIGHT, SPRO_WEIGHT, RankingCurves
from anomaly_bench.metrics.ground_truth import GroundTruth
from anomaly_bench.metrics.ranking import (
    BINNED,
    EXACT,
    WeightedEntries,
    binned_points,
    chunk_count_above,
    count_above,
    exact_points,
    quantile_edges,
    resolve_mode,
    sort_ascending,
    sort_in_place,
)


@dataclass(frozen=True)
class BinningConfig:
    """How curves are computed. ``exact_max_pixels`` is the ``auto`` switch point."""

    mode: str = "auto"
    exact_max_pixels: int = 50_000_000
    num_bins: int = 16384
    num_positive_bins: int = 4096
    sample_size: int = 2_000_000


@dataclass
class PixelImage:
    """One image: its raw map (any size) and its ground truth at the evaluation size."""

    anomaly_map: Tensor  # [h, w] raw scores
    truth: GroundTruth
    tag: int = 0

    def scores(self) -> Tensor:
        """Flat float32 scores at the evaluation size (bilinear, align_corners=False)."""
        target = (self.truth.height, self.truth.width)
        values = self.anomaly_map
        if values.ndim != 2:
            raise ValueError(f"an anomaly map must be [h, w], got shape {tuple(values.shape)}")
        if tuple(values.shape) != target:
            values = F.interpolate(
                values[None, None].to(torch.float32), size=target, mode="bilinear", align_corners=False
            )[0, 0]
        return values.reshape(-1).to(torch.float32)


def _top_saturation_entries(channel_scores: Tensor, saturation: float) -> tuple[Tensor, float]:
    """sPRO weighting: min(TP/s, 1) rises by 1/s for each of the channel's s highest scores."""
    count = min(int(saturation), channel_scores.numel())
    top = torch.topk(channel_scores, count, sorted=False).values if count < channel_scores.numel() else channel_scores
    return top, 1.0 / saturation


@dataclass
class _Positives:
    scores: list[Tensor]
    pro_weights: list[np.ndarray]
    spro_scores: list[Tensor]
    spro_weights: list[np.ndarray]


def _gather_positives(scores: Tensor, truth: GroundTruth, into: _Positives) -> None:
    if truth.positive_index.numel():
        into.scores.append(scores[truth.positive_index])
        into.pro_weights.append(truth.region_weight.numpy().astype(np.float64))
    for index, saturation in zip(truth.channel_index, truth.channel_saturation):
        top, weight = _top_saturation_entries(scores[index], saturation)
        into.spro_scores.append(top)
        into.spro_weights.append(np.full(top.numel(), weight, dtype=np.float64))


def _cat(tensors: list[Tensor]) -> Tensor:
    return torch.cat(tensors) if tensors else torch.empty(0)


def _cat_np(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.empty(0, dtype=np.float64)


def float32_at_least(threshold: float) -> np.float32:
    """The smallest float32 ``>= threshold``: for float32 scores, ``score >= threshold`` is
    ``score >= float32_at_least(threshold)``, so counts compare in the scores' own precision."""
    value = np.float32(threshold)
    return np.nextafter(value, np.float32(np.inf)) if float(value) < float(threshold) else value


def _operating_edges(thresholds: Sequence[float]) -> Tensor:
    """Edges whose strict counts (``score > edge``) are the ``score >= threshold`` counts."""
    return torch.tensor([np.nextafter(float32_at_least(t), np.float32(-np.inf)) for t in thresholds],
                        dtype=torch.float32)


def evaluate_pixels(
    images: Sequence[PixelImage],
    subsets: Mapping[str, Sequence[int]] | None = None,
    config: BinningConfig = BinningConfig(),
    device: torch.device | str = "cpu",
    operating_thresholds: Sequence[float] = (),
) -> dict[str, RankingCurves]:
    """Curves for each subset of image tags (one subset ``"all"`` of every tag when ``subsets`` is None).

    ``subsets`` maps a name to the tags it includes, e.g. LOCO ``{"logical": (0, 1)}``.
    ``device``: where the exact sort runs (a GPU sorts hundreds of millions of scores quickly).
    ``operating_thresholds``: thresholds whose exact flagged counts go into ``RankingCurves.operating``.
    """
    if not images:
        raise ValueError("evaluate_pixels needs at least one image")
    tags_present = sorted({img.tag for img in images})
    subsets = dict(subsets) if subsets is not None else {"all": tuple(tags_present)}
    num_pixels = {name: sum(img.truth.num_pixels for img in images if img.tag in tags) for name, tags in subsets.items()}
    mode = resolve_mode(config.mode, max(num_pixels.values()), config.exact_max_pixels)

    positives = {tag: _Positives([], [], [], []) for tag in tags_present}
    regions = dict.fromkeys(tags_present, 0)
    channels = dict.fromkeys(tags_present, 0)
    kept_scores: dict[int, list[Tensor]] = {tag: [] for tag in tags_present}
    sample: list[Tensor] = []
    total_pixels = sum(img.truth.num_pixels for img in images)
    stride = max(1, total_pixels // max(1, config.sample_size))

    # pass 1: positives (sparse) and, per mode, the scores themselves or a sample of them
    for number, image in enumerate(images):
        scores = image.scores()  # NaN is caught after sorting (it sorts last), at no extra pass
        _gather_positives(scores, image.truth, positives[image.tag])
        regions[image.tag] += image.truth.num_regions
        channels[image.tag] += len(image.truth.channel_index)
        if mode == EXACT:
            kept_scores[image.tag].append(scores)
        else:
            sample.append(scores[(number * 7919) % stride :: stride].clone())

    def weighted_for(tags: Sequence[int]) -> tuple[Tensor, dict[str, WeightedEntries]]:
        pos = [positives[t] for t in tags if t in positives]
        entries = {
            PRO_WEIGHT: WeightedEntries(_cat([s for p in pos for s in p.scores]), _cat_np([w for p in pos for w in p.pro_weights])),
            SPRO_WEIGHT: WeightedEntries(
                _cat([s for p in pos for s in p.spro_scores]), _cat_np([w for p in pos for w in p.spro_weights])
            ),
        }
        return entries[PRO_WEIGHT].scores, entries

    results: dict[str, RankingCurves] = {}
    if mode == EXACT:
        for name, tags in subsets.items():
            chosen = [s for t in tags for s in kept_scores.get(t, [])]
            if not chosen:
                continue
            all_scores = torch.cat(chosen).to(device)
            del chosen
            if len(subsets) == 1:
                kept_scores.clear()  # the concatenated copy is all we need now
            positive_scores, weighted = weighted_for(tags)
            sorted_scores = sort_in_place(all_scores)
            points = exact_points(all_scores, positive_scores, weighted, sorted_scores=sorted_scores)
            operating = {}
            if operating_thresholds:
                edges = _operating_edges(operating_thresholds)
                flagged = count_above(sorted_scores, edges, strict=True)
                flagged_positive = count_above(sort_ascending(positive_scores), edges, strict=True)
                operating = {float(t): (float(f - p), float(p))
                             for t, f, p in zip(operating_thresholds, flagged, flagged_positive)}
            del all_scores, sorted_scores
            results[name] = RankingCurves(
                points, sum(regions.get(t, 0) for t in tags), sum(channels.get(t, 0) for t in tags), EXACT,
                operating,
            )
        return results

    all_positive_scores, _ = weighted_for(tags_present)
    edges = quantile_edges(_cat(sample), all_positive_scores, config.num_bins, config.num_positive_bins)
    del sample
    operating_edges = _operating_edges(operating_thresholds)
    counts = {tag: np.zeros(edges.numel() + operating_edges.numel(), dtype=np.int64) for tag in tags_present}
    totals = dict.fromkeys(tags_present, 0)
    device_edges = torch.cat([edges, operating_edges]).to(device)  # one count per image for both

    def count(image: PixelImage) -> tuple[int, np.ndarray, int]:
        scores = image.scores().to(device)
        return image.tag, chunk_count_above(scores, device_edges), scores.numel()

    # pass 2: count every image's scores above the edges, per tag. numpy's sort releases the GIL,
    # so images are counted on as many threads as torch may use.
    workers = max(1, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for tag, image_counts, numel in pool.map(count, images):
            counts[tag] += image_counts
            totals[tag] += numel
    for name, tags in subsets.items():
        present = [t for t in tags if t in counts]
        if not present:
            continue
        positive_scores, weighted = weighted_for(present)
        summed = sum(counts[t] for t in present)
        points = binned_points(
            edges, summed[: edges.numel()], sum(totals[t] for t in present), positive_scores, weighted
        )
        operating = {}
        if operating_thresholds:
            flagged_positive = count_above(sort_ascending(positive_scores), operating_edges, strict=True)
            operating = {float(t): (float(f - p), float(p))
                         for t, f, p in zip(operating_thresholds, summed[edges.numel():], flagged_positive)}
        results[name] = RankingCurves(
            points, sum(regions[t] for t in present), sum(channels[t] for t in present), BINNED, operating
        )
    return results
