"""GLAD's formulas on known answers: ATP target sign, timestep blend, ADS stop rule, SAFF, scoring."""

from __future__ import annotations

import math

import pytest
import torch

from anomaly_bench.models.components.diffusion import scaled_linear_alphas_cumprod
from anomaly_bench.models.glad.ads import adaptive_denoise, ads_decide, ddim_timesteps, saff_blend
from anomaly_bench.models.glad.atp import add_noise, atp_target, predicted_x0, timestep_blend
from anomaly_bench.models.glad.scoring import (
    gaussian_blur, gaussian_kernel1d, layer_distance_map, nn_distance, pixel_l1_term, topk_mean,
)

ALPHAS = scaled_linear_alphas_cumprod()


def test_sd_schedule_endpoints():
    betas = 1 - ALPHAS / torch.cat([torch.ones(1), ALPHAS[:-1]])
    assert math.isclose(float(betas[0]), 0.00085, rel_tol=1e-4) and math.isclose(float(betas[-1]), 0.012, rel_tol=1e-3)


@pytest.mark.parametrize("t", [0, 1, 250, 600, 999])
def test_atp_target_with_true_noise_recovers_the_normal_latent(t):
    g = torch.Generator().manual_seed(t)
    z_n, z_a, eps = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    steps = torch.full((2,), t)
    z_s = timestep_blend(z_a, z_n, steps, 1000)
    alpha_bar = ALPHAS[steps]
    x_t = add_noise(z_s, eps, alpha_bar)
    plus = atp_target(eps, z_s, z_n, alpha_bar, "+")
    assert torch.allclose(predicted_x0(x_t, plus, alpha_bar), z_n, atol=2e-4)
    minus = atp_target(eps, z_s, z_n, alpha_bar, "-")  # the poster's sign amplifies the anomaly
    assert torch.allclose(predicted_x0(x_t, minus, alpha_bar), 2 * z_s - z_n, atol=2e-4)
    with pytest.raises(ValueError, match="atp_sign"):
        atp_target(eps, z_s, z_n, alpha_bar, "*")


def test_timestep_blend_weights():
    z_n, z_a = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    out = timestep_blend(z_a, z_n, torch.tensor([0, 250, 1000]), 1000)
    assert out[:, 0, 0, 0].tolist() == [0.0, 0.25, 1.0]


def test_ddim_timesteps_leading_spacing():
    steps = ddim_timesteps(750, 25)
    assert len(steps) == 25 and steps[0] == 721 and steps[1] == 691 and steps[-1] == 1
    with pytest.raises(ValueError):
        ddim_timesteps(10, 20)


def test_saff_blend_uses_sigmoid_of_the_distance():
    gen, inp = torch.ones(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)
    out = saff_blend(gen, inp, torch.zeros(1, 4, 4))
    assert torch.allclose(out, torch.full_like(out, 0.5))  # m = sigmoid(0) = 0.5: never a hard mask
    a = torch.full((1, 2, 2), 2.0)  # coarser distance grid is resized to the latent grid
    assert torch.allclose(saff_blend(gen, inp, a), torch.full_like(gen, torch.sigmoid(torch.tensor(2.0)).item()))
    x_gen, x_in = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    d = torch.rand(2, 4, 4)
    m = torch.sigmoid(d)[:, None]
    assert torch.allclose(saff_blend(x_gen, x_in, d), m * x_gen + (1 - m) * x_in)


def test_ads_decide_trigger_reanchor_and_keep():
    x_gen, x_in = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    distance = torch.stack([torch.full((2, 2), v) for v in (0.9, 0.1, 0.1)])
    d = ads_decide(x_gen, x_in, distance, tau=torch.full((3,), 0.5), t=200, t_min=torch.tensor([100, 100, 300]),
                   top_k=2, use_saff=True)
    assert d.triggered.tolist() == [True, False, False] and d.reanchored.tolist() == [False, False, True]
    assert torch.allclose(d.x0[0], torch.sigmoid(torch.tensor(0.9)).expand(1, 2, 2))  # SAFF
    assert torch.equal(d.x0[1], x_gen[1]) and torch.equal(d.x0[2], x_in[2])  # keep / re-anchor
    no_saff = ads_decide(x_gen, x_in, distance, torch.full((3,), 0.5), 200, torch.tensor([100, 100, 300]), 2, False)
    assert torch.equal(no_saff.x0[0], x_gen[0])


