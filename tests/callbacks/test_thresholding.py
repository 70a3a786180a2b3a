"""The ``Thresholding`` callback: which images it fits on, what it fits, refits, overrides, warnings.

Driven through its hooks with hand-made batches and outputs (no Trainer run), so every expected
threshold is the quantile of a known list of normal scores and pixels.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anomaly_bench.callbacks.thresholding import ALL_CATEGORIES, Thresholding
from anomaly_bench.metrics.thresholds import quantile_threshold
from anomaly_bench.types import AnomalyOutput, Batch

SIZE = 4  # maps are SIZE x SIZE


def _trainer(sanity_checking: bool = False) -> SimpleNamespace:
    datamodule = SimpleNamespace(resolved_validation="train_holdout", val_fraction=0.25)
    return SimpleNamespace(sanity_checking=sanity_checking, datamodule=datamodule)


def _module() -> SimpleNamespace:
    return SimpleNamespace(thresholds=None, normal_scores=None)


def _step(callback: Thresholding, trainer, module, categories: list[str], labels: list[int], scores: list[float],
          pixel_base: list[float]) -> None:
    """One validation batch: image i's map is pixel_base[i] + 0.01 * (0..15), its score scores[i]."""
    n = len(categories)
    ramp = torch.arange(SIZE * SIZE, dtype=torch.float32).view(SIZE, SIZE) * 0.01
    maps = torch.stack([ramp + base for base in pixel_base])
    batch = Batch(image=torch.zeros(n, 3, SIZE, SIZE), label=torch.tensor(labels), mask=torch.zeros(n, SIZE, SIZE),
                  orig_size=torch.full((n, 2), SIZE), category=categories, defect=["good"] * n, path=[""] * n)
    output = AnomalyOutput(anomaly_map=maps, pred_score=torch.tensor(scores))
    callback.on_validation_batch_end(trainer, module, output, batch, 0)


def _validate(callback: Thresholding, trainer=None, module=None):
    """Two categories; bottle has 6 normals and 2 anomalies with huge scores, screw 5 normals."""
    trainer = trainer or _trainer()
    module = module or _module()
    callback.on_validation_epoch_start(trainer, module)
    _step(callback, trainer, module, ["bottle"] * 4 + ["screw"] * 2, [0, 0, 1, 0, 0, 0],
          [1.0, 2.0, 100.0, 3.0, 10.0, 11.0], [0.0, 0.1, 50.0, 0.2, 1.0, 1.1])
    _step(callback, trainer, module, ["bottle"] * 4 + ["screw"] * 3, [0, 1, 0, 0, 0, 0, 0],
          [4.0, 200.0, 5.0, 6.0, 12.0, 13.0, 14.0], [0.3, 60.0, 0.4, 0.5, 1.2, 1.3, 1.4])
    callback.on_validation_epoch_end(trainer, module)
    return module


BOTTLE_SCORES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
BOTTLE_BASES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
SCREW_SCORES = [10.0, 11.0, 12.0, 13.0, 14.0]
SCREW_BASES = [1.0, 1.1, 1.2, 1.3, 1.4]


def _pixels(bases: list[float]) -> np.ndarray:
    """The normal maps' pixels exactly as _step makes them (float32: ties as the callback sees them)."""
    ramp = torch.arange(SIZE * SIZE, dtype=torch.float32) * 0.01
    return torch.cat([ramp + b for b in bases]).numpy()


def test_thresholds_are_the_quantiles_of_each_categorys_normals_and_anomalies_never_count() -> None:
    callback = Thresholding(target_fpr=0.2)
    module = _validate(callback)
    bottle, screw = module.thresholds["bottle"], module.thresholds["screw"]
    assert bottle.image == pytest.approx(quantile_threshold(BOTTLE_SCORES, 0.2))
    assert bottle.image == pytest.approx(5.5)  # 6 normals, 1 may be flagged: between 5 and 6
    assert bottle.pixel == pytest.approx(quantile_threshold(_pixels(BOTTLE_BASES), 0.2))
    assert bottle.pixel < 1.0  # the anomalies' maps (50, 60) would have pulled it far up
    assert screw.image == pytest.approx(13.5)  # 5 normals, 1 may be flagged
    assert screw.pixel == pytest.approx(quantile_threshold(_pixels(SCREW_BASES), 0.2))
    assert (bottle.num_images, screw.num_images) == (6, 5)
    assert bottle.num_pixels == 6 * SIZE * SIZE and bottle.target_fpr == 0.2
    assert "held out from training" in bottle.source
    pooled = module.thresholds[ALL_CATEGORIES]
    assert pooled.image == pytest.approx(quantile_threshold(BOTTLE_SCORES + SCREW_SCORES, 0.2))
    assert pooled.pixel == pytest.approx(quantile_threshold(_pixels(BOTTLE_BASES + SCREW_BASES), 0.2))
    # the stored normals are what a refit needs, anomalies excluded
    assert sorted(module.normal_scores["bottle"]["image"].tolist()) == BOTTLE_SCORES


