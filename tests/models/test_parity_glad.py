"""GLAD against numbers produced by the official code (hyao1/GLAD @ 7fef283).

``tests/fixtures/parity/glad/`` holds seeded tiny networks of the official classes (a diffusers
UNet2DConditionModel and AutoencoderKL, the official DINO VisionTransformer), the inputs the
official code saw and what it returned; ``PROVENANCE.md`` there says how they were made:

* ``dino.npz``: block tokens of the DINO ViT at its native grid and at twice that size;
* ``ads_loop.npz``: the official ``reconstruction()`` (pipeline + modified ``DDIMScheduler.step``),
  with ADS/SAFF as released (tokens cast to float16) and patched to float32, and plain DDIM;
* ``ads_step.npz``: one official ``step()`` with fixed DINO tokens (SAFF, re-anchoring, continuing);
* ``scoring.npz``: the official ``test()`` anomaly map and top-250 score on fixed DINO tokens.

Every call into ``anomaly_bench`` goes through the adapters below, so a rename in the package
only needs an edit here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from anomaly_bench.models.components.diffusion import VAECodec, scaled_linear_alphas_cumprod
from anomaly_bench.models.glad.ads import adaptive_denoise, ddim_timesteps
from anomaly_bench.models.glad.dino import DinoFeatures, build_vit
from anomaly_bench.models.glad.scoring import nn_distance
from anomaly_bench.models.glad.torch_model import GLADModel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "glad"
# max |ours - official| <= TOLERANCE * max(1, max |official|) (float32 on both sides).
TOLERANCE = 1e-5


# ---------------------------------------------------------------------------------- adapters
def our_dino(official: dict[str, Tensor], config: dict) -> nn.Module:
    """Our frozen DINO token extractor holding the official ViT's weights (same parameter names)."""
    tiny = dict(patch_size=4, embed_dim=48, depth=4, num_heads=3, mlp_ratio=4, qkv_bias=True)
    assert {k: config[k] for k in tiny} == tiny, "the fixture's ViT must be build_vit('tiny')'s architecture"
    vit = build_vit("tiny", tiny_image_size=config["img_size"][0])
    vit.load_state_dict(official, strict=True)
    return DinoFeatures(vit)


def our_dino_tokens(dino: nn.Module, images: Tensor, blocks: list[int]) -> list[Tensor]:
    """Patch tokens [B, N, C] (no CLS, before the final norm) after the given 1-based blocks."""
    with torch.no_grad():
        return dino(images, blocks)


def our_glad_model(unet: nn.Module, vae: nn.Module, dino: nn.Module, cond: Tensor, uncond: Tensor, steps: int,
                   guidance_scale: float, ads_layer: int, ads_top_k: int) -> GLADModel:
    """GLADModel (our noise schedule, CFG, ADS distance) holding the given diffusers parts and DINO.

    The model is built with its random 'tiny' parts and they are then replaced by the fixture's.
    """
    model = GLADModel(diffusion="tiny", tiny_vae=True, dino="tiny", dino_pretrained=False,
                      guidance_scale=guidance_scale, num_inference_steps=steps, score_layers=(ads_layer,),
                      ads_layer=ads_layer, ads_top_k=ads_top_k)
    model.unet = unet.eval()
    model.codec = VAECodec(vae.eval()).eval()
    model.prompt_embeds, model.negative_prompt_embeds = cond, uncond
    model.alphas_cumprod = scaled_linear_alphas_cumprod()
    model.dino = dino
    return model.eval()


def our_timesteps(t_start: int, steps: int) -> list[int]:
    return ddim_timesteps(t_start, steps)


def our_alphas_cumprod() -> Tensor:
    return scaled_linear_alphas_cumprod()


