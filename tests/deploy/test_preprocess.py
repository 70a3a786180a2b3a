"""The inferencer's torch-free preprocessing equals the datamodule's, and its small helpers are exact.

The dataset (``AnomalyDataset``: Pillow decode + OpenCV resize + lookup-table normalisation) is the
reference: with OpenCV the inferencer's array is identical; with the NumPy fallback it is within one
uint8 level. Maps are resized back like ``torch.nn.functional.interpolate``; the antialiased-resize
rewrite used for OpenVINO equals torch's own resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly_bench.data.dataset import AnomalyDataset
from anomaly_bench.data.transforms import NORMALIZATIONS, _lookup_table
from anomaly_bench.deploy import metadata as md
from anomaly_bench.deploy import preprocess
from anomaly_bench.deploy.decompositions import antialiased_bilinear_weights
from anomaly_bench.metrics.thresholds import Thresholds
from anomaly_bench.types import Sample


def _photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth colour pattern with a sharp square: interpolation differences show up at its edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([127 + 100 * np.sin(xx / 7.0 + c) * np.cos(yy / 5.0 - c) for c in range(3)], axis=2)
    image += rng.normal(0, 12, image.shape)
    image[height // 3: height // 2, width // 4: width // 2] = (250, 20, 60)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    files = {
        "shrink_png": (_photo(150, 110, 0), "png"),
        "enlarge_png": (_photo(24, 30, 1), "png"),
        "large_jpeg": (_photo(400, 520, 2), "jpg"),  # decoded in Pillow's draft mode
        "grey_png": (_photo(90, 90, 3)[:, :, 0], "png"),
        "rgba_png": (np.dstack([_photo(70, 80, 4), np.full((70, 80), 128, np.uint8)]), "png"),
        "grey16_png": (_photo(60, 60, 5)[:, :, 1].astype(np.uint16) * 257, "png"),
    }
    out = {}
    for name, (array, suffix) in files.items():
        out[name] = folder / f"{name}.{suffix}"
        Image.fromarray(array).save(out[name])
    assert Image.open(out["grey16_png"]).mode.startswith("I")
    return out


def _dataset_tensor(path: Path, size: tuple[int, int], normalization: str) -> np.ndarray:
    sample = Sample(image_path=str(path), label=-1, category="x", split="predict")
    return AnomalyDataset([sample], size, normalization)[0]["image"].numpy()


def _inferencer_array(path: Path, size: tuple[int, int], normalization: str, backend: str) -> np.ndarray:
    mean, std = md.NORMALIZATION_STATS[normalization]
    decoded, _ = preprocess.decode(path, size)
    resized = preprocess.resize_uint8(decoded, size, backend)
    return preprocess.normalise(resized, preprocess.lookup_table(mean, std))


@pytest.mark.parametrize("name", ["shrink_png", "enlarge_png", "large_jpeg", "grey_png", "rgba_png", "grey16_png"])
def test_preprocessing_equals_the_dataset_with_opencv(image_files: dict[str, Path], name: str) -> None:
    for size, normalization in (((48, 64), "imagenet"), ((64, 64), "minus_one_one")):
        expected = _dataset_tensor(image_files[name], size, normalization)
        got = _inferencer_array(image_files[name], size, normalization, "opencv")
        assert got.dtype == np.float32 and got.shape == expected.shape == (3, *size)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["shrink_png", "enlarge_png", "large_jpeg"])
def test_numpy_resize_is_within_one_level_of_the_dataset(image_files: dict[str, Path], name: str) -> None:
    size = (48, 40)
    decoded, _ = preprocess.decode(image_files[name], size)
    reference = preprocess.resize_uint8(decoded, size, "opencv").astype(int)
    fallback = preprocess.resize_uint8(decoded, size, "numpy").astype(int)
    difference = np.abs(fallback - reference)
    assert difference.max() <= 1
    assert difference.mean() < 0.25  # OpenCV's fixed-point rounding, not a different rule
    # and the normalised arrays differ by at most one level's step
    step = 1 / 255 / min(md.NORMALIZATION_STATS["imagenet"][1])
    got = _inferencer_array(image_files[name], size, "imagenet", "numpy")
    assert np.abs(got - _dataset_tensor(image_files[name], size, "imagenet")).max() <= step + 1e-6


def test_arrays_are_checked_and_grey_arrays_replicated() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = preprocess.as_rgb_array(grey)
    assert rgb.shape == (3, 4, 3) and (rgb[:, :, 2] == grey).all()
    with pytest.raises(preprocess.PreprocessError, match="uint8"):
        preprocess.as_rgb_array(grey.astype(np.float32))
    with pytest.raises(preprocess.PreprocessError, match=r"\[H, W, 3\]"):
        preprocess.as_rgb_array(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(preprocess.PreprocessError, match="not found"):
        preprocess.decode("/no/such/image.png", (8, 8))


def test_unreadable_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "truncated.png"
    Image.fromarray(_photo(40, 40, 0)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(preprocess.PreprocessError, match="truncated.png"):
        preprocess.decode(bad, (32, 32))


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_lookup_tables_equal_the_datamodule_tables(normalization: str) -> None:
    mean, std = md.NORMALIZATION_STATS[normalization]
    np.testing.assert_array_equal(preprocess.lookup_table(mean, std), _lookup_table(normalization))


@pytest.mark.parametrize("shape,size", [((12, 20), (48, 50)), ((64, 64), (17, 33)), ((30, 30), (30, 30))])
def test_map_resize_equals_torch_bilinear(shape: tuple[int, int], size: tuple[int, int]) -> None:
    anomaly_map = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(anomaly_map)[None, None], size=size, mode="bilinear",
                             align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(preprocess.resize_map(anomaly_map, size), expected, atol=1e-5)


@pytest.mark.parametrize("sizes", [(64, 40), (48, 32), (30, 64), (17, 5), (128, 128)])
def test_antialiased_resize_weights_equal_torch(sizes: tuple[int, int]) -> None:
    n_in, n_out = sizes
    x = torch.randn(2, 3, n_in, n_in + 3, dtype=torch.float64)
    expected = F.interpolate(x, size=(n_out, n_out + 1), mode="bilinear", align_corners=False, antialias=True)
    rows = torch.from_numpy(antialiased_bilinear_weights(n_in, n_out))
    cols = torch.from_numpy(antialiased_bilinear_weights(n_in + 3, n_out + 1))
    torch.testing.assert_close(rows @ x @ cols.T, expected, rtol=0, atol=1e-12)


def test_normalised_score_and_threshold_choice_follow_the_metrics_package() -> None:
    record = Thresholds(image=2.0, pixel=1.5, image_reference=0.5, pixel_reference=0.25)
    as_dict = record.to_dict()
    for score in (-1.0, 0.5, 2.0, 3.7):
        assert md.normalised_score(score, as_dict) == pytest.approx(record.normalised_image_score(score))
    assert md.normalised_score(1.5, as_dict, "pixel") == pytest.approx(1.0)
    assert md.normalised_score(1.0, {"image": None}) is None
    per_category = {"a": {"image": 1.0}, "all": {"image": 9.0}}
    assert md.thresholds_for(per_category, "a")["image"] == 1.0
    assert md.thresholds_for(per_category, "b")["image"] == 9.0  # unknown category: every category's
    assert md.thresholds_for(per_category, None)["image"] == 9.0
    assert md.thresholds_for({"bottle": {"image": 3.0}}, None)["image"] == 3.0  # the only one
    assert md.thresholds_for({"bottle": {"image": 3.0}, "cable": {"image": 4.0}}, None) is None
    assert md.thresholds_for(None, "a") is None
