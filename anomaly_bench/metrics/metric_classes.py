"""torchmetrics ``Metric`` classes on the ranking core.

States are lists of CPU tensors reduced by concatenation, so they sync under DDP like any
torchmetrics state (two processes give the numbers of one). Raw scores are stored as given: no
sigmoid, no clamping, no [0, 1] assumption (unlike torchmetrics' own curve metrics, which apply a
sigmoid to any batch leaving [0, 1]).

Each image carries three integers: ``tag`` (a subset label, e.g. LOCO good / logical /
structural), ``group`` (e.g. a category id, for unified runs) and ``key`` (a stable id such as a
hash of the image path; duplicates, e.g. the padding of a ``DistributedSampler``, are counted once
when ``key >= 0``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from anomaly_bench.metrics.curves import RankingCurves
from anomaly_bench.metrics.ground_truth import GroundTruth, ground_truth_from_mask
from anomaly_bench.metrics.pixel import BinningConfig, PixelImage, evaluate_pixels
from anomaly_bench.metrics.ranking import EXACT, exact_points

_IMAGE_META = 5  # label, tag, group, key, has_pixel_truth
_PIXEL_META_FIELDS = ("h", "w", "height", "width", "positives", "regions", "channels", "tag", "group", "key")


def _column(values: Tensor | Sequence[int] | None, batch: int, default: int, name: str) -> Tensor:
    if values is None:
        return torch.full((batch,), default, dtype=torch.int64)
    tensor = torch.as_tensor(values, dtype=torch.int64).reshape(-1).cpu()
    if tensor.numel() != batch:
        raise ValueError(f"{name} must have one entry per image ({batch}), got {tensor.numel()}")
    return tensor


def _state(value: Tensor | list[Tensor], dtype: torch.dtype, width: int | None = None) -> Tensor:
    if isinstance(value, list):
        if not value:
            return torch.empty((0, width) if width else (0,), dtype=dtype)
        value = dim_zero_cat(value)
    value = value.cpu().to(dtype)
    return value.reshape(-1, width) if width else value.reshape(-1)


def _scalar(value: float) -> Tensor:
    """float64: torch.tensor(float) would round the metric to float32."""
    return torch.tensor(value, dtype=torch.float64)


def _first_occurrence(keys: Tensor) -> Tensor:
    """Boolean mask keeping the first image of every non-negative key (DDP sampler padding)."""
    keep = torch.ones(keys.numel(), dtype=torch.bool)
    seen: set[int] = set()
    for i, key in enumerate(keys.tolist()):
        if key < 0:
            continue
        if key in seen:
            keep[i] = False
        seen.add(key)
    return keep


# ================================================================================ image level
class ImageRankingMetric(Metric):
    """Stores image scores and labels; computes exact image-level curves (always exact: there are
    only hundreds of images). ``compute()`` returns ``{"auroc", "ap", "f1max_oracle"}``."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("meta", default=[], dist_reduce_fx="cat")

    def update(
        self,
        scores: Tensor,
        labels: Tensor,
        tags: Tensor | Sequence[int] | None = None,
        groups: Tensor | Sequence[int] | None = None,
        keys: Tensor | Sequence[int] | None = None,
        has_pixel_truth: Tensor | Sequence[bool] | None = None,
    ) -> None:
        """Add a batch. Labels: 1 anomalous, 0 normal; -1 (unknown) images are skipped."""
        scores = torch.as_tensor(scores).detach().reshape(-1).cpu().to(torch.float64)
        labels = torch.as_tensor(labels).detach().reshape(-1).cpu().to(torch.int64)
        if scores.numel() != labels.numel():
            raise ValueError(f"scores ({scores.numel()}) and labels ({labels.numel()}) differ in length")
        if torch.isnan(scores).any():
            raise ValueError("image scores contain NaN")
        batch = scores.numel()
        meta = torch.stack(
            [
                labels,
                _column(tags, batch, 0, "tags"),
                _column(groups, batch, 0, "groups"),
                _column(keys, batch, -1, "keys"),
                _column(None if has_pixel_truth is None else torch.as_tensor(has_pixel_truth).long(), batch, 1, "has_pixel_truth"),
            ],
            dim=1,
        )
        known = labels >= 0
        self.scores.append(scores[known])
        self.meta.append(meta[known])

    def table(self) -> tuple[Tensor, Tensor]:
        """(scores [N] float64, meta [N, 5] int64) after de-duplication by key."""
        scores = _state(self.scores, torch.float64)
        meta = _state(self.meta, torch.int64, _IMAGE_META)
        keep = _first_occurrence(meta[:, 3])
        return scores[keep], meta[keep]

    def curves(self, group: int | None = None, tags: Sequence[int] | None = None) -> RankingCurves:
        """Exact curves of the images of ``group`` (all if None) whose tag is in ``tags``."""
        scores, meta = self.table()
        chosen = torch.ones(scores.numel(), dtype=torch.bool)
        if group is not None:
            chosen &= meta[:, 2] == group
        if tags is not None:
            chosen &= torch.isin(meta[:, 1], torch.as_tensor(list(tags), dtype=torch.int64))
        selected = scores[chosen].to(torch.float32)
        positives = selected[meta[chosen, 0] == 1]
        return RankingCurves(exact_points(selected, positives), mode=EXACT)

    def compute(self) -> dict[str, Tensor]:
        curves = self.curves()
        f1, _ = curves.f1_max_oracle()
        return {
            "auroc": _scalar(curves.auroc()),
            "ap": _scalar(curves.average_precision()),
            "f1max_oracle": _scalar(f1),
        }