def our_reconstruction(model: GLADModel, z0: Tensor, noise: Tensor, t_start: int, tau: Tensor, t_min: Tensor,
                       use_ads: bool) -> tuple[Tensor, Tensor]:
    """DDIM from z0 noised at exactly t_start (MVTec), with or without ADS/SAFF.

    Returns (decoded images, not clamped; stop step per image). z0 is given (the official code
    samples it from the VAE posterior), so the run starts below the encoder.
    """
    with torch.no_grad():
        result = adaptive_denoise(
            z0, noise, our_timesteps(t_start, model.num_inference_steps), model.alphas_cumprod,
            model.predict_noise, model._ads_distance, tau, t_min, start_level=t_start, use_ads=use_ads,
            top_k=model.ads_top_k,
        )
        return model.codec.decode(result.latents).float(), result.stop_step


def our_single_ads_step(z0: Tensor, noise: Tensor, eps: Tensor, start_level: int, t: int, tau: Tensor,
                        t_min: Tensor, tokens_in: Tensor, tokens_gen: Tensor,
                        top_k: int) -> dict[str, Tensor]:
    """One DDIM step from z0 noised at ``start_level``, evaluated at ``t`` down to alpha_0, whose
    ADS distance compares fixed tokens (input-anchored vs generated estimate)."""
    side = int(tokens_in.shape[1] ** 0.5)

    def distance(x0_input: Tensor, x0_generated: Tensor) -> Tensor:
        return nn_distance(tokens_in, tokens_gen).reshape(-1, side, side)

    result = adaptive_denoise(z0, noise, [t], our_alphas_cumprod(), lambda z, step: eps, distance, tau, t_min,
                              start_level=start_level, top_k=top_k, record_scores=True)
    return {"prev_sample": result.latents, "stop_step": result.stop_step, "score": result.score_trace[0],
            "still_searching": result.stop_step < 0}


class FixedTokens(nn.Module):
    """Stands in for DINO in scoring: returns the fixture's tokens, input images first."""

    def __init__(self, tokens_in: Tensor, tokens_rec: Tensor) -> None:
        super().__init__()
        self.tokens_in, self.tokens_rec = tokens_in, tokens_rec  # [B, layers, N, C]
        self.weight = nn.Parameter(torch.zeros(1))  # GLADModel reads the DINO dtype from a parameter
        self.depth = tokens_in.shape[1]

    def forward(self, images: Tensor, blocks: list[int]) -> list[Tensor]:
        return [torch.cat([self.tokens_in[:, b - 1], self.tokens_rec[:, b - 1]]) for b in blocks]


def our_scoring_model(layers: int, resolution: int, sigma: float, top_k: int) -> GLADModel:
    """A GLADModel whose scoring settings are given (its DINO is replaced per case by fixed tokens)."""
    return GLADModel(diffusion="tiny", use_vae=False, dino="tiny", dino_pretrained=False,
                     score_layers=tuple(range(1, layers + 1)), ads_layer=layers, score_top_k=top_k,
                     dino_resolution=resolution, blur_sigma=sigma).eval()


def our_anomaly_map_and_score(model: GLADModel, tokens_in: Tensor, tokens_rec: Tensor, images: Tensor,
                              recon: Tensor, object_mask: Tensor, bidirectional: bool,
                              pixel_l1_weight: float) -> tuple[Tensor, Tensor]:
    """GLAD's map (Σ layers of NN distances, optional reverse term and pixel-L1 term, Gaussian blur,
    object mask) and top-k image score, on fixed DINO tokens [B, layers, N, C]."""
    model.dino = FixedTokens(tokens_in, tokens_rec)
    batch = images.shape[0]
    maps = model.anomaly_map(
        images, recon, pixel_l1_weight=torch.full((batch,), pixel_l1_weight) if pixel_l1_weight else None,
        bidirectional=torch.full((batch,), bidirectional), object_mask=object_mask,
    )
    return maps, model.image_score(maps)


# ---------------------------------------------------------------------------------- fixtures
def load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return {key: data[key] for key in data.files}


def tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(array)).float() if array.dtype.kind == "f" else torch.from_numpy(array)


def weights(data: dict[str, np.ndarray], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) + 1:]: tensor(v) for key, v in data.items() if key.startswith(prefix + "/")}


