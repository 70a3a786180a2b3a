"""Every bad-input case raises a DataError that names the file and what was expected."""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest

from anomaly_bench.data import DataError, Folder, GoodsAD, MVTecAD, MVTecLOCO, VisA


def _setup(dm, stage="test"):
    dm.setup(stage)
    # decoding happens lazily: iterate so that file errors surface
    loader = dm.test_dataloader() if stage == "test" else dm.train_dataloader()
    return list(loader)


def _dm(cls, root, **kw):
    return cls(root=root, image_size=32, batch_size=4, num_workers=0, **kw)


def test_missing_mask(fresh):
    root = fresh("mvtec")
    mask = next((root / "ring" / "ground_truth" / "scratch").iterdir())
    mask.unlink()
    with pytest.raises(DataError, match="missing mask") as err:
        _dm(MVTecAD, root).setup("test")
    assert str(mask) in str(err.value)


def test_extra_mask(fresh):
    root = fresh("mvtec")
    extra = root / "ring" / "ground_truth" / "scratch" / "999_mask.png"
    cv2.imwrite(str(extra), np.zeros((64, 64), np.uint8))
    with pytest.raises(DataError, match="extra mask") as err:
        _dm(MVTecAD, root).setup("test")
    assert str(extra) in str(err.value)


def test_truncated_png_and_jpg_and_unreadable(fresh):
    root = fresh("mvtec")
    image = root / "ring" / "test" / "good" / "000.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        _setup(_dm(MVTecAD, root, category="ring"))
    assert str(image) in str(err.value)

    goods = fresh("goodsad")
    jpg = next((goods / "ring" / "train" / "good").iterdir())
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # OpenCV would decode this silently with grey fill
    with pytest.raises(DataError, match="truncated") as err:
        _setup(_dm(GoodsAD, goods, category="ring"), "fit")
    assert str(jpg) in str(err.value)

    jpg.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="unreadable") as err:
        _setup(_dm(GoodsAD, goods, category="ring"), "fit")
    assert str(jpg) in str(err.value)


def test_non_image_file_in_image_folder(fresh):
    root = fresh("mvtec")
    stray = root / "ring" / "train" / "good" / "notes.txt"
    stray.write_text("x")
    with pytest.raises(DataError, match="unexpected file") as err:
        _dm(MVTecAD, root).setup("fit")
    assert str(stray) in str(err.value)
    stray.unlink()
    (root / "ring" / "train" / "good" / ".DS_Store").write_text("x")  # OS litter is ignored
    _dm(MVTecAD, root).setup("fit")


