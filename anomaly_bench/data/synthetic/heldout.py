"""The held-out scene family: four categories written only to judge methods, never to tune them.

``anomaly-bench synth --family heldout`` (``write_dataset(..., family="heldout")``) draws scenes
that share no drawing code with the standard family (``scenes.py`` / ``defects.py``), so settings
chosen on the standard family meet textures, objects and defects they were not chosen on:

* ``fabric``: a plain-weave textile (threads over and under in a checkerboard, shaded across each
  thread); defects ``thin_scratch`` (1 px) and ``scratch`` (2 px), long thin polylines.
* ``granite``: polished stone, speckles of dark, light and pink grains at several scales, a new
  grain pattern in every image; the same two thin scratches.
* ``washer``: a flat metal washer with six bolt holes on a light background; defects
  ``missing_hole`` (one bolt hole is not punched) and ``dent`` (a small pressed-in spot, shaded
  by light from the upper left).
* ``pcb``: a circuit board with traces, pads and a dozen surface-mount parts in fixed places;
  defects ``shifted_part`` (one part moved off its pads) and ``rotated_part`` (one part turned).

Masks are exact: every pixel a defect changes is inside its mask and the mask holds no pixel the
defect leaves alone (up to pixels whose new value happens to equal the old one). Scratches are
drawn without anti-aliasing so that their 1-2 px footprint is the mask. The writer then adds sensor
noise and re-matches every image's global colour statistics, as for the standard family
(``generator.CategoryGenerator``): only local structure separates normal from anomalous images.
"""

from __future__ import annotations

import zlib
from dataclasses import replace

import cv2
import numpy as np

from anomaly_bench.data.synthetic.defects import Channels
from anomaly_bench.data.synthetic.generator import CategoryGenerator
from anomaly_bench.data.synthetic.scenes import HW, Item, Layout, SceneKind, item_mask, smooth_noise

SCRATCH_WIDTHS = {"thin_scratch": 1, "scratch": 2}


def _grid(hw: HW) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0: hw[0], 0: hw[1]].astype(np.float32)
    return y, x


def _polyline_mask(hw: HW, points: np.ndarray, thickness: int) -> np.ndarray:
    """The exact pixels of a polyline ``thickness`` px wide, drawn without anti-aliasing.

    A one-pixel line grown by a ``thickness`` x ``thickness`` square: OpenCV's own thick lines are
    round-capped polygons one pixel wider than asked for small widths.
    """
    canvas = np.zeros(hw, np.uint8)
    cv2.polylines(canvas, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], False, 1,
                  thickness=1, lineType=cv2.LINE_8)
    if thickness > 1:
        canvas = cv2.dilate(canvas, np.ones((thickness, thickness), np.uint8))
    return canvas.astype(bool)


def _noise_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def _noise_rng(layout: Layout) -> np.random.Generator:
    """The random stream of a layout's fine noise: a layout drawn again (a part moved, a hole left
    out) has the same noise, so the defect's mask is exactly what changed."""
    return np.random.default_rng(layout.params["noise_seed"])


