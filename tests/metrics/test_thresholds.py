"""Operating thresholds: known answers of the quantile rule, the false-positive rate they deliver on
fresh normals, normals only, the bounded pixel sample, the record's round trip, display scaling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from anomaly_bench.metrics.thresholds import (
    NormalScores,
    PixelSketch,
    ThresholdError,
    Thresholds,
    counts_at,
    fit_thresholds,
    fixed_thresholds,
    normalised_score,
    precision_recall_f1,
    quantile_threshold,
    thresholds_for,
    thresholds_record,
)


def test_quantile_rule_known_answers():
    scores = np.arange(1, 101, dtype=float)  # 1..100
    # 1 % of 100: one normal may be flagged -> halfway between 99 and 100
    assert quantile_threshold(scores, 0.01) == 99.5
    assert quantile_threshold(scores, 0.05) == 95.5
    assert quantile_threshold(scores[::-1].copy(), 0.05) == 95.5  # order does not matter
    # fewer normals than 1 / target: nothing may be flagged -> just above the largest
    small = quantile_threshold([0.1, 0.2, 0.3], 0.01)
    assert 0.3 < small < 0.3 + 1e-12
    # ties never tip the count over the target: 10 normals tie at the top
    tied = np.r_[np.arange(90.0), np.full(10, 500.0)]
    t = quantile_threshold(tied, 0.05)  # 5 may be flagged, but the top 10 are one value
    assert t > 500.0 and (tied >= t).sum() == 0
    assert quantile_threshold(tied, 0.10) == (89.0 + 500.0) / 2  # exactly the 10 tied ones
    # raw scores of any sign and offset
    assert quantile_threshold(np.arange(100) - 1e6, 0.01) == pytest.approx(-1e6 + 98.5)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_flagged_share_of_calibration_normals_never_exceeds_the_target(target):
    rng = np.random.default_rng(3)
    for n in (50, 199, 200, 1000):
        scores = rng.gamma(2.0, size=n)
        flagged = (scores >= quantile_threshold(scores, target)).mean()
        assert flagged <= target + 1e-12
        assert flagged > target - 1.0 / n - 1e-12  # and as many as allowed


def test_fresh_normals_are_flagged_at_about_the_target_rate():
    """Calibrated on 400 normals at 1 %: on 5000 fresh normals of the same generator the rate is
    within 1.5 points of 1 %, for each of 20 seeds, and 1 % on average."""
    rates = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        threshold = quantile_threshold(rng.lognormal(0.0, 0.7, size=400), 0.01)
        rates.append(float((rng.lognormal(0.0, 0.7, size=5000) >= threshold).mean()))
    assert max(abs(r - 0.01) for r in rates) < 0.015
    assert abs(np.mean(rates) - 0.01) < 0.003


def test_anomalies_never_move_the_fit_and_unknown_labels_are_refused():
    rng = np.random.default_rng(0)
    normals = rng.normal(size=300)
    with_anomalies = np.r_[normals, rng.normal(loc=8.0, size=100)]
    labels = np.r_[np.zeros(300, int), np.ones(100, int)]
    clean = fit_thresholds(normals, target_fpr=0.01)
    mixed = fit_thresholds(with_anomalies, target_fpr=0.01, labels=labels)
    assert mixed.image == clean.image and mixed.num_images == 300
    assert fit_thresholds(with_anomalies, target_fpr=0.01).image > clean.image  # without labels they would
    with pytest.raises(ThresholdError, match="unknown labels"):
        fit_thresholds(normals, labels=np.full(300, -1))
    with pytest.raises(ThresholdError, match="no normal scores"):
        fit_thresholds(rng.normal(size=5), labels=np.ones(5, int))


def test_pixel_threshold_from_maps_ignores_anomalous_maps_and_is_exact_below_capacity():
    rng = np.random.default_rng(1)
    normal_maps = rng.normal(size=(6, 20, 20)).astype(np.float32)
    anomalous_map = np.full((1, 20, 20), 100.0, np.float32)
    maps = torch.from_numpy(np.concatenate([normal_maps, anomalous_map]))
    scores = maps.flatten(1).amax(1)
    fitted = fit_thresholds(scores, maps, target_fpr=0.01, labels=torch.tensor([0] * 6 + [1]))
    assert fitted.num_images == 6 and fitted.num_pixels == 6 * 400 and fitted.pixel_rank_error == 0.0
    assert fitted.pixel == quantile_threshold(normal_maps, 0.01)  # every pixel held: exact
    assert (normal_maps >= fitted.pixel).mean() <= 0.01


def test_pixel_sketch_is_bounded_deterministic_and_within_its_stated_error():
    rng = np.random.default_rng(2)
    chunks = [rng.standard_t(4, size=50_000).astype(np.float32) for _ in range(20)]  # 1 M values
    sketch = PixelSketch(capacity=20_000, seed=7)
    for chunk in chunks:
        sketch.update(chunk)
        assert sketch._held <= 2 * sketch.capacity + chunk.size  # bounded between compressions
    assert sketch.total == 1_000_000 and not sketch.exact and sketch.values().size == 20_000
    everything = np.concatenate(chunks)
    for target in (0.01, 0.05):
        threshold = quantile_threshold(sketch.values(), target)
        error = sketch.rank_error(target)
        assert error == pytest.approx(math.sqrt(target * (1 - target) / 20_000))
        assert abs((everything >= threshold).mean() - target) < 4 * error
    again = PixelSketch(capacity=20_000, seed=7)
    for chunk in chunks:
        again.update(chunk)
    assert np.array_equal(again.values(), sketch.values())  # same input, same sample
    restored = PixelSketch.from_state_dict(sketch.state_dict())
    assert np.array_equal(restored.values(), sketch.values()) and restored.total == sketch.total
    extra = rng.normal(size=1000)
    restored.update(extra)
    sketch.update(extra)
    assert np.array_equal(restored.values(), sketch.values())  # the random stream continues too


def test_refit_at_another_target_from_the_stored_scores():
    rng = np.random.default_rng(4)
    collector = NormalScores(pixel_capacity=10_000)
    for _ in range(10):
        maps = torch.from_numpy(rng.normal(size=(4, 8, 8)).astype(np.float32))
        collector.update(maps.flatten(1).amax(1), maps)
    one, five = collector.fit(0.01, "validation"), collector.fit(0.05, "validation")
    assert five.image < one.image and five.pixel < one.pixel
    assert (one.target_fpr, five.target_fpr, one.num_images, one.num_pixels) == (0.01, 0.05, 40, 2560)
    assert collector.fit(0.01, "validation") == one  # fitting consumes nothing


def test_record_round_trip_and_bad_records():
    fitted = fit_thresholds(np.arange(200.0), target_fpr=0.02, source="validation split, normal images")
    data = json.loads(json.dumps(fitted.to_dict()))
    assert Thresholds.from_dict(data) == fitted
    assert {"image", "pixel", "target_fpr", "source", "method", "num_images"} <= set(data)
    with pytest.raises(ThresholdError, match="unknown keys"):
        Thresholds.from_dict({**data, "colour": 1}, "metrics.json thresholds")
    with pytest.raises(ThresholdError, match="method"):
        Thresholds.from_dict({**data, "method": "guess"})
    with pytest.raises(ThresholdError, match="finite"):
        Thresholds(image=float("nan"))
    with pytest.raises(ThresholdError, match="target_fpr"):
        fit_thresholds(np.arange(10.0), target_fpr=1.0)
    fixed = fixed_thresholds(2.5, 0.7)
    assert (fixed.method, fixed.image, fixed.pixel, fixed.target_fpr) == ("fixed", 2.5, 0.7, None)


def test_per_category_thresholds_pick_and_record():
    a, b = fixed_thresholds(1.0, 2.0), fixed_thresholds(3.0)
    assert thresholds_for(None, "a") is None
    assert thresholds_for(a, "zzz") is a
    assert thresholds_for(a.to_dict(), "zzz") == a
    assert thresholds_for({"a": a, "b": b.to_dict()}, "b") == b
    assert thresholds_for({"a": a}, "c") is None and thresholds_for({"all": a}, "c") is a
    record = thresholds_record({"a": a, "b": b})
    assert record["image"] == {"a": 1.0, "b": 3.0} and record["pixel"] == {"a": 2.0, "b": None}
    assert record["method"] == "fixed" and set(record["per_category"]) == {"a", "b"}


def test_normalised_score_is_one_at_the_threshold_and_keeps_types():
    assert normalised_score(3.0, 3.0) == 1.0 and normalised_score(1.5, 3.0) == 0.5
    assert normalised_score(-1.0, -3.0, reference=-5.0) == 2.0  # raw scores of any sign
    array = normalised_score(np.array([2.0, 4.0]), 4.0, reference=2.0)
    assert isinstance(array, np.ndarray) and array.tolist() == [0.0, 1.0]
    tensor = normalised_score(torch.tensor([6.0]), 4.0, reference=2.0)
    assert isinstance(tensor, torch.Tensor) and tensor.item() == 2.0
    fitted = fit_thresholds(np.arange(101.0), target_fpr=0.01)
    assert fitted.normalised_image_score(fitted.image) == pytest.approx(1.0)
    assert fitted.normalised_image_score(50.0) == pytest.approx(0.0)  # the median normal
    with pytest.raises(ThresholdError):
        normalised_score(1.0, 2.0, reference=2.0)


def test_precision_recall_f1_at_a_threshold_known_answers():
    scores = [0.1, 0.4, 0.5, 0.9, 0.3, 0.8]
    labels = [0, 0, 1, 1, 1, 0]
    assert counts_at(scores, labels, 0.45) == (2, 1, 1)  # 0.5, 0.9 hit; 0.8 false alarm; 0.3 missed
    assert counts_at(scores, labels, 0.5) == (2, 1, 1)  # >= : 0.5 itself is flagged
    assert precision_recall_f1(2, 1, 1) == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    assert precision_recall_f1(0, 0, 3) == {"precision": None, "recall": 0.0, "f1": 0.0}
    assert precision_recall_f1(0, 0, 0) == {"precision": None, "recall": None, "f1": None}


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_pixel_counts_at_a_threshold_are_exact_in_both_modes(mode):
    from anomaly_bench.metrics.ground_truth import ground_truth_from_mask
    from anomaly_bench.metrics.pixel import BinningConfig, PixelImage, evaluate_pixels

    rng = np.random.default_rng(5)
    masks = np.zeros((5, 24, 30), np.uint8)
    masks[:2, 4:12, 6:20] = 255
    maps = (rng.normal(size=masks.shape) + 1.5 * (masks != 0)).astype(np.float32)
    maps[3, 0, :4] = maps[0, 5, 7]  # ties with a positive score
    images = [PixelImage(torch.from_numpy(m), ground_truth_from_mask(g)) for m, g in zip(maps, masks)]
    thresholds = (float(maps[0, 5, 7]), 1.2345, float(np.quantile(maps, 0.99)), 1e9)
    curves = evaluate_pixels(images, None, BinningConfig(mode=mode, num_bins=64, num_positive_bins=16),
                             operating_thresholds=thresholds)["all"]
    for t in thresholds:
        flagged = maps >= t
        assert curves.operating[t] == (float((flagged & (masks == 0)).sum()), float((flagged & (masks != 0)).sum()))
