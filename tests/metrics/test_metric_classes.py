"""torchmetrics classes: same numbers as the functional API, raw scores, state merges like DDP."""

from __future__ import annotations

import copy
import os
import socket

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_bench.metrics import (
    ImageAP,
    ImageAUROC,
    PixelAUPRO,
    PixelAUROC,
    PixelAUSPRO,
    PixelRankingMetric,
    functional as F,
)
from anomaly_bench.types import DefectSpec


def _data(seed=0, n=8, size=24):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n // 2):
        y, x = rng.integers(0, size - 8, 2)
        masks[i, y : y + 6, x : x + 5] = 255
    maps = (rng.normal(size=masks.shape) + 1.5 * (masks != 0)).astype(np.float32) * 40 + 30  # far outside [0, 1]
    return torch.from_numpy(maps), torch.from_numpy(masks)


def test_pixel_metrics_match_functional_and_ignore_scale():
    maps, masks = _data()
    auroc, aupro = PixelAUROC(), PixelAUPRO(fpr_limit=0.3)
    for start in range(0, 8, 3):  # uneven batches
        auroc.update(maps[start : start + 3], masks[start : start + 3])
        aupro.update(maps[start : start + 3], masks[start : start + 3])
    assert float(auroc.compute()) == pytest.approx(roc_auc_score((masks != 0).numpy().ravel(), maps.numpy().ravel()), abs=1e-12)
    assert float(aupro.compute()) == pytest.approx(F.aupro(maps, masks), abs=1e-12)
    assert float(auroc.compute()) > 0.8  # a sigmoid on these scores would flatten them to ties (0.5)


def test_maps_are_resized_to_the_ground_truth_size():
    maps, masks = _data()
    big_masks = torch.nn.functional.interpolate(masks[:, None].float(), scale_factor=2, mode="nearest")[:, 0]
    metric = PixelAUROC()
    metric.update(maps, big_masks)  # maps 24x24, truth 48x48
    up = torch.nn.functional.interpolate(maps[:, None], size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
    assert float(metric.compute()) == pytest.approx(F.pixel_auroc(up, big_masks), abs=1e-12)


def test_image_metrics_skip_unknown_labels():
    metric = ImageAUROC()
    metric.update(torch.tensor([0.1, 0.9, 0.5, 0.3]), torch.tensor([0, 1, -1, 0]))
    assert float(metric.compute()) == 1.0
    ap = ImageAP()
    ap.update(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([1, 0, 0]))
    assert float(ap.compute()) == 1.0


def _filled(cls, maps, masks, part, keys=None, **kwargs):
    metric = cls(**kwargs)
    for i in part:
        metric.update(maps[i : i + 1], masks[i : i + 1], keys=None if keys is None else [keys[i]])
    return metric


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_merged_states_equal_one_process(mode):
    maps, masks = _data(1)
    whole = _filled(PixelRankingMetric, maps, masks, range(8), mode=mode).compute()
    rank0 = _filled(PixelRankingMetric, maps, masks, range(0, 8, 2), mode=mode)
    rank1 = _filled(PixelRankingMetric, maps, masks, range(1, 8, 2), mode=mode)
    rank0.merge_state(rank1)
    merged = rank0.compute()
    for name in whole:
        assert float(merged[name]) == pytest.approx(float(whole[name]), abs=1e-12, nan_ok=True), name


def test_sync_reduction_of_gathered_states_equals_one_process():
    """What torchmetrics does under DDP: gather every list state, then concatenate."""
    maps, masks = _data(2)
    keys = list(range(8))
    whole = _filled(PixelAUPRO, maps, masks, range(8), keys).compute()
    ranks = [_filled(PixelAUPRO, maps, masks, part, keys) for part in (range(0, 5), range(4, 8))]  # image 4 twice
    gathered = {name: [torch.cat(getattr(r, name)) for r in ranks] for name in ranks[0]._defaults}
    ranks[0]._sync_dist(dist_sync_fn=lambda tensor, group=None: [gathered_for(tensor, gathered)][0])
    assert float(ranks[0].compute()) == pytest.approx(float(whole), abs=1e-12)


def gathered_for(tensor, gathered):
    for parts in gathered.values():
        if parts[0].shape == tensor.shape and torch.equal(parts[0], tensor):
            return parts
    raise AssertionError("state not found")


def test_spro_through_ground_truths():
    from anomaly_bench.metrics.functional import spro_ground_truths

    channel = np.zeros((16, 16), np.uint8)
    channel[2:6, 2:6] = 255
    truths = spro_ground_truths([[channel], None], [[DefectSpec(saturation_threshold=0.5)], None], sizes=[(16, 16), (16, 16)])
    maps = torch.zeros(2, 16, 16)
    maps[0, 2:4, 2:6] = 1.0  # half of the channel: saturated at 0.5
    metric = PixelAUSPRO(spro_limit=0.05)
    metric.update(maps, ground_truths=truths)
    assert float(metric.compute()) == pytest.approx(1.0)


def test_update_errors_are_clear():
    metric = PixelRankingMetric()
    with pytest.raises(ValueError, match="exactly one of masks= or ground_truths="):
        metric.update(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((1, 4, 4), float("nan")), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="differ in length"):
        ImageAUROC().update(torch.zeros(3), torch.zeros(2))


# ------------------------------------------------------------------ two real processes (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    maps, masks = _data(3)
    metric = PixelRankingMetric(mode="binned")
    mine = range(rank, 8, world)
    for i in mine:
        metric.update(maps[i : i + 1], masks[i : i + 1])
    images = ImageAUROC()
    images.update(maps.flatten(1).amax(1)[list(mine)], (masks != 0).flatten(1).any(1).long()[list(mine)])
    result = {k: float(v) for k, v in metric.compute().items()}
    result["image_auroc"] = float(images.compute())
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_numbers_of_one(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    maps, masks = _data(3)
    single = _filled(PixelRankingMetric, maps, masks, range(8), mode="binned").compute()
    image = F.image_auroc(maps.flatten(1).amax(1), (masks != 0).flatten(1).any(1))
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["image_auroc"] == pytest.approx(image, abs=1e-12)
        for name, value in single.items():
            assert result[name] == pytest.approx(float(value), abs=1e-12, nan_ok=True), name


def test_copy_keeps_states_independent():
    maps, masks = _data(4)
    a = PixelAUROC()
    a.update(maps[:2], masks[:2])
    b = copy.deepcopy(a)
    b.update(maps[2:], masks[2:])
    assert len(a.maps) == 2 and len(b.maps) == 8
