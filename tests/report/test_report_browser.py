"""The reports of the fixture grid and of one of its runs, opened in a real headless Chromium:
no console errors, no network requests, one table row per method, a screenshot that is not blank."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from anomaly_bench.report import build_report
from tests.report.fixture_grid import MODELS

ROWS_OF_ACTIVE_TABLE = (
    "document.querySelectorAll('div.metric-table.active table.results-table tbody tr.method-row').length"
)


def _open(browser, path):
    """Load a report file; returns the page session with every event recorded until shortly after load."""
    page = browser.new_page()
    for domain in ("Runtime", "Log", "Network", "Page"):
        page.send(f"{domain}.enable")
    page.send(
        "Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False
    )
    url = path.resolve().as_uri()
    page.send("Page.navigate", url=url)
    page.wait_for("Page.loadEventFired")
    page.drain(0.5)
    return page, url


def _problems(page, url):
    errors, requests = [], []
    for event in page.events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append((details.get("exception") or {}).get("description") or details.get("text"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(str(params.get("args")))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text"))
        elif method == "Network.requestWillBeSent":
            requested = params["request"]["url"]
            if requested != url and not requested.startswith("data:"):
                requests.append(requested)
    return errors, requests


def _not_blank(png: bytes) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    assert pixels.shape[0] >= 900 and pixels.shape[1] >= 1200
    assert pixels.std() > 20.0, "screenshot is (nearly) one colour"
    colours = np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)
    assert len(colours) > 100, f"only {len(colours)} distinct colours: the page did not render"


def test_grid_report_in_headless_chromium(browser, fixture_grid, tmp_path):
    report = build_report(fixture_grid, output=tmp_path / "grid" / "report.html")
    page, url = _open(browser, report)
    try:
        assert page.evaluate("document.readyState") == "complete"
        assert page.evaluate(ROWS_OF_ACTIVE_TABLE) == len(MODELS)
        first = page.evaluate(
            "document.querySelector('div.metric-table.active tr.method-row td').textContent"
        )
        assert first.startswith("patchcore")  # the reference row first, though the grid lists it second
        # the metric selector and the gallery filters run without errors and keep one row per method
        page.evaluate(
            "(function(){var s=document.querySelector('select.metric-select');"
            "s.value='pixel_aupro';s.dispatchEvent(new Event('change'));})()"
        )
        assert (
            page.evaluate("document.querySelector('div.metric-table.active').getAttribute('data-metric')")
            == "pixel_aupro"
        )
        assert page.evaluate(ROWS_OF_ACTIVE_TABLE) == len(MODELS)
        page.evaluate("document.querySelector('.filters button[data-outcome=\"hit\"]').click()")
        assert page.evaluate("document.querySelectorAll('table.gallery tr.hidden').length") > 0
        assert (
            page.evaluate("document.querySelectorAll('svg.chart polyline').length") >= 2 * 5
        )  # 2 methods x 5 panels
        page.drain(0.3)
        _not_blank(page.screenshot())
        errors, requests = _problems(page, url)
        assert errors == [], f"console errors: {errors}"
        assert requests == [], f"network requests: {requests}"
        assert any(e["method"] == "Network.requestWillBeSent" for e in page.events)  # the recorder did record
    finally:
        page.close()


def test_run_report_in_headless_chromium(browser, fixture_grid, tmp_path):
    run_dir = fixture_grid / "cells" / "patchcore" / "synth_mvtec" / "all" / "seed0"
    report = build_report(run_dir, output=tmp_path / "run" / "report.html")
    page, url = _open(browser, report)
    try:
        assert (
            page.evaluate("document.querySelectorAll('table.metrics tbody tr').length") == 3
        )  # 2 categories + mean
        assert (
            page.evaluate("document.querySelectorAll('#histograms svg line.marker').length") == 2
        )  # threshold per category
        assert page.evaluate("document.querySelectorAll('table.gallery img').length") > 0
        _not_blank(page.screenshot())
        errors, requests = _problems(page, url)
        assert errors == [] and requests == [], (errors, requests)
    finally:
        page.close()
