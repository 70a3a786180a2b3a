"""Pretrained weights fail clearly and fast offline, load from the local caches, and
``anomaly-bench weights`` lists them. Every test uses a throwaway HF_HOME / TORCH_HOME, so a warm
cache on the machine cannot hide a failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from anomaly_bench.models.components import weights as w
from anomaly_bench.models.components.diffusion import DiffusionLoadError, load_diffusion
from anomaly_bench.models.components.feature_extractor import TimmFeatureExtractor
from anomaly_bench.models.glad.dino import DinoLoadError, build_vit
from anomaly_bench.weights_cli import weights_main
from tests.conftest import REPO_ROOT

SMALL_TIMM = "mobilenetv3_small_050.lamb_in1k"  # 1.6 M parameters, published on the hub and by URL
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def closed_port() -> int:
    """A local TCP port that nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def offline_env(tmp_path: Path) -> dict[str, str]:
    """HF_HUB_OFFLINE=1, an unreachable proxy and empty private caches."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "NO_PROXY", "no_proxy", "TIMM_USE_OLD_CACHE")
    }
    env.update({k: proxy for k in PROXY_VARS})
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        TORCH_HOME=str(tmp_path / "torch"),
        XDG_CACHE_HOME=str(tmp_path / "xdg"),
    )
    return env


@pytest.fixture()
def offline(tmp_path, monkeypatch) -> dict[str, str]:
    """The same environment for in-process tests."""
    env = offline_env(tmp_path)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "NO_PROXY", "no_proxy", "TIMM_USE_OLD_CACHE"):
        monkeypatch.delenv(key, raising=False)
    for key in (*PROXY_VARS, "HF_HUB_OFFLINE", "HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(key, env[key])
    return env


# ------------------------------------------------------------------ the paper configs, end to end
# One fresh process runs `anomaly-bench fit` on each paper config in turn (as `main()` with its own
# sys.argv: the exit status is the real one). Imports happen first and are not timed: on a busy
# machine they alone take many seconds; what is timed is parse + model build + failure.
DRIVER = """
import json, sys, time, traceback
import diffusers, timm  # noqa: F401  (heavy imports the loaders make lazily: not what is timed)
from anomaly_bench.cli import main
runs, outcome = json.loads(sys.argv[1]), {}
for config, args in runs.items():
    sys.argv = ["anomaly-bench", *args]
    sys.stderr.write(f"\\n=== {config}\\n")
    start = time.monotonic()
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code
    except Exception:
        traceback.print_exc()
        code = 1
    outcome[config] = [code, time.monotonic() - start]
