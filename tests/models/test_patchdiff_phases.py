"""PatchDiff GRAD's phase plan, the cursor over it, optimisers looked up by name, option checks."""

from __future__ import annotations

import pytest
import torch

from anomaly_bench.models.patchdiff import phases
from anomaly_bench.models.patchdiff.lightning_model import PatchDiffGRAD, sample_seed
from anomaly_bench.models.patchdiff.phases import Phase, PhaseCursor
from anomaly_bench.models.patchdiff.torch_model import PatchDiffCategoryModel, PatchDiffGRADModel

TINY = {"detectors": [{"input_size": 40, "levels": [9, 5], "name": "fine"}, {"input_size": 36, "levels": [9]}],
        "generator_channels": 4, "detector_width": 0.125}


def test_plan_runs_categories_by_name_and_every_phase_in_order():
    plan = phases.plan({"screws": [5, 9], "bottle": [9]})
    assert [str(p) for p in plan] == [
        "generator:bottle:level_9", "sample:bottle:level_9", "detectors:bottle", "stats:bottle",
        "generator:screws:level_5", "generator:screws:level_9", "sample:screws:level_5", "sample:screws:level_9",
        "detectors:screws", "stats:screws",
    ]


def test_cursor_counts_steps_and_advances_in_the_buffer():
    progress = torch.zeros(2, dtype=torch.long)
    cursor = PhaseCursor(progress, phases.plan({"a": [5]}))
    assert cursor.current == Phase("generator", "a", 5) and cursor.step == 0
    assert cursor.count_step(total=2) is False and progress.tolist() == [0, 1]
    assert cursor.count_step(total=2) is True and progress.tolist() == [1, 0]  # the phase ended
    assert cursor.current == Phase("sample", "a", 5)
    cursor.advance(), cursor.advance()
    assert cursor.current == Phase("stats", "a") and not cursor.done
    assert cursor.advance() is None and cursor.done and progress.tolist() == [4, 0]


def test_optimisers_are_found_by_name_in_the_order_of_0_1_checkpoints():
    model = PatchDiffGRAD(categories=["b", "a"], **TINY)
    optimizers = model.configure_optimizers()
    assert list(model._optimizer_index) == [
        "generator/a/level_5", "generator/a/level_9", "detector/a/fine", "detector/a/size36",
        "generator/b/level_5", "generator/b/level_9", "detector/b/fine", "detector/b/size36",
    ]
    model.optimizers = lambda: optimizers  # what Lightning hands back after configure_optimizers
    a = model.model.category("a")
    assert model.optimizer("generator/a/level_9").param_groups[0]["params"] == list(a.generators["9"].parameters())
    detector_params = model.optimizer("detector/a/size36").param_groups[0]["params"]
    assert detector_params == [*a.detectors[1].parameters(), *a.dae_heads[1].parameters()]
    assert model.optimizer("detector/b/fine").defaults["weight_decay"] == 1e-4


def test_options_are_checked_before_any_category_exists():
    with pytest.raises(ValueError, match="model.map_fusion must be one of"):
        PatchDiffGRADModel(map_fusion="mean")
    with pytest.raises(ValueError, match="model.generator_coord_frequencies"):
        PatchDiffGRADModel(generator_coord_frequencies=-2)
    with pytest.raises(ValueError, match="names must differ"):
        PatchDiffGRADModel(detectors=[{"input_size": 64, "levels": [5]}, {"input_size": 64, "levels": [9]}])
    with pytest.raises(TypeError, match="unknown PatchDiff GRAD model options"):
        PatchDiffGRADModel(generator_chanels=8)
    with pytest.raises(ValueError, match="model.inner_steps must be >= 1"):
        PatchDiffGRAD(inner_steps=0)
    with pytest.raises(ValueError, match="collide"):
        PatchDiffGRADModel(categories=["a.b", "a_b"], **TINY)


def test_container_routes_each_image_to_its_category():
    torch.manual_seed(0)
    model = PatchDiffGRADModel(categories=["a", "b"], blur_sigma=0.0, **TINY).eval()
    images = torch.rand(3, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        routed = model(images, ["b", "a", "b"])
        alone_a = model.category("a")(images[1:2])
        alone_b = model.category("b")(images[[0, 2]])
    torch.testing.assert_close(routed.anomaly_map[1:2], alone_a.anomaly_map)
    torch.testing.assert_close(routed.anomaly_map[[0, 2]], alone_b.anomaly_map)
    torch.testing.assert_close(routed.pred_score[[0, 2]], alone_b.pred_score)
    with pytest.raises(ValueError, match="single-category"):
        model(images)
    with pytest.raises(ValueError, match="3 images but 2 category names"):
        model(images, ["a", "b"])
    with pytest.raises(KeyError, match="no model for category 'c'"):
        model(images, ["a", "b", "c"])


def test_categories_added_later_follow_the_model_and_imports_stay_free_of_lightning():
    import subprocess
    import sys

    code = ("import sys; import anomaly_bench.models.patchdiff.torch_model; "
            "sys.exit(1 if any(m.startswith('lightning') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    model = PatchDiffGRADModel(**TINY).double()
    model.add_categories(["x"])
    assert isinstance(model.category("x"), PatchDiffCategoryModel)
    assert model.category("x").detectors[0].classifier.weight.dtype == torch.float64  # built after .double()


def test_sample_seeds_differ_per_chunk_and_repeat_after_a_resume():
    assert sample_seed("a", 5, 0, 32) == sample_seed("a", 5, 0, 32)
    assert len({sample_seed("a", 5, 0, 32), sample_seed("a", 5, 16, 32), sample_seed("a", 9, 0, 32),
                sample_seed("b", 5, 0, 32)}) == 4
