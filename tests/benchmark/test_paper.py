"""benchmarks/paper_results.csv: schema, value ranges, no duplicate keys, faithful to the papers'
text, and the join with our numbers."""

import re
from pathlib import Path

import pandas as pd
import pytest

from anomaly_bench.benchmark.aggregate import is_rate_metric
from anomaly_bench.benchmark.paper import (
    PAPER_KEY,
    PaperTableError,
    compare_with_paper,
    load_paper_results,
    published,
)

SEEDS = Path("/work/shared/seeds")
SEED_OF = {"bigrid_grad": "000", "crad_v1": "001", "crad_eccv24": "002", "patchdiff_grad": "003", "glad_eccv24": "004"}


@pytest.fixture(scope="module")
def paper():
    return load_paper_results()


def test_schema_ranges_and_unique_keys(paper):
    assert not paper.duplicated(PAPER_KEY).any()
    rates = paper[paper.metric.map(is_rate_metric)]
    assert rates["value"].between(0, 100).all()
    assert rates["value"].max() > 1.5  # percent, consistently, never fractions
    assert set(paper.setting) == {"unified", "separate"}
    assert {"CRAD", "BiGridGRAD", "PatchDiffGRAD", "GLAD"} <= set(paper.method)
    assert {"MVTecAD", "VisA", "GoodsAD", "MVTecLOCO", "MPDD", "PCBBank"} == set(paper.dataset)
    assert (paper.category == paper.category.str.lower()).all() and not paper.category.str.contains(" ").any()


def test_headline_numbers(paper):
    pub = published(paper).set_index(["method", "dataset", "setting", "category", "metric"])
    assert pub.loc[("CRAD", "MVTecAD", "unified", "mean", "image_auroc"), "value"] == 99.3
    assert pub.loc[("CRAD", "MVTecAD", "unified", "mean", "image_auroc"), "std"] == 0.08  # ECCV paper wins
    assert pub.loc[("CRAD", "VisA", "separate", "mean", "image_auroc"), "value"] == 95.4
    assert pub.loc[("BiGridGRAD", "GoodsAD", "unified", "mean", "pixel_ap"), "value"] == 36.4
    assert pub.loc[("PatchDiffGRAD", "MVTecLOCO", "separate", "pushpins", "image_auroc"), "value"] == 99.7
    assert pub.loc[("GLAD", "MPDD", "separate", "mean", "pixel_auroc"), "value"] == 98.7
    # per-category rows of the full tables
    crad = paper[(paper.paper == "crad_eccv24") & (paper.dataset == "MVTecAD") & (paper.method == "CRAD")
                 & (paper.variant == "") & (paper.metric == "image_auroc") & (paper.setting == "unified")]
    assert len(crad) == 16  # 15 categories + mean


NUMBERS_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "paper_numbers.json"
_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?!\d)")  # 99.3 in "99.3±0.1", not 9.3 of "99.3"


def paper_numbers(text: str) -> list[float]:
    """Every number written in a paper's text, as sorted distinct floats (99.30 and 99.3 are one)."""
    return sorted({float(token) for token in _NUMBER.findall(text)})


def write_paper_numbers() -> None:
    """Refresh tests/fixtures/paper_numbers.json from the paper texts (needs ../shared/seeds)."""
    import json

    data = json.loads(NUMBERS_FIXTURE.read_text())
    data["numbers"] = {p: paper_numbers(next(SEEDS.glob(f"{s}_*.txt")).read_text()) for p, s in SEED_OF.items()}
    NUMBERS_FIXTURE.write_text(json.dumps(data, indent=0) + "\n")


def test_every_value_appears_in_its_paper(paper):
    """Each value (and std) of the table is a number its paper prints; checked against the committed
    list of the papers' numbers, so it runs without the texts (the next test keeps the list true)."""
    import json

    numbers = {p: set(values) for p, values in json.loads(NUMBERS_FIXTURE.read_text())["numbers"].items()}
    assert set(numbers) == set(SEED_OF) == set(paper.paper)
    missing = [(r.paper, r.method, r.category, r.metric, r.value) for r in paper.itertuples()
               if float(r.value) not in numbers[r.paper]]
    missing += [(r.paper, r.method, r.category, r.metric, "std", r.std) for r in paper.itertuples()
                if pd.notna(r.std) and float(r.std) not in numbers[r.paper]]
    assert not missing, missing[:10]


def test_a_value_missing_from_its_paper_is_caught(paper):
    import json

    numbers = set(json.loads(NUMBERS_FIXTURE.read_text())["numbers"]["crad_eccv24"])
    assert 99.3 in numbers and 97.77 not in numbers and 88.88 not in numbers  # a typo would not pass


@pytest.mark.skipif(not SEEDS.is_dir(), reason="paper texts not available")
def test_the_committed_numbers_are_those_of_the_paper_texts():
    import json

    committed = json.loads(NUMBERS_FIXTURE.read_text())["numbers"]
    for key, seed in SEED_OF.items():
        assert committed[key] == paper_numbers(next(SEEDS.glob(f"{seed}_*.txt")).read_text()), key


def test_join_gives_diff_and_source(paper):
    ours = pd.DataFrame([
        {"model": "crad_demo", "dataset": "mvtec", "setting": "unified", "category": "mean",
         "metric": "image_auroc", "mean": 98.3, "std": 0.5, "n_seeds": 3},
        {"model": "crad_demo", "dataset": "mvtec", "setting": "unified", "category": "bottle",
         "metric": "image_auroc", "mean": 100.0, "std": 0.0, "n_seeds": 3},
        {"model": "mine", "dataset": "mvtec", "setting": "unified", "category": "mean",
         "metric": "image_auroc", "mean": 50.0, "std": 0.0, "n_seeds": 1},
    ])
    joined = compare_with_paper(ours, paper, {"crad_demo": "CRAD"}, {"mvtec": "MVTecAD"})
    assert len(joined) == 2  # "mine" has no published counterpart
    mean = joined[joined.category == "mean"].iloc[0]
    assert mean["paper"] == 99.3 and mean["diff"] == pytest.approx(-1.0)
    assert mean["paper_source"].startswith("crad_eccv24")


def test_loader_rejects_duplicates_and_bad_values(tmp_path):
    good = "paper,method,dataset,setting,variant,category,metric,value,std,source\n" \
           "p,M,D,unified,,mean,image_auroc,90,,T1\n"
    path = tmp_path / "p.csv"
    path.write_text(good + "p,M,D,unified,,mean,image_auroc,91,,T2\n")
    with pytest.raises(PaperTableError, match="duplicate"):
        load_paper_results(path)
    path.write_text(good.replace(",90,", ",ninety,"))
    with pytest.raises(PaperTableError, match="non-numeric"):
        load_paper_results(path)
    path.write_text("paper,method\nx,y\n")
    with pytest.raises(PaperTableError, match="missing columns"):
        load_paper_results(path)
