"""Defects with exact masks: every pixel a defect changes is inside its mask and vice versa
(up to pixels whose new value happens to equal the old one).

Structural defects edit a drawn image inside a shape clipped to the scene's surface; part-level
and logical defects edit the scene description and the scene is drawn again. Defects are
made locally salient (strong local contrast or colour change over a region of ~0.3-2 % of the
image) so that small models can learn them, while the writer re-matches every image's global
colour statistics afterwards (see ``generator.match_statistics``).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from anomaly_bench.data.synthetic.scenes import (
    Board, Cables, Layout, Pins, SceneKind, item_mask, smooth_noise,
)

Channels = list[tuple[str, np.ndarray]]  # (defect name, bool mask) per ground-truth region


# --------------------------------------------------------------------------- placement
def _pick_center(rng: np.random.Generator, surface: np.ndarray, margin: int) -> tuple[int, int]:
    """A point on the surface at least ``margin`` px inside it (fallback: anywhere on it)."""
    inner = cv2.erode(surface.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(bool)
    h, w = surface.shape
    border = np.zeros_like(inner)
    border[margin: h - margin, margin: w - margin] = True
    candidates = np.argwhere(inner & border)
    if len(candidates) == 0:
        candidates = np.argwhere(surface)
    y, x = candidates[rng.integers(len(candidates))]
    return int(y), int(x)


def _blob(rng: np.random.Generator, hw: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    """Irregular blob: a disc whose boundary is warped by smooth noise."""
    y, x = np.mgrid[0: hw[0], 0: hw[1]].astype(np.float32)
    r = np.sqrt((y - center[0]) ** 2 + (x - center[1]) ** 2) / radius
    warp = 0.25 * smooth_noise(rng, hw, max(radius / 2.5, 1.0))
    return (r + warp) < 1.0


# ------------------------------------------------------------------------- structural
def scratch(img: np.ndarray, surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Thin polyline whose segments alternate bright and dark: strong local contrast, ~zero net
    brightness change."""
    h, w = surface.shape
    s = min(h, w)
    cy, cx = _pick_center(rng, surface, int(0.12 * s))
    n = 4
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(0.3, 0.45) * s
    t = np.linspace(-0.5, 0.5, n) * length
    pts = np.stack([cx + t * np.cos(angle), cy + t * np.sin(angle)], 1) + rng.normal(0, 0.03 * s, (n, 2))
    thick = max(2, int(round(s / 48)))
    mask = np.zeros((h, w), np.uint8)
    bright = np.zeros((h, w), np.uint8)
    sub = np.linspace(0, 1, 9)
    dense = np.concatenate([pts[i] + sub[:-1, None] * (pts[i + 1] - pts[i]) for i in range(n - 1)] + [pts[-1:]])
    for i in range(len(dense) - 1):
        a, b = tuple(np.round(dense[i]).astype(int)), tuple(np.round(dense[i + 1]).astype(int))
        cv2.line(mask, a, b, 1, thick)
        if i % 2 == 0:
            cv2.line(bright, a, b, 1, thick)
    mask = mask.astype(bool) & surface
    bright = bright.astype(bool) & mask
    img[mask & ~bright] = 25.0
    img[bright] = 235.0
    return mask


