"""Building blocks shared by the run page and the grid page: curve panels, score histograms, the
heat-map gallery and the thresholds the gallery classifies with."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anomaly_bench.callbacks.gallery import (
    ANOMALOUS,
    CORRECT_NORMAL,
    FALSE_ALARM,
    HIT,
    MISS,
    GalleryIndex,
    GalleryItem,
    classify,
    confidence,
)
from anomaly_bench.metrics.curve_data import CategoryCurves, Curve
from anomaly_bench.report.html import esc
from anomaly_bench.report.imaging import data_uri_jpeg, load_thumbnail, overlay, with_outline
from anomaly_bench.report.svg import Series, histogram_chart, line_chart

OUTCOME_TEXT = {HIT: "hit", MISS: "miss", FALSE_ALARM: "false alarm", CORRECT_NORMAL: "correct normal"}
ROW_PRIORITY = {MISS: 0, FALSE_ALARM: 1, HIT: 2, CORRECT_NORMAL: 3}


def f1_max_threshold(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """The score threshold with the best F1 on these labels (an oracle: chosen on test labels);
    None without both classes.

    Args:
        labels: 1 anomalous, 0 normal.
        scores: raw image scores.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    positives = int((y == 1).sum())
    if positives == 0 or positives == y.size:
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y == 1)
    fp = np.cumsum(y == 0)
    f1 = 2 * tp / (tp + fp + positives)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a threshold flags every image with score >= it
    candidates = np.flatnonzero(last_of_tie)
    best = candidates[int(np.argmax(f1[candidates]))]
    return float(s[best])


@dataclass
class Threshold:
    """A method's image threshold for one category and where it came from."""

    value: float | None
    kind: str  # "run" (metrics.json), "oracle" (F1-max on the test labels) or "none"
    scale: float = 1.0  # the spread of the category's scores, the unit of "confidence"


def threshold_for(recorded: float | None, labels: Sequence[int], scores: Sequence[float]) -> Threshold:
    """The recorded threshold when the run has one, else the F1-max oracle marked as such.

    Args:
        recorded: ``thresholds.image`` from ``metrics.json`` (None if absent).
        labels: the category's test labels (from ``scores.csv``).
        scores: the category's test scores.
    """
    spread = float(np.std(scores)) if len(scores) > 1 else 1.0
    spread = spread if spread > 0 and math.isfinite(spread) else 1.0
    if recorded is not None:
        return Threshold(recorded, "run", spread)
    oracle = f1_max_threshold(labels, scores)
    return Threshold(oracle, "oracle" if oracle is not None else "none", spread)


# ------------------------------------------------------------------------------------ curves
def _series(curve: Curve | None, label: str, color: str) -> Series | None:
    return None if curve is None or not curve.x else Series(label, curve.x, curve.y, color)


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def curve_panels(per_model: Sequence[tuple[str, str, CategoryCurves]]) -> str:
    """Overlaid image ROC / PR, pixel ROC / PR, PRO (and sPRO) of several methods, one chart each.

    Args:
        per_model: (method label, colour, its curves of the category).
    """
    panels: dict[str, list[Series]] = {
        name: [] for name in ("image ROC", "image PR", "pixel ROC", "pixel PR", "PRO", "sPRO")
    }
    fpr_limit, spro_limit = 0.3, 0.05
    for label, color, data in per_model:
        fpr_limit = data.fpr_limit
        spro_limit = data.spro_limits[0] if data.spro_limits else spro_limit
        image, pixel = data.image, data.pixel.get("all")
        candidates = []
        if image is not None:
            candidates += [
                ("image ROC", _series(image.roc, f"{label} {_auc(image.auroc)}", color)),
                ("image PR", _series(image.pr, f"{label} AP {_auc(image.ap)}", color)),
            ]
        if pixel is not None:
            candidates += [
                ("pixel ROC", _series(pixel.roc, f"{label} {_auc(pixel.auroc)}", color)),
                ("pixel PR", _series(pixel.pr, f"{label} AP {_auc(pixel.ap)}", color)),
                ("PRO", _series(pixel.pro, f"{label} {_auc(pixel.aupro)}@{fpr_limit:g}", color)),
                (
                    "sPRO",
                    _series(
                        pixel.spro,
                        f"{label} {_auc(pixel.auspro.get(f'{spro_limit:g}'))}@{spro_limit:g}",
                        color,
                    ),
                ),
            ]
        for name, series in candidates:
            if series is not None:
                panels[name].append(series)
    charts = []
    for name, series in panels.items():
        if not series:
            continue
        if name.endswith("ROC"):
            charts.append(line_chart(name, series, "FPR", "TPR", diagonal=True))
        elif name.endswith("PR"):
            charts.append(line_chart(name, series, "recall", "precision"))
        elif name == "PRO":
            charts.append(line_chart(name, series, "FPR", "PRO", vline=(fpr_limit, f"limit {fpr_limit:g}")))
        else:
            charts.append(
                line_chart(
                    name,
                    series,
                    "FPR",
                    "sPRO",
                    x_range=(0.0, max(0.3, spro_limit)),
                    vline=(spro_limit, f"limit {spro_limit:g}"),
                )
            )
    if not charts:
        return '<p class="note">No curve data (curves/&lt;category&gt;.json) for this category.</p>'
    return f'<div class="charts">{"".join(charts)}</div>'