class ImageAUROC(ImageRankingMetric):
    """Exact image-level AUROC on raw scores (= sklearn ``roc_auc_score``)."""

    def compute(self) -> Tensor:
        return _scalar(self.curves().auroc())


class ImageAP(ImageRankingMetric):
    """Exact image-level average precision, step sum (= sklearn ``average_precision_score``)."""

    def compute(self) -> Tensor:
        return _scalar(self.curves().average_precision())


class ImageF1Max(ImageRankingMetric):
    """Best image F1 over all thresholds. ORACLE: the threshold is picked on the test labels."""

    def compute(self) -> Tensor:
        return _scalar(self.curves().f1_max_oracle()[0])


# ================================================================================ pixel level
class PixelRankingMetric(Metric):
    """Stores raw maps (as returned, any size) and sparse ground truths at the evaluation size;
    computes pixel ROC / PR / PRO / sPRO curves at the end, exact or binned (see ``pixel.py``).

    Args:
        mode: ``auto`` (exact up to ``exact_max_pixels`` evaluated pixels, else binned), ``exact``,
            ``binned``.
        fpr_limit: AU-PRO integration limit (official: 0.3).
        spro_limit: AU-sPRO integration limit for ``compute()`` (LOCO headline: 0.05).
        store_dtype: dtype of stored maps. float32 (default) keeps every score; float16 halves the
            memory but creates ties that can shift AUROC in the 4th decimal.
        compute_device: where the exact sort runs (``None``: CPU).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        mode: str = "auto",
        fpr_limit: float = 0.3,
        spro_limit: float = 0.05,
        exact_max_pixels: int = 50_000_000,
        num_bins: int = 16384,
        num_positive_bins: int = 4096,
        sample_size: int = 2_000_000,
        store_dtype: torch.dtype = torch.float32,
        compute_device: str | torch.device | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.config = BinningConfig(mode, exact_max_pixels, num_bins, num_positive_bins, sample_size)
        self.fpr_limit = fpr_limit
        self.spro_limit = spro_limit
        self.store_dtype = store_dtype
        self.compute_device = compute_device or "cpu"
        for name in ("maps", "meta", "positive_index", "region_weight", "channel_index", "channel_meta"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    # ----------------------------------------------------------------------------- update
    def update(
        self,
        anomaly_maps: Tensor | Sequence[Tensor],
        masks: Tensor | Sequence[Tensor] | None = None,
        ground_truths: Sequence[GroundTruth] | None = None,
        tags: Tensor | Sequence[int] | None = None,
        groups: Tensor | Sequence[int] | None = None,
        keys: Tensor | Sequence[int] | None = None,
    ) -> None:
        """Add a batch of raw maps ``[B, h, w]`` (or a list of ``[h, w]``) with either dense
        ``masks`` (``[B, H, W]``, any values, ``!= 0`` is anomalous; regions computed here) or
        prepared ``ground_truths`` (see ``ground_truth.py``; needed for sPRO channels).
        Maps are resized bilinearly to the ground-truth size when computing."""
        maps = list(anomaly_maps) if not isinstance(anomaly_maps, Tensor) else list(anomaly_maps.unbind(0))
        if (masks is None) == (ground_truths is None):
            raise ValueError("PixelRankingMetric.update needs exactly one of masks= or ground_truths=")
        if ground_truths is None:
            mask_list = list(masks) if not isinstance(masks, Tensor) else list(masks.unbind(0))
            ground_truths = [ground_truth_from_mask(m) for m in mask_list]
        if len(ground_truths) != len(maps):
            raise ValueError(f"{len(maps)} anomaly maps but {len(ground_truths)} ground truths")
        batch = len(maps)
        tag_col = _column(tags, batch, 0, "tags")
        group_col = _column(groups, batch, 0, "groups")
        key_col = _column(keys, batch, -1, "keys")
        for i, (anomaly_map, truth) in enumerate(zip(maps, ground_truths)):
            anomaly_map = torch.as_tensor(anomaly_map).detach()
            if anomaly_map.ndim != 2:
                raise ValueError(f"anomaly map {i} must be [h, w], got shape {tuple(anomaly_map.shape)}")
            if torch.isnan(anomaly_map).any():
                raise ValueError(f"anomaly map {i} contains NaN scores")
            h, w = anomaly_map.shape
            self.maps.append(anomaly_map.reshape(-1).to(device="cpu", dtype=self.store_dtype))
            self.meta.append(
                torch.tensor(
                    [[h, w, truth.height, truth.width, truth.positive_index.numel(), truth.num_regions,
                      len(truth.channel_index), int(tag_col[i]), int(group_col[i]), int(key_col[i])]],
                    dtype=torch.int64,
                )
            )
            self.positive_index.append(truth.positive_index.to(torch.int64))
            self.region_weight.append(truth.region_weight.to(torch.float64))
            self.channel_index.append(
                torch.cat(list(truth.channel_index)) if truth.channel_index else torch.empty(0, dtype=torch.int64)
            )
            self.channel_meta.append(
                torch.tensor(
                    [[float(idx.numel()), float(sat)] for idx, sat in zip(truth.channel_index, truth.channel_saturation)],
                    dtype=torch.float64,
                ).reshape(-1, 2)
            )

    # ---------------------------------------------------------------------------- decoding
    def images(self) -> tuple[list[PixelImage], Tensor]:
        """Decode the (synced) states into images; returns (images, meta [N, 10])."""
        maps = _state(self.maps, self.store_dtype)
        meta = _state(self.meta, torch.int64, len(_PIXEL_META_FIELDS))
        positive_index = _state(self.positive_index, torch.int64)
        region_weight = _state(self.region_weight, torch.float64)
        channel_index = _state(self.channel_index, torch.int64)
        channel_meta = _state(self.channel_meta, torch.float64, 2)
        keep = _first_occurrence(meta[:, 9])
        images: list[PixelImage] = []
        map_at = pos_at = chan_at = chan_meta_at = 0
        for row, kept in zip(meta.tolist(), keep.tolist()):
            h, w, height, width, n_pos, n_regions, n_channels, tag, _group, _key = row
            n_map = h * w
            channel_sizes = channel_meta[chan_meta_at : chan_meta_at + n_channels]
            n_channel_pixels = int(channel_sizes[:, 0].sum().item()) if n_channels else 0
            if kept:
                flat_channels = channel_index[chan_at : chan_at + n_channel_pixels]
                split = torch.split(flat_channels, [int(s) for s in channel_sizes[:, 0].tolist()]) if n_channels else ()
                truth = GroundTruth(
                    height, width,
                    positive_index[pos_at : pos_at + n_pos],
                    region_weight[pos_at : pos_at + n_pos],
                    n_regions,
                    tuple(split),
                    tuple(channel_sizes[:, 1].tolist()),
                )
                images.append(PixelImage(maps[map_at : map_at + n_map].reshape(h, w), truth, tag))
            map_at += n_map
            pos_at += n_pos
            chan_at += n_channel_pixels
            chan_meta_at += n_channels
        return images, meta[keep]

    def curves(
        self,
        subsets: Mapping[str, Sequence[int]] | None = None,
        group: int | None = None,
        operating_thresholds: Sequence[float] = (),
    ) -> dict[str, RankingCurves]:
        """Curves per subset of tags (``{"all": ...}`` by default) of one ``group`` (all if None),
        with exact flagged counts at ``operating_thresholds`` (``RankingCurves.operating``)."""
        images, meta = self.images()
        if group is not None:
            images = [img for img, g in zip(images, meta[:, 8].tolist()) if g == group]
        if not images:
            return {}
        return evaluate_pixels(images, subsets, self.config, self.compute_device, operating_thresholds)

    def compute(self) -> dict[str, Tensor]:
        curves = self.curves().get("all")
        if curves is None:
            return {}
        return {
            "auroc": _scalar(curves.auroc()),
            "ap": _scalar(curves.average_precision()),
            "aupro": _scalar(curves.aupro(self.fpr_limit)),
            "auspro": _scalar(curves.auspro(self.spro_limit)),
            "f1max_oracle": _scalar(curves.f1_max_oracle()[0]),
        }

    def _single(self) -> RankingCurves | None:
        return self.curves().get("all")


def _value(curves: RankingCurves | None, read) -> Tensor:
    return _scalar(math.nan if curves is None else read(curves))


class PixelAUROC(PixelRankingMetric):
    """Pixel AUROC over all pixels of all images (normal images included)."""

    def compute(self) -> Tensor:
        return _value(self._single(), RankingCurves.auroc)


class PixelAP(PixelRankingMetric):
    """Pixel average precision (step sum, = sklearn's ``average_precision_score``)."""

    def compute(self) -> Tensor:
        return _value(self._single(), RankingCurves.average_precision)


class PixelAUPRO(PixelRankingMetric):
    """AU-PRO, official MVTec AD definition, normalised by ``fpr_limit`` (default 0.3)."""

    def compute(self) -> Tensor:
        return _value(self._single(), lambda c: c.aupro(self.fpr_limit))


class PixelAUSPRO(PixelRankingMetric):
    """AU-sPRO, official MVTec LOCO v2.0 definition, normalised by ``spro_limit`` (default 0.05).
    Needs ``ground_truths`` with channels (see ``GroundTruthCache.from_files(with_channels=True)``)."""

    def compute(self) -> Tensor:
        return _value(self._single(), lambda c: c.auspro(self.spro_limit))


class PixelF1Max(PixelRankingMetric):
    """Best pixel F1 over all thresholds. ORACLE: the threshold is picked on the test masks."""

    def compute(self) -> Tensor:
        return _value(self._single(), lambda c: c.f1_max_oracle()[0])
