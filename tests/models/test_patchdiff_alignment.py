"""The PatchDiff anomaly map must sit on the image: geometry and sign through the whole scoring path.

A hand-set "detector" replaces the trained FCN: its logit for the 34x34 window at (4i, 4j) is the
mean red value of the window's central 2x2 pixels (4i+16, 4i+17). A bright square must then give
the maximum of the final map (after upsampling, border offset, resize to the image, fusion and
blur) on the square, and a larger image score than a plain image (anomalous = larger).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.patchdiff.detector import PATCH_SIZE, PATCH_STRIDE
from anomaly_bench.models.patchdiff.torch_model import PatchDiffCategoryModel


class WindowCentreProbe(nn.Module):
    """Logit map with the detector's geometry (RF 34, stride 4, no padding): window-centre red."""

    def forward(self, x: Tensor) -> Tensor:
        rows = (x.shape[-2] - PATCH_SIZE) // PATCH_STRIDE + 1
        cols = (x.shape[-1] - PATCH_SIZE) // PATCH_STRIDE + 1
        centre = PATCH_SIZE // 2 - 1
        out = F.avg_pool2d(x[:, :1, centre:, centre:], 2, PATCH_STRIDE)[:, 0]
        return out[:, :rows, :cols]


def _model(sizes: list[int]) -> PatchDiffCategoryModel:
    specs = [{"input_size": size, "levels": [5], "name": f"d{size}"} for size in sizes]
    model = PatchDiffCategoryModel(specs, generator_channels=4, detector_width=0.125)
    model.detectors = nn.ModuleList(WindowCentreProbe() for _ in specs)
    return model


def _square_image(height: int, width: int, top: int, left: int, side: int = 8) -> Tensor:
    image = -torch.ones(1, 3, height, width)
    image[:, :, top:top + side, left:left + side] = 1.0
    return image


@pytest.mark.parametrize("sizes", [[64], [128], [64, 48]], ids=["one@64", "one@128", "fused"])
@pytest.mark.parametrize("top,left", [(18, 22), (28, 40), (34, 30)])
def test_map_maximum_lies_on_the_bright_square(sizes: list[int], top: int, left: int) -> None:
    model = _model(sizes)
    if len(sizes) > 1:  # standardised fusion with non-trivial statistics must not move the peak
        model.fusion_stats.copy_(torch.tensor([[0.1, 0.5, 0.2, 0.3], [-0.2, 2.0, 0.0, 1.0]]))
        model.fusion_ready.fill_(True)
    image = _square_image(64, 80, top, left)  # LOCO-like aspect: resized to square and back
    anomaly_map = model.score(image, blur_sigma=1.0, map_fusion="pixel_standardized_sum").anomaly_map
    assert anomaly_map.shape == (1, 64, 80)
    peak = torch.nonzero(anomaly_map[0] == anomaly_map[0].max())
    rows, cols = peak[:, 0].float().mean().item(), peak[:, 1].float().mean().item()
    # on the square (8 px), allowing for the stride-4 sampling of window centres
    assert top - 2 <= rows <= top + 9, (rows, top)
    assert left - 2 <= cols <= left + 9, (cols, left)


def test_offset_is_half_the_receptive_field_not_a_stretch() -> None:
    """Cell i's value lands at pixel 4i + 16.5 (window centre), not at i * H / h (stretched map)."""
    model = _model([64])
    image = _square_image(64, 64, 16, 16, side=2)  # exactly the central 2x2 of window (0, 0)
    anomaly_map = model.score(image, blur_sigma=0.0).anomaly_map
    grid = anomaly_map[0]
    # bilinear between centres 16.5 (cell 0, value 1) and 20.5 (cell 1, background -1)
    assert grid[16, 16].item() == pytest.approx(grid[:, 16].max().item())
    assert grid[12, 16].item() > 0.5  # a stretched map (8 px per cell) would already be at cell 1 here
    assert grid[21:, :].max().item() == pytest.approx(-1.0)
    assert grid[:, 21:].max().item() == pytest.approx(-1.0)


@pytest.mark.parametrize("sizes", [[64], [64, 48]], ids=["one", "fused"])
def test_anomalous_image_scores_higher(sizes: list[int]) -> None:
    model = _model(sizes)
    if len(sizes) > 1:
        model.fusion_stats.copy_(torch.tensor([[0.1, 0.5, 0.2, 0.3], [-0.2, 2.0, 0.0, 1.0]]))
        model.fusion_ready.fill_(True)
    plain = -torch.ones(1, 3, 64, 80)
    anomalous = _square_image(64, 80, 28, 36)
    plain_out = model.score(plain, blur_sigma=1.0, map_fusion="pixel_standardized_sum")
    anomalous_out = model.score(anomalous, blur_sigma=1.0, map_fusion="pixel_standardized_sum")
    map_plain, score_plain = plain_out.anomaly_map, plain_out.pred_score
    map_anom, score_anom = anomalous_out.anomaly_map, anomalous_out.pred_score
    assert score_anom.item() > score_plain.item()
    assert map_anom.max().item() > map_plain.max().item()