def histograms(category: str, labels: Sequence[int], scores: Sequence[float], threshold: float | None) -> str:
    """Score histograms of the category's normal and anomalous test images with the threshold.

    Args:
        category: the category name (chart title).
        labels: test labels.
        scores: test scores.
        threshold: the recorded image threshold, or None (nothing drawn).
    """
    normal = [s for s, y in zip(scores, labels) if y == 0]
    anomalous = [s for s, y in zip(scores, labels) if y == 1]
    return histogram_chart(f"{category}: image scores", normal, anomalous, threshold)


# ----------------------------------------------------------------------------------- gallery
@dataclass
class GalleryColumn:
    """One method's gallery of one category, with the threshold that classifies its images."""

    label: str
    index: GalleryIndex
    threshold: Threshold


def _outcome_cell(
    item: GalleryItem, column: GalleryColumn, base: np.ndarray | None, side: int
) -> tuple[str, str | None]:
    try:
        picture = overlay(column.index.load_map(item), column.index.display_range, base, side)
    except Exception:  # a missing or broken map file: show the score without a picture
        picture = None
    outcome = None
    if column.threshold.value is not None:
        outcome = classify(item.label, item.score, column.threshold.value)
    text = OUTCOME_TEXT.get(outcome, "score") + f" {item.score:.4g}"
    image = f'<img src="{data_uri_jpeg(picture)}" alt="">' if picture is not None else ""
    css = f"outcome {outcome}" if outcome else "outcome"
    return f'{image}<span class="{css}">{esc(text)}</span>', outcome


def gallery_table(table_id: str, columns: Sequence[GalleryColumn], side: int = 96, max_rows: int = 12) -> str:
    """The same images side by side for every method: misses first, then false alarms, hits and
    correct normals, each most confident first (distance to the threshold in score spreads).

    Args:
        table_id: the HTML id (the filter buttons refer to it).
        columns: one per method, in the report's model order.
        side: long side of each picture in pixels.
        max_rows: the most images shown.
    """
    items: dict[str, GalleryItem] = {}
    sources: dict[str, GalleryColumn] = {}
    for column in columns:
        for item in column.index.items:
            items.setdefault(item.id, item)
            if column.index.image_path(item) is not None and item.id not in sources:
                sources[item.id] = column
    if not items:
        return '<p class="note">No gallery maps (gallery/&lt;category&gt;/index.json) for this category.</p>'
    by_column = [{item.id: item for item in column.index.items} for column in columns]
    rows = []
    for item_id, item in items.items():
        source = sources.get(item_id)
        base = load_thumbnail(source.index.image_path(item), side) if source else None
        input_cell = ""
        if base is not None:
            outlined = with_outline(base, source.index.mask_path(item) if source else None)
            input_cell = f'<img src="{data_uri_jpeg(outlined)}" alt="">'
        kind = "anomalous" if item.label == ANOMALOUS else "normal"
        cells = [f'{input_cell}<span class="outcome">{esc(item.defect)} · {esc(kind)}</span>']
        outcomes: list[str] = []
        priority, strength = 4, 0.0
        for column, lookup in zip(columns, by_column):
            mine = lookup.get(item_id)
            if mine is None:
                cells.append('<span class="outcome">not saved</span>')
                continue
            html_cell, outcome = _outcome_cell(mine, column, base, side)
            cells.append(html_cell)
            if outcome is None:
                continue
            outcomes.append(outcome)
            sure = confidence(mine.score, column.threshold.value, column.threshold.scale)
            if ROW_PRIORITY[outcome] < priority:
                priority, strength = ROW_PRIORITY[outcome], sure
            elif ROW_PRIORITY[outcome] == priority:
                strength = max(strength, sure)
        if not outcomes:
            priority = 2 if item.label == ANOMALOUS else 3
        rows.append(((priority, -strength, item_id), cells, " ".join(sorted(set(outcomes))) or "unknown"))
    rows.sort(key=lambda r: r[0])
    rows = rows[:max_rows]
    head = "".join(f"<th>{esc(h)}</th>" for h in ["input + ground truth", *[c.label for c in columns]])
    body = "".join(
        f'<tr data-outcomes="{esc(outcomes)}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        for _, cells, outcomes in rows
    )
    notes = []
    for column in columns:
        t = column.threshold
        if t.kind == "run":
            notes.append(f"{column.label}: threshold {t.value:.4g} (recorded by the run)")
        elif t.kind == "oracle":
            notes.append(
                f"{column.label}: threshold {t.value:.4g} (oracle: F1-max on the test labels, "
                "no threshold recorded)"
            )
        else:
            notes.append(f"{column.label}: no threshold, images not classified")
    buttons = "".join(
        f'<button type="button" data-outcome="{o}"{" class=on" if o == "all" else ""}>'
        f"{esc(OUTCOME_TEXT.get(o, o))}</button>"
        for o in ("all", MISS, FALSE_ALARM, HIT, CORRECT_NORMAL)
    )
    return (
        f'<div class="filters" data-table="{esc(table_id)}">{buttons}</div>'
        f'<table class="gallery" id="{esc(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
        f'<p class="note">{esc("; ".join(notes))}. Colours: each method\'s own map range for this category '
        f"(smallest value to the 99th percentile of per-image maxima).</p>"
    )