class ScriptedDistance:
    """Distance maps whose top-k mean at call i is ``values[image][i]``; counts calls and batch sizes."""

    def __init__(self, values: list[list[float]]) -> None:
        self.values, self.calls, self.sizes, self.ids = values, 0, [], None

    def __call__(self, x0_in, x0_gen):
        # image identity travels in channel 0 of the input-anchored latent (z0 = image id, no noise)
        ids = x0_in[:, 0, 0, 0].round().long().tolist()
        self.sizes.append(len(ids))
        out = torch.stack([torch.full((2, 2), self.values[i][self.calls]) for i in ids])
        self.calls += 1
        return out


def test_ads_stop_rule_crosses_tau_at_a_known_step_and_reanchors_otherwise():
    steps = ddim_timesteps(500, 5)  # 401, 301, 201, 101, 1
    z0 = torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1).expand(2, 1, 2, 2).clone()
    noise = torch.zeros_like(z0)  # with zero ε and ε̂ = 0 the input-anchored estimate is z0 itself
    scripted = ScriptedDistance([[0.1, 0.2, 0.6, 0.7, 0.8], [0.1, 0.1, 0.1, 0.1, 0.1]])
    result = adaptive_denoise(
        z0, noise, steps, ALPHAS, lambda z, t: torch.zeros_like(z), scripted,
        tau=torch.tensor([0.5, 0.5]), t_min=torch.tensor([150, 150]), start_level=500, record_scores=True,
    )
    # image 0 crosses τ at the third step (t = 201); image 1 never does and is re-anchored at the
    # first step below t_min (t = 101)
    assert result.stop_step.tolist() == [201, 101]
    assert result.triggered.tolist() == [True, False]
    # extra decodes/DINO only for images still searching, none after the last one stopped
    assert scripted.sizes == [2, 2, 2, 1] and result.searched_steps == 4
    assert math.isnan(float(result.score_trace[3][0])) and float(result.score_trace[3][1]) == pytest.approx(0.1)


def test_ads_disabled_is_plain_ddim_without_distance_calls():
    z0 = torch.randn(2, 1, 4, 4)
    scripted = ScriptedDistance([[0.0] * 5] * 2)
    result = adaptive_denoise(z0, torch.zeros_like(z0), ddim_timesteps(500, 5), ALPHAS,
                              lambda z, t: torch.zeros_like(z), scripted, torch.zeros(2), torch.zeros(2),
                              start_level=401, use_ads=False)
    assert scripted.calls == 0 and result.stop_step.tolist() == [-1, -1]
    # ε̂ = 0 and ε = 0: DDIM is deterministic scaling back to √ᾱ_0·z0 (set_alpha_to_one off)
    assert torch.allclose(result.latents, ALPHAS[0].sqrt() * z0, atol=1e-5)
    # MVTec quirk: noised at T_start = 500 while the first step is labelled 401
    shifted = adaptive_denoise(z0, torch.zeros_like(z0), ddim_timesteps(500, 5), ALPHAS,
                               lambda z, t: torch.zeros_like(z), None, torch.zeros(2), torch.zeros(2), start_level=500)
    assert torch.allclose(shifted.latents, (ALPHAS[0] * ALPHAS[500] / ALPHAS[401]).sqrt() * z0, atol=1e-5)


def test_nn_distance_on_hand_made_tokens():
    e1, e2, diag = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]), torch.tensor([1.0, 1.0, 0])
    query = torch.stack([e1, e2, -e1])[None]
    keys = torch.stack([3 * e2, diag])[None]  # scale must not matter (cosine)
    expected = torch.tensor([[1 - 1 / math.sqrt(2), 0.0, 1 + 0.0]])
    expected[0, 2] = 1 - max(0.0, -1 / math.sqrt(2))  # -e1 vs e2: cos 0 is the best
    assert torch.allclose(nn_distance(query, keys), expected, atol=1e-6)
    # global search: permuting the key tokens changes nothing; chunking changes nothing
    assert torch.allclose(nn_distance(query, keys.flip(1)), expected, atol=1e-6)
    assert torch.allclose(nn_distance(query, keys, chunk=1), expected, atol=1e-6)
    with pytest.raises(ValueError):
        nn_distance(query[0], keys)


