"""The report of one run: metrics, curves, score histograms with the threshold, gallery, speed,
config."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from anomaly_bench.callbacks.gallery import read_gallery
from anomaly_bench.metrics.curve_data import read_run_curves
from anomaly_bench.metrics.report import ordered_columns
from anomaly_bench.report.collect import RunRecord
from anomaly_bench.report.html import details, esc, fmt_bytes, fmt_number, page, table
from anomaly_bench.report.sections import (
    GalleryColumn,
    curve_panels,
    gallery_table,
    histograms,
    threshold_for,
)
from anomaly_bench.report.svg import color_of


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else esc(value)


def metrics_table(run: RunRecord) -> str:
    """The rows of ``metrics.json`` (categories and ``mean``), every column it has.

    Args:
        run: the run.
    """
    rows = [r for r in run.metrics.get("rows") or [] if isinstance(r, dict)]
    if not rows:
        pairs = sorted({(c, m): v for c, m, v in run.long}.items())
        return table(
            ["category", "metric", "value"],
            [[esc(c), esc(m), f"{v:.4f}"] for (c, m), v in pairs],
            name_columns=2,
        )
    columns = ordered_columns(rows)
    oracle = set(run.metrics.get("oracle_columns") or [])
    headers = [c + (" (oracle)" if c in oracle else "") for c in columns]
    note = ""
    if oracle:
        text = run.metrics.get("oracle_note") or "oracle columns pick their threshold on the test labels"
        note = f'<p class="note">{esc(text)}</p>'
    return table(headers, [[_value(r.get(c)) for c in columns] for r in rows], attrs='class="metrics"') + note


def speed_table(run: RunRecord) -> str:
    """Test-stage speed and memory from ``test_stats.json``.

    Args:
        run: the run.
    """
    stats = run.test_stats
    if stats is None:
        return '<p class="note">No test_stats.json in this run.</p>'
    rows = [
        ["device", esc(stats.device + (f" ({stats.device_name})" if stats.device_name else ""))],
        ["test images", str(stats.num_images)],
        ["test loop seconds", fmt_number(stats.seconds, 2)],
        ["images / s", fmt_number(stats.images_per_s, 1)],
        ["peak CPU memory (RSS)", fmt_bytes(stats.peak_rss_bytes)],
        ["peak CUDA allocated", fmt_bytes(stats.peak_cuda_allocated_bytes)],
        ["peak CUDA reserved", fmt_bytes(stats.peak_cuda_reserved_bytes)],
        ["batch size", esc(stats.batch_size or "-")],
        ["precision", esc(stats.precision or "-")],
    ]
    return table(["", "value"], rows)


def provenance(run: RunRecord) -> str:
    """Git SHA, package versions, the saved config and run info, collapsed.

    Args:
        run: the run.
    """
    info = run.run_info or {}
    versions = info.get("versions") if isinstance(info.get("versions"), dict) else {}
    rows = [
        ["git SHA", esc(info.get("git_sha") or "-")],
        ["time (UTC)", esc(info.get("time_utc") or "-")],
        ["python", esc(info.get("python") or "-")],
        ["GPUs", esc(", ".join(info.get("gpus") or []) or "-")],
    ]
    rows += [[esc(name), esc(version)] for name, version in versions.items() if version]
    parts = [table(["", "value"], rows)]
    if run.config_text:
        parts.append(details(run.config_name or "config", f"<pre>{esc(run.config_text)}</pre>"))
    if info:
        parts.append(details("run info", f"<pre>{esc(json.dumps(info, indent=2, default=str))}</pre>"))
    return "".join(parts)


def run_page(run: RunRecord, report_file: Path, side: int = 96, max_gallery_rows: int = 12) -> str:
    """The whole HTML of a run's report.

    Args:
        run: the run.
        report_file: where the page will be written.
        side: long side of gallery pictures in pixels.
        max_gallery_rows: the most gallery images per category.
    """
    curves = read_run_curves(run.run_dir)
    galleries = read_gallery(run.run_dir)
    scores = run.scores()
    categories = [str(r.get("category")) for r in run.rows] or sorted(set(curves) | set(galleries))
    label = run.model
    curve_html, hist_html, gallery_html = [], [], []
    for i, category in enumerate(categories):
        labels = [s["label"] for s in scores if s["category"] == category and s["label"] in (0, 1)]
        values = [s["score"] for s in scores if s["category"] == category and s["label"] in (0, 1)]
        recorded = run.threshold(category)
        curve_html.append(f"<h3>{esc(category)}</h3>")
        curve_html.append(
            curve_panels([(label, color_of(0), curves[category])])
            if category in curves
            else '<p class="note">No curve data for this category.</p>'
        )
        if values:
            hist_html.append(histograms(category, labels, values, recorded))
        if category in galleries:
            column = GalleryColumn(label, galleries[category], threshold_for(recorded, labels, values))
            gallery_html.append(
                f"<h3>{esc(category)}</h3>" + gallery_table(f"gallery-{i}", [column], side, max_gallery_rows)
            )
    if not hist_html:
        hist_html.append('<p class="note">No scores.csv in this run.</p>')
    elif not any(run.threshold(c) is not None for c in categories):
        hist_html.append(
            '<p class="note">No threshold recorded in metrics.json (key thresholds.image): none drawn.</p>'
        )
    if not gallery_html:
        gallery_html.append(
            '<p class="note">No gallery maps in this run (gallery/&lt;category&gt;/index.json).</p>'
        )
    title = f"{run.model} on {run.dataset} / {run.category_label}" + (
        f", seed {run.seed}" if run.seed is not None else ""
    )
    meta = f"run {run.run_dir} · report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    sections = [
        ("metrics", "Metrics", metrics_table(run)),
        ("curves", "Curves", "".join(curve_html)),
        ("histograms", "Score histograms", f'<div class="charts">{"".join(hist_html)}</div>'),
        ("gallery", "Gallery", "".join(gallery_html)),
        ("speed", "Speed and memory", speed_table(run)),
        ("provenance", "Config and versions", provenance(run)),
    ]
    return page(title, meta, sections)
