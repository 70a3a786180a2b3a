"""Pretrained weights: where each part comes from, whether it is here, and one clear error when not.

A pretrained part (a timm backbone, DINO, a diffusers model) is looked for in this order:

1. the local file or folder the config names (``weights_path``, ``dino_weights``, ``diffusion``);
2. the local caches: the Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``) and, for timm weights published by URL, ``$TORCH_HOME/hub/checkpoints``;
3. the hub, only when it can be reached: ``HF_HUB_OFFLINE=1`` means no, and otherwise one short
   HEAD request (``PROBE_TIMEOUT_S``, through the configured proxy) decides, so a machine without
   network fails in seconds instead of waiting for the hub client's timeouts and retries.

When none of these works the loader raises ``WeightsUnavailableError`` with one line that names
the part (``CRAD backbone tf_efficientnet_b4.aa_in1k``), where it looked, and the one config key
that supplies a local copy. ``anomaly-bench weights --config X`` uses the same probes to list what
a config will load.
"""

from __future__ import annotations

import inspect
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PROBE_TIMEOUT_S = 3.0
OFFLINE_VALUES = frozenset({"1", "on", "yes", "true"})
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
TIMM_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHTS_COMMAND_HINT = "`anomaly-bench weights --config <config>` lists every pretrained part of a config"


class WeightsUnavailableError(FileNotFoundError):
    """A pretrained part cannot be loaded here: not at the given local path, not in the local
    cache, and the hub cannot be reached (or the download failed). The message is one line."""


@dataclass
class WeightsStatus:
    """Where one pretrained part would come from and whether it can be loaded without network.

    Attributes:
        part: what the part is, e.g. ``"CRAD backbone tf_efficientnet_b4.aa_in1k"``.
        source: where it comes from, e.g. ``"hub repo timm/tf_efficientnet_b4.aa_in1k"`` or
            ``"local file /w/b4.pth"``.
        setting: the config key that supplies a local copy, e.g. ``"model.init_args.weights_path"``.
        expects: what that key must point at.
        local: the local file or folder to load from; None when it is not here.
        looked: every place that was searched, in order.
        missing: what was not found (files or folders).
        user_path: True when the config named a local path (then the hub is never asked).
    """

    part: str
    source: str
    setting: str
    expects: str
    local: Path | None = None
    looked: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    user_path: bool = False

    @property
    def available(self) -> bool:
        """True when the part can be loaded right now without network."""
        return self.local is not None and not self.missing

    def message(self, reason: str) -> str:
        """The one-line explanation: part, reason, where it looked, the setting to use.

        Args:
            reason: why the part cannot be loaded, in a few words.
        """
        looked = "; ".join(self.looked) if self.looked else "nowhere"
        return (
            f"{self.part}: pretrained weights not available ({reason}); looked in: {looked}; "
            f"to use a local copy set {self.setting} to {self.expects}"
            + ("" if self.user_path else ", or run once with network access to fill the cache")
            + f" ({WEIGHTS_COMMAND_HINT})"
        )

    def error(
        self, reason: str, error_type: type[WeightsUnavailableError] = WeightsUnavailableError
    ) -> WeightsUnavailableError:
        """``error_type(self.message(reason))``.

        Args:
            reason: why the part cannot be loaded, in a few words.
            error_type: ``WeightsUnavailableError`` or a subclass (a loader's own error type).
        """
        return error_type(self.message(reason))


# ---------------------------------------------------------------------------------- where to look
def env_flag(name: str) -> bool:
    """True when an environment variable is set to 1 / on / yes / true.

    Args:
        name: the variable, e.g. ``HF_HUB_OFFLINE``.
    """
    return os.environ.get(name, "").strip().lower() in OFFLINE_VALUES


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time (as the hub does
    at import time): ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``,
    ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def torch_checkpoint_dir() -> Path:
    """Where ``torch.hub`` (and timm's URL route) keeps downloaded checkpoints."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_endpoint() -> str:
    """The hub's base URL (``HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_HUB_ENDPOINT).rstrip("/")


def cached_hub_file(repo_id: str, filename: str) -> Path | None:
    """The cached copy of a hub file in ``hf_cache_dir()``, or None.

    Args:
        repo_id: ``owner/name``, optionally ``owner/name@revision``.
        filename: the path inside the repository, e.g. ``unet/config.json``.
    """
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    try:
        found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir(), revision=revision or None)
    except Exception:  # a malformed repo id is simply "not cached"; the loader reports it
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