def test_layer_maps_sum_and_bidirectional():
    f_in = torch.eye(4)[None]  # 4 tokens in a 2x2 grid
    f_rec = torch.eye(4)[None][:, [0, 0, 2, 3]]  # token 1 is missing in the reconstruction
    maps = layer_distance_map([f_in, f_in], [f_rec, f_rec], (2, 2), (2, 2))
    assert torch.allclose(maps[0], torch.tensor([[0.0, 2.0], [0.0, 0.0]]))  # two layers summed
    both = layer_distance_map([f_in], [f_rec], (2, 2), (2, 2), bidirectional=torch.tensor([True]))
    assert torch.allclose(both[0], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))  # every rec token has a match


def test_topk_mean():
    values = torch.tensor([[1.0, 5.0, 3.0, 4.0], [0.0, 0.0, 0.0, 2.0]])
    assert topk_mean(values, 2).tolist() == [4.5, 1.0]
    assert topk_mean(values.view(2, 2, 2), 250).tolist() == [3.25, 0.5]  # k capped at the pixel count


def test_gaussian_blur_matches_official_kernel_and_preserves_constants():
    assert gaussian_kernel1d(6.0).numel() == 49 and math.isclose(float(gaussian_kernel1d(6.0).sum()), 1.0, rel_tol=1e-6)
    flat = torch.full((2, 40, 40), 3.0)
    assert torch.allclose(gaussian_blur(flat, 6.0), flat, atol=1e-5)
    spike = torch.zeros(1, 21, 21)
    spike[0, 10, 10] = 1.0
    blurred = gaussian_blur(spike, 1.0)
    assert math.isclose(float(blurred.sum()), 1.0, rel_tol=1e-4) and float(blurred.max()) < 0.2


def test_pixel_l1_term_is_per_image():
    maps = torch.stack([torch.full((2, 2), 2.0), torch.full((2, 2), 4.0)])
    inp = torch.zeros(2, 3, 2, 2)
    rec = torch.zeros(2, 3, 2, 2)
    rec[0, :, 0, 0], rec[1, :, 1, 1] = 1.0, 10.0
    term = pixel_l1_term(inp, rec, maps, torch.tensor([1.0, 0.5]))
    assert float(term[0, 0, 0]) == pytest.approx(2.0) and float(term[1, 1, 1]) == pytest.approx(2.0)
    assert float(term[0, 1, 1]) == 0.0


def test_distances_stay_float32_under_autocast():
    g = torch.Generator().manual_seed(0)
    query, keys = torch.randn(1, 5, 16, generator=g), torch.randn(1, 7, 16, generator=g)
    reference = nn_distance(query, keys)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = nn_distance(query, keys)
        blurred = gaussian_blur(torch.rand(1, 9, 9, generator=g), 1.0)
    assert under_amp.dtype == torch.float32 and blurred.dtype == torch.float32
    assert torch.allclose(under_amp, reference, atol=1e-6)