def test_a_single_category_has_no_pooled_entry() -> None:
    callback, trainer, module = Thresholding(target_fpr=0.2), _trainer(), _module()
    callback.on_validation_epoch_start(trainer, module)
    _step(callback, trainer, module, ["bottle"] * 6, [0] * 6, BOTTLE_SCORES, BOTTLE_BASES)
    callback.on_validation_epoch_end(trainer, module)
    assert set(module.thresholds) == {"bottle"}


def test_the_sanity_check_and_a_disabled_callback_fit_nothing() -> None:
    module = _validate(Thresholding(), trainer=_trainer(sanity_checking=True))
    assert module.thresholds is None and module.normal_scores is None
    disabled = Thresholding(enabled=False)
    assert disabled.wants_validation_normals is False
    module = _validate(disabled)
    assert module.thresholds is None
    module.thresholds = {"bottle": "stale"}
    disabled.on_test_start(_trainer(), module)
    assert module.thresholds is None  # disabled: test and predict give no verdicts


def test_another_target_at_test_refits_from_the_stored_normals_and_the_same_target_keeps_them() -> None:
    module = _validate(Thresholding(target_fpr=0.2))
    fitted = module.thresholds
    same = Thresholding(target_fpr=0.2)
    same.on_test_start(_trainer(), module)
    assert module.thresholds is fitted  # nothing to refit
    stricter = Thresholding(target_fpr=0.01)
    stricter.on_predict_start(_trainer(), module)
    assert module.thresholds["bottle"].target_fpr == 0.01
    assert module.thresholds["bottle"].image == pytest.approx(quantile_threshold(BOTTLE_SCORES, 0.01))
    assert module.thresholds["bottle"].image > 6.0  # 1 % of 6 normals: none may be flagged
    assert module.thresholds["screw"].pixel == pytest.approx(quantile_threshold(_pixels(SCREW_BASES), 0.01))


def test_fixed_values_replace_the_fitted_ones_and_need_no_validation_normals() -> None:
    module = _validate(Thresholding(target_fpr=0.2))
    fixed = Thresholding(image_threshold=7.5, pixel_threshold=0.3)
    assert fixed.wants_validation_normals is False
    fixed.on_test_start(_trainer(), module)
    assert set(module.thresholds) == {"all"}
    assert (module.thresholds["all"].image, module.thresholds["all"].pixel) == (7.5, 0.3)
    assert module.thresholds["all"].method == "fixed"


def test_a_category_with_too_few_normals_gets_no_threshold_and_a_warning_naming_it(caplog) -> None:
    callback = Thresholding(target_fpr=0.2, min_normals=6)
    with caplog.at_level(logging.WARNING, logger="anomaly_bench.callbacks.thresholding"):
        module = _validate(callback)
    assert "bottle" in module.thresholds and "screw" not in module.thresholds
    assert "only 5 normal validation image(s) of category 'screw' (at least 6 needed" in caplog.text


def test_a_fit_without_normal_validation_images_warns_that_predict_will_give_no_verdicts(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="anomaly_bench.callbacks.thresholding"):
        Thresholding().on_fit_end(_trainer(), _module())
    assert "no operating thresholds" in caplog.text and "data.init_args.validation" in caplog.text
    caplog.clear()
    module = _validate(Thresholding())
    with caplog.at_level(logging.WARNING, logger="anomaly_bench.callbacks.thresholding"):
        Thresholding().on_fit_end(_trainer(), module)
    assert caplog.text == ""


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_fpr=0.0), "target_fpr must be in"),
    (dict(target_fpr=1.5), "target_fpr must be in"),
    (dict(min_normals=0), "min_normals must be at least 1"),
])
def test_bad_options_name_the_option(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        Thresholding(**kwargs)