def hole(img: np.ndarray, surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Elliptic hole/dent: dark core with a bright rim."""
    h, w = surface.shape
    s = min(h, w)
    ry, rx = rng.uniform(0.05, 0.075, 2) * s
    cy, cx = _pick_center(rng, surface, int(max(ry, rx)) + 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (cx, cy), (int(rx), int(ry)), rng.uniform(0, 180), 0, 360, 1, -1)
    core = np.zeros((h, w), np.uint8)
    cv2.ellipse(core, (cx, cy), (int(rx * 0.7), int(ry * 0.7)), 0, 0, 360, 1, -1)
    mask = mask.astype(bool) & surface
    core = core.astype(bool) & mask
    img[mask & ~core] = 230.0
    img[core] = 15.0
    return mask


def stain(img: np.ndarray, surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour stain: a strong hue change at unchanged luminance."""
    h, w = surface.shape
    s = min(h, w)
    radius = rng.uniform(0.07, 0.1) * s
    center = _pick_center(rng, surface, int(radius))
    mask = _blob(rng, (h, w), center, radius) & surface
    luminance = img[mask] @ np.array([0.299, 0.587, 0.114], np.float32)
    direction = rng.normal(0, 1, 3).astype(np.float32)
    direction -= direction @ np.array([0.299, 0.587, 0.114], np.float32)  # no luminance component
    direction /= max(float(np.abs(direction).max()), 1e-6)
    img[mask] = luminance[:, None] + 70.0 * direction[None, :]
    return mask


def crack(img: np.ndarray, surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Branching random-walk crack, dark."""
    h, w = surface.shape
    s = min(h, w)
    cy, cx = _pick_center(rng, surface, int(0.1 * s))
    mask = np.zeros((h, w), np.uint8)
    thick = max(2, int(round(s / 64)))
    for _branch in range(3):
        y, x = float(cy), float(cx)
        heading = rng.uniform(0, 2 * np.pi)
        for _step in range(int(0.12 * s)):
            heading += rng.normal(0, 0.35)
            ny, nx = y + 1.5 * np.sin(heading), x + 1.5 * np.cos(heading)
            cv2.line(mask, (int(round(x)), int(round(y))), (int(round(nx)), int(round(ny))), 1, thick)
            y, x = ny, nx
    mask = mask.astype(bool) & surface
    img[mask] = 20.0
    return mask


def contamination(img: np.ndarray, surface: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Foreign matter: a blob of a different, high-frequency texture and colour."""
    h, w = surface.shape
    s = min(h, w)
    radius = rng.uniform(0.06, 0.085) * s
    center = _pick_center(rng, surface, int(radius))
    mask = _blob(rng, (h, w), center, radius) & surface
    colour = rng.uniform(40, 215, 3).astype(np.float32)
    texture = 55.0 * smooth_noise(rng, (h, w), 0.7)
    img[mask] = colour[None, :] + texture[mask][:, None]
    return mask


def cut_cable(img: np.ndarray, layout: Layout, rng: np.random.Generator, background: tuple[float, ...]) -> np.ndarray:
    """A gap in the cable: the cable is missing over a short stretch."""
    cable = next(i for i in layout.items if i.kind == "cable")
    pts = cable.extra["points"]
    py, px = pts[rng.integers(10, len(pts) - 10)][::-1]
    gap = np.zeros(layout.hw, np.uint8)
    cv2.circle(gap, (int(px), int(py)), int(cable.extra["thickness"] * 1.6), 1, -1)
    mask = gap.astype(bool) & item_mask(cable, layout.hw)
    img[mask] = np.asarray(background, np.float32)
    return mask


STRUCTURAL = {"scratch": scratch, "hole": hole, "stain": stain, "crack": crack, "contamination": contamination}


# ------------------------------------------------------------------- logical / parts
def _without(layout: Layout, index: int) -> Layout:
    return Layout(layout.hw, dict(layout.params), [it for i, it in enumerate(layout.items) if i != index])


def missing_part(kind: Board, layout: Layout, rng: np.random.Generator) -> tuple[Layout, Channels]:
    """Remove one component; the mask is where it should be (MVTec transistor/misplaced practice)."""
    index = int(rng.integers(len(layout.items)))
    return _without(layout, index), [("missing_part", item_mask(layout.items[index], layout.hw))]


def misplaced_part(kind: Board, layout: Layout, rng: np.random.Generator) -> tuple[Layout, Channels]:
    """Move (and turn) one component; the mask is the union of expected and actual footprints."""
    h, w = layout.hw
    index = int(rng.integers(len(layout.items)))
    item = layout.items[index]
    dy, dx = rng.choice([-1, 1], 2) * np.array([h, w]) * rng.uniform(0.08, 0.12, 2)
    moved = replace(item, center=(float(np.clip(item.center[0] + dy, 0.15 * h, 0.85 * h)),
                                  float(np.clip(item.center[1] + dx, 0.15 * w, 0.85 * w))),
                    angle=item.angle + 90.0)
    items = list(layout.items)
    items[index] = moved
    mask = item_mask(item, layout.hw) | item_mask(moved, layout.hw)
    return Layout(layout.hw, dict(layout.params), items), [("misplaced_part", mask)]


def missing_pin(kind: Pins, layout: Layout, rng: np.random.Generator) -> tuple[Layout, Channels]:
    """One or two compartments are empty; one mask file per missing pin."""
    n = 2 if rng.uniform() < 0.35 else 1
    gone = sorted(rng.choice(len(layout.items), n, replace=False).tolist())
    kept = [it for i, it in enumerate(layout.items) if i not in gone]
    channels = [("missing_pin", item_mask(layout.items[i], layout.hw)) for i in gone]
    return Layout(layout.hw, dict(layout.params), kept), channels


def extra_pin(kind: Pins, layout: Layout, rng: np.random.Generator) -> tuple[Layout, Channels]:
    """A compartment holds a second pin."""
    cells = kind.cells(layout.hw)
    rad = kind.pin_radius(layout.hw)
    for _attempt in range(200):
        cell_index = int(rng.integers(len(cells)))
        new = kind.random_pin(rng, cells[cell_index], layout.hw)
        existing = layout.items[cell_index]
        if np.hypot(new.center[0] - existing.center[0], new.center[1] - existing.center[1]) > 2.3 * rad:
            break
    else:  # cells too small for two pins at this size: place it anyway (overlap is still anomalous)
        pass
    layout2 = Layout(layout.hw, dict(layout.params), [*layout.items, new])
    return layout2, [("extra_pin", item_mask(new, layout.hw))]


def wrong_cable_color(kind: Cables, layout: Layout, rng: np.random.Generator) -> tuple[Layout, Channels]:
    """The cable has the colour of the other connector type."""
    items = list(layout.items)
    index = next(i for i, it in enumerate(items) if it.kind == "cable")
    other = 3 if layout.params["contacts"] == 2 else 2
    items[index] = replace(items[index], color=kind.COLORS[other])
    return Layout(layout.hw, dict(layout.params), items), [("wrong_cable_color", item_mask(items[index], layout.hw))]


def mismatched_connector(kind: Cables, layout: Layout, rng: np.random.Generator) -> tuple[Layout, Channels]:
    """The right connector has the other number of contacts than the left one."""
    items = list(layout.items)
    index = len(items) - 1  # right connector is drawn last
    old = items[index]
    other = 3 if old.extra["contacts"] == 2 else 2
    new = kind.connector(layout.hw, 1, other, rng)
    new = replace(new, center=old.center)
    items[index] = new
    mask = item_mask(old, layout.hw) | item_mask(new, layout.hw)
    return Layout(layout.hw, dict(layout.params), items), [("mismatched_connector", mask)]


LOGICAL = {
    "missing_part": missing_part,
    "misplaced_part": misplaced_part,
    "missing_pin": missing_pin,
    "extra_pin": extra_pin,
    "wrong_cable_color": wrong_cable_color,
    "mismatched_connector": mismatched_connector,
}


def make_defect(kind: SceneKind, defect: str, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, Channels]:
    """Draw one anomalous image with ``defect``; returns the float image and its mask channels."""
    if defect in LOGICAL:
        new_layout, channels = LOGICAL[defect](kind, layout, rng)  # type: ignore[arg-type]
        return kind.draw(new_layout, rng), channels
    img = kind.draw(layout, rng)
    if defect == "cut_cable":
        return img, [(defect, cut_cable(img, layout, rng, (120, 125, 120)))]
    if defect not in STRUCTURAL:
        raise ValueError(f"unknown defect {defect!r}")
    for _attempt in range(10):
        trial = img.copy()
        mask = STRUCTURAL[defect](trial, kind.surface(layout), rng)
        if mask.sum() >= 0.002 * mask.size:
            return trial, [(defect, mask)]
    return trial, [(defect, mask)]
