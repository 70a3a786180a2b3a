"""Normal content for synthetic categories: textures, objects and LOCO-like logical scenes.

A scene is drawn from a parameter description (``Layout``) so that part-level defects (a missing
or misplaced component, a wrong cable colour, an extra pin) are made by editing the description
and drawing again: the mask is then the exact footprint of what changed.

All drawing is float32 RGB in 0..255 with NumPy/OpenCV; no external assets.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Callable

import cv2
import numpy as np

HW = tuple[int, int]


def smooth_noise(rng: np.random.Generator, hw: HW, sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    noise = rng.standard_normal(hw).astype(np.float32)
    if sigma > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


def category_rng(category: str, seed: int) -> np.random.Generator:
    """Per-category constants (colours, periods) that do not change from image to image."""
    return np.random.default_rng([seed, zlib.crc32(category.encode())])


@dataclass
class Item:
    """One discrete part of a scene (component, pin, connector, cable)."""

    kind: str
    center: tuple[float, float]  # (y, x) in pixels
    size: tuple[float, float]  # (h, w) or (radius, radius)
    color: tuple[float, float, float]
    angle: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class Layout:
    """Everything needed to redraw one image."""

    hw: HW
    params: dict
    items: list[Item] = field(default_factory=list)


# ----------------------------------------------------------------------------- footprints
def item_mask(item: Item, hw: HW) -> np.ndarray:
    """Exact binary footprint of an item (what the drawing covers)."""
    canvas = np.zeros(hw, dtype=np.uint8)
    cy, cx = item.center
    if item.kind in ("disc", "pin"):
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(item.size[0])), 1, -1)
    elif item.kind in ("rect", "chip", "connector"):
        box = cv2.boxPoints(((cx, cy), (item.size[1], item.size[0]), item.angle))
        cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], 1)
    elif item.kind == "cable":
        pts = np.round(item.extra["points"]).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], False, 1, thickness=int(item.extra["thickness"]))
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown item kind {item.kind}")
    return canvas.astype(bool)


def paint(image: np.ndarray, mask: np.ndarray, color: tuple[float, float, float], shade: np.ndarray | None = None) -> None:
    """Fill ``mask`` with ``color`` (optionally modulated by a shading field)."""
    col = np.asarray(color, dtype=np.float32)
    if shade is None:
        image[mask] = col
    else:
        image[mask] = col[None, :] * shade[mask][:, None]


# ------------------------------------------------------------------------------- kinds
class SceneKind:
    """A family of images: how to sample a layout, how to draw it, where defects may go."""

    name = "base"
    grayscale = False
    structural: tuple[str, ...] = ()
    logical: tuple[str, ...] = ()

    def __init__(self, category: str, seed: int) -> None:
        self.category = category
        self.const = category_rng(category, seed)
        self.setup_constants()

    def setup_constants(self) -> None:
        pass

    def sample_layout(self, rng: np.random.Generator, hw: HW) -> Layout:  # pragma: no cover
        raise NotImplementedError

    def draw(self, layout: Layout, rng: np.random.Generator) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def surface(self, layout: Layout) -> np.ndarray:
        """Where structural defects may be placed (the object, or the whole texture)."""
        return np.ones(layout.hw, dtype=bool)


def _grid(hw: HW) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0: hw[0], 0: hw[1]].astype(np.float32)
    return y, x


class Weave(SceneKind):
    """Woven, carpet-like RGB texture: two crossed gratings plus fine noise."""

    name = "weave"
    structural = ("scratch", "hole", "stain", "contamination")

    def setup_constants(self) -> None:
        self.base = self.const.uniform(90, 150, 3)
        self.tint = self.const.uniform(0.6, 1.0, 3)
        self.theta = self.const.uniform(0, np.pi / 2)

    def sample_layout(self, rng, hw):
        return Layout(hw, {"phase": rng.uniform(0, 2 * np.pi, 2)})

    def draw(self, layout, rng):
        y, x = _grid(layout.hw)
        period = max(layout.hw) / 14.0
        u = x * np.cos(self.theta) + y * np.sin(self.theta)
        v = -x * np.sin(self.theta) + y * np.cos(self.theta)
        a, b = layout.params["phase"]
        pattern = np.sin(2 * np.pi * u / period + a) * np.sin(2 * np.pi * v / period + b)
        fibres = 0.35 * smooth_noise(rng, layout.hw, 0.8)
        tex = (pattern + fibres)[..., None] * (32.0 * self.tint)[None, None, :]
        return self.base[None, None, :] + tex


class Grid(SceneKind):
    """Grayscale metal-mesh texture: a jittered periodic grid (written as 1-channel PNG)."""

    name = "grid"
    grayscale = True
    structural = ("crack", "hole", "contamination")

    def sample_layout(self, rng, hw):
        return Layout(hw, {"offset": rng.uniform(0, 1, 2)})

    def draw(self, layout, rng):
        h, w = layout.hw
        period = max(h, w) / 10.0
        img = np.full((h, w), 175.0, dtype=np.float32) + 6.0 * smooth_noise(rng, (h, w), 2.0)
        thick = max(2, int(round(period / 5)))
        oy, ox = layout.params["offset"] * period
        for k in range(-1, int(max(h, w) / period) + 2):
            pos_y = int(round(oy + k * period + rng.uniform(-0.6, 0.6)))
            pos_x = int(round(ox + k * period + rng.uniform(-0.6, 0.6)))
            img[max(pos_y, 0): max(pos_y + thick, 0), :] = 70.0
            img[:, max(pos_x, 0): max(pos_x + thick, 0)] = 70.0
        return np.repeat(img[..., None], 3, axis=2)


class Wood(SceneKind):
    """Wood-like RGB texture: distorted growth rings."""

    name = "wood"
    structural = ("scratch", "hole", "stain", "crack")

    def setup_constants(self) -> None:
        self.light = np.array([200, 150, 100], np.float32) + self.const.uniform(-15, 15, 3)
        self.dark = np.array([120, 75, 45], np.float32) + self.const.uniform(-10, 10, 3)

    def sample_layout(self, rng, hw):
        return Layout(hw, {"center": (rng.uniform(-2, -1) * hw[0], rng.uniform(0, 1) * hw[1])})

    def draw(self, layout, rng):
        y, x = _grid(layout.hw)
        cy, cx = layout.params["center"]
        r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        period = max(layout.hw) / 9.0
        warp = 2.0 * smooth_noise(rng, layout.hw, max(layout.hw) / 10.0)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * r / period + warp)
        grain = 0.08 * smooth_noise(rng, layout.hw, 0.7)
        t = np.clip(t + grain, 0, 1)[..., None]
        return self.dark[None, None] * t + self.light[None, None] * (1 - t)


class Ring(SceneKind):
    """Metal-nut-like object: a shaded ring with a hexagonal hole on a dark background."""

    name = "ring"
    structural = ("scratch", "crack", "hole", "contamination")

    def setup_constants(self) -> None:
        self.metal = np.array([170, 165, 150], np.float32) + self.const.uniform(-20, 20, 3)

    def sample_layout(self, rng, hw):
        shift = max(hw) / 40.0
        return Layout(hw, {"center": (hw[0] / 2 + rng.uniform(-shift, shift), hw[1] / 2 + rng.uniform(-shift, shift)),
                           "angle": rng.uniform(-5, 5)})

    def _shapes(self, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
        h, w = layout.hw
        cy, cx = layout.params["center"]
        s = min(h, w)
        outer = np.zeros((h, w), np.uint8)
        cv2.circle(outer, (int(round(cx)), int(round(cy))), int(round(0.33 * s)), 1, -1)
        hexagon = np.zeros((h, w), np.uint8)
        ang = np.deg2rad(layout.params["angle"]) + np.arange(6) * np.pi / 3
        pts = np.stack([cx + 0.15 * s * np.cos(ang), cy + 0.15 * s * np.sin(ang)], 1)
        cv2.fillPoly(hexagon, [np.round(pts).astype(np.int32)], 1)
        return outer.astype(bool), hexagon.astype(bool)

    def surface(self, layout):
        outer, hexagon = self._shapes(layout)
        return outer & ~hexagon

    def draw(self, layout, rng):
        h, w = layout.hw
        y, x = _grid(layout.hw)
        img = np.empty((h, w, 3), np.float32)
        img[:] = np.array([45, 45, 50], np.float32)
        img += (8 * (x / w - 0.5))[..., None]  # illumination gradient
        cy, cx = layout.params["center"]
        r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / min(h, w)
        shade = 0.8 + 0.5 * np.cos(np.clip((r - 0.24) / 0.09, -1.5, 1.5) * np.pi / 3)
        shade = shade + 0.04 * smooth_noise(rng, layout.hw, 1.0)
        paint(img, self.surface(layout), tuple(self.metal), shade * 0.85)
        return img


class Board(SceneKind):
    """PCB-like object: a green board with components in fixed slots."""

    name = "board"
    structural = ("scratch", "contamination")
    logical = ("missing_part", "misplaced_part")

    SLOTS = ((0.3, 0.28, "chip"), (0.3, 0.72, "chip"), (0.7, 0.3, "disc"), (0.7, 0.7, "disc"), (0.5, 0.5, "chip"))

    def setup_constants(self) -> None:
        self.green = np.array([35, 115, 60], np.float32) + self.const.uniform(-10, 10, 3)

    def sample_layout(self, rng, hw):
        s = min(hw)
        items = []
        for fy, fx, kind in self.SLOTS:
            center = (fy * hw[0] + rng.uniform(-1, 1), fx * hw[1] + rng.uniform(-1, 1))
            if kind == "chip":
                items.append(Item("chip", center, (0.16 * s, 0.22 * s), (30, 30, 35), rng.uniform(-2, 2)))
            else:
                items.append(Item("disc", center, (0.08 * s, 0.08 * s), (215, 180, 60)))
        return Layout(hw, {}, items)

    def draw(self, layout, rng):
        h, w = layout.hw
        img = np.empty((h, w, 3), np.float32)
        img[:] = self.green
        img += (6 * smooth_noise(rng, layout.hw, 1.5))[..., None]
        # copper traces: a fixed pattern so that the board is not flat
        for fy in (0.15, 0.5, 0.85):
            cv2.line(img, (0, int(fy * h)), (w - 1, int(fy * h)), (180, 140, 70), max(1, h // 64))
        for item in layout.items:
            m = item_mask(item, layout.hw)
            paint(img, m, item.color)
            if item.kind == "chip":  # a light marking stripe on each chip
                inner = replace(item, size=(item.size[0] * 0.25, item.size[1] * 0.6))
                paint(img, item_mask(inner, layout.hw), (200, 200, 200))
        return img


class Pins(SceneKind):
    """LOCO pushpins-like box: 2 x 3 compartments, exactly one pin in each."""

    name = "pins"
    structural = ("scratch", "contamination")
    logical = ("missing_pin", "extra_pin")
    ROWS, COLS = 2, 3

    def setup_constants(self) -> None:
        self.box = np.array([205, 190, 160], np.float32) + self.const.uniform(-10, 10, 3)
        self.pin = (220.0, 90.0, 40.0)

    def cells(self, hw: HW) -> list[tuple[float, float, float, float]]:
        h, w = hw
        my, mx = 0.08 * h, 0.06 * w
        ch, cw = (h - 2 * my) / self.ROWS, (w - 2 * mx) / self.COLS
        return [(my + r * ch, mx + c * cw, ch, cw) for r in range(self.ROWS) for c in range(self.COLS)]

    def pin_radius(self, hw: HW) -> float:
        return 0.075 * min(hw)

    def random_pin(self, rng, cell, hw) -> Item:
        y0, x0, ch, cw = cell
        rad = self.pin_radius(hw)
        margin = rad + 0.06 * min(hw)
        return Item("pin", (rng.uniform(y0 + margin, y0 + ch - margin), rng.uniform(x0 + margin, x0 + cw - margin)),
                    (rad, rad), self.pin)

    def sample_layout(self, rng, hw):
        return Layout(hw, {}, [self.random_pin(rng, cell, hw) for cell in self.cells(hw)])

    def draw(self, layout, rng):
        h, w = layout.hw
        img = np.empty((h, w, 3), np.float32)
        img[:] = np.array([60, 60, 65], np.float32)
        wall = max(2, int(round(min(h, w) / 40)))
        for y0, x0, ch, cw in self.cells(layout.hw):
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + cw), int(y0 + ch)), tuple(float(v) for v in self.box), -1)
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + cw), int(y0 + ch)), (110, 100, 90), wall)
        img += (4 * smooth_noise(rng, layout.hw, 1.5))[..., None]
        for item in layout.items:
            paint(img, item_mask(item, layout.hw), item.color)
            cy, cx = item.center
            cv2.circle(img, (int(round(cx - item.size[0] / 3)), int(round(cy - item.size[0] / 3))),
                       max(1, int(item.size[0] / 4)), (250, 200, 170), -1)  # highlight, inside the footprint
        return img


class Cables(SceneKind):
    """LOCO splicing-connectors-like scene: two connectors joined by a cable whose colour must
    match the connector type (2 contacts -> yellow, 3 contacts -> blue)."""

    name = "cables"
    structural = ("cut_cable", "contamination")
    logical = ("wrong_cable_color", "mismatched_connector")
    COLORS = {2: (230, 200, 40), 3: (40, 90, 220)}

    def connector(self, hw: HW, side: int, contacts: int, rng) -> Item:
        h, w = hw
        cx = 0.17 * w if side == 0 else 0.83 * w
        return Item("connector", (0.5 * h + rng.uniform(-1.5, 1.5), cx + rng.uniform(-1.5, 1.5)),
                    (0.14 * h * contacts / 2 + 0.1 * h, 0.16 * w), (235, 235, 235), extra={"contacts": contacts})

    def cable(self, hw: HW, left: Item, right: Item, color, rng) -> Item:
        y0, x0 = left.center[0], left.center[1] + left.size[1] / 2
        y1, x1 = right.center[0], right.center[1] - right.size[1] / 2
        ym = 0.5 * (y0 + y1) + rng.uniform(-0.25, 0.25) * hw[0]
        t = np.linspace(0, 1, 40)[:, None]
        pts = ((1 - t) ** 2) * np.array([x0, y0]) + 2 * t * (1 - t) * np.array([0.5 * (x0 + x1), ym]) + t ** 2 * np.array([x1, y1])
        return Item("cable", (ym, 0.5 * (x0 + x1)), (0, 0), color,
                    extra={"points": pts, "thickness": max(3, int(round(min(hw) / 16)))})

    def sample_layout(self, rng, hw):
        contacts = int(rng.choice([2, 3]))
        left, right = self.connector(hw, 0, contacts, rng), self.connector(hw, 1, contacts, rng)
        return Layout(hw, {"contacts": contacts}, [self.cable(hw, left, right, self.COLORS[contacts], rng), left, right])

    def draw(self, layout, rng):
        h, w = layout.hw
        img = np.empty((h, w, 3), np.float32)
        img[:] = np.array([120, 125, 120], np.float32)
        img += (5 * smooth_noise(rng, layout.hw, 2.0))[..., None]
        for item in layout.items:
            m = item_mask(item, layout.hw)
            paint(img, m, item.color)
            if item.kind == "connector":
                n = item.extra["contacts"]
                cy, cx = item.center
                step = item.size[0] / (n + 1)
                for k in range(n):
                    y = cy - item.size[0] / 2 + step * (k + 1)
                    slot = Item("rect", (y, cx), (step * 0.45, item.size[1] * 0.5), (40, 40, 40))
                    paint(img, item_mask(slot, layout.hw), slot.color)
        return img


KINDS: dict[str, Callable[[str, int], SceneKind]] = {
    k.name: k for k in (Weave, Grid, Wood, Ring, Board, Pins, Cables)
}


def scene_for(category: str, seed: int, default_kinds: tuple[str, ...]) -> SceneKind:
    """The scene kind of a category: its own name if that is a kind, else a stable pick."""
    if category in KINDS:
        return KINDS[category](category, seed)
    for kind in KINDS:
        if category.startswith(kind + "_") or category.endswith("_" + kind):
            return KINDS[kind](category, seed)
    pick = default_kinds[zlib.crc32(category.encode()) % len(default_kinds)]
    return KINDS[pick](category, seed)
