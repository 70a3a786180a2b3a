"""Known answers of every metric, exact and binned, against sklearn and the dense references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from anomaly_bench.metrics import functional as F
from anomaly_bench.types import DefectSpec
from tests.metrics.reference import dense_aupro, dense_auspro

MODES = ("exact", "binned")


def _masks(n_images: int = 20, size: int = 64, seed: int = 0) -> np.ndarray:
    """Half the images anomalous, each with 1-3 random rectangles (values 255, as on disk)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_images, size, size), dtype=np.uint8)
    for i in range(n_images // 2):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 12, 2)
            h, w = rng.integers(2, 12, 2)
            masks[i, y : y + h, x : x + w] = 255
    return masks


MASKS = _masks()


def _all_pixel_metrics(maps, masks, mode):
    curves = F.pixel_curves(maps, masks, mode=mode)
    return {"auroc": curves.auroc(), "ap": curves.average_precision(), "aupro": curves.aupro(0.3),
            "f1": curves.f1_max_oracle()[0]}


@pytest.mark.parametrize("mode", MODES)
def test_oracle_scores_one_on_every_metric(mode):
    oracle = (MASKS != 0).astype(np.float32) * 3.0 - 1.0  # raw scores outside [0, 1]
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in _all_pixel_metrics(oracle, MASKS, mode).values())
    labels = (MASKS != 0).reshape(len(MASKS), -1).any(1)
    scores = oracle.reshape(len(MASKS), -1).max(1)
    assert F.image_auroc(scores, labels) == 1.0
    assert F.image_ap(scores, labels) == 1.0


@pytest.mark.parametrize("mode", MODES)
def test_inverted_oracle_auroc_zero(mode):
    inverted = -(MASKS != 0).astype(np.float32)
    metrics = _all_pixel_metrics(inverted, MASKS, mode)
    assert metrics["auroc"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["aupro"] == pytest.approx(0.0, abs=1e-12)
    labels = np.array([1, 1, 0, 0])
    assert F.image_auroc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_iid_random_maps_are_chance(mode):
    maps = np.random.default_rng(1).random(MASKS.shape, dtype=np.float32)
    metrics = _all_pixel_metrics(maps, MASKS, mode)
    assert metrics["auroc"] == pytest.approx(0.5, abs=0.02)
    assert metrics["aupro"] == pytest.approx(0.15, abs=0.02)  # PRO(f) ~ f: 0.045 / 0.3


@pytest.mark.parametrize("mode", MODES)
def test_constant_map_is_the_diagonal(mode):
    metrics = _all_pixel_metrics(np.full(MASKS.shape, 7.5, dtype=np.float32), MASKS, mode)
    assert metrics["auroc"] == pytest.approx(0.5, abs=1e-12)
    assert metrics["aupro"] == pytest.approx(0.15, abs=1e-12)
    assert metrics["ap"] == pytest.approx((MASKS != 0).mean(), abs=1e-12)  # AP of ties = base rate


def _signal_maps(seed=2):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=MASKS.shape) + 1.2 * (MASKS != 0)).astype(np.float32)


@pytest.mark.parametrize("mode", MODES)
def test_invariant_under_strictly_increasing_transform(mode):
    maps = _signal_maps()
    transformed = np.exp(3.0 * maps.astype(np.float64)).astype(np.float32)
    a, b = _all_pixel_metrics(maps, MASKS, mode), _all_pixel_metrics(transformed, MASKS, mode)
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-6), name
    scores = maps.reshape(len(maps), -1).max(1)
    labels = (MASKS != 0).reshape(len(MASKS), -1).any(1)
    assert F.image_auroc(scores, labels) == F.image_auroc(np.exp(3 * scores), labels)


@pytest.mark.parametrize("outlier", [False, True])
@pytest.mark.parametrize("kind", ["random", "constant", "signal", "oracle"])
def test_exact_and_binned_agree(kind, outlier):
    maps = {
        "random": np.random.default_rng(3).random(MASKS.shape, dtype=np.float32),
        "constant": np.zeros(MASKS.shape, dtype=np.float32),
        "signal": _signal_maps(4),
        "oracle": (MASKS != 0).astype(np.float32),
    }[kind]
    if outlier:
        maps = maps.copy()
        maps[15, 3, 3] = 1e6  # a normal image's pixel: fixed uniform edges would collapse here
    exact, binned = _all_pixel_metrics(maps, MASKS, "exact"), _all_pixel_metrics(maps, MASKS, "binned")
    for name in exact:
        assert binned[name] == pytest.approx(exact[name], abs=1e-4), name