# ------------------------------------------------------------------------------------ reachability
def hub_unreachable_reason(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub answers; otherwise why not, in a few words.

    ``HF_HUB_OFFLINE=1`` answers at once. Otherwise one HEAD request to the hub's endpoint (through
    the proxy the environment names, as every download would go), bounded by ``timeout_s`` in
    total, name resolution included. An HTTP answer below 400 counts as reachable; a refused or
    silent connection, a failed name lookup or a proxy's error page do not. A network that accepts
    connections but never answers (some firewalls) is therefore caught too, in seconds.

    Args:
        timeout_s: the most seconds the probe may take.
    """
    if env_flag("HF_HUB_OFFLINE"):
        return "HF_HUB_OFFLINE=1 is set"
    endpoint = hub_endpoint()
    error = _probe(endpoint, timeout_s)
    if error is None:
        return None
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or endpoint, url.port or (443 if url.scheme == "https" else 80)
    proxy = _proxy_for(url.scheme, host)
    via = f" through the proxy {proxy}" if proxy else ""
    return f"{host}:{port} cannot be reached{via}: {error}"


def _proxy_for(scheme: str, host: str) -> str | None:
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(scheme) or proxies.get("all")


_REACHED: set[str] = set()  # endpoints that answered once in this process


def _probe(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers a HEAD request with a status below 400 within ``timeout_s``."""
    if url in _REACHED:
        return None
    outcome: list[str | None] = []

    def ask() -> None:
        request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "anomaly-bench"})
        try:
            with urllib.request.build_opener().open(
                request, timeout=timeout_s
            ) as response:  # env proxies now
                outcome.append(None if response.status < 400 else f"HTTP {response.status}")
        except urllib.error.HTTPError as err:
            outcome.append(f"HTTP {err.code} {err.reason}")
        except Exception as err:  # URLError, timeouts, TLS and protocol errors: all mean "not usable"
            reason = getattr(err, "reason", err)
            outcome.append(f"{type(reason).__name__}: {reason}")

    # a thread bounds name resolution too (getaddrinfo ignores socket timeouts)
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout_s)
    result = outcome[0] if outcome else f"no answer within {timeout_s:g} s"
    if result is None:
        _REACHED.add(url)
    return result


def resolve_weights(
    status: WeightsStatus, error_type: type[WeightsUnavailableError] = WeightsUnavailableError
) -> Path | None:
    """The local file or folder to load ``status``'s part from, or None to download it now.

    Raises ``error_type`` (one line, see ``WeightsStatus.message``) when the part is not here and
    cannot be downloaded: a local path that does not exist, or not cached and the hub unreachable.

    Args:
        status: the part's ``WeightsStatus``.
        error_type: ``WeightsUnavailableError`` or a subclass (a loader's own error type).
    """
    if status.available:
        return status.local
    if status.user_path:
        raise status.error(f"not found: {', '.join(status.missing)}", error_type)
    reason = hub_unreachable_reason()
    if reason is not None:
        what = f"{', '.join(status.missing)} not" if status.missing else "not"
        raise status.error(f"{what} in the local cache and {reason}", error_type)
    return None