def thin_scratch(img: np.ndarray, surface: np.ndarray, rng: np.random.Generator, width: int) -> np.ndarray:
    """A long, slightly bent line ``width`` px wide, lighter or darker than what it crosses.

    The line changes each pixel it covers by 55-80 grey levels towards white or black (a scratch
    on a polished surface catches the light or shows a dark groove), keeping the texture's
    variation underneath, so only its thin, straight shape tells it apart.
    """
    h, w = surface.shape
    s = min(h, w)
    inner = cv2.erode(surface.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    for _attempt in range(20):
        length = rng.uniform(0.3, 0.5) * s
        angle = rng.uniform(0, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        start = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
        t = np.linspace(0.0, 1.0, 6)[:, None]
        bend = rng.uniform(-0.04, 0.04) * s * np.sin(np.pi * t)  # a gentle arc, not a ruler line
        points = start + t * length * direction + bend * normal
        mask = _polyline_mask((h, w), points, width) & inner
        if mask.sum() >= 0.6 * length * width:
            break
    tone = 1.0 if rng.uniform() < 0.5 else -1.0
    shift = rng.uniform(55, 80)
    img[mask] = np.clip(img[mask] + tone * shift, 10, 245)
    return mask


class Fabric(SceneKind):
    """Plain-weave textile: warp and weft threads alternate over and under in a checkerboard."""

    name = "fabric"
    structural = ("thin_scratch", "scratch")

    def setup_constants(self) -> None:
        self.warp = self.const.uniform(70, 170, 3).astype(np.float32)
        self.weft = np.clip(self.warp + self.const.uniform(-25, 25, 3), 40, 210).astype(np.float32)
        self.angle = self.const.uniform(-0.15, 0.15)

    def sample_layout(self, rng, hw):
        return Layout(hw, {"offset": rng.uniform(0, 1, 2), "angle": self.angle + rng.uniform(-0.02, 0.02),
                           "noise_seed": _noise_seed(rng)})

    def draw(self, layout, rng):
        rng = _noise_rng(layout)
        y, x = _grid(layout.hw)
        period = max(layout.hw) / 18.0  # one thread every ~7 px at 128 px
        a = layout.params["angle"]
        u = (x * np.cos(a) + y * np.sin(a)) / period + layout.params["offset"][0]
        v = (-x * np.sin(a) + y * np.cos(a)) / period + layout.params["offset"][1]
        cell_u, cell_v = np.floor(u), np.floor(v)
        fu, fv = u - cell_u, v - cell_v
        warp_on_top = ((cell_u + cell_v) % 2) == 0
        # a thread is a cylinder: bright along its middle, dark at its edges; gaps between threads
        across = np.where(warp_on_top, fu, fv)
        along = np.where(warp_on_top, fv, fu)
        profile = np.sin(np.pi * np.clip(across, 0, 1)) ** 0.6
        dip = 0.85 + 0.15 * np.sin(np.pi * along)  # the thread dips where it goes under the next one
        shade = (0.45 + 0.55 * profile * dip)[..., None]
        colour = np.where(warp_on_top[..., None], self.warp[None, None], self.weft[None, None])
        fibres = 1.0 + 0.06 * smooth_noise(rng, layout.hw, 0.6)[..., None]
        return colour * shade * fibres

    def make_defect(self, defect: str, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, Channels]:
        img = self.draw(layout, rng)
        return img, [(defect, thin_scratch(img, self.surface(layout), rng, SCRATCH_WIDTHS[defect]))]


class Granite(SceneKind):
    """Polished granite: a pinkish-grey ground with dark, light and pink grains at several scales."""

    name = "granite"
    structural = ("thin_scratch", "scratch")

    def setup_constants(self) -> None:
        self.ground = np.array([150, 140, 138], np.float32) + self.const.uniform(-12, 12, 3)
        self.dark = np.array([45, 42, 45], np.float32) + self.const.uniform(-8, 8, 3)
        self.light = np.array([215, 212, 205], np.float32) + self.const.uniform(-8, 8, 3)
        self.pink = np.array([190, 130, 120], np.float32) + self.const.uniform(-12, 12, 3)

    def sample_layout(self, rng, hw):
        return Layout(hw, {"noise_seed": _noise_seed(rng)})

    def draw(self, layout, rng):
        rng = _noise_rng(layout)
        hw = layout.hw
        img = np.empty((*hw, 3), np.float32)
        img[:] = self.ground
        img += (10.0 * smooth_noise(rng, hw, 6.0))[..., None]  # slow cloudiness of the stone
        grains = [(self.pink, 1.6, 1.0), (self.dark, 1.0, 1.3), (self.light, 0.7, 1.5), (self.dark, 0.5, 2.0)]
        for colour, sigma, threshold in grains:
            field = smooth_noise(rng, hw, sigma)
            weight = np.clip((field - threshold) * 2.5, 0, 1)[..., None]
            img = img * (1 - weight) + colour[None, None] * weight
        return img + (5.0 * smooth_noise(rng, hw, 0.5))[..., None]

    def make_defect(self, defect: str, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, Channels]:
        img = self.draw(layout, rng)
        return img, [(defect, thin_scratch(img, self.surface(layout), rng, SCRATCH_WIDTHS[defect]))]


class Washer(SceneKind):
    """A flat, brushed metal washer with six bolt holes, on a light background."""

    name = "washer"
    structural = ("dent",)
    logical = ("missing_hole",)
    HOLES = 6

    def setup_constants(self) -> None:
        self.metal = np.array([150, 152, 158], np.float32) + self.const.uniform(-15, 15, 3)
        self.background = np.array([205, 200, 190], np.float32) + self.const.uniform(-10, 10, 3)

    def sample_layout(self, rng, hw):
        s = min(hw)
        cy, cx = hw[0] / 2 + rng.uniform(-0.02, 0.02) * s, hw[1] / 2 + rng.uniform(-0.02, 0.02) * s
        turn = rng.uniform(-0.15, 0.15)
        holes = []
        for k in range(self.HOLES):
            angle = turn + 2 * np.pi * k / self.HOLES
            r = 0.29 * s
            holes.append(Item("disc", (cy + r * np.sin(angle), cx + r * np.cos(angle)), (0.038 * s, 0.038 * s),
                              tuple(float(v) for v in self.background)))
        return Layout(hw, {"center": (cy, cx), "noise_seed": _noise_seed(rng)}, holes)

    def _annulus(self, layout: Layout) -> np.ndarray:
        h, w = layout.hw
        s = min(h, w)
        cy, cx = layout.params["center"]
        canvas = np.zeros((h, w), np.uint8)
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(0.42 * s)), 1, -1)
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(0.16 * s)), 0, -1)
        return canvas.astype(bool)

    def surface(self, layout):
        surface = self._annulus(layout)
        for hole in layout.items:
            grown = replace(hole, size=(hole.size[0] + 2, hole.size[1] + 2))  # keep dents off the hole rims
            surface &= ~item_mask(grown, layout.hw)
        return surface

    def draw(self, layout, rng):
        rng = _noise_rng(layout)
        h, w = layout.hw
        y, x = _grid(layout.hw)
        img = np.empty((h, w, 3), np.float32)
        img[:] = self.background
        img += (6.0 * (y / h - 0.5))[..., None]  # soft light fall-off
        cy, cx = layout.params["center"]
        r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        theta = np.arctan2(y - cy, x - cx)
        brushed = 0.06 * np.sin(r * 1.7 + 0.8 * smooth_noise(rng, layout.hw, 3.0))  # concentric brushing
        shade = 0.95 + 0.12 * np.cos(theta + 2.3) + brushed  # anisotropic sheen
        metal = self._annulus(layout)
        img[metal] = self.metal[None] * shade[metal][:, None]
        for hole in layout.items:
            paint_mask = item_mask(hole, layout.hw)
            img[paint_mask] = np.asarray(hole.color, np.float32) + (6.0 * (y[paint_mask] / h - 0.5))[:, None]
        return img

    def make_defect(self, defect: str, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, Channels]:
        if defect == "missing_hole":
            index = int(rng.integers(len(layout.items)))
            kept = Layout(layout.hw, dict(layout.params), [it for i, it in enumerate(layout.items) if i != index])
            return self.draw(kept, rng), [(defect, item_mask(layout.items[index], layout.hw))]
        if defect == "dent":
            img = self.draw(layout, rng)
            return img, [(defect, self._dent(img, layout, rng))]
        raise ValueError(f"washer has no defect {defect!r}")

    def _dent(self, img: np.ndarray, layout: Layout, rng: np.random.Generator) -> np.ndarray:
        """A pressed-in elliptic spot: darker on the side facing the light, brighter opposite."""
        h, w = layout.hw
        s = min(h, w)
        surface = self.surface(layout)
        ry, rx = rng.uniform(0.035, 0.055, 2) * s
        inner = cv2.erode(surface.astype(np.uint8), np.ones((2 * int(max(ry, rx)) + 1,) * 2, np.uint8)).astype(bool)
        candidates = np.argwhere(inner) if inner.any() else np.argwhere(surface)
        cy, cx = candidates[rng.integers(len(candidates))]
        y, x = _grid(layout.hw)
        angle = rng.uniform(0, np.pi)
        dy, dx = y - cy, x - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        inside = (u ** 2 + v ** 2 < 1.0) & surface
        # slope of a bowl, lit from the upper left: the upper-left wall is in shadow
        slope = (dx + dy) / (np.sqrt(2.0) * max(rx, ry))
        change = np.where(slope < 0, -70.0, 45.0) * (0.5 + 0.5 * np.abs(slope))
        img[inside] = np.clip(img[inside] + change[inside][:, None], 5, 250)
        return inside


