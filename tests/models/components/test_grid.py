"""Known-answer tests for the continuous grids (paper Eq. 1 with the official grid_sample conventions)."""

from __future__ import annotations

import math

import pytest
import torch

from anomaly_bench.models.components.grid import (
    CoordinateJitter,
    GlobalCoordinateNet,
    GlobalGrid,
    LocalCoordinateNet,
    LocalGlobalGrid,
    LocalGrid,
    grid_shape,
)


def index_of(u: float, resolution: int) -> float:
    """align_corners=False: normalised u in [-1, 1] -> continuous cell index."""
    return ((u + 1.0) * resolution - 1.0) / 2.0


def paper_phi_1d(v: float, cells: torch.Tensor) -> torch.Tensor:
    """Eq. (1): phi(v) = |v - n| G[m] + |v - m| G[n], m = floor v, n = ceil v; cells outside read 0."""
    def g(i: int) -> torch.Tensor:
        return cells[i] if 0 <= i < cells.shape[0] else torch.zeros_like(cells[0])

    m, n = math.floor(v), math.ceil(v)
    if m == n:  # Eq. (1) degenerates on lattice points; the value is the cell itself
        return g(m)
    return abs(v - n) * g(m) + abs(v - m) * g(n)


def paper_phi_2d(vx: float, vy: float, cells: torch.Tensor) -> torch.Tensor:
    """Eq. (1) extended to 2-D: interpolate along x in every row, then Eq. (1) along y over the
    row results. cells: [R_y, R_x, C]."""
    rows = torch.stack([paper_phi_1d(vx, cells[y]) for y in range(cells.shape[0])])
    return paper_phi_1d(vy, rows)


def test_1d_local_grid_hand_computed_values():
    grid = LocalGrid(channels=2, resolution=4, coord_dim=1)
    cells = torch.tensor([[1.0, -1.0], [2.0, 0.0], [4.0, 3.0], [8.0, 5.0]])  # [R, C]
    with torch.no_grad():
        grid.grid.copy_(cells.t().reshape(1, 2, 1, 4))
    # u -> index: -0.25 -> 1.0 (a lattice point), 0 -> 1.5 (midpoint), 0.1 -> 1.7, -1 -> -0.5 (half zero pad)
    us = [-0.25, 0.0, 0.1, -1.0]
    expected_by_hand = torch.tensor([[2.0, 0.0], [3.0, 1.5], [0.3 * 2 + 0.7 * 4, 0.7 * 3], [0.5, -0.5]])
    coords = torch.tensor(us).reshape(1, 1, 1, 4)  # [B, D=1, H=1, W=4]
    out = grid(coords)[0, :, 0, :].t()  # [4, C]
    torch.testing.assert_close(out, expected_by_hand)
    for u, got in zip(us, out):
        torch.testing.assert_close(got, paper_phi_1d(index_of(u, 4), cells))


def test_2d_local_grid_hand_computed_values():
    grid = LocalGrid(channels=1, resolution=2, coord_dim=2)
    with torch.no_grad():
        grid.grid.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2))  # rows = y, cols = x
    # channel 0 = x, channel 1 = y
    points = [((0.0, 0.0), 2.5), ((0.5, -0.5), 2.0), ((0.25, 0.0), 2.75), ((-1.0, -1.0), 0.25)]
    coords = torch.tensor([p for p, _ in points]).t().reshape(1, 2, 1, len(points))
    out = grid(coords)[0, 0, 0]
    torch.testing.assert_close(out, torch.tensor([v for _, v in points]))


def test_2d_grid_matches_paper_formula_on_random_points():
    torch.manual_seed(0)
    r, c = 5, 3
    grid = LocalGrid(channels=c, resolution=r, coord_dim=2)
    cells = grid.grid.detach()[0].permute(1, 2, 0)  # [R_y, R_x, C]
    coords = torch.rand(2, 2, 3, 4) * 2.4 - 1.2  # include points outside the lattice (zero padding)
    out = grid(coords)
    for b in range(2):
        for h in range(3):
            for w in range(4):
                ux, uy = coords[b, 0, h, w].item(), coords[b, 1, h, w].item()
                ref = paper_phi_2d(index_of(ux, r), index_of(uy, r), cells)
                torch.testing.assert_close(out[b, :, h, w], ref, atol=1e-5, rtol=1e-5)


