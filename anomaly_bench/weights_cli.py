"""``anomaly-bench weights --config X``: what pretrained parts a config loads and whether each is here.

    anomaly-bench weights --config configs/glad_mvtec.yaml
    anomaly-bench weights --config configs/crad_mvtec.yaml --config my_overrides.yaml

Reads the YAML config(s) (merged left to right, like ``fit``), takes the model's class and its
arguments (the config's values over the constructor's defaults) and, for each pretrained part,
prints where it comes from, whether it can be loaded offline right now (local path or local cache),
and the config key that supplies a local copy. The model is not built and the network is not used,
so this answers in seconds. Exit status: 0 everything is here (or nothing pretrained is needed),
1 some part would need a download, 2 the config cannot be read.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from anomaly_bench.models.components.weights import (
    WeightsStatus,
    diffusers_status,
    env_flag,
    part_name,
    timm_status,
)

RANDOM_BACKBONES = ("tiny", "tiny_signed")
RANDOM_DIFFUSION = ("tiny", "sd-v1-random")


class ConfigReadError(ValueError):
    """A config file is missing, not YAML, or has no usable ``model`` section."""


def read_configs(paths: Sequence[str]) -> dict[str, Any]:
    """The YAML files merged left to right (nested mappings merge, other values are replaced).

    Args:
        paths: the config files, in the order given on the command line.
    """
    merged: dict[str, Any] = {}
    from anomaly_bench.shipped import resolve_config_path

    for path in paths:
        file = resolve_config_path(path) or Path(path)  # a shipped name (demo/crad, crad_mvtec) works too
        try:
            loaded = yaml.safe_load(file.read_text())
        except OSError as err:
            raise ConfigReadError(f"cannot read config {file}: {err.strerror or err}") from None
        except UnicodeDecodeError:
            raise ConfigReadError(f"config {file} is not a text (YAML) file; a checkpoint? "
                                  "pass the run's config.yaml") from None
        except yaml.YAMLError as err:
            raise ConfigReadError(f"config {file} is not valid YAML: {err}") from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise ConfigReadError(
                f"config {file}: expected a mapping at the top level, got {type(loaded).__name__}"
            )
        merged = _merge(merged, loaded)
    return merged


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def model_arguments(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(model class name, its arguments: the config's ``init_args`` over the constructor defaults).

    Args:
        config: the merged config (``read_configs``).
    """
    spec = config.get("model")
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or not spec.get("class_path"):
        raise ConfigReadError("the config has no model.class_path (e.g. anomaly_bench.models.CRAD)")
    class_path = str(spec["class_path"])
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or "anomaly_bench.models"), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigReadError(f"model.class_path {class_path!r} cannot be imported: {err}") from None
    arguments = _defaults(cls)
    arguments.update(spec.get("init_args") or {})
    return class_name, arguments


