"""Slow, obviously-correct re-implementations of the official curves (dense thresholds).

Independent of the package: scipy for regions, plain numpy loops over every threshold.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np
from scipy import ndimage


def official_trapezoid(x, y, x_max):
    """MVTec AD ``trapezoid(x, y, x_max)``: cut at x_max with a linearly interpolated end point."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    correction = 0.0
    if x_max not in x:
        ins = bisect_right(list(x), x_max)
        assert 0 < ins < len(x)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def dense_pro_curve(maps, masks):
    """PRO curve at every distinct score (flag score >= t), regions = 8-connected components."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    regions = []
    negatives = []
    for m, gt in zip(maps, masks):
        labels, count = ndimage.label(np.asarray(gt) != 0, structure=np.ones((3, 3)))
        regions += [m[labels == r] for r in range(1, count + 1)]
        negatives.append(m[labels == 0])
    negatives = np.concatenate(negatives)
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        fprs.append(np.mean(negatives >= t))
        pros.append(np.mean([np.mean(r >= t) for r in regions]))
    return np.array(fprs), np.array(pros)


def dense_aupro(maps, masks, limit=0.3):
    fprs, pros = dense_pro_curve(maps, masks)
    return official_trapezoid(fprs, pros, limit) / limit


def dense_auspro(maps, channels, saturations, limit=0.05):
    """MVTec LOCO sPRO at every threshold (flag score > t); channels[i] = list of [H, W] masks,
    saturations[i] = their saturation areas in pixels; FPR over pixels outside all channels."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    regions, sats, negatives = [], [], []
    for m, chans, sat in zip(maps, channels, saturations):
        outside = np.ones(m.shape, dtype=bool)
        for c, s in zip(chans, sat):
            regions.append(m[np.asarray(c) != 0])
            sats.append(s)
            outside &= np.asarray(c) == 0
        negatives.append(m[outside])
    negatives = np.concatenate(negatives)
    values = np.unique(np.concatenate([m.ravel() for m in maps]))
    thresholds = np.concatenate([[values.max() + 1.0], values[::-1], [values.min() - 1.0]])
    fprs, spros = [], []
    for t in thresholds:
        fprs.append(np.mean(negatives > t))
        spros.append(np.mean([min(np.sum(r > t) / s, 1.0) for r, s in zip(regions, sats)]))
    return official_trapezoid(fprs, spros, limit) / limit