def test_binned_really_bins_but_stays_close():
    """With few bins the binned result is an approximation (not identical to exact), still within 1e-3."""
    from anomaly_bench.metrics.pixel import BinningConfig

    maps = _signal_maps(5)
    exact = F.pixel_curves(maps, MASKS, mode="exact")
    binned = F.pixel_curves(maps, MASKS, config=BinningConfig(mode="binned", num_bins=512, num_positive_bins=64))
    assert len(binned.points.negatives) <= 512 + 2 * 64 + 2  # one point per edge, plus both ends
    assert binned.auroc() != exact.auroc()
    assert binned.auroc() == pytest.approx(exact.auroc(), abs=1e-3)
    assert binned.aupro() == pytest.approx(exact.aupro(), abs=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_auroc_and_ap_equal_sklearn_with_ties(mode):
    maps = np.round(_signal_maps(6), 1)  # heavy ties
    truth, scores = (MASKS != 0).ravel(), maps.ravel()
    curves = F.pixel_curves(maps, MASKS, mode=mode)
    tolerance = 1e-12 if mode == "exact" else 1e-4
    assert curves.auroc() == pytest.approx(roc_auc_score(truth, scores), abs=tolerance)
    assert curves.average_precision() == pytest.approx(average_precision_score(truth, scores), abs=tolerance)
    rng = np.random.default_rng(7)
    image_scores, image_labels = np.round(rng.normal(size=40), 1), rng.random(40) > 0.6
    assert F.image_auroc(image_scores, image_labels) == pytest.approx(roc_auc_score(image_labels, image_scores), abs=1e-12)
    assert F.image_ap(image_scores, image_labels) == pytest.approx(average_precision_score(image_labels, image_scores), abs=1e-12)


def test_f1max_matches_brute_force():
    maps = np.round(_signal_maps(8), 1)
    truth, scores = (MASKS != 0).ravel(), maps.ravel()
    best = max(
        2 * np.sum(truth & (scores >= t)) / (np.sum(scores >= t) + np.sum(truth)) for t in np.unique(scores)
    )
    assert F.pixel_f1max_oracle(maps, MASKS, mode="exact") == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize("mode", MODES)
def test_aupro_equals_dense_reference(mode, limit):
    small = MASKS[:6, :32, :32].copy()
    small[0, 5:9, 5:9] = 255
    small[0, 9:12, 9:12] = 255  # touches the first square only diagonally: one region
    maps = np.round(np.random.default_rng(9).normal(size=small.shape) + 1.0 * (small != 0), 2).astype(np.float32)
    expected = dense_aupro(maps, small, limit)
    assert F.aupro(maps, small, fpr_limit=limit, mode=mode) == pytest.approx(expected, abs=1e-9 if mode == "exact" else 1e-4)


def _loco_case():
    rng = np.random.default_rng(10)
    size = 24
    channels = []
    for i in range(5):
        if i >= 3:
            channels.append([])
            continue
        chans = []
        for _ in range(rng.integers(1, 3)):
            c = np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size - 8, 2)
            c[y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = 255
            if rng.random() < 0.5:  # a second blob in the same file
                c[0:2, size - 3 : size] = 255
            chans.append(c)
        channels.append(chans)
    specs = [[DefectSpec(saturation_threshold=0.5, relative_saturation=True), DefectSpec(saturation_threshold=5, relative_saturation=False)][: len(c)] for c in channels]
    union = [np.any(c, axis=0) if c else np.zeros((size, size), bool) for c in channels]
    maps = np.round(rng.normal(size=(5, size, size)) + 1.5 * np.stack(union), 2).astype(np.float32)
    return maps, channels, specs


@pytest.mark.parametrize("limit", [0.05, 0.3])
@pytest.mark.parametrize("mode", MODES)
def test_auspro_equals_dense_reference(mode, limit):
    maps, channels, specs = _loco_case()
    saturations = []
    for chans, spec in zip(channels, specs):
        sats = []
        for c, s in zip(chans, spec):
            area = int(np.sum(c != 0))
            sats.append(max(1, int(s.saturation_threshold * area)) if s.relative_saturation else min(s.saturation_threshold, area))
        saturations.append(sats)
    expected = dense_auspro(maps, channels, saturations, limit)
    got = F.auspro(maps, channels, specs, fpr_limit=limit, mode=mode)
    assert got == pytest.approx(expected, abs=1e-9 if mode == "exact" else 1e-4)


def test_auspro_oracle_is_one_and_inverted_zero():
    maps, channels, specs = _loco_case()
    union = np.stack([np.any(c, axis=0) if c else np.zeros(maps.shape[1:], bool) for c in channels]).astype(np.float32)
    assert F.auspro(union, channels, specs) == pytest.approx(1.0)
    assert F.auspro(-union, channels, specs) == pytest.approx(0.0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="maps but"):
        F.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        F.pixel_auroc(np.full((1, 4, 4), np.nan), np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="mode must be one of"):
        F.aupro(np.zeros((1, 4, 4)), np.ones((1, 4, 4)), mode="fast")
    with pytest.raises(ValueError, match="integration limit"):
        F.aupro(np.zeros((1, 4, 4)), np.ones((1, 4, 4)), fpr_limit=0.0)