def test_empty_category(fresh):
    root = fresh("mvtec")
    for image in (root / "grid" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(DataError, match="no training images") as err:
        _dm(MVTecAD, root).setup("fit")
    assert "grid" in str(err.value)


def test_root_without_expected_folders(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DataError) as err:
        _dm(MVTecAD, tmp_path).setup("fit")
    assert str(tmp_path) in str(err.value) and "train/good" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        _dm(MVTecAD, tmp_path / "missing").setup("fit")
    with pytest.raises(DataError, match="split_csv"):
        _dm(VisA, tmp_path).setup("fit")
    with pytest.raises(DataError, match="defects_config.json"):
        _dm(MVTecLOCO, tmp_path).setup("fit")


def test_unknown_category_lists_available(synth_root):
    with pytest.raises(DataError, match=r"available: \['grid', 'ring'\]"):
        _dm(MVTecAD, synth_root("mvtec"), category="bottle").setup("fit")


def test_visa_csv_row_pointing_at_missing_file(fresh):
    root = fresh("visa-raw")
    rows = list(csv.DictReader(open(root / "split_csv" / "1cls.csv", newline="")))
    target = next(r for r in rows if r["label"] == "anomaly")
    (root / target["image"]).unlink()
    with pytest.raises(DataError, match="does not exist") as err:
        _dm(VisA, root).setup("fit")
    assert target["image"] in str(err.value) and "1cls.csv line" in str(err.value)


def test_visa_csv_missing_mask_file_and_bad_columns(fresh):
    root = fresh("visa-raw")
    rows = list(csv.DictReader(open(root / "split_csv" / "1cls.csv", newline="")))
    target = next(r for r in rows if r["label"] == "anomaly")
    (root / target["mask"]).unlink()
    with pytest.raises(DataError, match="mask file") as err:
        _dm(VisA, root).setup("fit")
    assert target["mask"] in str(err.value)
    (root / "split_csv" / "1cls.csv").write_text("object,split,image\nboard,train,x.JPG\n")
    with pytest.raises(DataError, match="missing column"):
        _dm(VisA, root).setup("fit")


def test_mask_of_another_size_is_an_error(fresh):
    root = fresh("mvtec")
    mask = next((root / "ring" / "ground_truth" / "crack").iterdir())
    cv2.imwrite(str(mask), np.full((40, 50), 255, np.uint8))
    with pytest.raises(DataError, match="size") as err:
        _setup(_dm(MVTecAD, root, category="ring"))
    assert str(mask) in str(err.value)


def test_grayscale_images_are_converted_to_rgb(synth_root):
    dm = _dm(MVTecAD, synth_root("mvtec"), category="grid", normalization="none")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape[1] == 3
    assert np.allclose(batch.image[:, 0], batch.image[:, 1]) and np.allclose(batch.image[:, 1], batch.image[:, 2])


def test_loco_bad_ground_truth(fresh):
    root = fresh("loco")
    region = next((root / "pins" / "ground_truth" / "logical_anomalies").iterdir())
    shutil.rmtree(region)
    with pytest.raises(DataError, match="missing masks") as err:
        _dm(MVTecLOCO, root).setup("fit")
    assert region.name in str(err.value)

    root2 = fresh("loco", seed=3)
    region = sorted((root2 / "pins" / "ground_truth" / "structural_anomalies").iterdir())[0]
    channel = region / "000.png"
    cv2.imwrite(str(channel), np.full((64, 80), 17, np.uint8))  # a value missing from the config
    dm = _dm(MVTecLOCO, root2, category="pins")
    with pytest.raises(DataError, match="not a pixel_value") as err:
        _setup(dm)
    assert str(channel) in str(err.value)
    two = np.zeros((64, 80), np.uint8)
    two[:5] = 255
    two[-5:] = 254
    cv2.imwrite(str(channel), two)
    with pytest.raises(DataError, match="exactly one non-zero"):
        _setup(_dm(MVTecLOCO, root2, category="pins"))


def test_folder_missing_and_extra_masks(tmp_path):
    for sub in ("normal", "abnormal", "masks"):
        (tmp_path / sub).mkdir()
    img = np.full((32, 32, 3), 120, np.uint8)
    for i in range(4):
        cv2.imwrite(str(tmp_path / "normal" / f"n{i}.png"), img)
    cv2.imwrite(str(tmp_path / "abnormal" / "a0.png"), img)
    with pytest.raises(DataError, match="missing mask") as err:
        _dm(Folder, tmp_path, mask_dir="masks").setup("test")
    assert "a0" in str(err.value)
    cv2.imwrite(str(tmp_path / "masks" / "a0_mask.png"), np.zeros((32, 32), np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "zz.png"), np.zeros((32, 32), np.uint8))
    with pytest.raises(DataError, match="extra mask") as err:
        _dm(Folder, tmp_path, mask_dir="masks").setup("test")
    assert "zz.png" in str(err.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="validation"):
        MVTecAD(root=".", validation="test")
    with pytest.raises(ValueError, match="normalization"):
        MVTecAD(root=".", normalization="zscore")
    with pytest.raises(ValueError, match="cache_dir"):
        MVTecAD(root=".", cache="disk")
    with pytest.raises(DataError, match="unknown albumentations transform"):
        MVTecAD(root=".", train_augmentations=[{"class_path": "NoSuchFlip"}])


def test_rgb_photo_saved_as_a_mask_is_a_one_line_error(fresh):
    root = fresh("mvtec")
    mask = sorted((root / "ring" / "ground_truth" / "crack").iterdir())[0]
    photo = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(mask), photo)
    with pytest.raises(DataError) as err:
        _setup(_dm(MVTecAD, root, category="ring"))
    message = str(err.value)
    assert str(mask) in message and "\n" not in message
    assert "colour image" in message and "single-channel" in message