# ----------------------------------------------------------------- per-class tables in the configs
# Facts from the official code, hyao1/GLAD main.py at 7fef283 (CLSNAMES: denoise_step, input_threshold,
# v, min_step, ...), and utilize.py (MVTec / MPDD noised at exactly T_start, other datasets T_start - 1).
OFFICIAL_TABLES = {
    "glad_mvtec.yaml": dict(
        dataset="MVTecAD", noise_offset=0, dino_resolution=512, steps=25, bidirectional=["transistor"],
        table={"carpet": (750, 0.32, 0, 350), "grid": (750, 0.47, 0, 350), "leather": (750, 0.35, 0, 350),
               "tile": (750, 0.35, 0, 350), "wood": (750, 0.37, 0, 350), "bottle": (750, 0.32, 0, 350),
               "cable": (750, 0.4, 0, 350), "capsule": (600, 0.4, 0, 350), "hazelnut": (750, 0.5, 0, 350),
               "metal_nut": (750, 0.4, 0, 350), "pill": (750, 0.35, 0, 350), "screw": (750, 0.32, 0, 350),
               "toothbrush": (750, 0.5, 0, 350), "transistor": (850, 0.5, 0, 350), "zipper": (750, 0.35, 0, 350)}),
    "glad_mpdd.yaml": dict(
        dataset="MPDD", noise_offset=0, dino_resolution=512, steps=25, bidirectional=[],
        table={"bracket_black": (500, 0.35, 0, 350), "bracket_brown": (500, 0.35, 0, 350),
               "bracket_white": (450, 0.35, 0, 200), "connector": (500, 0.35, 0, 350),
               "metal_plate": (500, 0.35, 0, 350), "tubes": (500, 0.1, 0, 350)}),
    "glad_visa.yaml": dict(
        dataset="VisA", noise_offset=-1, dino_resolution=256, steps=15, bidirectional=["pcb1", "pcb4"],
        table={"candle": (450, 0.45, 7, 200), "capsules": (450, 0.4, 7, 200), "cashew": (450, 0.4, 1, 200),
               "chewinggum": (450, 0.45, 1, 200), "fryum": (450, 0.35, 2, 200), "macaroni1": (450, 0.45, 7, 200),
               "macaroni2": (450, 0.45, 7, 200), "pcb1": (450, 0.3, 1, 200), "pcb2": (450, 0.3, 2, 200),
               "pcb3": (450, 0.3, 2, 200), "pcb4": (450, 0.3, 2, 200), "pipe_fryum": (450, 0.45, 2, 200)}),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_TABLES))
def test_config_tables_are_the_official_ones_and_reach_every_category(name):
    import yaml

    from anomaly_bench.benchmark.grid import KNOWN_CATEGORIES
    from anomaly_bench.models.glad.categories import CategoryTable
    from tests.conftest import REPO_ROOT

    facts = OFFICIAL_TABLES[name]
    init_args = yaml.safe_load((REPO_ROOT / "configs" / name).read_text())["model"]["init_args"]
    defaults = {key: init_args[key] for key in ("t_start", "tau", "t_min", "noise_offset")}
    table = CategoryTable.from_options(**defaults, pixel_l1_weight=init_args.get("pixel_l1_weight", 0.0),
                                       category_params=init_args["category_params"])
    table.use_calibrated_tau = False  # tau_mode: table
    assert set(table.entries) == set(KNOWN_CATEGORIES[facts["dataset"]]) == set(facts["table"])
    for category, (t_start, tau, v, t_min) in facts["table"].items():
        assert table.params_for(category) == dict(t_start=t_start, tau=pytest.approx(tau), t_min=t_min,
                                                  noise_offset=facts["noise_offset"], pixel_l1_weight=v), category
    assert init_args["dino_resolution"] == facts["dino_resolution"]
    assert init_args["num_inference_steps"] == facts["steps"]
    assert sorted(init_args.get("bidirectional_categories") or []) == facts["bidirectional"]
    assert "grad_clip" not in init_args and init_args["grad_clip_norm"] == 1.0


def test_category_table_lookup_order_and_bad_entries():
    from anomaly_bench.models.glad.categories import CategoryTable

    table = CategoryTable.from_options(750, 0.4, 350, 0, 0.0, {"capsule": {"t_start": 600, "tau": 0.3}})
    assert table.params_for(None) == dict(t_start=750, tau=0.4, t_min=350, noise_offset=0, pixel_l1_weight=0.0)
    assert table.params_for("capsule")["t_start"] == 600 and table.params_for("carpet")["t_start"] == 750
    table.calibrated_tau["capsule"] = 0.21
    assert table.params_for("capsule")["tau"] == 0.21  # calibrated τ over the table's
    assert table.categories(None, 2) == ["capsule", "capsule"]  # the one calibrated category
    table.use_calibrated_tau = False
    assert table.params_for("capsule")["tau"] == 0.3  # tau_mode: table
    with pytest.raises(ValueError, match=r"category_params\['capsule'\]\['tau'\] must be a number"):
        CategoryTable.from_options(750, 0.4, 350, 0, 0.0, {"capsule": {"tau": "high"}})
    with pytest.raises(ValueError, match="category_params must be a mapping"):
        CategoryTable.from_options(750, 0.4, 350, 0, 0.0, [("capsule", 0.3)])
    with pytest.raises(ValueError, match="3 categories for 2 images"):
        table.categories(["a", "b", "c"], 2)
