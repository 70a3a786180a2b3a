"""The papers' numbers (``benchmarks/paper_results.csv``) and their join with ours.

The CSV is tidy: paper, method, dataset, setting, variant, category, metric, value, std, source.
``variant`` is empty for the method as published and names the ablation otherwise. Values are in
percent, as printed in the papers. Our model / dataset names map to the paper's via the grid's
``paper_method`` / ``paper_dataset`` (default: the class name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from anomaly_bench.benchmark.cell_config import load_yaml_mapping

PAPER_COLUMNS = ["paper", "method", "dataset", "setting", "variant", "category", "metric", "value", "std", "source"]
PAPER_KEY = ["paper", "method", "dataset", "setting", "variant", "category", "metric"]
DEFAULT_PAPER_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "paper_results.csv"

# When several papers report the same method, the method's own (latest) paper wins.
OWN_PAPER = {
    "CRAD": "crad_eccv24",
    "BiGridGRAD": "bigrid_grad",
    "PatchDiffGRAD": "patchdiff_grad",
    "GLAD": "glad_eccv24",
}
PAPER_PRIORITY = ["crad_eccv24", "bigrid_grad", "glad_eccv24", "patchdiff_grad", "crad_v1"]


class PaperTableError(ValueError):
    """paper_results.csv does not have the expected shape."""


def load_paper_results(path: str | Path | None = None) -> pd.DataFrame:
    """Read and validate the paper table: columns, numeric values, no duplicate keys."""
    path = Path(path) if path is not None else DEFAULT_PAPER_RESULTS
    if not path.is_file():
        raise PaperTableError(f"paper results file {path} does not exist")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise PaperTableError(f"{path}: missing columns {missing}; expected {PAPER_COLUMNS}")
    for col in ("value", "std"):
        numeric = pd.to_numeric(df[col].replace("", float("nan")), errors="coerce")
        bad = df[col][(df[col] != "") & numeric.isna()]
        if not bad.empty:
            raise PaperTableError(f"{path}: column {col!r} has non-numeric entries, e.g. row {bad.index[0] + 2}: {bad.iloc[0]!r}")
        df[col] = numeric
    if df["value"].isna().any():
        raise PaperTableError(f"{path}: empty value at row {int(df['value'].isna().idxmax()) + 2}")
    dup = df[df.duplicated(PAPER_KEY, keep=False)]
    if not dup.empty:
        raise PaperTableError(f"{path}: duplicate keys {PAPER_KEY}, e.g. {dup.iloc[0][PAPER_KEY].to_dict()}")
    bad_setting = set(df["setting"]) - {"unified", "separate"}
    if bad_setting:
        raise PaperTableError(f"{path}: setting must be unified|separate, got {sorted(bad_setting)}")
    return df[PAPER_COLUMNS]


def published(paper: pd.DataFrame) -> pd.DataFrame:
    """One published number per (method, dataset, setting, category, metric): the full method
    (no ablation variant), from the method's own paper when several papers report it."""
    full = paper[paper["variant"] == ""].copy()
    order = {p: i for i, p in enumerate(PAPER_PRIORITY)}
    full["_own"] = [0 if OWN_PAPER.get(m) == p else 1 for m, p in zip(full["method"], full["paper"])]
    full["_prio"] = full["paper"].map(order).fillna(len(order))
    full = full.sort_values(["_own", "_prio"], kind="stable")
    keys = ["method", "dataset", "setting", "category", "metric"]
    return full.drop_duplicates(keys, keep="first").drop(columns=["_own", "_prio"])


def compare_with_paper(
    ours_stats: pd.DataFrame,
    paper: pd.DataFrame,
    model_to_method: dict[str, str],
    dataset_to_paper: dict[str, str],
) -> pd.DataFrame:
    """Side by side: our mean (± std over seeds), the paper's value and ours - paper.

    ``ours_stats`` has columns model, dataset, setting, category, metric, mean, std, n_seeds, in
    percent. Rows of ours without a published counterpart are dropped."""
    cols = ["model", "dataset", "setting", "category", "metric", "ours", "ours_std", "n_seeds",
            "paper", "paper_std", "diff", "paper_source"]
    if ours_stats.empty:
        return pd.DataFrame(columns=cols)
    ours = ours_stats.rename(columns={"mean": "ours", "std": "ours_std"})
    ours["method"] = ours["model"].map(lambda m: model_to_method.get(m, m))
    ours["paper_dataset"] = ours["dataset"].map(lambda d: dataset_to_paper.get(d, d))
    pub = published(paper)
    pub = pd.DataFrame({
        "method": pub["method"],
        "paper_dataset": pub["dataset"],
        "setting": pub["setting"],
        "category": pub["category"],
        "metric": pub["metric"],
        "paper_value": pub["value"],
        "paper_std": pub["std"],
        "paper_source": pub["paper"] + ": " + pub["source"],
    })
    merged = ours.merge(pub, on=["method", "paper_dataset", "setting", "category", "metric"], how="inner")
    merged = merged.rename(columns={"paper_value": "paper"})
    merged["diff"] = merged["ours"] - merged["paper"]
    return merged[cols].sort_values(["dataset", "setting", "model", "metric", "category"]).reset_index(drop=True)


def paper_names(grid: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Map our model / dataset names to the names used in paper_results.csv."""
    models: dict[str, str] = {}
    for m in grid.models:
        name = m.paper_method or m.class_path
        if name is None and m.config is not None:
            try:
                name = (load_yaml_mapping(m.config).get("model") or {}).get("class_path")
            except Exception:
                name = None
        models[m.name] = str(name or m.name).rsplit(".", 1)[-1]
    datasets = {d.name: d.paper_dataset or d.name for d in grid.datasets}
    return models, datasets
