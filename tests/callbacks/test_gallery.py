"""The gallery: a method-independent seeded choice of images, streaming equals offline, the
classification of an image at a threshold, and the files on disk."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
import torch

from anomaly_bench.callbacks.gallery import (
    CORRECT_NORMAL,
    FALSE_ALARM,
    HIT,
    MISS,
    GalleryCandidate,
    GalleryCollector,
    GalleryError,
    classify,
    confidence,
    most_confident,
    read_gallery,
    read_gallery_index,
    select_gallery,
)

DEFECTS = ("crack", "hole", "scratch", "stain", "cut")


def _candidates(
    root: str = "/data/mvtec", normals: int = 20, per_defect: int = 4, categories=("bottle", "cable")
) -> list[GalleryCandidate]:
    out = []
    for category in categories:
        out += [
            GalleryCandidate(f"{root}/{category}/test/good/{i:03d}.png", category, "good", 0)
            for i in range(normals)
        ]
        out += [
            GalleryCandidate(f"{root}/{category}/test/{d}/{i:03d}.png", category, d, 1)
            for d in DEFECTS
            for i in range(per_defect)
        ]
    return out


def _ids(items) -> list[str]:
    return [getattr(item, "candidate", item).item_id for item in items]


def test_selection_takes_k_normal_and_k_anomalous_with_every_defect_type():
    chosen = select_gallery(_candidates(), per_class=3)
    for category in ("bottle", "cable"):
        mine = [c for c in chosen if c.category == category]
        normal = [c for c in mine if c.label == 0]
        anomalous = [c for c in mine if c.label == 1]
        assert len(normal) == 3
        assert len(anomalous) == len(DEFECTS)  # more defect types than k: one of each
        assert {c.defect for c in anomalous} == set(DEFECTS)
    few = select_gallery(_candidates(per_defect=4), per_class=8)
    bottle = [c for c in few if c.category == "bottle" and c.label == 1]
    assert len(bottle) == 8 and {c.defect for c in bottle} == set(DEFECTS)  # one each, then the smallest keys


def test_selection_ignores_order_and_dataset_location_but_follows_the_seed():
    base = select_gallery(_candidates(), per_class=4, seed=0)
    shuffled = _candidates()
    random.Random(3).shuffle(shuffled)
    assert _ids(select_gallery(shuffled, per_class=4, seed=0)) == _ids(base)
    moved = select_gallery(_candidates(root="/cluster/scratch/datasets/mvtec_ad"), per_class=4, seed=0)
    assert _ids(moved) == _ids(base)  # only the last two path parts count
    assert _ids(select_gallery(_candidates(), per_class=4, seed=1)) != _ids(base)
    with pytest.raises(ValueError, match="per_class"):
        select_gallery(_candidates(), per_class=0)


def _offer_all(collector, candidates, rng, quality=1.0):
    for c in candidates:
        anomaly_map = rng.normal(size=(32, 32)).astype(np.float32) + quality * c.label
        collector.offer(c.path, c.category, c.defect, c.label, float(anomaly_map.max()), anomaly_map)


def test_streaming_collector_equals_offline_selection_whatever_the_scores():
    candidates = _candidates()
    offline = select_gallery(candidates, per_class=3, seed=0)
    for method_seed, quality in ((0, 0.5), (1, 5.0)):  # two "methods" with different maps and scores
        collector = GalleryCollector(per_class=3, seed=0)
        order = list(candidates)
        random.Random(method_seed).shuffle(order)
        _offer_all(collector, order, np.random.default_rng(method_seed), quality)
        _offer_all(collector, order[:10], np.random.default_rng(9))  # duplicates (DDP padding) are ignored
        chosen = [e for cat in collector.categories() for e in collector.selected(cat)]
        assert _ids(chosen) == _ids(offline)
        # memory stays bounded: at most per_class maps per (category, defect) bucket
        kept = sum(len(b) for b in collector._normals.values())
        kept += sum(len(b) for d in collector._anomalous.values() for b in d.values())
        assert kept <= 3 * (1 + len(DEFECTS)) * 2


def test_merged_collectors_equal_one_collector():
    candidates = _candidates()
    whole, rank0, rank1 = (GalleryCollector(per_class=2) for _ in range(3))
    _offer_all(whole, candidates, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    for i, c in enumerate(candidates):  # same maps as `whole`, split over two "ranks"
        anomaly_map = rng.normal(size=(32, 32)).astype(np.float32) + c.label
        (rank0 if i % 2 else rank1).offer(
            c.path, c.category, c.defect, c.label, float(anomaly_map.max()), anomaly_map
        )
    rank0.merge(rank1)
    for category in whole.categories():
        assert _ids(rank0.selected(category)) == _ids(whole.selected(category))
        assert rank0.display_range(category) == pytest.approx(whole.display_range(category))
    with pytest.raises(ValueError, match="different per_class"):
        rank0.merge(GalleryCollector(per_class=5))


def test_classification_at_a_threshold():
    assert classify(1, 2.0, 1.0) == HIT
    assert classify(1, 1.0, 1.0) == HIT  # score >= threshold is flagged, as in the curves
    assert classify(1, 0.5, 1.0) == MISS
    assert classify(0, 1.5, 1.0) == FALSE_ALARM
    assert classify(0, 0.2, 1.0) == CORRECT_NORMAL
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        classify(-1, 0.0, 1.0)
    assert confidence(3.0, 1.0, 4.0) == 0.5
    assert confidence(3.0, 1.0, 0.0) == 2.0  # a zero spread falls back to raw distance


def test_most_confident_orders_each_outcome_by_distance_to_the_threshold():
    scored = [(1, 5.0), (1, 0.2), (0, 9.0), (0, 0.1), (1, 3.0), (1, 0.9), (0, 1.5)]
    groups = most_confident(scored, threshold=1.0)
    assert groups[HIT] == [0, 4]  # 5.0 before 3.0
    assert groups[MISS] == [1, 5]  # 0.2 is further below 1.0 than 0.9
    assert groups[FALSE_ALARM] == [2, 6]
    assert groups[CORRECT_NORMAL] == [3]


def _write_images(root):
    """Two categories of real image files (32x48) with masks for the anomalous ones."""
    items = []
    rng = np.random.default_rng(0)
    for category in ("a", "b"):
        for defect, label, count in (("good", 0, 5), ("crack", 1, 3), ("hole", 1, 2)):
            for i in range(count):
                path = root / category / "test" / defect / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
                mask_paths = ()
                if label:
                    mask = np.zeros((32, 48), np.uint8)
                    mask[5:15, 10:30] = 255
                    mask_path = root / category / "ground_truth" / defect / f"{i:03d}_mask.png"
                    mask_path.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(mask_path), mask)
                    mask_paths = (str(mask_path),)
                items.append((str(path), category, defect, label, mask_paths))
    return items


def test_files_round_trip(tmp_path):
    items = _write_images(tmp_path / "data")
    collector = GalleryCollector(per_class=2, seed=0, max_side=16)
    maxima = {}
    for n, (path, category, defect, label, mask_paths) in enumerate(items):
        anomaly_map = torch.full((32, 48), float(n)) + label * 100.0  # torch input works too
        maxima.setdefault(category, []).append(float(anomaly_map.max()))
        collector.offer(path, category, defect, label, float(n), anomaly_map, mask_paths)
    collector.offer("/elsewhere/x.png", "a", "good", -1, 0.0, np.zeros((4, 4)))  # unknown labels: ignored
    written = collector.write(tmp_path / "run")
    assert [p.parent.name for p in written] == ["a", "b"]
    galleries = read_gallery(tmp_path / "run")
    index = galleries["a"]
    assert index.num_images == 10 and index.per_class == 2 and index.seed == 0
    assert [i.label for i in index.items] == [1, 1, 0, 0]
    assert index.display_range[0] == 0.0  # the smallest map value of all of a's images, chosen or not
    assert index.display_range[1] == pytest.approx(np.percentile(maxima["a"], 99))
    for item in index.items:
        anomaly_map = index.load_map(item)
        assert anomaly_map.dtype == np.float32 and max(anomaly_map.shape) == 16  # long side 48 -> 16
        assert np.load(index.folder / item.map_file).dtype == np.float16
        assert float(anomaly_map.max()) == pytest.approx(item.score + 100.0 * item.label, abs=0.1)
        thumb = cv2.imread(str(index.image_path(item)))
        assert thumb.shape == (11, 16, 3)
        if item.label:
            mask = cv2.imread(str(index.mask_path(item)), cv2.IMREAD_GRAYSCALE)
            assert mask.shape == (11, 16) and mask.max() == 255
        else:
            assert index.mask_path(item) is None
    assert not list((tmp_path / "run" / "gallery" / "a").glob(".*.tmp"))


def test_missing_image_files_still_save_maps(tmp_path):
    collector = GalleryCollector(per_class=1)
    collector.offer("/nowhere/good/000.png", "c", "good", 0, 0.3, np.ones((8, 8)))
    collector.write(tmp_path)
    item = read_gallery(tmp_path)["c"].items[0]
    assert item.image_file is None and item.mask_file is None and item.map_file.endswith(".npy")


def test_rewriting_a_gallery_removes_maps_no_longer_chosen(tmp_path):
    first = GalleryCollector(per_class=1)
    first.offer("/d/c/test/good/000.png", "c", "good", 0, 0.1, np.zeros((4, 4)))
    first.write(tmp_path)
    second = GalleryCollector(per_class=1)
    second.offer("/d/c/test/good/001.png", "c", "good", 0, 0.1, np.zeros((4, 4)))
    second.write(tmp_path)
    folder = tmp_path / "gallery" / "c"
    index = read_gallery(tmp_path)["c"]
    assert sorted(p.name for p in folder.glob("*.npy")) == [index.items[0].map_file]


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"format": "nope"}, "'format' must be"),
        (
            {
                "format": "anomaly_bench.gallery",
                "version": 1,
                "category": "c",
                "display_range": [0],
                "items": [],
            },
            "'display_range' must be",
        ),
        (
            {
                "format": "anomaly_bench.gallery",
                "version": 1,
                "category": "c",
                "display_range": [0, 1],
                "items": [{"id": "x", "path": "p", "label": 2, "defect": "d", "score": 1.0, "map": "x.npy"}],
            },
            r"items\[0\]: 'label' must be 0 or 1",
        ),
        (
            {
                "format": "anomaly_bench.gallery",
                "version": 1,
                "category": "c",
                "display_range": [0, 1],
                "items": [
                    {"id": "x", "path": "p", "label": 1, "defect": "d", "score": "high", "map": "x.npy"}
                ],
            },
            r"items\[0\]: key 'score' must be",
        ),
    ],
)
def test_bad_index_files_name_the_file_and_key(tmp_path, payload, message):
    path = tmp_path / "gallery" / "c" / "index.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(payload))
    with pytest.raises(GalleryError, match=message) as info:
        read_gallery_index(path)
    assert str(path) in str(info.value)
    assert read_gallery(tmp_path) == {}


def test_collector_rejects_bad_settings_and_maps():
    with pytest.raises(ValueError, match="per_class"):
        GalleryCollector(per_class=0)
    with pytest.raises(ValueError, match="max_side"):
        GalleryCollector(max_side=2)
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        GalleryCollector().offer("p.png", "c", "good", 0, 0.0, np.zeros((2, 3, 4)))