def _noisy_square(top: int, left: int, seed: int) -> Tensor:
    image = _square_image(64, 64, top, left) + 0.05 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    return image.clamp(-1, 1)


def test_pixel_standardized_fusion_flags_a_part_in_the_wrong_place() -> None:
    """Normal images have their bright part at one place; raw logits peak there in every image.

    Per-location z-scores learn that this location is always bright, so a part moved elsewhere
    (a logical anomaly) scores far higher than a normal image; the raw maxima do not separate them.
    """
    model = _model([64, 48])
    normals = torch.cat([_noisy_square(20, 20, seed) for seed in range(12)])
    model.compute_fusion_stats(normals)
    normal, moved = _noisy_square(20, 20, 100), _noisy_square(20, 40, 101)
    raw_normal = model.score(normal, blur_sigma=1.0, map_fusion="sum").pred_score
    raw_moved = model.score(moved, blur_sigma=1.0, map_fusion="sum").pred_score
    assert raw_moved.item() < raw_normal.item() + 0.5  # raw maxima do not flag it (both are bright squares)
    for image_score in ("max_of_map", "sum_of_max"):
        pixel_normal = model.score(normal, 1.0, "pixel_standardized_sum", image_score).pred_score
        moved_out = model.score(moved, 1.0, "pixel_standardized_sum", image_score)
        map_moved, pixel_moved = moved_out.anomaly_map, moved_out.pred_score
        assert pixel_moved.item() > pixel_normal.item() + 10.0
    peak = torch.nonzero(map_moved[0] == map_moved[0].max()).float().mean(0)
    assert 18 <= peak[0].item() <= 29 and 38 <= peak[1].item() <= 49  # on the moved square


class ConfidentPartProbe(nn.Module):
    """What a trained detector does with a distinct part the generated images never contain: the part's
    windows get a much lower logit (more confidently normal, -5) than the plain background (-1)."""

    def forward(self, x: Tensor) -> Tensor:
        return -3.0 - 2.0 * WindowCentreProbe()(x)


def _confident_model(sizes: list[int]) -> PatchDiffCategoryModel:
    model = _model(sizes)
    model.detectors = nn.ModuleList(ConfidentPartProbe() for _ in sizes)
    model.compute_fusion_stats(torch.cat([_noisy_square(20, 20, seed) for seed in range(12)]))
    return model


def _moved_vs_untouched(anomaly_map: Tensor) -> float:
    """AUROC of the moved part's pixels against the untouched rows 40-63, at least 12 px below both the
    part and the empty slot it came from (rows 20-27): 1 = above every untouched pixel."""
    from torchmetrics.functional.classification import binary_auroc

    values = anomaly_map[0]
    moved, untouched = values[20:28, 44:52].flatten(), values[40:].flatten()
    picked = torch.cat([moved, untouched])
    labels = torch.cat([torch.ones(moved.numel()), torch.zeros(untouched.numel())])
    return float(binary_auroc(picked.double(), labels.long()))


@pytest.mark.parametrize("sizes", [[64], [64, 48]], ids=["one", "fused"])
def test_a_part_in_the_wrong_place_is_flagged_although_it_looks_more_normal_than_normal(sizes: list[int]) -> None:
    """Issue 15: maps that point away from the defects. The part moved to an empty spot gets the lowest
    logits of the image (it is further from the generated images than the background there). The
    raw rule and the signed per-location z-score (0.1's default) rank it below every untouched pixel;
    the default |z| rule ranks it above them all, and scores the image higher than a normal one."""
    model = _confident_model(sizes)
    normal, moved = _noisy_square(20, 20, 100), _noisy_square(20, 44, 101)
    for rule in ("sum", "pixel_standardized_sum"):
        assert _moved_vs_untouched(model.score(moved, 1.0, rule).anomaly_map) < 0.05, rule
    default = model.score(moved)
    assert model.map_fusion == "pixel_deviation_sum"
    assert _moved_vs_untouched(default.anomaly_map) > 0.95
    assert default.pred_score.item() > model.score(normal).pred_score.item() + 10.0


def test_deviation_rule_is_the_raw_map_before_statistics_exist() -> None:
    """An unfinished model (no statistics yet) scores raw logits with every rule: no |.| of raw logits."""
    model = _model([64])
    model.detectors = nn.ModuleList([ConfidentPartProbe()])
    image = _noisy_square(20, 20, 3)
    raw = model.score(image, 0.0, "sum")
    deviation = model.score(image, 0.0, "pixel_deviation_sum")
    torch.testing.assert_close(deviation.anomaly_map, raw.anomaly_map)
    assert bool(model.fusion_ready) is False
