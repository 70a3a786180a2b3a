"""ROC / PR / PRO curves reach W&B as line plots (offline run files), bounded, never failing a run."""

from __future__ import annotations

import json
import warnings

import pytest

from anomaly_bench.metrics import Evaluator
from anomaly_bench.metrics import wandb_curves
from tests.metrics.test_evaluator import OracleModel, _items, _loader, _trainer

wandb = pytest.importorskip("wandb")
from lightning.pytorch.loggers import WandbLogger  # noqa: E402


def _quiet_settings():
    # no system monitor, git or code capture: an offline run starts in ~2 s instead of ~30 s
    return wandb.Settings(x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
                          disable_git=True, disable_code=True, console="off")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield
    wandb.finish()


def test_evaluator_logs_per_category_curves_to_an_offline_run(tmp_path, offline):
    logger = WandbLogger(save_dir=str(tmp_path), project="anomaly-bench-test", offline=True,
                         settings=_quiet_settings())
    evaluator = Evaluator(plot_curves=False, wandb_curve_points=7)
    _trainer(tmp_path, logger=logger).test(OracleModel(evaluator), dataloaders=_loader(_items(tmp_path / "data")))
    run_dir = logger.experiment.dir
    wandb.finish()
    tables = sorted((tmp_path / "wandb").glob("offline-run-*/files/media/table/test/curves/*/*.table.json"))
    names = {f"{t.parent.name}/{t.name.split('_table_')[0]}" for t in tables}
    assert names == {"a/roc", "a/pr", "a/pro", "b/roc", "b/pr", "b/pro"}, (names, run_dir)
    for table in tables:
        data = json.loads(table.read_text())
        assert data["columns"] == ["step", "lineKey", "lineVal"]
        series = {}
        for _, key, _ in data["data"]:
            series[key] = series.get(key, 0) + 1
        assert series and max(series.values()) <= 7  # bounded points per series
        if table.name.startswith("roc"):
            assert set(series) == {"image", "pixel"}
        if table.parent.name == "b" and table.name.startswith("pro"):
            assert set(series) == {"PRO", "sPRO all", "sPRO logical", "sPRO structural"}


def test_wandb_trouble_only_warns(tmp_path, offline, monkeypatch):
    logger = WandbLogger(save_dir=str(tmp_path), project="anomaly-bench-test", offline=True,
                         settings=_quiet_settings())

    def broken(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb.plot, "line_series", broken)
    evaluator = Evaluator(plot_curves=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, logger=logger).test(OracleModel(evaluator),
                                               dataloaders=_loader(_items(tmp_path / "data")))
    assert [r["category"] for r in evaluator.results] == ["a", "b", "mean"]  # the run finished
    assert any("W&B is down" in str(w.message) for w in caught)
    assert wandb_curves.log_wandb_curves([], []) == []  # no W&B logger: nothing to do
