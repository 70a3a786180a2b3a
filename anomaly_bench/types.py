"""The two records that cross package boundaries: what data hands to a model, what a model returns.

Data flows one way (see docs/ARCHITECTURE.md):
``Sample`` (an index entry on disk) -> ``Batch`` (tensors + ground-truth references) ->
``model.forward(batch.image)`` -> ``AnomalyOutput`` -> Evaluator / visualiser.

A model never sees paths or metrics; a metric never sees a model. Both records are plain
dataclasses so that Lightning moves their tensors to the device (``apply_to_collection`` walks
dataclass fields) and leaves the Python fields alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor


def as_height_width(image_size: int | Sequence[int], what: str = "image_size") -> tuple[int, int]:
    """An image size as ``(height, width)``: an int means a square; anything else is an error naming ``what``."""
    if isinstance(image_size, bool):
        raise ValueError(f"{what} must be a positive int or [height, width], got {image_size!r}")
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        try:
            size = tuple(int(v) for v in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a positive int or [height, width], got {image_size!r}") from None
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"{what} must be a positive int or [height, width], got {image_size!r}")
    return size  # type: ignore[return-value]


LABEL_NORMAL = 0
LABEL_ANOMALOUS = 1
LABEL_UNKNOWN = -1  # predict: images without ground truth


@dataclass(frozen=True)
class DefectSpec:
    """One ground-truth mask file's meaning (MVTec LOCO ``defects_config.json`` entry).

    ``saturation_threshold`` is in pixels at native resolution when ``relative_saturation`` is
    False, else a fraction of the region's area; sPRO needs it, every other metric ignores it.
    """

    pixel_value: int = 255
    saturation_threshold: float = 1.0
    relative_saturation: bool = True
    name: str = ""


@dataclass(frozen=True)
class Sample:
    """One image as indexed from disk, before decoding.

    ``mask_paths`` is empty for normal images (their mask is all zero), holds one file for the
    MVTec-style layouts and one file per defect region for MVTec LOCO. ``defects`` is aligned with
    ``mask_paths`` (LOCO only; empty elsewhere). ``subset`` is the evaluation subset an anomalous
    image belongs to, set by the layout that knows it: ``logical`` | ``structural`` (MVTec LOCO,
    reported apart by the metrics) or ``""`` (none).
    """

    image_path: str
    label: int
    category: str
    defect: str = "good"
    mask_paths: tuple[str, ...] = ()
    defects: tuple[DefectSpec, ...] = ()
    split: str = "test"
    subset: str = ""


@dataclass
class Batch:
    """A collated batch.

    image:      float [B, 3, H, W], normalised as the datamodule was told (model's choice).
    label:      long [B], 0 normal, 1 anomalous, -1 unknown (predict).
    mask:       float [B, H, W] in {0, 1} at the model resolution (all zero for normal/unknown);
                for training-time use (e.g. real-anomaly sources) and for evaluation at model size.
    orig_size:  long [B, 2], (H, W) of the image file on disk; the native evaluation resolution.
    category, defect, path, mask_paths, defects, subset: per-sample Python values (see ``Sample``).
    """

    image: Tensor
    label: Tensor
    mask: Tensor
    orig_size: Tensor
    category: list[str]
    defect: list[str]
    path: list[str]
    mask_paths: list[tuple[str, ...]] = field(default_factory=list)
    defects: list[tuple[DefectSpec, ...]] = field(default_factory=list)
    subset: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        """Return a copy with every tensor field on ``device``."""
        values = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor)
                     else getattr(self, f.name))
            for f in fields(self)
        }
        return Batch(**values)


def collate_items(items: list[dict[str, Any]]) -> Batch:
    """Collate dataset items (dicts with the ``Batch`` field names, unbatched) into a ``Batch``."""
    if not items:
        raise ValueError("collate_items received an empty list of items")
    return Batch(
        image=torch.stack([it["image"] for it in items]),
        label=torch.as_tensor([int(it["label"]) for it in items], dtype=torch.long),
        mask=torch.stack([it["mask"] for it in items]).float(),
        orig_size=torch.as_tensor([tuple(it["orig_size"]) for it in items], dtype=torch.long),
        category=[it["category"] for it in items],
        defect=[it["defect"] for it in items],
        path=[it["path"] for it in items],
        mask_paths=[tuple(it.get("mask_paths", ())) for it in items],
        defects=[tuple(it.get("defects", ())) for it in items],
        subset=[str(it.get("subset", "")) for it in items],
    )


@dataclass
class AnomalyOutput:
    """What every model's ``forward`` returns, in inference mode.

    anomaly_map: float [B, h, w], raw (no sigmoid, no clamping, no normalisation); any h, w:
                 the Evaluator resizes it to the evaluation resolution.
    pred_score:  float [B], raw image-level score; larger means more anomalous.
    """

    anomaly_map: Tensor
    pred_score: Tensor

    def __post_init__(self) -> None:
        if self.anomaly_map.ndim != 3:
            raise ValueError(
                f"AnomalyOutput.anomaly_map must be [B, h, w], got shape {tuple(self.anomaly_map.shape)}"
            )
        if self.pred_score.ndim != 1 or self.pred_score.shape[0] != self.anomaly_map.shape[0]:
            raise ValueError(
                "AnomalyOutput.pred_score must be [B] with the same B as anomaly_map, got "
                f"{tuple(self.pred_score.shape)} vs {tuple(self.anomaly_map.shape)}"
            )

    def detach_cpu(self) -> "AnomalyOutput":
        return AnomalyOutput(self.anomaly_map.detach().float().cpu(), self.pred_score.detach().float().cpu())


@dataclass
class Prediction(AnomalyOutput):
    """What ``trainer.predict`` returns per batch: the raw output plus which images it belongs to.

    path, category, defect: per image, as the dataset indexed it; label: [B] (-1 = unknown).
    """

    path: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    defect: list[str] = field(default_factory=list)
    label: Tensor | None = None

    @classmethod
    def of(cls, output: AnomalyOutput, batch: "Batch") -> "Prediction":
        return cls(output.anomaly_map, output.pred_score, list(batch.path), list(batch.category),
                   list(batch.defect), batch.label)