print(json.dumps(outcome))
"""

PAPER_CONFIGS = {  # config -> (start of the error's first line, the setting it names)
    "crad_mvtec.yaml": (
        "CRAD backbone tf_efficientnet_b4.aa_in1k: pretrained weights not available",
        "model.init_args.weights_path",
    ),
    "grad_mvtec.yaml": (
        "BiGridGRAD backbone tf_efficientnet_b6.aa_in1k: pretrained weights not available",
        "model.init_args.weights_path",
    ),
    "glad_mvtec.yaml": (
        "GLAD diffusion model CompVis/stable-diffusion-v1-4: pretrained weights not available",
        "model.init_args.diffusion",
    ),
    "patchdiff_mvtec.yaml": ("MVTecAD root {no_data} does not exist", None),  # no pretrained parts
}


@pytest.fixture(scope="module")
def fit_offline(tmp_path_factory) -> dict[str, tuple[int, str, float]]:
    """config -> (exit status, its stderr, seconds) of `anomaly-bench fit --config configs/<config>`
    offline, with empty private caches and a data root that does not exist."""
    tmp = tmp_path_factory.mktemp("offline")
    env = {**offline_env(tmp), "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    runs = {
        config: [
            "fit",
            "--config",
            f"configs/{config}",
            "--trainer.default_root_dir",
            str(tmp / "results"),
            "--data.init_args.root",
            str(tmp / "no_data_here"),
        ]
        for config in PAPER_CONFIGS
    }
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(runs)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    sections = dict(part.split("\n", 1) for part in done.stderr.split("\n=== ")[1:])
    return {
        config: (code, sections[config].replace(str(tmp), "<tmp>"), seconds)
        for config, (code, seconds) in outcome.items()
    }


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("anomaly-bench: error:")]
    assert lines, stderr[-3000:]
    return lines[0].removeprefix("anomaly-bench: error: ")


@pytest.mark.parametrize("config", list(PAPER_CONFIGS))
def test_paper_config_offline_fails_in_one_line_with_exit_2(fit_offline, config):
    """CRAD, bi-grid GRAD and GLAD name the missing part, where they looked and the setting;
    PatchDiff has no pretrained parts: the model builds and the run stops at the missing data."""
    code, stderr, elapsed = fit_offline[config]
    first, setting = PAPER_CONFIGS[config]
    message = error_line(stderr)
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Union subtypes" not in stderr
    assert message.startswith(first.format(no_data="<tmp>/no_data_here")), message
    if setting:
        assert "HF_HUB_OFFLINE=1" in message and "in the cache folder <tmp>/hf/hub" in message
        assert f"set {setting} to " in message
    else:
        assert "pretrained" not in message
    assert elapsed < 10.0, f"{config}: took {elapsed:.1f} s to fail"


def test_patchdiff_paper_config_lists_no_pretrained_parts(capsys):
    assert weights_main(["--config", str(REPO_ROOT / "configs" / "patchdiff_mvtec.yaml")]) == 0
    assert "PatchDiffGRAD: no pretrained parts" in capsys.readouterr().out


# ------------------------------------------------------------------------------ each loader
def test_hub_probe_answers_at_once_when_offline_or_behind_a_dead_proxy(offline, monkeypatch):
    assert w.hub_unreachable_reason() == "HF_HUB_OFFLINE=1 is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    start = time.monotonic()
    reason = w.hub_unreachable_reason()
    assert time.monotonic() - start < 2.0
    assert reason.startswith("huggingface.co:443 cannot be reached through the proxy http://127.0.0.1:")
    assert "ConnectionRefusedError" in reason


@pytest.fixture()
def direct(offline, monkeypatch):
    """Network allowed (no HF_HUB_OFFLINE), no proxy: the probe decides."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for key in PROXY_VARS:
        monkeypatch.delenv(key)


def test_hub_probe_is_bounded_when_a_connection_opens_but_nothing_answers(direct, monkeypatch):
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        start = time.monotonic()
        reason = w.hub_unreachable_reason(timeout_s=1.0)
        assert time.monotonic() - start < 2.0
    assert reason.startswith(f"127.0.0.1:{port} cannot be reached: ")


def test_hub_probe_says_reachable_when_the_endpoint_answers(direct, monkeypatch):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hub(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    hub = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    serving = threading.Thread(target=hub.serve_forever, daemon=True)
    serving.start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_address[1]}")
        assert w.hub_unreachable_reason(timeout_s=2.0) is None
    finally:
        hub.shutdown()
        hub.server_close()


def test_timm_backbone_offline_fails_fast_with_one_line(offline, tmp_path):
    import timm  # noqa: F401  (imported before the clock starts: importing is not what is timed)

    start = time.monotonic()
    with pytest.raises(w.WeightsUnavailableError) as caught:
        TimmFeatureExtractor(SMALL_TIMM, layers=(1, 2), pretrained=True)
    assert time.monotonic() - start < 2.0
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"backbone {SMALL_TIMM}: pretrained weights not available (not in the local "
        "cache and HF_HUB_OFFLINE=1 is set)"
    )
    assert f"hub repo timm/{SMALL_TIMM} in the cache folder {tmp_path / 'hf' / 'hub'}" in message
    assert (
        str(tmp_path / "torch" / "hub" / "checkpoints" / "mobilenetv3_small_050_lambc-4b7bbe87.pth")
        in message
    )
    assert "set model.init_args.weights_path to a local timm state-dict file" in message


def test_a_missing_local_weights_file_names_the_path(offline, tmp_path):
    missing = tmp_path / "b4.pth"
    with pytest.raises(w.WeightsUnavailableError, match=f"not found: {missing}.*local file {missing}"):
        TimmFeatureExtractor(SMALL_TIMM, layers=(1, 2), weights_path=str(missing))


