"""The configs that ship with the package, found by name from any working directory.

``anomaly-bench fit --config crad_mvtec`` and ``--config configs/demo/crad.yaml`` (run outside the
repository) both resolve to the packaged ``anomaly_bench/configs/`` files; a path that exists is
always used as given.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_config(name: str | Path) -> Path | None:
    """The packaged config ``name`` refers to (``crad_mvtec``, ``demo/crad.yaml``,
    ``configs/demo/crad``), or None when there is none."""
    text = str(name).replace("\\", "/")
    if text.startswith("./"):
        text = text[2:]
    if text.startswith("configs/"):
        text = text[len("configs/"):]
    for candidate in (text, f"{text}.yaml"):
        path = SHIPPED_CONFIGS / candidate
        if path.is_file():
            return path
    return None


def resolve_config_path(name: str | Path, base_dir: str | Path | None = None) -> Path | None:
    """``name`` as given if it exists, else relative to ``base_dir`` (a grid file's folder), else a
    shipped config; None when none of them exists."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if base_dir is not None and not path.is_absolute() and (Path(base_dir) / path).is_file():
        return Path(base_dir) / path
    return shipped_config(name)
