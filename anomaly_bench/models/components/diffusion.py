"""Diffusers loading helpers: one code path for Stable Diffusion and for tiny random-init models.

``load_diffusion(source)`` returns ``DiffusionParts`` (denoising UNet, latent codec, fixed prompt
embeddings, the training noise schedule). ``source`` is

* a hub id (``CompVis/stable-diffusion-v1-4``) or a local folder in the diffusers layout
  (``unet/``, ``vae/``, ``text_encoder/`` + ``tokenizer/`` or a ``prompt_embeds.pt`` file);
  loaded with ``from_pretrained``; offline or missing weights raise ``DiffusionLoadError`` naming
  what was looked for;
* ``"tiny"``: a small random-init ``UNet2DConditionModel`` on pixels (identity codec), on pixels
  folded into channels (``space_to_depth=f``: an exactly invertible f-times smaller grid) or on a
  tiny random ``AutoencoderKL`` (``tiny_vae=True``), for tests and CPU demos;
* ``"sd-v1-random"``: the Stable Diffusion v1 architecture with random weights, for speed and
  memory benchmarks where the real weights cannot be downloaded.

The text encoder is used once, to embed the fixed prompt (and the empty prompt for classifier-free
guidance), and then dropped: only the two embeddings are kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_bench.models.components.weights import (
    WeightsStatus, WeightsUnavailableError, diffusers_status, hf_cache_dir, part_name, resolve_weights,
)

log = logging.getLogger(__name__)

SD_V1_HUB_ID = "CompVis/stable-diffusion-v1-4"
PROMPT_EMBEDS_FILE = "prompt_embeds.pt"


class DiffusionLoadError(WeightsUnavailableError):
    """A diffusion component could not be loaded (offline, wrong folder, missing package)."""


# ------------------------------------------------------------------------------ noise schedule
def scaled_linear_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000
) -> Tensor:
    """ᾱ_t of Stable Diffusion's "scaled_linear" schedule (betas linear in sqrt space), float32 [T]."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


# ------------------------------------------------------------------------------- latent codecs
class IdentityCodec(nn.Module):
    """Latent = pixels in [-1, 1]: the 'no VAE' configuration."""

    scaling_factor = 1.0

    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents


class VAECodec(nn.Module):
    """A frozen ``AutoencoderKL``; latents scaled by its ``scaling_factor`` (0.18215 for SD v1)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))

    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        latents = posterior.sample(generator=generator) if sample else posterior.mean
        return latents * self.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling_factor).sample


class SpaceToDepthCodec(nn.Module):
    """Latent = pixels folded into channels: each f x f block of pixels becomes 3·f² channels of
    one latent cell (``pixel_unshuffle``); decoding unfolds them (``pixel_shuffle``).

    Exactly invertible, so a reconstruction keeps every pixel of the image, while the UNet works on
    a grid f times smaller, as Stable Diffusion's UNet works on its VAE's 8-times smaller latents.
    """

    scaling_factor = 1.0

    def __init__(self, factor: int) -> None:
        super().__init__()
        if int(factor) < 2:
            raise ValueError(f"space_to_depth must be >= 2 for a folding codec, got {factor}")
        self.factor = int(factor)

    def encode(self, images: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        h, w = images.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"space_to_depth={self.factor} needs image sides divisible by {self.factor}, "
                             f"got {h}x{w}")
        return F.pixel_unshuffle(images, self.factor)

    def decode(self, latents: Tensor) -> Tensor:
        return F.pixel_shuffle(latents, self.factor)


@dataclass
class DiffusionParts:
    unet: nn.Module
    codec: nn.Module
    prompt_embeds: Tensor  # [1, L, D] conditional ("a photo of sks")
    negative_prompt_embeds: Tensor  # [1, L, D] unconditional (empty prompt), for CFG
    alphas_cumprod: Tensor  # [T]


# ------------------------------------------------------------------------------- tiny configs
def tiny_unet_config(
    channels: int = 3, sample_size: int = 32, width: int = 32, cross_attention_dim: int = 32
) -> dict[str, Any]:
    """A two-level conditional UNet with one cross-attention level (~0.5 M parameters)."""
    return dict(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        layers_per_block=1,
        block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def tiny_vae_config(latent_channels: int = 4, sample_size: int = 32) -> dict[str, Any]:
    """A tiny ``AutoencoderKL`` that downsamples by 2."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=sample_size,
    )


def sd_v1_unet_config() -> dict[str, Any]:
    """Stable Diffusion v1-4's UNet architecture (random weights)."""
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    )


