"""benchmarks/demo_heldout.py --set: a variant of a demo config is judged next to the untouched
reference row, and its runs are never mixed with runs of other settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_heldout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    spec = importlib.util.spec_from_file_location("demo_heldout", REPO_ROOT / "benchmarks" / "demo_heldout.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    calls: list[tuple[str, list[str]]] = []

    def fake_run(method, root, out, log, overrides=None):
        calls.append((method, list(overrides or [])))
        score = 0.9 if method == module.REFERENCE else 0.6
        return {"image_auroc": score, "pixel_auroc": score, "seconds": {"fit": 1.0, "test": 1.0},
                "per_category": {"a": {"image_auroc": score, "pixel_auroc": score}}, "overrides": list(overrides or [])}

    monkeypatch.setattr(module, "data_root", lambda work, family, seed: tmp_path / "data" / f"{family}_{seed}")
    monkeypatch.setattr(module, "run_one", fake_run)
    module.calls = calls
    return module


def test_overrides_reach_every_method_but_the_reference_and_are_recorded(demo_heldout, tmp_path: Path):
    sets = ("model.init_args.dino_finetune_epochs=3",)
    summary = demo_heldout.run_matrix(tmp_path / "work", tmp_path / "out", ("glad",), (1,), ("heldout",),
                                      overrides=sets)
    assert demo_heldout.calls == [("patchcore", []), ("glad", list(sets))]
    assert summary["overrides"] == list(sets) and "--set model.init_args.dino_finetune_epochs=3" in summary["command"]
    assert "`model.init_args.dino_finetune_epochs=3`" in (tmp_path / "out.md").read_text()
    assert demo_heldout.override_args(list(sets)) == ["--model.init_args.dino_finetune_epochs", "3"]

    # the same folder with other settings would mix two configs in one table: refused
    with pytest.raises(SystemExit, match="had overrides"):
        demo_heldout.run_matrix(tmp_path / "work", tmp_path / "out", ("glad",), (1,), ("heldout",))
    # the same settings reuse the finished runs
    demo_heldout.calls.clear()
    demo_heldout.run_matrix(tmp_path / "work", tmp_path / "out", ("glad",), (1,), ("heldout",), overrides=sets)
    assert demo_heldout.calls == []


def test_a_malformed_override_or_the_shipped_summary_path_fails_before_any_run(demo_heldout, tmp_path: Path):
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        demo_heldout.main(["--methods", "glad", "--work", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--set", "dino_finetune_epochs"])
    # a variant never overwrites benchmarks/results/demo_heldout_cpu (the shipped configs' figures)
    with pytest.raises(SystemExit, match="its own --out"):
        demo_heldout.main(["--methods", "glad", "--work", str(tmp_path), "--set", "model.init_args.x=1"])
    assert demo_heldout.calls == []


def test_the_summary_names_the_command_that_reproduces_it(demo_heldout, tmp_path: Path):
    argv = ["--methods", "glad", "--seeds", "1", "--families", "heldout", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "o"), "--set", "model.init_args.x=1"]
    assert demo_heldout.main(argv) == 0
    expected = "python benchmarks/demo_heldout.py " + " ".join(argv)
    assert f"Command: `{expected}`" in (tmp_path / "o.md").read_text()


def test_the_tuning_set_is_seed_0_of_all_six_standard_scenes_and_judges_nothing(demo_heldout, tmp_path: Path):
    written: list[tuple[str, int]] = []
    demo_heldout.data_root = lambda work, family, seed: written.append((family, seed)) or tmp_path / "d"
    assert demo_heldout.TUNING["categories"] == ["grid", "ring", "weave", "wood", "board", "pins"]
    assert demo_heldout.main(["--tune", "--methods", "glad", "--work", str(tmp_path / "w"),
                              "--out", str(tmp_path / "tune")]) == 0
    assert written == [("tuning", 0)]
    assert (tmp_path / "tune.md").read_text().startswith("# Demo configs on the tuning set")
    # seed 0 never judges; the tuning set is not mixed with judging data; its table has its own path
    with pytest.raises(SystemExit, match="tuning seed"):
        demo_heldout.run_matrix(tmp_path / "w", tmp_path / "o", ("glad",), (0, 1), ("heldout",))
    with pytest.raises(SystemExit, match="tuning set is seed 0"):
        demo_heldout.run_matrix(tmp_path / "w", tmp_path / "o", ("glad",), (0,), ("tuning", "heldout"))
    with pytest.raises(SystemExit, match="its own --out"):
        demo_heldout.main(["--tune", "--methods", "glad", "--work", str(tmp_path / "w")])