# -------------------------------------------------------------------------------------- the parts
def calling_model_name() -> str:
    """Class name of the AnomalyModule whose constructor is building a part ("" when none).

    The loaders sit below the Lightning modules and are not told who calls them; the message is
    clearer with "CRAD backbone ..." than with "backbone ...", so the stack is asked.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
            if owner is not None and any(c.__name__ == "AnomalyModule" for c in type(owner).__mro__[1:]):
                return type(owner).__name__
            frame = frame.f_back
    finally:
        del frame
    return ""


def part_name(kind: str, name: str, owner: str | None = None) -> str:
    """``"<owner> <kind> <name>"``, e.g. ``"CRAD backbone tf_efficientnet_b4.aa_in1k"``.

    Args:
        kind: what the part is (``backbone``, ``DINO``, ``diffusion model``).
        name: the model name or hub id.
        owner: the method's class name; None: found on the stack (``calling_model_name``).
    """
    owner = calling_model_name() if owner is None else owner
    return " ".join(p for p in (owner, kind, name) if p)


def timm_status(name: str, weights_path: str | None, part: str, setting: str) -> WeightsStatus:
    """Where a timm model's pretrained weights are: the local file, the hub cache, the torch-hub
    checkpoint folder (timm's URL route).

    Args:
        name: the timm model name with its pretrained tag, e.g. ``tf_efficientnet_b4.aa_in1k``.
        weights_path: the local file the config names (None: the caches).
        part: the part's name for messages (``part_name``).
        setting: the config key of the local file, e.g. ``model.init_args.weights_path``.
    """
    expects = f"a local timm state-dict file (.safetensors / .pth / .bin) of {name}"
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        found = path.is_file()
        return WeightsStatus(
            part,
            f"local file {path}",
            setting,
            expects,
            path if found else None,
            [f"local file {path}"],
            [] if found else [str(path)],
            user_path=True,
        )
    hub_id, url = _timm_sources(name)
    looked: list[str] = []
    local = None
    if hub_id:
        looked.append(f"hub repo {hub_id} in the cache folder {hf_cache_dir()}")
        local = next((p for p in map(lambda f: cached_hub_file(hub_id, f), TIMM_HUB_FILES) if p), None)
    if url and local is None:
        checkpoint = torch_checkpoint_dir() / Path(urllib.parse.urlsplit(url).path).name
        looked.append(f"{checkpoint}")
        local = checkpoint if checkpoint.is_file() else None
    source = f"hub repo {hub_id}" if hub_id else (f"URL {url}" if url else f"timm name {name}")
    return WeightsStatus(part, source, setting, expects, local, looked)


def _timm_sources(name: str) -> tuple[str | None, str | None]:
    """(hub id, URL) that timm associates with ``name`` (None, None for unknown names)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # unknown architecture: timm.create_model will say so
        cfg = None
    if cfg is None:
        return None, None
    return getattr(cfg, "hf_hub_id", None) or None, getattr(cfg, "url", None) or None


# diffusers components: label -> (subfolder, files that must all exist, weight files of which one must)
DIFFUSERS_COMPONENTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "UNet": (
        "unet",
        ("config.json",),
        ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    ),
    "VAE": ("vae", ("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "tokenizer": ("tokenizer", ("vocab.json", "merges.txt"), ()),
    "text encoder": ("text_encoder", ("config.json",), ("model.safetensors", "pytorch_model.bin")),
}
DIFFUSERS_EXPECTS = (
    "a local diffusers folder (unet/, vae/, text_encoder/ + tokenizer/ or a prompt_embeds.pt "
    "file, scheduler/)"
)


def diffusers_status(source: str, components: list[str], part: str, setting: str) -> WeightsStatus:
    """Whether every listed component of a diffusers model is here: in the local folder, or in the
    hub cache for a hub id.

    Args:
        source: a local diffusers folder or a hub id (``CompVis/stable-diffusion-v1-4``).
        components: keys of ``DIFFUSERS_COMPONENTS`` that will be loaded.
        part: the part's name for messages (``part_name``).
        setting: the config key of the local folder, e.g. ``model.init_args.diffusion``.
    """
    folder = Path(source).expanduser()
    if folder.exists():
        missing = [
            f"{label} ({folder / DIFFUSERS_COMPONENTS[label][0]})"
            for label in components
            if not (folder / DIFFUSERS_COMPONENTS[label][0]).is_dir()
        ]
        return WeightsStatus(
            part,
            f"local folder {folder}",
            setting,
            DIFFUSERS_EXPECTS,
            folder,
            [f"local folder {folder}"],
            missing,
            user_path=True,
        )
    missing = []
    for label in components:
        subfolder, required, weights = DIFFUSERS_COMPONENTS[label]
        files_here = all(cached_hub_file(source, f"{subfolder}/{f}") for f in required)
        weights_here = not weights or any(cached_hub_file(source, f"{subfolder}/{f}") for f in weights)
        if not (files_here and weights_here):
            missing.append(label)
    looked = [f"hub repo {source} in the cache folder {hf_cache_dir()}"]
    return WeightsStatus(
        part,
        f"hub repo {source}",
        setting,
        DIFFUSERS_EXPECTS,
        None if missing else hf_cache_dir(),
        looked,
        missing,
    )
