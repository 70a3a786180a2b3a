"""Curve data files: thinning keeps the shape, a real category result survives the round trip with
its exact areas, bad files give one-line errors naming the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly_bench.metrics.curve_data import (
    CURVES_FORMAT,
    CurveDataError,
    category_curves,
    curves_path,
    downsample_curve,
    from_dict,
    read_category_curves,
    read_run_curves,
    to_dict,
    write_category_curves,
)
from anomaly_bench.metrics.curves import trapezoid
from anomaly_bench.metrics.ground_truth import ground_truth_from_mask
from anomaly_bench.metrics.metric_classes import ImageRankingMetric, PixelRankingMetric
from anomaly_bench.metrics.report import (
    TAG_GOOD,
    TAG_LOGICAL,
    TAG_STRUCTURAL,
    ReportConfig,
    category_result,
    stable_id,
)
from anomaly_bench.types import DefectSpec

SIZE = 40


def _mvtec_like(seed: int = 0, n: int = 12, group: int = 7):
    """A category with n/2 anomalous images (one rectangle each); maps = signal + noise."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n // 2):
        y, x = rng.integers(0, SIZE - 10, 2)
        masks[i, y : y + 8, x : x + 6] = 255
    maps = (rng.normal(size=masks.shape) + 1.2 * (masks != 0)).astype(np.float32)
    labels = [1] * (n // 2) + [0] * (n - n // 2)
    scores = maps.reshape(n, -1).max(1) + rng.normal(scale=0.5, size=n)
    images, pixels = ImageRankingMetric(), PixelRankingMetric()
    images.update(torch.tensor(scores), torch.tensor(labels), groups=[group] * n, keys=list(range(n)))
    pixels.update(
        torch.from_numpy(maps), masks=torch.from_numpy(masks), groups=[group] * n, keys=list(range(n))
    )
    return category_result("bottle", group, images, pixels, ReportConfig())


def test_round_trip_of_a_real_category_keeps_the_exact_areas(tmp_path):
    result = _mvtec_like()
    path = write_category_curves(tmp_path, result, fpr_limit=0.3, max_points=100)
    assert path == curves_path(tmp_path, "bottle") == tmp_path / "curves" / "bottle.json"
    back = read_category_curves(path)
    row = result.row
    assert back.category == "bottle" and back.fpr_limit == 0.3
    assert back.image.auroc == pytest.approx(row["image_auroc"], abs=1e-12)
    assert back.image.ap == pytest.approx(row["image_ap"], abs=1e-12)
    pixel = back.pixel["all"]
    assert pixel.auroc == pytest.approx(row["pixel_auroc"], abs=1e-12)
    assert pixel.ap == pytest.approx(row["pixel_ap"], abs=1e-12)
    assert pixel.aupro == pytest.approx(row["pixel_aupro"], abs=1e-12)
    assert pixel.positives == float(result.pixel_curves["all"].points.total_positives)
    # thinned, yet the same shape: endpoints kept, area of the stored polyline close to the exact one
    exact_points = len(result.pixel_curves["all"].fpr())
    assert exact_points > 100 and len(pixel.roc.x) <= 100
    assert (pixel.roc.x[0], pixel.roc.y[0]) == (0.0, 0.0) and (pixel.roc.x[-1], pixel.roc.y[-1]) == (1.0, 1.0)
    assert trapezoid(np.array(pixel.roc.x), np.array(pixel.roc.y)) == pytest.approx(
        row["pixel_auroc"], abs=0.01
    )
    assert pixel.pro is not None and max(pixel.pro.y) <= 1.0
    assert pixel.spro is None and pixel.auspro == {}
    # the object written equals the object read
    assert from_dict(json.loads(path.read_text())) == back
    assert to_dict(back)["format"] == CURVES_FORMAT
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temporaries


def test_loco_subsets_and_spro_are_kept(tmp_path):
    group, n = 3, 6
    rng = np.random.default_rng(1)
    truths, tags, maps = [], [], []
    for i in range(n):
        tag = (TAG_LOGICAL, TAG_STRUCTURAL, TAG_GOOD)[i % 3]
        channel = np.zeros((24, 24), np.uint8)
        if tag != TAG_GOOD:
            channel[4 + i : 12 + i, 5:15] = 255
            truths.append(ground_truth_from_mask(channel, [channel], [DefectSpec(saturation_threshold=0.5)]))
        else:
            truths.append(ground_truth_from_mask(channel))
        maps.append(torch.from_numpy((rng.normal(size=(24, 24)) + 2.0 * (channel != 0)).astype(np.float32)))
        tags.append(tag)
    labels = [int(t != TAG_GOOD) for t in tags]
    images, pixels = ImageRankingMetric(), PixelRankingMetric()
    scores = torch.tensor([float(m.max()) for m in maps])
    images.update(scores, torch.tensor(labels), tags=tags, groups=[group] * n, keys=list(range(n)))
    pixels.update(maps, ground_truths=truths, tags=tags, groups=[group] * n, keys=list(range(n)))
    result = category_result("pins", group, images, pixels, ReportConfig(spro_limits=(0.05, 0.3)))
    back = read_category_curves(write_category_curves(tmp_path, result, spro_limits=(0.05, 0.3)))
    assert set(back.pixel) == {"all", "logical", "structural"}
    logical = back.pixel["logical"]
    assert logical.spro is not None
    assert logical.auspro["0.05"] == pytest.approx(result.row["pixel_auspro_logical@0.05"], abs=1e-12)
    assert logical.auspro["0.3"] == pytest.approx(result.row["pixel_auspro_logical@0.3"], abs=1e-12)


def test_one_class_category_stores_no_curves_and_no_areas(tmp_path):
    images = ImageRankingMetric()
    images.update(torch.tensor([0.1, 0.4, 0.2]), torch.tensor([0, 0, 0]), groups=[5] * 3)
    result = category_result("empty", 5, images, None, ReportConfig())
    data = category_curves(result)
    assert data.image is not None and data.image.roc is None and data.image.auroc is None
    assert data.image.negatives == 3 and data.pixel == {}
    assert read_category_curves(write_category_curves(tmp_path, result)) == data


def test_downsample_keeps_a_steep_rise_and_the_endpoints():
    # a PRO-like curve: rises to 0.9 within FPR 0.001, then crawls to 1 over a million points
    x = np.concatenate([np.linspace(0, 0.001, 1000), np.linspace(0.001, 1.0, 1_000_000)])
    y = np.concatenate([np.linspace(0, 0.9, 1000), np.linspace(0.9, 1.0, 1_000_000)])
    tx, ty = downsample_curve(x, y, 200)
    assert len(tx) <= 200 and (tx[0], ty[0]) == (0.0, 0.0) and (tx[-1], ty[-1]) == (1.0, 1.0)
    assert np.all(np.diff(tx) >= 0)  # order kept
    steep = ty[tx <= 0.001]
    assert len(steep) > 50  # the rise is half of the curve's length, so it keeps about half the points
    uniform = np.unique(np.linspace(0, len(x) - 1, 200).round().astype(int))
    assert (x[uniform] <= 0.001).sum() == 1  # what evenly spaced indices would have kept


def test_downsample_drops_non_finite_points_and_leaves_short_curves_alone():
    x, y = np.array([0.0, np.nan, 0.5, 1.0]), np.array([0.0, 0.2, np.inf, 1.0])
    tx, ty = downsample_curve(x, y, 10)
    assert tx.tolist() == [0.0, 1.0] and ty.tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="max_points"):
        downsample_curve(x, y, 1)
    with pytest.raises(ValueError, match="differ in length"):
        downsample_curve(np.zeros(3), np.zeros(2))


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "other"}), "'format' must be"),
        (json.dumps({"format": CURVES_FORMAT, "version": 99, "category": "x"}), "unsupported 'version'"),
        (
            json.dumps(
                {
                    "format": CURVES_FORMAT,
                    "version": 1,
                    "category": "x",
                    "image": {"roc": {"x": [0, 1], "y": [0]}},
                }
            ),
            "image.roc: x has 2 points but y has 1",
        ),
        (
            json.dumps({"format": CURVES_FORMAT, "version": 1, "category": "x", "image": {"auroc": "high"}}),
            "image.auroc: expected a number",
        ),
    ],
)
def test_bad_files_give_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "curves" / "x.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(CurveDataError, match=message) as info:
        read_category_curves(path)
    assert str(path) in str(info.value)
    assert read_run_curves(tmp_path) == {}  # a report skips the file instead of failing


def test_missing_file_and_missing_folder(tmp_path):
    with pytest.raises(CurveDataError, match="cannot read curves file"):
        read_category_curves(tmp_path / "nope.json")
    assert read_run_curves(tmp_path) == {}


def test_category_names_are_made_file_safe(tmp_path):
    result = _mvtec_like(group=stable_id("metal nut/2"))
    result.row["category"] = "metal nut/2"
    path = write_category_curves(tmp_path, result)
    assert path.name == "metal_nut_2.json"
    assert set(read_run_curves(tmp_path)) == {"metal nut/2"}  # the name inside the file wins