def max_diff(ours: Tensor, official: Tensor) -> float:
    """max |ours - official|, relative to the official tensor's scale when that exceeds 1."""
    assert ours.shape == official.shape, f"shape {tuple(ours.shape)} != official {tuple(official.shape)}"
    scale = max(1.0, float(official.float().abs().max()))
    return float((ours.float() - official.float()).abs().max()) / scale


@pytest.fixture(scope="module")
def dino_case() -> dict:
    data = load("dino.npz")
    return {"dino": our_dino(weights(data, "weight"), json.loads(str(data["config/json"]))), **data}


@pytest.fixture(scope="module")
def loop_case(dino_case: dict) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    data, unet_data = load("ads_loop.npz"), load("unet.npz")
    unet = UNet2DConditionModel(**json.loads(str(unet_data["config/json"])))
    unet.load_state_dict(weights(unet_data, "weight"), strict=True)
    vae = AutoencoderKL(**json.loads(str(data["config/vae_json"])))
    vae.load_state_dict(weights(data, "vae"), strict=True)
    # The official ADS reads the last of DINO's extraction blocks [3, 6, 9, 12] that exist: block 3
    # of the 4-block test ViT (block 12 of ViT-B/8).
    model = our_glad_model(
        unet, vae, dino_case["dino"], tensor(data["input/prompt_embeds"]),
        tensor(data["input/negative_prompt_embeds"]),
        int(data["config/num_inference_steps"]), float(data["config/guidance_scale"]), ads_layer=3,
        ads_top_k=int(data["config/ads_top_k"]),
    )
    return {"model": model, **data}


# ----------------------------------------------------------------------------------- DINO
@pytest.mark.parametrize("block", [2, 4])
def test_dino_tokens_at_the_native_grid_match_official(dino_case: dict, block: int) -> None:
    ours = our_dino_tokens(dino_case["dino"], tensor(dino_case["input/images_native"]), [block])[0]
    assert max_diff(ours, tensor(dino_case[f"output/native_block{block}"])[:, 1:]) <= TOLERANCE


@pytest.mark.parametrize("block", [2, 4])
def test_dino_tokens_at_twice_the_grid_match_official(dino_case: dict, block: int) -> None:
    ours = our_dino_tokens(dino_case["dino"], tensor(dino_case["input/images_large"]), [block])[0]
    assert max_diff(ours, tensor(dino_case[f"output/large_block{block}"])[:, 1:]) <= TOLERANCE


# ------------------------------------------------------------------------ schedule and DDIM
def test_noise_schedule_and_timesteps_match_official() -> None:
    data = load("ads_loop.npz")
    assert max_diff(our_alphas_cumprod(), tensor(data["input/alphas_cumprod"])) <= 1e-6
    ours = our_timesteps(int(data["config/t_start"]), int(data["config/num_inference_steps"]))
    assert ours == data["output/timesteps"].tolist()


def test_plain_ddim_reconstruction_matches_official(loop_case: dict) -> None:
    images, _ = our_reconstruction(
        loop_case["model"], tensor(loop_case["input/z0"]), tensor(loop_case["input/noise"]),
        int(loop_case["config/t_start"]), torch.zeros(2), torch.zeros(2), use_ads=False,
    )
    assert max_diff(images, tensor(loop_case["output/plain_images"])) <= TOLERANCE


@pytest.mark.parametrize("case", ["trigger", "reanchor"])
def test_ads_reconstruction_matches_official_float32(loop_case: dict, case: str) -> None:
    """SAFF at each image's own step (trigger) and re-anchoring below t_min (reanchor)."""
    tau = torch.full((2,), float(loop_case[f"config/tau_{case}"]))
    images, stop_step = our_reconstruction(
        loop_case["model"], tensor(loop_case["input/z0"]), tensor(loop_case["input/noise"]),
        int(loop_case["config/t_start"]), tau, torch.full((2,), int(loop_case["config/t_min"])), use_ads=True,
    )
    assert stop_step.tolist() == loop_case[f"output/{case}_fp32/stop_step"].tolist()
    assert max_diff(images, tensor(loop_case[f"output/{case}_fp32/images"])) <= TOLERANCE


