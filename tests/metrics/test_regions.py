"""Regions: 8-connectivity for PRO, one region per mask file for sPRO, saturation rules, caching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anomaly_bench.metrics import GroundTruthCache, functional as F, ground_truth_from_mask
from anomaly_bench.metrics.ground_truth import saturation_area
from anomaly_bench.types import DefectSpec


def test_diagonally_touching_blobs_are_one_region():
    mask = np.zeros((12, 12), np.uint8)
    mask[2:5, 2:5] = 255
    mask[5:8, 5:8] = 255  # touches only at a corner
    truth = ground_truth_from_mask(mask)
    assert truth.num_regions == 1
    assert np.allclose(truth.region_weight.numpy(), 1 / 18)
    mask[9:11, 0:2] = 1  # a separate blob
    assert ground_truth_from_mask(mask).num_regions == 2


def test_finding_only_the_large_region_gives_pro_one_half():
    masks = np.zeros((2, 40, 40), np.uint8)
    masks[0, 5:25, 5:25] = 255  # large
    masks[0, 30:33, 30:33] = 255  # small
    maps = (masks != 0).astype(np.float32)
    maps[0, 30:33, 30:33] = 0  # the small region is missed
    curves = F.pixel_curves(maps, masks, mode="exact")
    fpr, pro = curves.fpr(), curves.pro()
    assert pro[fpr == 0].max() == pytest.approx(0.5)  # one of two regions found
    # curve (0,0) -> (0,0.5) -> (1,1): area to 0.3 is 0.3*(0.5+0.65)/2, normalised by 0.3
    assert curves.aupro(0.3) == pytest.approx(0.575)
    assert curves.auroc() > 0.98  # pixel AUROC barely notices the small region: PRO does


def test_loco_mask_file_with_two_blobs_is_one_spro_region():
    channel = np.zeros((30, 30), np.uint8)
    channel[2:6, 2:6] = 255  # 16 px, found
    channel[20:22, 20:22] = 255  # 4 px, missed
    maps = (channel != 0).astype(np.float32)[None]
    maps[0, 20:22, 20:22] = 0
    one_file = F.auspro(maps, [[channel]], fpr_limit=0.05, mode="exact")
    # one region, 16/20 covered: (0,0)->(0,0.8)->(1,1); area to 0.05 normalised = (0.8+0.81)/2
    assert one_file == pytest.approx(0.805)
    first, second = np.zeros_like(channel), np.zeros_like(channel)
    first[2:6, 2:6], second[20:22, 20:22] = 255, 255
    two_files = F.auspro(maps, [[first, second]], fpr_limit=0.05, mode="exact")
    assert two_files == pytest.approx((0.5 + 0.525) / 2)
    truth = F.spro_ground_truths([[channel]])[0]
    assert len(truth.channel_index) == 1 and truth.num_regions == 2  # PRO still sees two regions


def test_saturation_rules_follow_loco_v2():
    assert saturation_area(DefectSpec(saturation_threshold=0.5, relative_saturation=True), 15) == 7  # int(7.5)
    assert saturation_area(DefectSpec(saturation_threshold=6300, relative_saturation=False), 1000) == 1000
    assert saturation_area(DefectSpec(saturation_threshold=50, relative_saturation=False), 1000) == 50
    assert saturation_area(DefectSpec(saturation_threshold=50, relative_saturation=False), 1000, area_scale=0.25) == 12.5
    assert saturation_area(DefectSpec(saturation_threshold=0.1, relative_saturation=True), 3) == 1  # guarded


def test_absolute_saturation_caps_spro():
    channel = np.zeros((20, 20), np.uint8)
    channel[0:10, 0:10] = 255  # 100 px, saturation 25 px absolute
    maps = np.zeros((1, 20, 20), np.float32)
    maps[0, 0:5, 0:5] = 1.0  # exactly 25 px found -> sPRO 1 at FPR 0
    spec = [[DefectSpec(saturation_threshold=25, relative_saturation=False)]]
    assert F.auspro(maps, [[channel]], spec, fpr_limit=0.05, mode="exact") == pytest.approx(1.0)
    assert F.auspro(maps, [[channel]], None, fpr_limit=0.05, mode="exact") < 0.3  # relative 1.0: 25 %


def test_cache_reads_each_mask_once(tmp_path, monkeypatch):
    mask = np.zeros((16, 20), np.uint8)
    mask[3:6, 3:9] = 255
    path = tmp_path / "000_mask.png"
    cv2.imwrite(str(path), mask)
    import anomaly_bench.data.io as io

    calls = []
    original = io.read_mask
    monkeypatch.setattr(io, "read_mask", lambda p: calls.append(p) or original(p))
    cache = GroundTruthCache()
    a = cache.from_files([str(path)])
    b = cache.from_files([str(path)])
    assert a is b and len(calls) == 1
    assert (a.height, a.width, a.num_regions, a.positive_index.numel()) == (16, 20, 1, 18)
    small = cache.from_files([str(path)], size=(8, 10))
    assert (small.height, small.width) == (8, 10) and len(calls) == 2