def _defaults(cls: type) -> dict[str, Any]:
    """Every option's default, the ones a Lightning class forwards to its torch model through
    ``**model_options`` included (resolved the way the CLI resolves them)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "model", fail_untyped=False)
    try:
        defaults = parser.get_defaults().get("model")
        return dict(defaults.as_dict()) if defaults is not None else {}
    except Exception:  # a class the parser cannot read: its own signature is the fallback
        return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}


def pretrained_parts(owner: str, args: dict[str, Any]) -> list[WeightsStatus]:
    """The pretrained parts that a model with these arguments loads (by the argument names the
    methods share: ``backbone`` / ``pretrained`` / ``weights_path``, ``diffusion`` / ``use_vae``,
    ``dino`` / ``dino_weights`` / ``dino_pretrained``).

    Args:
        owner: the model's class name (for the parts' names).
        args: the model's arguments (``model_arguments``).
    """
    parts: list[WeightsStatus] = []
    backbone = args.get("backbone")
    if (
        isinstance(backbone, str)
        and backbone not in RANDOM_BACKBONES
        and (args.get("pretrained", True) or args.get("weights_path"))
    ):
        parts.append(
            timm_status(
                backbone,
                args.get("weights_path"),
                part_name("backbone", backbone, owner),
                "model.init_args.weights_path",
            )
        )
    diffusion = args.get("diffusion")
    if isinstance(diffusion, str) and diffusion not in RANDOM_DIFFUSION:
        from anomaly_bench.models.components.diffusion import diffusion_components

        parts.append(
            diffusers_status(
                diffusion,
                diffusion_components(diffusion, bool(args.get("use_vae", True))),
                part_name("diffusion model", diffusion, owner),
                "model.init_args.diffusion",
            )
        )
    dino = args.get("dino")
    if isinstance(dino, str) and dino != "tiny" and args.get("dino_pretrained", True):
        parts.append(
            timm_status(
                dino, args.get("dino_weights"), part_name("DINO", dino, owner), "model.init_args.dino_weights"
            )
        )
    scoring_dino = args.get("scoring_dino_weights")
    if isinstance(scoring_dino, str) and scoring_dino:
        # a fine-tuned DINO for the final map only (GLAD on VisA): a local file, never the hub
        parts.append(
            timm_status(
                str(dino), scoring_dino, part_name("fine-tuned scoring DINO", str(dino), owner),
                "model.init_args.scoring_dino_weights",
            )
        )
    return parts


def _needs_text_encoder(args: dict[str, Any]) -> bool:
    diffusion = args.get("diffusion")
    if not isinstance(diffusion, str) or diffusion in RANDOM_DIFFUSION:
        return False
    from anomaly_bench.models.components.diffusion import diffusion_components

    return "text encoder" in diffusion_components(diffusion, bool(args.get("use_vae", True)))


def texture_note(owner: str, args: dict[str, Any]) -> str | None:
    """A line about ``texture_dir`` (anomaly textures, e.g. DTD) for models that take one.

    Args:
        owner: the model's class name.
        args: the model's arguments.
    """
    if "texture_dir" not in args:
        return None
    texture_dir = args.get("texture_dir")
    if not texture_dir:
        return (
            f"{owner} textures: texture_dir is not set, so synthetic anomalies use the image's own shuffled "
            "tiles; the official code uses DTD: `anomaly-bench download DTD --root data/dtd`, then "
            "model.init_args.texture_dir: data/dtd/images"
        )
    here = Path(texture_dir).expanduser().is_dir()
    if here:
        return f"{owner} textures: texture_dir {texture_dir} (here)"
    return (f"{owner} textures: texture_dir {texture_dir} (MISSING: `anomaly-bench download DTD --root data/dtd` "
            "fetches the official DTD textures)")


def describe(status: WeightsStatus) -> str:
    """A few indented lines about one part.

    Args:
        status: the part's ``WeightsStatus``.
    """
    where = "; ".join(status.looked) or "nowhere"
    if status.available:
        offline = f"yes ({status.local})"
    elif status.missing:
        offline = f"NO, missing {', '.join(status.missing)} (looked in: {where})"
    else:
        offline = f"NO (looked in: {where})"
    return (
        f"{status.part}\n"
        f"  from:               {status.source}\n"
        f"  available offline:  {offline}\n"
        f"  local copy:         {status.setting} = {status.expects}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``anomaly-bench weights`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="anomaly-bench weights",
        description=(
            "List the pretrained parts a config loads (timm backbones, Stable Diffusion, DINO), where "
            "each comes from, whether it is available offline now (local path or local cache), and the "
            "config key that supplies a local copy. Builds nothing and uses no network. Exit status: 0 "
            "all here, 1 something would be downloaded, 2 unreadable config."
        ),
    )
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help="a YAML config as given to fit; repeat to merge several, left to right",
    )
    return parser


def weights_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomaly-bench weights``; returns the exit status (0, 1 or 2, see ``--help``).

    Args:
        argv: the arguments after ``weights`` (None: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        owner, arguments = model_arguments(read_configs(args.config))
    except ConfigReadError as err:
        print(f"anomaly-bench weights: error: {err}", file=sys.stderr)
        return 2
    parts = pretrained_parts(owner, arguments)
    lines = [f"model: {owner} ({', '.join(args.config)})"]
    if env_flag("HF_HUB_OFFLINE"):
        lines.append("HF_HUB_OFFLINE=1: only local paths and the local caches will be used")
    if not parts:
        lines.append(f"{owner}: no pretrained parts (nothing to download)")
    lines += [describe(status) for status in parts]
    if _needs_text_encoder(arguments) and importlib.util.find_spec("transformers") is None:
        lines.append(
            "note: embedding the prompt needs the 'transformers' package (not installed here) unless "
            "the local diffusion folder has a prompt_embeds.pt file"
        )
    note = texture_note(owner, arguments)
    if note:
        lines.append(note)
    print("\n".join(lines))
    return 0 if all(status.available for status in parts) else 1