def test_ads_reconstruction_as_released_differs_only_by_its_float16_distance(loop_case: dict) -> None:
    """The released step() casts the ADS tokens to float16: same decisions, images within 1e-3."""
    tau = torch.full((2,), float(loop_case["config/tau_trigger"]))
    images, stop_step = our_reconstruction(
        loop_case["model"], tensor(loop_case["input/z0"]), tensor(loop_case["input/noise"]),
        int(loop_case["config/t_start"]), tau, torch.full((2,), int(loop_case["config/t_min"])), use_ads=True,
    )
    assert stop_step.tolist() == loop_case["output/trigger_released/stop_step"].tolist()
    assert max_diff(images, tensor(loop_case["output/trigger_released/images"])) <= 1e-3


@pytest.mark.parametrize("variant", ["fp32", "released"])
@pytest.mark.parametrize("min_step", [300, 200])
def test_single_ads_step_matches_official(variant: str, min_step: int) -> None:
    """Image 0 exceeds tau (SAFF); images 1-2 do not: re-anchored when t < min_step, else continue."""
    data = load("ads_step.npz")
    tokens_in, tokens_gen = tensor(data["input/tokens_in"])[:, 1:], tensor(data["input/tokens_gen"])[:, 1:]
    n = tokens_in.shape[0]
    ours = our_single_ads_step(
        tensor(data["input/z0"]), tensor(data["input/noise"]), tensor(data["input/eps"]),
        int(data["config/start_level"]), int(data["config/t"]), torch.full((n,), float(data["config/tau"])),
        torch.full((n,), min_step), tokens_in, tokens_gen, int(data["config/top_k"]),
    )
    official = {name: tensor(data[f"output/{variant}_min{min_step}/{name}"])
                for name in ("prev_sample", "still_searching", "stop_step", "score")}
    stopped = ~official["still_searching"].bool()
    assert ours["still_searching"].tolist() == official["still_searching"].bool().tolist()
    assert ours["stop_step"][stopped].tolist() == official["stop_step"][stopped].tolist()
    # released: the score and the SAFF mask come from float16 tokens
    tolerance = TOLERANCE if variant == "fp32" else 1e-3
    assert max_diff(ours["score"][stopped], official["score"][stopped]) <= tolerance
    assert max_diff(ours["prev_sample"], official["prev_sample"]) <= tolerance


# -------------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def scoring_data() -> dict[str, np.ndarray]:
    return load("scoring.npz")


@pytest.fixture(scope="module")
def scoring_model(scoring_data: dict[str, np.ndarray]) -> GLADModel:
    layers = scoring_data["bottle/tokens_in"].shape[1]
    return our_scoring_model(layers, int(scoring_data["config/dino_resolution"]),
                             float(scoring_data["config/blur_sigma"]), int(scoring_data["config/top_k"]))


def scoring_inputs(data: dict[str, np.ndarray], case: str) -> dict:
    return dict(
        tokens_in=tensor(data[f"{case}/tokens_in"])[:, :, 1:],
        tokens_rec=tensor(data[f"{case}/tokens_rec"])[:, :, 1:],
        images=tensor(data[f"{case}/images"]), recon=tensor(data[f"{case}/recon"]),
        object_mask=tensor(data[f"{case}/object_mask"]), bidirectional=bool(data[f"{case}/bidirectional"]),
        pixel_l1_weight=float(data[f"{case}/v"]),
    )


@pytest.mark.parametrize("case", [
    "bottle",  # blocks 1-4 (official: 3, 6, 9, 12), one direction, object mask
    "transistor",  # + the reverse nearest-neighbour direction
    "pixel_l1",  # + v * max(map) / max(D) * D, D from the ImageNet-normalised images (one image, twice)
])
def test_anomaly_map_and_score_match_official(scoring_model: GLADModel, scoring_data: dict,
                                              case: str) -> None:
    data = scoring_data
    maps, scores = our_anomaly_map_and_score(scoring_model, **scoring_inputs(data, case))
    assert max_diff(maps, tensor(data[f"{case}/maps"])) <= TOLERANCE
    assert max_diff(scores, tensor(data[f"{case}/scores"])) <= TOLERANCE
