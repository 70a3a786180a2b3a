"""The curves of a test run as data: one compact JSON file per category, ``<run_dir>/curves/<category>.json``.

The Evaluator computes exact curves (pixel curves can have millions of points); a report only needs
their shape, so each curve is thinned to at most ``max_points`` points chosen evenly along its
length (steep parts, e.g. PRO at low FPR, keep their detail) and the exact areas are stored beside
it. The file is what ``anomaly-bench report`` reads, so a report can be built long after the run,
from a results folder copied anywhere.

Format (``format: anomaly_bench.curves``, ``version: 1``)::

    {"category": "bottle", "fpr_limit": 0.3, "spro_limits": [0.05, 0.3],
     "image": {"roc": {"x": [fpr...], "y": [tpr...]}, "pr": {"x": [recall...], "y": [precision...]},
               "auroc": 0.98, "ap": 0.97, "positives": 63, "negatives": 20, "mode": "exact"},
     "pixel": {"all": {..., "pro": {"x": [fpr...], "y": [pro...]}, "aupro": 0.91,
                       "spro": {...} (LOCO only), "auspro": {"0.05": ...}}, "logical": {...}}}

``image`` is null when the category has one class only; ``pixel`` is empty without masks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.atomic import atomic_write_json
from anomaly_bench.metrics.curves import RankingCurves
from anomaly_bench.metrics.plots import safe_name
from anomaly_bench.metrics.report import CategoryResult

CURVES_FOLDER = "curves"
CURVES_FORMAT = "anomaly_bench.curves"
CURVES_VERSION = 1
DEFAULT_MAX_POINTS = 400
_DIGITS = 6  # curve coordinates are rates in [0, 1]: six decimals are far below a pixel of any plot


class CurveDataError(ValueError):
    """A curves file is missing, unreadable or not in the expected format."""


@dataclass
class Curve:
    """One polyline, x and y of equal length."""

    x: list[float]
    y: list[float]


@dataclass
class CurveSet:
    """The curves and exact areas of one evaluation set (image level, or one pixel subset)."""

    roc: Curve | None = None
    pr: Curve | None = None
    pro: Curve | None = None
    spro: Curve | None = None
    auroc: float | None = None
    ap: float | None = None
    aupro: float | None = None
    auspro: dict[str, float | None] = field(default_factory=dict)
    positives: float = 0.0
    negatives: float = 0.0
    mode: str = "exact"


@dataclass
class CategoryCurves:
    """Everything one ``curves/<category>.json`` holds."""

    category: str
    fpr_limit: float = 0.3
    spro_limits: tuple[float, ...] = (0.05, 0.3)
    image: CurveSet | None = None
    pixel: dict[str, CurveSet] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ thinning
def downsample_curve(
    x: np.ndarray, y: np.ndarray, max_points: int = DEFAULT_MAX_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of the polyline (x, y), spread evenly along its length.

    Non-finite points are dropped. The first and last points are always kept; where the curve
    moves fast (a steep rise) more points are kept than where it is flat. Both axes are expected
    in comparable units (rates in [0, 1]).

    Args:
        x: x coordinates in curve order.
        y: y coordinates, same length as ``x``.
        max_points: the largest number of points returned (at least 2).
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if x.size <= max_points:
        return x, y
    step = np.hypot(np.diff(x), np.diff(y))
    length = np.concatenate([[0.0], np.cumsum(step)])
    if length[-1] <= 0:
        return x[[0, -1]], y[[0, -1]]
    targets = np.linspace(0.0, length[-1], max_points)
    index = np.searchsorted(length, targets, side="left")
    index = np.unique(np.clip(np.concatenate([[0], index, [x.size - 1]]), 0, x.size - 1))
    return x[index], y[index]


def _curve(x: np.ndarray, y: np.ndarray, max_points: int) -> Curve | None:
    x, y = downsample_curve(x, y, max_points)
    if x.size == 0:
        return None
    return Curve([round(float(v), _DIGITS) for v in x], [round(float(v), _DIGITS) for v in y])


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def curve_set(
    curves: RankingCurves,
    fpr_limit: float,
    spro_limits: Sequence[float],
    max_points: int = DEFAULT_MAX_POINTS,
    pixel: bool = False,
) -> CurveSet:
    """Thinned curves and exact areas of one :class:`RankingCurves`.

    Args:
        curves: the exact curves the Evaluator computed.
        fpr_limit: AU-PRO integration limit.
        spro_limits: AU-sPRO limits (used when the curves have sPRO channels).
        max_points: the most points stored per curve.
        pixel: also store PRO (and sPRO where present).
    """
    points = curves.points
    out = CurveSet(
        positives=float(points.total_positives), negatives=float(points.total_negatives), mode=curves.mode
    )
    if points.total_positives and points.total_negatives:
        out.roc = _curve(curves.fpr(), curves.tpr(), max_points)
        out.auroc = _finite(curves.auroc())
    if points.total_positives:
        out.pr = _curve(curves.tpr()[1:], curves.precision()[1:], max_points)  # point 0 flags nothing
        out.ap = _finite(curves.average_precision())
    if pixel and curves.num_regions and points.total_negatives:
        out.pro = _curve(np.minimum(curves.fpr(), 1.0), curves.pro(), max_points)
        out.aupro = _finite(curves.aupro(fpr_limit))
    if pixel and curves.num_channels and points.total_negatives:
        out.spro = _curve(np.minimum(curves.fpr(), 1.0), curves.spro(), max_points)
        out.auspro = {f"{limit:g}": _finite(curves.auspro(limit)) for limit in spro_limits}
    return out


def category_curves(
    result: CategoryResult,
    fpr_limit: float = 0.3,
    spro_limits: Sequence[float] = (0.05, 0.3),
    max_points: int = DEFAULT_MAX_POINTS,
) -> CategoryCurves:
    """The curve data of one category from the Evaluator's :class:`CategoryResult`.

    Args:
        result: one category's result (``metrics.report.category_result``).
        fpr_limit: AU-PRO integration limit the run used.
        spro_limits: AU-sPRO limits the run used.
        max_points: the most points stored per curve.
    """
    name = str(result.row.get("category"))
    data = CategoryCurves(name, float(fpr_limit), tuple(float(s) for s in spro_limits))
    image = result.image_curves
    if image is not None and (image.points.total_positives or image.points.total_negatives):
        data.image = curve_set(image, fpr_limit, spro_limits, max_points)
    for subset, curves in result.pixel_curves.items():
        data.pixel[subset] = curve_set(curves, fpr_limit, spro_limits, max_points, pixel=True)
    return data


# ------------------------------------------------------------------------------- serialising
def _curve_to_dict(curve: Curve | None) -> dict[str, list[float]] | None:
    return None if curve is None else {"x": curve.x, "y": curve.y}


def _set_to_dict(item: CurveSet) -> dict[str, Any]:
    return {
        "roc": _curve_to_dict(item.roc),
        "pr": _curve_to_dict(item.pr),
        "pro": _curve_to_dict(item.pro),
        "spro": _curve_to_dict(item.spro),
        "auroc": item.auroc,
        "ap": item.ap,
        "aupro": item.aupro,
        "auspro": dict(item.auspro),
        "positives": item.positives,
        "negatives": item.negatives,
        "mode": item.mode,
    }


def to_dict(data: CategoryCurves) -> dict[str, Any]:
    """The JSON payload of a :class:`CategoryCurves` (see the module docstring).

    Args:
        data: the curves of one category.
    """
    return {
        "format": CURVES_FORMAT,
        "version": CURVES_VERSION,
        "category": data.category,
        "fpr_limit": data.fpr_limit,
        "spro_limits": list(data.spro_limits),
        "image": None if data.image is None else _set_to_dict(data.image),
        "pixel": {name: _set_to_dict(item) for name, item in data.pixel.items()},
    }


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CurveDataError(f"{where}: expected a number or null, got {value!r}")
    return float(value)


def _curve_from(value: Any, where: str) -> Curve | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("x"), list)
        or not isinstance(value.get("y"), list)
    ):
        raise CurveDataError(f"{where}: expected {{'x': [...], 'y': [...]}}")
    if len(value["x"]) != len(value["y"]):
        raise CurveDataError(f"{where}: x has {len(value['x'])} points but y has {len(value['y'])}")
    try:
        return Curve([float(v) for v in value["x"]], [float(v) for v in value["y"]])
    except (TypeError, ValueError) as err:
        raise CurveDataError(f"{where}: non-numeric point ({err})") from err


def _set_from(value: Any, where: str) -> CurveSet:
    if not isinstance(value, dict):
        raise CurveDataError(f"{where}: expected a mapping of curves, got {type(value).__name__}")
    auspro = value.get("auspro") or {}
    if not isinstance(auspro, dict):
        raise CurveDataError(f"{where}.auspro: expected a mapping limit -> value")
    return CurveSet(
        roc=_curve_from(value.get("roc"), f"{where}.roc"),
        pr=_curve_from(value.get("pr"), f"{where}.pr"),
        pro=_curve_from(value.get("pro"), f"{where}.pro"),
        spro=_curve_from(value.get("spro"), f"{where}.spro"),
        auroc=_number(value.get("auroc"), f"{where}.auroc"),
        ap=_number(value.get("ap"), f"{where}.ap"),
        aupro=_number(value.get("aupro"), f"{where}.aupro"),
        auspro={str(k): _number(v, f"{where}.auspro.{k}") for k, v in auspro.items()},
        positives=_number(value.get("positives", 0), f"{where}.positives") or 0.0,
        negatives=_number(value.get("negatives", 0), f"{where}.negatives") or 0.0,
        mode=str(value.get("mode", "exact")),
    )


def from_dict(payload: Any, where: str = "<curves>") -> CategoryCurves:
    """Parse a curves payload; errors name ``where`` and the offending key.

    Args:
        payload: the decoded JSON.
        where: a name for error messages (usually the file path).
    """
    if not isinstance(payload, dict):
        raise CurveDataError(f"{where}: expected a JSON object, got {type(payload).__name__}")
    if payload.get("format") != CURVES_FORMAT:
        raise CurveDataError(f"{where}: 'format' must be {CURVES_FORMAT!r}, got {payload.get('format')!r}")
    version = payload.get("version")
    if not isinstance(version, int) or version > CURVES_VERSION:
        raise CurveDataError(
            f"{where}: unsupported 'version' {version!r} (this reader knows up to {CURVES_VERSION})"
        )
    if not isinstance(payload.get("category"), str):
        raise CurveDataError(f"{where}: 'category' must be a string")
    pixel = payload.get("pixel") or {}
    if not isinstance(pixel, dict):
        raise CurveDataError(f"{where}: 'pixel' must be a mapping subset -> curves")
    limits = payload.get("spro_limits") or []
    return CategoryCurves(
        category=payload["category"],
        fpr_limit=_number(payload.get("fpr_limit", 0.3), f"{where}: fpr_limit") or 0.3,
        spro_limits=tuple(float(v) for v in limits),
        image=None if payload.get("image") is None else _set_from(payload["image"], f"{where}: image"),
        pixel={str(k): _set_from(v, f"{where}: pixel.{k}") for k, v in pixel.items()},
    )


# ----------------------------------------------------------------------------------- files
def curves_path(run_dir: str | Path, category: str) -> Path:
    """``<run_dir>/curves/<category>.json`` (the category name made file-safe).

    Args:
        run_dir: the run directory.
        category: the category name.
    """
    return Path(run_dir) / CURVES_FOLDER / f"{safe_name(category)}.json"


def write_category_curves(
    run_dir: str | Path,
    result: CategoryResult,
    fpr_limit: float = 0.3,
    spro_limits: Sequence[float] = (0.05, 0.3),
    max_points: int = DEFAULT_MAX_POINTS,
) -> Path:
    """Write one category's curves atomically to ``<run_dir>/curves/<category>.json``.

    Args:
        run_dir: the run directory.
        result: the category's :class:`CategoryResult` from the Evaluator.
        fpr_limit: AU-PRO integration limit the run used.
        spro_limits: AU-sPRO limits the run used.
        max_points: the most points stored per curve.
    """
    data = category_curves(result, fpr_limit, spro_limits, max_points)
    path = curves_path(run_dir, data.category)
    atomic_write_json(path, to_dict(data), indent=None)
    return path


def read_category_curves(path: str | Path) -> CategoryCurves:
    """Read one curves file; a missing or malformed file raises :class:`CurveDataError` naming it.

    Args:
        path: a ``curves/<category>.json`` file.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as err:
        raise CurveDataError(f"{path}: cannot read curves file ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise CurveDataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    return from_dict(payload, str(path))


def read_run_curves(run_dir: str | Path) -> dict[str, CategoryCurves]:
    """Every readable curves file of a run, by category name; files in another format are skipped.

    Args:
        run_dir: the run directory (an absent ``curves/`` folder gives an empty dict).
    """
    folder = Path(run_dir) / CURVES_FOLDER
    found: dict[str, CategoryCurves] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            data = read_category_curves(path)
        except CurveDataError:
            continue
        found[data.category] = data
    return found
