"""Rewrites of torch ops that a runtime does not implement faithfully, applied before conversion.

OpenVINO's ONNX frontend ignores the ``antialias`` attribute of ``Resize`` (opset 18), so an
antialiased bilinear downscale (``F.interpolate(..., antialias=True)``, e.g. PatchDiff GRAD's
detector inputs) would run as a plain bilinear one there: 7 % off on PatchDiff's maps. The resize is
linear in its input with sizes fixed at export time, so it is rewritten as two matrix products with
PyTorch's own antialiasing weights (``_upsample_bilinear2d_aa``: a triangle filter stretched by the
scale, normalised per output pixel): the same numbers to float rounding, in ops every runtime has.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def antialiased_bilinear_weights(n_in: int, n_out: int, scale: float | None = None) -> np.ndarray:
    """``[n_out, n_in]`` weights equal to PyTorch's antialiased bilinear resize of one axis
    (``align_corners=False``).

    Args:
        n_in: input length.
        n_out: output length.
        scale: input / output length ratio; None = ``n_in / n_out`` (what a ``size`` call uses).
    """
    scale = float(n_in) / n_out if scale is None else float(scale)
    support = max(scale, 1.0)  # the triangle widens with the downscale factor
    stretch = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), n_in) - first
        for j in range(count):
            distance = abs((first + j - center + 0.5) * stretch)
            weights[i, first + j] = 1.0 - distance if distance < 1.0 else 0.0
        total = weights[i].sum()
        if total != 0:
            weights[i] /= total
    return weights


def _resize_as_matmul(images: Tensor, output_size: Sequence[int], align_corners: bool,
                      scales_h: float | None = None, scales_w: float | None = None) -> Tensor:
    if align_corners:
        raise NotImplementedError("antialiased resize with align_corners=True is not rewritten")
    height, width = int(images.shape[-2]), int(images.shape[-1])
    out_h, out_w = int(output_size[0]), int(output_size[1])
    rows = antialiased_bilinear_weights(height, out_h, 1.0 / scales_h if scales_h else None)
    cols = antialiased_bilinear_weights(width, out_w, 1.0 / scales_w if scales_w else None)
    rows_t = torch.tensor(rows, dtype=images.dtype, device=images.device)
    cols_t = torch.tensor(cols.T.copy(), dtype=images.dtype, device=images.device)
    return torch.matmul(torch.matmul(rows_t, images), cols_t)


def _resize_as_matmul_vec(images: Tensor, output_size: Sequence[int] | None, align_corners: bool,
                          scale_factors: Sequence[float] | None) -> Tensor:
    if output_size is None:
        if not scale_factors:
            raise NotImplementedError("antialiased resize without output size or scale factors")
        output_size = [int(images.shape[-2] * scale_factors[0]), int(images.shape[-1] * scale_factors[1])]
        return _resize_as_matmul(images, output_size, align_corners, scale_factors[0], scale_factors[1])
    return _resize_as_matmul(images, output_size, align_corners)


def portable_program(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with antialiased bilinear resizes replaced by matrix products (see module docstring).

    Args:
        program: a captured ``torch.export`` program.
    """
    aten = torch.ops.aten
    targets = {aten._upsample_bilinear2d_aa.default, aten._upsample_bilinear2d_aa.vec}
    if not any(getattr(node, "target", None) in targets for node in program.graph.nodes):
        return program
    table = torch.export.default_decompositions()
    table[aten._upsample_bilinear2d_aa.default] = _resize_as_matmul
    table[aten._upsample_bilinear2d_aa.vec] = _resize_as_matmul_vec
    return program.run_decompositions(table)