class Pcb(SceneKind):
    """A circuit board: solder mask, traces, pads and surface-mount parts in fixed places."""

    name = "pcb"
    logical = ("shifted_part", "rotated_part")
    # (y, x, height, width) of each part as fractions of the image side; a chip, resistors, capacitors
    PARTS = (
        (0.50, 0.50, 0.20, 0.26), (0.18, 0.20, 0.06, 0.13), (0.18, 0.45, 0.06, 0.13), (0.18, 0.72, 0.06, 0.13),
        (0.82, 0.22, 0.06, 0.13), (0.82, 0.50, 0.06, 0.13), (0.82, 0.78, 0.08, 0.10), (0.35, 0.15, 0.13, 0.06),
        (0.65, 0.15, 0.13, 0.06), (0.35, 0.86, 0.10, 0.08), (0.65, 0.86, 0.13, 0.06),
    )

    def setup_constants(self) -> None:
        self.mask_colour = np.array([25, 95, 55], np.float32) + self.const.uniform(-10, 10, 3)
        self.trace = np.clip(self.mask_colour + np.array([25, 45, 20], np.float32), 0, 255)
        self.copper = np.array([200, 170, 95], np.float32) + self.const.uniform(-10, 10, 3)
        self.body_colours = [(30, 30, 32), (40, 35, 30), (170, 140, 95)]

    def sample_layout(self, rng, hw):
        h, w = hw
        s = min(hw)
        items = []
        for k, (fy, fx, fh, fw) in enumerate(self.PARTS):
            colour = self.body_colours[0] if k == 0 else self.body_colours[1 + k % 2]
            center = (fy * h + rng.uniform(-0.6, 0.6), fx * w + rng.uniform(-0.6, 0.6))
            items.append(Item("rect", center, (fh * s, fw * s), colour, rng.uniform(-1.0, 1.0)))
        return Layout(hw, {"shift": rng.uniform(-0.6, 0.6, 2), "noise_seed": _noise_seed(rng)}, items)

    def _pads(self, item: Item) -> list[Item]:
        """Two copper pads under the ends of a part, inside its footprint (hidden when it sits right)."""
        h, w = item.size
        along_x = w >= h
        length = w if along_x else h
        pad_size = (h * 0.8, length * 0.25) if along_x else (length * 0.25, w * 0.8)
        a = np.deg2rad(item.angle)
        pads = []
        for sign in (-1, 1):
            off = sign * length * 0.35
            dy, dx = ((off * np.sin(a), off * np.cos(a)) if along_x else (off * np.cos(a), -off * np.sin(a)))
            pads.append(Item("rect", (item.center[0] + dy, item.center[1] + dx), pad_size, tuple(self.copper), item.angle))
        return pads

    def _draw_board(self, layout: Layout) -> np.ndarray:
        rng = _noise_rng(layout)
        h, w = layout.hw
        img = np.empty((h, w, 3), np.float32)
        img[:] = self.mask_colour
        img += (5.0 * smooth_noise(rng, layout.hw, 2.0))[..., None]
        sy, sx = layout.params["shift"]
        width = max(1, int(round(min(h, w) / 64)))
        for fy in (0.08, 0.30, 0.70, 0.92):
            yy = int(round(fy * h + sy))
            cv2.line(img, (0, yy), (w - 1, yy), tuple(float(v) for v in self.trace), width)
        for fx in (0.33, 0.67):
            xx = int(round(fx * w + sx))
            cv2.line(img, (xx, 0), (xx, h - 1), tuple(float(v) for v in self.trace), width)
        for fy, fx in ((0.08, 0.08), (0.08, 0.92), (0.92, 0.08), (0.92, 0.92)):  # mounting vias
            cv2.circle(img, (int(round(fx * w + sx)), int(round(fy * h + sy))), max(2, int(min(h, w) / 40)),
                       tuple(float(v) for v in self.copper), -1)
        return img

    def draw(self, layout, rng, pads_from: Layout | None = None):
        img = self._draw_board(layout)
        for item in (pads_from or layout).items:  # the pads stay where the parts belong
            for pad in self._pads(item):
                img[item_mask(pad, layout.hw)] = self.copper
        for item in layout.items:
            img[item_mask(item, layout.hw)] = np.asarray(item.color, np.float32)
            for end in self._pads(item):  # metal terminals at both ends of the part
                terminal = replace(end, size=(end.size[0] * 0.9, end.size[1] * 0.6))
                img[item_mask(terminal, layout.hw)] = np.array([205, 205, 210], np.float32)
        return img

    def make_defect(self, defect: str, layout: Layout, rng: np.random.Generator) -> tuple[np.ndarray, Channels]:
        h, w = layout.hw
        s = min(h, w)
        index = int(rng.integers(1, len(layout.items)))  # a small part (the chip is index 0)
        item = layout.items[index]
        if defect == "shifted_part":
            step = rng.uniform(0.04, 0.07) * s * rng.choice([-1.0, 1.0])
            along_x = rng.uniform() < 0.5
            center = (item.center[0] + (0.0 if along_x else step), item.center[1] + (step if along_x else 0.0))
            moved = replace(item, center=center)
        elif defect == "rotated_part":
            moved = replace(item, angle=item.angle + rng.uniform(35, 90) * rng.choice([-1.0, 1.0]))
        else:
            raise ValueError(f"pcb has no defect {defect!r}")
        items = list(layout.items)
        items[index] = moved
        new_layout = Layout(layout.hw, dict(layout.params), items)
        mask = item_mask(item, layout.hw) | item_mask(moved, layout.hw)
        return self.draw(new_layout, rng, pads_from=layout), [(defect, mask)]