def test_grey_masks_saved_in_colour_and_palette_masks_are_read(tmp_path):
    from PIL import Image

    from anomaly_bench.data.io import read_ground_truth, read_mask, read_mask_files

    grey = np.zeros((6, 8), np.uint8)
    grey[1:3, 2:5] = 255
    cv2.imwrite(str(tmp_path / "rgb.png"), np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])  # opaque alpha is not a colour
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    for name in ("rgb.png", "rgba.png"):
        assert np.array_equal(read_mask(tmp_path / name), grey)
    classes = np.zeros((6, 8), np.uint8)
    classes[0, 0], classes[5, 7] = 3, 7
    palette = Image.fromarray(classes, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)  # index 3 is red, 7 blue...
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_mask(tmp_path / "palette.png"), classes)  # the class ids, not colours
    mask, values = read_ground_truth([tmp_path / "rgb.png", tmp_path / "palette.png"], size_hw=(3, 4))
    assert mask.shape == (3, 4) and mask.dtype == np.uint8 and values == [255, 7]
    assert np.array_equal(mask, cv2.resize(((grey != 0) | (classes != 0)).astype(np.uint8), (4, 3),
                                           interpolation=cv2.INTER_NEAREST))
    drawn_in_alpha = np.dstack([np.zeros_like(grey)] * 3 + [grey])  # black, defects only in alpha
    cv2.imwrite(str(tmp_path / "alpha.png"), drawn_in_alpha)
    with pytest.raises(DataError, match="alpha channel"):
        read_mask(tmp_path / "alpha.png")
    with pytest.raises(DataError, match="expects 254") as err:  # a LOCO file must hold its defect's value
        read_mask_files([tmp_path / "rgb.png"], single_value_per_file=True, expected_values=[254])
    assert str(tmp_path / "rgb.png") in str(err.value)
    with pytest.raises(DataError, match="size"):
        read_mask_files([tmp_path / "rgb.png"], native_hw=(8, 6))


def test_loco_mask_with_another_defects_value_is_an_error(fresh):
    """A sample that names its defects: every channel must hold that defect's pixel value."""
    import dataclasses

    from anomaly_bench.data.dataset import AnomalyDataset
    from anomaly_bench.types import DefectSpec

    dm = _dm(MVTecLOCO, fresh("loco"), category="pins")
    dm.setup("test")
    dataset = dm.dataset("test")
    index = next(i for i, s in enumerate(dataset.samples) if s.mask_paths)
    sample = dataset.samples[index]
    good = dataset[index]["defects"]
    assert len(good) == len(sample.mask_paths)
    wrong = tuple(DefectSpec(pixel_value=1 if d.pixel_value != 1 else 2) for d in good)
    named = AnomalyDataset([dataclasses.replace(sample, defects=wrong)], (32, 32))
    with pytest.raises(DataError, match="holds pixel value") as err:
        named[0]
    assert sample.mask_paths[0] in str(err.value)
    assert AnomalyDataset([dataclasses.replace(sample, defects=good)], (32, 32))[0]["defects"] == good


def test_image_pixel_limit_is_a_one_line_error_and_configurable(tmp_path, monkeypatch) -> None:
    import numpy as np
    from PIL import Image

    from anomaly_bench.data.io import MAX_IMAGE_PIXELS_ENV, DataError, decode_image

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(path)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1999")
    with pytest.raises(DataError, match=r"big.png has 50x40 = 2000 pixels.*ANOMALY_BENCH_MAX_IMAGE_PIXELS"):
        decode_image(path, None)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "2000")
    assert decode_image(path, None)[0].shape == (40, 50, 3)
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's guard is never switched off globally