def _hub_cache_file(cache: Path, repo: str, filename: str) -> Path:
    """Where huggingface_hub keeps ``filename`` of ``repo`` (models--owner--name/snapshots/<rev>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("cache", ["hub", "torch"])
def test_timm_weights_load_from_the_local_cache_without_network(offline, tmp_path, cache):
    import timm

    reference = timm.create_model(SMALL_TIMM, pretrained=False)
    with torch.no_grad():
        reference.conv_stem.weight.normal_(generator=torch.Generator().manual_seed(3))
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    if cache == "hub":
        save_file(state, _hub_cache_file(tmp_path / "hf" / "hub", f"timm/{SMALL_TIMM}", "model.safetensors"))
    else:
        target = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenetv3_small_050_lambc-4b7bbe87.pth"
        target.parent.mkdir(parents=True)
        torch.save(state, target)
    extractor = TimmFeatureExtractor(SMALL_TIMM, layers=(1, 2), pretrained=True)
    assert torch.equal(extractor.model.conv_stem.weight, reference.conv_stem.weight)


def test_the_owner_is_named_when_a_method_builds_the_part(offline):
    from anomaly_bench.models import CRAD

    with pytest.raises(w.WeightsUnavailableError, match=f"^CRAD backbone {SMALL_TIMM}: "):
        CRAD(backbone=SMALL_TIMM, layers=(1, 2), pretrained=True, image_size=64)


def test_stable_diffusion_offline_lists_the_missing_components(offline, tmp_path):
    import diffusers  # noqa: F401  (imported before the clock starts)

    start = time.monotonic()
    with pytest.raises(DiffusionLoadError) as caught:
        load_diffusion("CompVis/stable-diffusion-v1-4")
    assert time.monotonic() - start < 2.0
    assert isinstance(caught.value, w.WeightsUnavailableError)
    message = str(caught.value)
    assert message.startswith(
        "diffusion model CompVis/stable-diffusion-v1-4: pretrained weights not available "
        "(UNet, VAE, tokenizer, text encoder not in the local cache and HF_HUB_OFFLINE=1"
    )
    assert (
        f"cache folder {tmp_path / 'hf' / 'hub'}" in message and "set model.init_args.diffusion to" in message
    )


def test_dino_offline_names_its_setting(offline):
    with pytest.raises(DinoLoadError) as caught:
        build_vit("vit_base_patch8_224.dino")
    assert isinstance(caught.value, w.WeightsUnavailableError)
    assert str(caught.value).startswith("DINO vit_base_patch8_224.dino: pretrained weights not available")
    assert "set model.init_args.dino_weights to" in str(caught.value)


# --------------------------------------------------------------------- anomaly-bench weights
def test_weights_command_lists_parts_and_offline_availability(offline, tmp_path, capsys):
    config = REPO_ROOT / "configs" / "glad_mvtec.yaml"
    assert weights_main(["--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "GLAD diffusion model CompVis/stable-diffusion-v1-4" in out
    assert "NO, missing UNet, VAE, tokenizer, text encoder" in out
    assert "GLAD DINO vit_base_patch8_224.dino" in out and "model.init_args.dino_weights" in out
    assert "anomaly-bench download DTD --root data/dtd" in out  # texture_dir: null in the paper config

    local = tmp_path / "b4.safetensors"
    local.write_bytes(b"0")
    override = tmp_path / "local.yaml"
    override.write_text(f"model:\n  init_args:\n    weights_path: {local}\n")
    assert (
        weights_main(["--config", str(REPO_ROOT / "configs" / "crad_mvtec.yaml"), "--config", str(override)])
        == 0
    )
    out = capsys.readouterr().out
    assert "CRAD backbone tf_efficientnet_b4.aa_in1k" in out and f"available offline:  yes ({local})" in out


def test_weights_command_demo_configs_need_nothing_and_bad_configs_exit_2(tmp_path, capsys):
    assert weights_main(["--config", str(REPO_ROOT / "configs" / "demo" / "glad.yaml")]) == 0
    assert "no pretrained parts" in capsys.readouterr().out
    assert weights_main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err
    binary = tmp_path / "last.ckpt"
    binary.write_bytes(bytes(range(256)))
    assert weights_main(["--config", str(binary)]) == 2
    assert "is not a text (YAML) file; a checkpoint?" in capsys.readouterr().err


def test_weights_command_takes_shipped_config_names(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # away from the repository: only the packaged copies can answer
    assert weights_main(["--config", "demo/patchcore"]) == 0
    assert "PatchCore: no pretrained parts" in capsys.readouterr().out