def sd_v1_vae_config() -> dict[str, Any]:
    """Stable Diffusion v1-4's VAE architecture (random weights)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )


def _random_prompt_embeds(tokens: int, dim: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Fixed stand-ins for text embeddings of random-init models (no text encoder exists)."""
    generator = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, tokens, dim, generator=generator)
    uncond = torch.randn(1, tokens, dim, generator=generator)
    return cond, uncond


def build_random(
    preset: str, image_size: int = 32, tiny_vae: bool = False, unet_width: int = 32, space_to_depth: int = 1
) -> DiffusionParts:
    """Random-init parts: ``tiny`` (tests, demo) or ``sd-v1-random`` (benchmarks).

    ``space_to_depth`` > 1 (``tiny`` without ``tiny_vae``) folds each f x f pixel block into channels
    (``SpaceToDepthCodec``): the UNet runs on an f-times smaller grid, reconstructions keep every pixel.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if space_to_depth != 1 and (preset != "tiny" or tiny_vae):
        raise ValueError(f"space_to_depth={space_to_depth} needs diffusion 'tiny' without tiny_vae")
    if preset == "tiny":
        if tiny_vae:
            codec: nn.Module = VAECodec(AutoencoderKL(**tiny_vae_config(4, image_size)))
            channels, latent_size = 4, image_size // 2
        elif space_to_depth > 1:
            codec = SpaceToDepthCodec(space_to_depth)
            channels, latent_size = 3 * space_to_depth**2, image_size // space_to_depth
        else:
            codec, channels, latent_size = IdentityCodec(), 3, image_size
        if unet_width < channels:
            # every path through the UNet starts at conv_in's unet_width channels, so the noise it must
            # predict (one value per latent channel) cannot pass through: the ε loss floors at about
            # 1 - width/channels (GLAD's 128 px demo: width 32 on 48 channels floored at 0.38)
            log.warning("tiny UNet: unet_width %d is narrower than its %d latent channels (space_to_depth %d); "
                        "it cannot predict the noise of every channel. Use unet_width >= %d",
                        unet_width, channels, space_to_depth, channels)
        unet_cfg = tiny_unet_config(channels, latent_size, unet_width, cross_attention_dim=32)
    elif preset == "sd-v1-random":
        codec = VAECodec(AutoencoderKL(**sd_v1_vae_config()))
        unet_cfg = sd_v1_unet_config()
    else:
        raise ValueError(f"unknown random diffusion preset {preset!r}; expected 'tiny' or 'sd-v1-random'")
    unet = UNet2DConditionModel(**unet_cfg)
    cond, uncond = _random_prompt_embeds(8 if preset == "tiny" else 77, unet_cfg["cross_attention_dim"])
    return DiffusionParts(unet, codec, cond, uncond, scaled_linear_alphas_cumprod())


# --------------------------------------------------------------------------------- pretrained
DIFFUSION_SETTING = "model.init_args.diffusion"


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


def _check_source(source: str) -> None:
    if not Path(source).exists() and ("/" not in source or source.startswith((".", "/", "~"))):
        raise DiffusionLoadError(
            f"diffusion source {source!r} is neither an existing folder nor a hub id (owner/name); set "
            f"{DIFFUSION_SETTING} to a hub id such as {SD_V1_HUB_ID!r}, a local diffusers folder, or 'tiny'"
        )


def _from_pretrained(cls: Any, source: str, subfolder: str, what: str, status: WeightsStatus,
                     local_only: bool, **kwargs: Any) -> Any:
    if not Path(source).exists():
        # the same cache the availability check looked in; no hub request when everything is cached
        kwargs.update(cache_dir=str(hf_cache_dir()), local_files_only=local_only)
    try:
        return cls.from_pretrained(source, subfolder=subfolder, **kwargs)
    except Exception as err:  # hub, file-system and config errors all mean "not loadable here"
        raise status.error(f"loading the {what} failed: {_first_line(err)}", DiffusionLoadError) from err


def encode_prompts(source: str, prompt: str, negative_prompt: str = "", status: WeightsStatus | None = None,
                   local_only: bool = False) -> tuple[Tensor, Tensor]:
    """Text embeddings of ``prompt`` and ``negative_prompt``: from ``prompt_embeds.pt`` in a local
    folder when present, else through the CLIP tokenizer + text encoder (needs ``transformers``).

    Args:
        source: a local diffusers folder or a hub id.
        prompt: the conditional prompt.
        negative_prompt: the unconditional prompt (classifier-free guidance).
        status: the model's ``WeightsStatus`` (None: checked here for the tokenizer and text encoder).
        local_only: read the hub cache only (everything was found there).
    """
    embeds_file = Path(source) / PROMPT_EMBEDS_FILE
    if embeds_file.is_file():
        saved = torch.load(embeds_file, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or not {"cond", "uncond"} <= saved.keys():
            raise DiffusionLoadError(f"{embeds_file} must hold a dict with tensors 'cond' and 'uncond' [1, L, D]")
        return saved["cond"].float(), saved["uncond"].float()
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise DiffusionLoadError(
            f"embedding the prompt for {source!r} needs the 'transformers' package (pip install transformers), "
            f"or set {DIFFUSION_SETTING} to a local model folder with a {PROMPT_EMBEDS_FILE} file "
            "(dict cond/uncond)"
        ) from err
    if status is None:
        status = diffusers_status(source, ["tokenizer", "text encoder"], part_name("text encoder", source),
                                  DIFFUSION_SETTING)
        local_only = resolve_weights(status, DiffusionLoadError) is not None
    tokenizer = _from_pretrained(CLIPTokenizer, source, "tokenizer", "tokenizer", status, local_only)
    text_encoder = _from_pretrained(CLIPTextModel, source, "text_encoder", "text encoder", status, local_only)
    text_encoder.eval()
    with torch.no_grad():
        embeds = []
        for text in (prompt, negative_prompt):
            tokens = tokenizer(
                text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            )
            embeds.append(text_encoder(tokens.input_ids)[0].float())
    return embeds[0], embeds[1]


def diffusion_components(source: str, use_vae: bool = True) -> list[str]:
    """The ``DIFFUSERS_COMPONENTS`` that ``load_diffusion(source, use_vae=...)`` reads.

    Args:
        source: a local diffusers folder or a hub id.
        use_vae: whether the VAE is loaded.
    """
    needs_text = not (Path(source) / PROMPT_EMBEDS_FILE).is_file()
    return ["UNet"] + (["VAE"] if use_vae else []) + (["tokenizer", "text encoder"] if needs_text else [])


def load_diffusion(
    source: str = SD_V1_HUB_ID,
    prompt: str = "a photo of sks",
    negative_prompt: str = "",
    use_vae: bool = True,
    image_size: int = 32,
    tiny_vae: bool = False,
    unet_width: int = 32,
    space_to_depth: int = 1,
) -> DiffusionParts:
    """Load or build the UNet, latent codec, prompt embeddings and noise schedule (see module doc).

    A hub id is read from the local hub cache when every component is there (no network), else
    downloaded when the hub can be reached; otherwise ``DiffusionLoadError`` (a
    ``WeightsUnavailableError``) says at once what is missing and which setting gives a local folder.
    """
    if source in ("tiny", "sd-v1-random"):
        return build_random(source, image_size=image_size, tiny_vae=tiny_vae, unet_width=unet_width,
                            space_to_depth=space_to_depth)
    if space_to_depth != 1:
        raise ValueError(f"space_to_depth={space_to_depth} needs diffusion 'tiny' (got {source!r})")
    _check_source(source)
    status = diffusers_status(source, diffusion_components(source, use_vae),
                              part_name("diffusion model", source), DIFFUSION_SETTING)
    local_only = resolve_weights(status, DiffusionLoadError) is not None
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = _from_pretrained(UNet2DConditionModel, source, "unet", "UNet", status, local_only)
    codec: nn.Module = (VAECodec(_from_pretrained(AutoencoderKL, source, "vae", "VAE", status, local_only))
                        if use_vae else IdentityCodec())
    cond, uncond = encode_prompts(source, prompt, negative_prompt, status, local_only)
    alphas_cumprod = scaled_linear_alphas_cumprod()
    scheduler_file = Path(source) / "scheduler" / "scheduler_config.json"
    if scheduler_file.is_file():
        import json

        cfg = json.loads(scheduler_file.read_text())
        if cfg.get("beta_schedule", "scaled_linear") != "scaled_linear":
            raise DiffusionLoadError(f"{scheduler_file}: only the 'scaled_linear' beta schedule is supported")
        alphas_cumprod = scaled_linear_alphas_cumprod(
            cfg.get("beta_start", 0.00085), cfg.get("beta_end", 0.012), cfg.get("num_train_timesteps", 1000)
        )
    return DiffusionParts(unet, codec, cond, uncond, alphas_cumprod)


def save_diffusion(parts: DiffusionParts, folder: str | Path) -> Path:
    """Write parts in the layout ``load_diffusion`` reads (used to ship a fine-tuned UNet offline)."""
    folder = Path(folder)
    parts.unet.save_pretrained(folder / "unet")
    if isinstance(parts.codec, VAECodec):
        parts.codec.vae.save_pretrained(folder / "vae")
    torch.save({"cond": parts.prompt_embeds, "uncond": parts.negative_prompt_embeds}, folder / PROMPT_EMBEDS_FILE)
    return folder
