"""Every shipped config parses and resolves through the real CLI (no data or weights needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_bench.cli import main
from tests.conftest import REPO_ROOT

CONFIGS = sorted(p for p in (REPO_ROOT / "configs").rglob("*.yaml") if "protocols" not in p.parts)
PROTOCOLS = sorted((REPO_ROOT / "configs" / "protocols").glob("*.yaml"))


def test_every_method_has_paper_and_demo_configs() -> None:
    names = {p.relative_to(REPO_ROOT / "configs").as_posix() for p in CONFIGS}
    for method in ("crad", "grad", "patchdiff", "glad", "patchcore"):
        assert f"demo/{method}.yaml" in names
        assert any(n.startswith(f"{method}_") for n in names), method
    assert "grad_goodsad.yaml" in names  # the headline command of the project


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT / "configs").as_posix())
def test_config_resolves(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0, capsys.readouterr().err
    resolved = capsys.readouterr().out
    assert "class_path: anomaly_bench.models." in resolved
    assert "class_path: anomaly_bench.data." in resolved


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.stem)
def test_protocol_presets_apply_on_top_of_any_method_config(protocol: Path, capsys) -> None:
    for method in ("crad", "patchcore"):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(REPO_ROOT / "configs" / "demo" / f"{method}.yaml"), "--config", str(protocol),
                  "--print_config"])
        assert exit_info.value.code == 0, capsys.readouterr().err
        assert f"protocol: {protocol.stem}" in capsys.readouterr().out


def test_shipped_configs_are_found_from_any_working_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 20.3: `--config crad_mvtec` (or `configs/demo/crad.yaml`) works outside the repository, and a
    grid resolves its configs relative to itself (then among the shipped ones)."""
    from anomaly_bench.benchmark.grid import load_grid

    monkeypatch.chdir(tmp_path)
    for name in ("crad_mvtec", "demo/crad.yaml", "configs/demo/patchcore.yaml"):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", name, "--print_config"])
        assert exit_info.value.code == 0, capsys.readouterr().err
        assert "class_path: anomaly_bench." in capsys.readouterr().out
    grid = load_grid(REPO_ROOT / "benchmarks" / "demo.yaml")
    assert all(model.config is not None and model.config.is_file() for model in grid.models)
