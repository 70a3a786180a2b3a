"""Every demo config through the real CLI, at 128 px, on data its settings were not chosen on.

The demo settings were picked on ``anomaly-bench synth`` data of seed 0 (standard scenes). Here each
demo config runs ``anomaly-bench fit`` then ``test --ckpt_path last`` on held-out data and is
compared with the PatchCore demo config on the same data (the reference row, issue 15). One held-out
set per method (``JUDGED_ON``):

* CRAD, bi-grid GRAD: the held-out scene family (``synth --family heldout``, never looked at while
  choosing settings), seed 1, all four scenes (``fabric``, ``granite``, ``washer``, ``pcb``), 20
  normal and 20 anomalous test images per category. (A unified model over ``granite`` and ``pcb``
  alone is harder still: bi-grid GRAD measured 0.48 there, PatchCore 0.67; README.)
* GLAD: the standard scenes of seed 1 (``grid``, ``ring``). On the held-out family GLAD's demo config
  stays below the chance + 0.10 bar (mean image AUROC 0.58 over seeds 1 and 2): with a random ViT
  and a tiny UNet trained for 320-600 CPU steps the ADS decision is weak, so most defects survive the
  reconstruction, and thin scratches in fine textures reconstruct better than the texture around
  them (models/glad/README.md, "Why, measured"). The slow matrix below records that failure and
  fails once it goes away, so the list is kept true.
* PatchDiff (its demo config reads the MVTec LOCO layout): the standard LOCO scenes of seed 1.

Bar: PatchCore's mean image AUROC on the same data minus ``MARGIN``; a method whose README explains
(with figures) why it cannot reach that at this scale is held to ``CHANCE_BAR`` (chance + 0.10).
Today all four are in ``BELOW_REFERENCE``, so every bar here is ``CHANCE_BAR``;
``test_the_exemption_lists_agree_with_the_committed_matrix`` keeps that list equal to what the
committed matrix measured, so a method that catches up is held to the reference bar from then on.
The full matrix (two seeds, both scene families) is ``benchmarks/demo_heldout.py``, run by the
``slow`` test at the end; its figures are in ``benchmarks/results/demo_heldout_cpu.md``.

Data and the PatchCore rows are computed once per test session and shared by pytest-xdist
workers (a file lock in the session's common temporary folder).
"""

from __future__ import annotations

import csv
import fcntl
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from anomaly_bench.atomic import atomic_write_json
from anomaly_bench.cli import main
from tests.conftest import REPO_ROOT

DEMO_DIR = REPO_ROOT / "configs" / "demo"
REFERENCE = "patchcore"
MARGIN = 0.05
CHANCE_BAR = 0.60
# Methods that cannot reach the PatchCore row at this scale; each README says why, with figures
# (benchmarks/results/demo_heldout_cpu.md has the matrix, means over seeds 1 and 2).
BELOW_REFERENCE: dict[str, str] = {
    "crad": "held-out family 0.647 vs PatchCore 0.775 (fabric, washer): models/crad/README.md",
    "grad": "held-out family 0.613 vs PatchCore 0.775, standard 0.905 vs 1.000: models/grad/README.md",
    "glad": "standard 0.70 vs 1.00, held-out family 0.58 vs 0.78: models/glad/README.md",
    "patchdiff": "standard scenes 0.903 vs 1.000 (MVTec layout): models/patchdiff/README.md",
}
# (method, scene family) cells of the slow matrix known to miss even CHANCE_BAR: asserted to still
# miss it, so that a fix is noticed and this list shrinks
KNOWN_BELOW_CHANCE_BAR: dict[tuple[str, str], str] = {
    ("glad", "heldout"): "random ViT + tiny UNet: weak ADS, scratches survive the reconstruction (README)",
}
SIZE = 128
DATA = {
    # the held-out scene family, all four scenes: fabric and granite (scratches), washer (a missing
    # hole, a dent), pcb (shifted or turned parts); the matrix's data of seed 1
    "heldout_mvtec": dict(layout="mvtec", family="heldout", seed=1, size=SIZE, train=40, test_good=20,
                          per_defect=10),
    # the standard scenes of a seed the settings were not chosen on: 3 defect types x 7
    "standard_mvtec_seed1": dict(layout="mvtec", family="standard", seed=1, size=SIZE, train=40, test_good=20,
                                 per_defect=7),
    # PatchDiff's own layout, another seed: 2 logical + 2 structural defects per category, 5 each
    "loco_seed1": dict(layout="loco", family="standard", seed=1, size=SIZE, train=40, test_good=20, per_defect=5,
                       validation=10),
}
DATA_CLASS = {"heldout_mvtec": "MVTecAD", "standard_mvtec_seed1": "MVTecAD", "loco_seed1": "MVTecLOCO"}
JUDGED_ON = {"patchcore": "heldout_mvtec", "crad": "heldout_mvtec", "grad": "heldout_mvtec",
             "glad": "standard_mvtec_seed1", "patchdiff": "loco_seed1"}