KINDS = {k.name: k for k in (Fabric, Granite, Washer, Pcb)}
CATEGORIES = tuple(KINDS)
DEFECTS_OF_KIND: dict[str, tuple[str, ...]] = {
    "fabric": ("thin_scratch", "scratch"),
    "granite": ("thin_scratch", "scratch"),
    "washer": ("missing_hole", "dent"),
    "pcb": ("shifted_part", "rotated_part"),
}


def heldout_scene(category: str, seed: int) -> SceneKind:
    """The held-out scene of a category: its own name if it is one of ``CATEGORIES``, else a stable pick
    (a name ending in ``_<kind>`` or starting with ``<kind>_`` picks that kind)."""
    if category in KINDS:
        return KINDS[category](category, seed)
    for kind in KINDS:
        if category.startswith(kind + "_") or category.endswith("_" + kind):
            return KINDS[kind](category, seed)
    return KINDS[CATEGORIES[zlib.crc32(category.encode()) % len(CATEGORIES)]](category, seed)


class HeldoutGenerator(CategoryGenerator):
    """``CategoryGenerator`` whose anomalies come from the held-out scenes' own defects."""

    def draw_defect(self, defect: str, layout) -> tuple[np.ndarray, list]:
        return self.kind.make_defect(defect, layout, self.rng)  # type: ignore[attr-defined]