def test_3d_grid_reads_lattice_points_exactly():
    grid = LocalGrid(channels=2, resolution=3, coord_dim=3)
    # cell (z=2, y=0, x=1) sits at u = (index * 2 + 1) / R - 1
    u = lambda i: (2 * i + 1) / 3 - 1  # noqa: E731
    coords = torch.tensor([u(1), u(0), u(2)]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(grid(coords)[0, :, 0, 0], grid.grid.detach()[0, :, 2, 0, 1])


def test_global_grid_shape_and_per_image_interpolation():
    torch.manual_seed(0)
    c, h, w, r = 3, 4, 5, 4
    grid = GlobalGrid(c, h, w, resolution=r, coord_dim=2)
    assert tuple(grid.grid.shape) == (1, c * h * w, r, r)
    coords = torch.tensor([[0.1, -0.3], [-0.9, 0.7], [0.25, 0.25]])
    out = grid(coords)
    assert out.shape == (3, c, h, w)
    cells = grid.grid.detach()[0].permute(1, 2, 0)  # [R_y, R_x, CHW]
    for b in range(3):
        ref = paper_phi_2d(index_of(coords[b, 0].item(), r), index_of(coords[b, 1].item(), r), cells)
        torch.testing.assert_close(out[b], ref.reshape(c, h, w), atol=1e-5, rtol=1e-5)  # channel-major
        torch.testing.assert_close(out[b : b + 1], grid(coords[b : b + 1]))  # batch does not mix images


@pytest.mark.parametrize("dim", [1, 3])
def test_global_grid_other_dimensions(dim):
    grid = GlobalGrid(2, 3, 3, resolution=4, coord_dim=dim)
    assert tuple(grid.grid.shape) == grid_shape(18, 4, dim)
    out = grid(torch.zeros(5, dim))
    assert out.shape == (5, 2, 3, 3)
    assert torch.allclose(out[0], out[4])


def test_xavier_normal_grid_std():
    torch.manual_seed(0)
    grid = LocalGrid(channels=216, resolution=8, coord_dim=2)
    expected = math.sqrt(2.0 / ((216 + 1) * 64))
    assert abs(grid.grid.std().item() - expected) / expected < 0.05


def test_grid_gradients_reach_only_neighbouring_cells():
    grid = LocalGrid(channels=1, resolution=4, coord_dim=2)
    coords = torch.tensor([0.0, 0.0]).reshape(1, 2, 1, 1)  # index (1.5, 1.5): cells 1..2 x 1..2
    grid(coords).sum().backward()
    touched = (grid.grid.grad[0, 0] != 0).nonzero().tolist()
    assert sorted(touched) == [[1, 1], [1, 2], [2, 1], [2, 2]]


def test_coordinate_nets_are_bounded_and_shaped():
    x = torch.randn(2, 6, 3, 3) * 100
    local = LocalCoordinateNet(6, coord_dim=2)(x)
    glob = GlobalCoordinateNet(6, coord_dim=3)(x)
    assert local.shape == (2, 2, 3, 3) and glob.shape == (2, 3)
    assert local.abs().max() <= 1 and glob.abs().max() <= 1


def test_jitter_only_in_training():
    coords = torch.zeros(2, 2, 4, 4)
    jitter = CoordinateJitter(std=0.05, p=1.0)
    jitter.train()
    moved = jitter(coords)
    assert not torch.equal(moved, coords)
    assert 0.02 < moved.std().item() < 0.1  # N(0, 0.05^2)
    jitter.eval()
    assert torch.equal(jitter(coords), coords)
    assert torch.equal(CoordinateJitter(p=0.0).train()(coords), coords)


def test_jitter_iteration_mode_is_all_or_nothing_at_rate_p():
    torch.manual_seed(0)
    jitter = CoordinateJitter(std=0.05, p=0.5, mode="iteration").train()
    coords = torch.zeros(2, 2, 3, 3)
    moved = [bool((jitter(coords) != 0).any()) for _ in range(400)]
    for _ in range(20):
        out = jitter(coords)
        assert bool((out != 0).all()) or bool((out == 0).all())
    assert 0.4 < sum(moved) / len(moved) < 0.6


def test_jitter_pixel_mode_perturbs_a_fraction_of_pixels():
    torch.manual_seed(0)
    out = CoordinateJitter(std=0.05, p=0.5, mode="pixel").train()(torch.zeros(4, 2, 16, 16))
    moved_pixels = (out != 0).any(dim=1).float().mean().item()
    assert 0.4 < moved_pixels < 0.6
    with pytest.raises(ValueError, match="jitter mode"):
        CoordinateJitter(mode="sometimes")


def test_local_global_grid_concat_order_switches_and_errors():
    torch.manual_seed(0)
    rep = LocalGlobalGrid(4, 3, 3, jitter_p=0.0)
    x = torch.randn(2, 4, 3, 3)
    out = rep(x)
    assert out.shape == (2, 8, 3, 3) and rep.out_channels == 8
    torch.testing.assert_close(out[:, :4], rep.global_grid(rep.global_coords(x)))  # global first
    torch.testing.assert_close(out[:, 4:], rep.local_grid(rep.local_coords(x)))
    assert {id(p) for p in rep.grid_parameters()} == {id(rep.local_grid.grid), id(rep.global_grid.grid)}
    only_local = LocalGlobalGrid(4, 3, 3, use_global=False)
    assert only_local(x).shape == (2, 4, 3, 3) and len(only_local.grid_parameters()) == 1
    with pytest.raises(ValueError, match="image_size"):
        rep(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="at least one"):
        LocalGlobalGrid(4, 3, 3, use_local=False, use_global=False)
    with pytest.raises(ValueError, match="coord_dim"):
        LocalGrid(4, 8, coord_dim=4)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_global_grid_matmul_equals_grid_sample_values_and_gradients(dim):
    torch.manual_seed(0)
    fast = GlobalGrid(2, 3, 4, resolution=4, coord_dim=dim, method="matmul")
    ref = GlobalGrid(2, 3, 4, resolution=4, coord_dim=dim, method="grid_sample")
    with torch.no_grad():
        ref.grid.copy_(fast.grid)
    coords = (torch.rand(6, dim) * 2.6 - 1.3).requires_grad_(True)  # some outside [-1, 1]
    coords_ref = coords.detach().clone().requires_grad_(True)
    out, out_ref = fast(coords), ref(coords_ref)
    torch.testing.assert_close(out, out_ref, atol=1e-6, rtol=1e-5)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    (out_ref * weight).sum().backward()
    torch.testing.assert_close(fast.grid.grad, ref.grid.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(coords.grad, coords_ref.grad, atol=1e-5, rtol=1e-4)