QUIET = ["--trainer.enable_progress_bar", "false"]


def demo_configs() -> list[Path]:
    return sorted(DEMO_DIR.glob("*.yaml"))


def data_class(config: Path) -> str:
    return yaml.safe_load(config.read_text())["data"]["class_path"].rsplit(".", 1)[-1]


def fit_and_test(config: Path, root: Path, out: Path, extra: list[str] = ()) -> dict[str, dict[str, float]]:
    """``anomaly-bench fit`` then ``test --ckpt_path last``; the metrics rows by category."""
    args = ["--config", str(config), *extra, "--data.init_args.root", str(root),
            "--trainer.default_root_dir", str(out), *QUIET]
    main(["fit", *args])
    main(["test", *args, "--ckpt_path", "last"])
    check_verdicts(next(out.rglob("latest/scores.csv")))
    metrics_csv = next(out.rglob("latest/metrics.csv"))
    return {row["category"]: {k: float(v) for k, v in row.items() if k != "category" and v not in ("", None)}
            for row in csv.DictReader(metrics_csv.open())}


def check_verdicts(scores_csv: Path) -> None:
    """Every test image got a verdict at thresholds fitted on held-out normals during fit, and those
    thresholds flag a larger share of the anomalous images than of the normal ones."""
    rows = list(csv.DictReader(scores_csv.open()))
    missing = sorted({r["category"] for r in rows if r["pred_label"] == ""})
    assert not missing, f"{scores_csv}: no operating threshold for {missing}"
    rate = {label: sum(int(r["pred_label"]) for r in rows if r["label"] == label) /
            max(1, sum(r["label"] == label for r in rows)) for label in ("0", "1")}
    assert rate["1"] > rate["0"], f"{scores_csv}: flagged normals {rate['0']:.2f}, anomalies {rate['1']:.2f}"


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder common to every xdist worker of this session (the session's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if worker_id != "master" else base) / "demo_configs_shared"
    folder.mkdir(exist_ok=True)
    return folder


def once(shared: Path, name: str, build: Callable[[Path], object]) -> object:
    """``build(shared / name)`` exactly once per session, whichever worker asks first; its JSON result."""
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = shared / f"{name}.json"
        if not done.is_file():
            atomic_write_json(done, build(shared / name))
        return json.loads(done.read_text())


def data_root(shared: Path, key: str) -> Path:
    from anomaly_bench.data.synthetic import write_dataset

    def write(root: Path) -> dict:
        return write_dataset(root=root, **DATA[key]).counts

    once(shared, f"data_{key}", write)
    return shared / f"data_{key}"


def reference_rows(shared: Path, key: str) -> dict[str, dict[str, float]]:
    """The PatchCore demo config's metrics on data ``key`` (computed once per session)."""
    root = data_root(shared, key)
    same = DATA_CLASS[key] == data_class(DEMO_DIR / f"{REFERENCE}.yaml")
    extra = [] if same else ["--data", f"anomaly_bench.data.{DATA_CLASS[key]}"]
    return once(shared, f"patchcore_{key}",
                lambda out: fit_and_test(DEMO_DIR / f"{REFERENCE}.yaml", root, out, extra))  # type: ignore[return-value]


def test_every_demo_config_is_judged_here() -> None:
    names = {p.stem for p in demo_configs()}
    assert REFERENCE in names and names >= {"crad", "grad", "glad", "patchdiff"}
    for config in demo_configs():
        assert config.stem in JUDGED_ON, f"{config.name}: no held-out data in JUDGED_ON"
        assert DATA_CLASS[JUDGED_ON[config.stem]] == data_class(config), f"{config.name}: judged on another layout"
        spec = yaml.safe_load(config.read_text())
        assert spec["data"]["init_args"]["image_size"] >= SIZE, f"{config.name}: smaller than the data's {SIZE} px"


def test_the_exemption_lists_agree_with_the_committed_matrix() -> None:
    """BELOW_REFERENCE and KNOWN_BELOW_CHANCE_BAR say what benchmarks/results/demo_heldout_cpu.json
    measured: a method leaves BELOW_REFERENCE (and is then held to PatchCore − MARGIN here) as soon
    as a re-run matrix shows it within MARGIN of the reference on every scene family."""
    summary = json.loads((REPO_ROOT / "benchmarks" / "results" / "demo_heldout_cpu.json").read_text())
    rows = [r for r in summary["methods"] if r["method"] != REFERENCE]
    assert {r["method"] for r in rows} == {p.stem for p in demo_configs()} - {REFERENCE}
    for method in {r["method"] for r in rows}:
        gaps = {r["family"]: r["image_auroc"] - r["reference_image_auroc"] for r in rows if r["method"] == method}
        below = any(gap < -MARGIN for gap in gaps.values())
        assert below == (method in BELOW_REFERENCE), f"{method}: gaps to PatchCore {gaps}, MARGIN {MARGIN}"
    for row in rows:
        misses = row["image_auroc"] < CHANCE_BAR
        assert misses == ((row["method"], row["family"]) in KNOWN_BELOW_CHANCE_BAR), row


@pytest.mark.parametrize("config", demo_configs(), ids=lambda p: p.stem)
def test_demo_config_on_data_it_was_not_tuned_on(config: Path, shared_dir: Path, tmp_path: Path) -> None:
    key = JUDGED_ON[config.stem]
    reference = reference_rows(shared_dir, key)["mean"]["image_auroc"]
    if config.stem == REFERENCE:
        rows = reference_rows(shared_dir, key)
        # the reference itself must be a meaningful yardstick on this data
        assert reference >= CHANCE_BAR + 0.1, f"PatchCore demo config: mean image AUROC {reference:.3f} on {key}"
        assert rows["mean"]["pixel_auroc"] >= 0.75
        return
    rows = fit_and_test(config, data_root(shared_dir, key), tmp_path / "results")
    ours = rows["mean"]["image_auroc"]
    bar = CHANCE_BAR if config.stem in BELOW_REFERENCE else max(CHANCE_BAR, reference - MARGIN)
    per_category = ", ".join(f"{c} {r['image_auroc']:.3f}" for c, r in rows.items() if c != "mean")
    assert ours >= bar, (f"{config.name} on {key}: mean image AUROC {ours:.3f} ({per_category}); "
                         f"PatchCore {reference:.3f}, bar {bar:.3f}")


@pytest.mark.slow
def test_full_heldout_matrix(tmp_path: Path) -> None:
    """Every method x seeds 1, 2 x both scene families (benchmarks/demo_heldout.py), each method at
    least at its bar against the PatchCore row of the same data (mean over the two seeds)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_heldout", REPO_ROOT / "benchmarks" / "demo_heldout.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    summary = module.run_matrix(work=tmp_path, out=tmp_path / "demo_heldout_cpu")
    for row in summary["methods"]:
        if row["method"] == REFERENCE:
            continue
        bar = CHANCE_BAR if row["method"] in BELOW_REFERENCE else max(CHANCE_BAR, row["reference_image_auroc"] - MARGIN)
        if (row["method"], row["family"]) in KNOWN_BELOW_CHANCE_BAR:
            assert row["image_auroc"] < CHANCE_BAR, f"fixed? drop it from KNOWN_BELOW_CHANCE_BAR: {row}"
        else:
            assert row["image_auroc"] >= bar, row
