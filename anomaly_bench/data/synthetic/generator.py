"""Images of one synthetic category, independent of the folder layout they are written in.

No global shortcut: every image (normal or anomalous) gets its per-channel mean and standard
deviation re-set to a target drawn from one distribution shared by all images of the category.
Targets are stratified within each group (train, validation, test good, test anomalous): the
group's targets are the quantiles of that distribution in a random order, so the normal and the
anomalous test images have practically the same spread of global mean/std and a threshold on
either gives an image AUROC close to 0.5. Only local structure tells the defects apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import cv2
import numpy as np

from anomaly_bench.data.synthetic.defects import Channels, make_defect
from anomaly_bench.data.synthetic.scenes import SceneKind

BRIGHTNESS_JITTER = 4.0  # grey levels (std of the target mean)
CONTRAST_JITTER = 0.05  # relative (std of the target std)
SENSOR_NOISE = 2.0


@dataclass
class SynthImage:
    """One generated image. ``image`` is uint8 [H, W, 3] (or [H, W] for grayscale kinds)."""

    split: str  # train | validation | test
    defect: str  # "good" or the defect type
    image: np.ndarray
    channels: Channels = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        """Union of all channels (bool [H, W])."""
        union = np.zeros(self.image.shape[:2], dtype=bool)
        for _, m in self.channels:
            union |= m
        return union


def _stratified_normal(rng: np.random.Generator, n: int) -> np.ndarray:
    """n draws whose empirical distribution is the standard normal's quantiles, shuffled."""
    if n == 0:
        return np.zeros(0)
    positions = (rng.permutation(n) + rng.uniform(0.05, 0.95, n)) / n
    return np.array([NormalDist().inv_cdf(float(p)) for p in positions])


LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def match_statistics(image: np.ndarray, mean: np.ndarray, std: np.ndarray, gray_std: float | None = None) -> np.ndarray:
    """Remap ``image`` to the given per-channel means and stds (and, for colour images, the
    given standard deviation of its luminance), as uint8.

    A per-channel affine map alone leaves the luminance contrast free: a colour defect raises the
    channel stds without raising the luminance std, so after matching the channels the image
    would have less luminance contrast than a normal one. Alternating the per-channel map with a
    luminance-only contrast change converges to both targets in a few rounds.
    """
    channels = image.shape[2]
    flat = np.ascontiguousarray(image.reshape(-1, channels), dtype=np.float32)
    # OpenCV instead of NumPy/BLAS here: several times faster on large images
    cov, center = cv2.calcCovarMatrix(flat, None, cv2.COVAR_NORMAL | cv2.COVAR_ROWS | cv2.COVAR_SCALE)
    cov, center = cov.reshape(channels, channels), center.reshape(channels)
    # every step is linear in the pixel values, so iterate on the 3x3 map, apply it once
    linear = np.eye(channels)

    def match_channels(m: np.ndarray) -> np.ndarray:
        current = np.sqrt(np.maximum(np.diag(m.T @ cov @ m), 1e-6))
        return m * (np.asarray(std, np.float64) / current)[None, :]

    for _round in range(6):
        linear = match_channels(linear)
        if gray_std is None or channels == 1:
            break
        luma = LUMA.astype(np.float64)[:, None]
        current = float(np.sqrt(max((luma.T @ linear.T @ cov @ linear @ luma).item(), 1e-6)))
        linear = linear @ (np.eye(channels) + (gray_std / current - 1.0) * luma @ np.ones((1, channels)))
    linear = match_channels(linear)
    offset = np.asarray(mean, np.float64) - linear.T @ center
    affine = np.concatenate([linear.T, offset[:, None]], axis=1)  # out = linear^T x + offset
    out = cv2.transform(flat.reshape(-1, 1, channels), affine)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(image.shape)


class CategoryGenerator:
    """Generates the normal and anomalous images of one category."""

    def __init__(self, kind: SceneKind, hw: tuple[int, int], defects: list[str], seed_rng: np.random.Generator) -> None:
        self.kind = kind
        self.hw = hw
        self.defects = defects
        self.rng = seed_rng
        reference = kind.draw(kind.sample_layout(np.random.default_rng(0), hw), np.random.default_rng(1))
        if kind.grayscale:
            reference = reference[..., :1]
        self.ref_mean = reference.reshape(-1, reference.shape[2]).mean(0)
        self.ref_std = reference.reshape(-1, reference.shape[2]).std(0)
        self.ref_gray_std = float((reference @ LUMA).std()) if reference.shape[2] == 3 else None

    def _finish(self, image: np.ndarray, z_mean: float, z_std: float) -> np.ndarray:
        image = image + self.rng.normal(0, SENSOR_NOISE, image.shape).astype(np.float32)
        if self.kind.grayscale:
            image = image[..., :1]
        mean = self.ref_mean + BRIGHTNESS_JITTER * z_mean
        contrast = 1.0 + CONTRAST_JITTER * z_std
        gray_std = self.ref_gray_std * contrast if self.ref_gray_std is not None else None
        out = match_statistics(image, mean, self.ref_std * contrast, gray_std)
        return out[..., 0] if self.kind.grayscale else out

    def normals(self, split: str, n: int) -> list[SynthImage]:
        z_mean, z_std = _stratified_normal(self.rng, n), _stratified_normal(self.rng, n)
        images = []
        for i in range(n):
            layout = self.kind.sample_layout(self.rng, self.hw)
            images.append(SynthImage(split, "good", self._finish(self.kind.draw(layout, self.rng), z_mean[i], z_std[i])))
        return images

    def anomalies(self, per_defect: int) -> list[SynthImage]:
        plan = [d for d in self.defects for _ in range(per_defect)]
        z_mean, z_std = _stratified_normal(self.rng, len(plan)), _stratified_normal(self.rng, len(plan))
        images = []
        for i, defect in enumerate(plan):
            layout = self.kind.sample_layout(self.rng, self.hw)
            image, channels = self.draw_defect(defect, layout)
            images.append(SynthImage("test", defect, self._finish(image, z_mean[i], z_std[i]), channels))
        return images

    def draw_defect(self, defect: str, layout) -> tuple[np.ndarray, list]:
        """One anomalous image of ``defect`` on ``layout`` and its (name, mask) channels."""
        return make_defect(self.kind, defect, layout, self.rng)
