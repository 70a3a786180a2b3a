"""Run directories: where one run's config, checkpoints, metrics and pictures live.

Layout under ``trainer.default_root_dir`` (``results`` by default)::

    results/<Model>/<DataModule>/<category-tag>/version_<N>/    one directory per ``fit``
    results/<Model>/<DataModule>/<category-tag>/latest          -> the newest version (symlink)

``fit`` creates the next version; ``fit --ckpt_path last`` resumes inside the latest one;
``validate|test|predict`` write into the run their checkpoint came from, so
``anomaly-bench test --config X --ckpt_path last`` right after ``fit --config X`` needs no paths.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
LATEST_LINK = "latest"


class RunDirError(FileNotFoundError):
    """A run or checkpoint the user referred to does not exist."""


def category_tag(category: Any) -> str:
    """A folder-safe name for the category selection (``all``, ``bottle``, ``bottle+cable``)."""
    if category is None:
        return "default"
    if isinstance(category, (list, tuple)):
        names = [str(c) for c in category]
        tag = "+".join(names) if len(names) <= 4 else f"{len(names)}cats-" + "+".join(names[:3])
    else:
        tag = str(category)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", tag) or "default"


def experiment_dir(root: str | Path, model_name: str, data_name: str, category: Any) -> Path:
    return Path(root) / model_name / data_name / category_tag(category)


def _versions(exp_dir: Path) -> list[int]:
    if not exp_dir.is_dir():
        return []
    found = []
    for child in exp_dir.iterdir():
        match = re.fullmatch(r"version_(\d+)", child.name)
        if match and child.is_dir():
            found.append(int(match.group(1)))
    return sorted(found)


def latest_run(exp_dir: Path) -> Path | None:
    """The newest ``version_N`` of an experiment, or None."""
    versions = _versions(exp_dir)
    return exp_dir / f"version_{versions[-1]}" if versions else None


def new_run(exp_dir: Path) -> Path:
    """Create the next ``version_N`` and point ``latest`` at it."""
    versions = _versions(exp_dir)
    run = exp_dir / f"version_{versions[-1] + 1 if versions else 0}"
    run.mkdir(parents=True, exist_ok=True)
    _point_latest(exp_dir, run)
    return run


def _point_latest(exp_dir: Path, run: Path) -> None:
    link = exp_dir / LATEST_LINK
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(run.name, target_is_directory=True)
    except OSError:  # file systems without symlinks: the version scan still finds the newest run
        pass


def resolve_checkpoint(ckpt_path: str | None, run_dir: Path | None) -> str | None:
    """Turn ``last`` / ``best`` into a file inside ``run_dir``; check explicit paths exist."""
    if ckpt_path is None:
        return None
    if ckpt_path in ("last", "best"):
        if run_dir is None:
            raise RunDirError(
                f"--ckpt_path {ckpt_path}: no earlier run of this model/data/category was found under "
                "trainer.default_root_dir; run `anomaly-bench fit` with the same config first, or pass a "
                "checkpoint file"
            )
        ckpt_dir = run_dir / CHECKPOINT_DIR
        candidates = [ckpt_dir / BEST_CKPT, ckpt_dir / LAST_CKPT] if ckpt_path == "best" else [ckpt_dir / LAST_CKPT]
        for candidate in candidates:
            if candidate.is_file():
                return str(candidate)
        raise RunDirError(
            f"--ckpt_path {ckpt_path}: no checkpoint in {ckpt_dir} (expected {candidates[-1].name}); "
            "did the fit finish its first epoch?"
        )
    if not Path(ckpt_path).is_file():
        raise RunDirError(f"--ckpt_path: checkpoint file not found: {ckpt_path}")
    return ckpt_path


def run_dir_of_checkpoint(ckpt_path: str) -> Path | None:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/x.ckpt``), if it is one."""
    path = Path(ckpt_path).resolve()
    if path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return None


def git_sha(start: Path | None = None) -> str | None:
    """The git commit of the working tree the code runs from (None outside a repository)."""
    cwd = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def package_versions() -> dict[str, str | None]:
    names = ["anomaly_bench", "torch", "torchvision", "lightning", "torchmetrics", "timm", "diffusers",
             "albumentations", "numpy", "opencv-python-headless", "wandb"]
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_info(subcommand: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Everything needed to tell later which code and environment produced a run."""
    try:
        import torch

        cuda = torch.version.cuda
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch is a hard dependency; this only guards odd CUDA setups
        cuda, devices = None, []
    return {
        "subcommand": subcommand,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": cuda,
        "gpus": devices,
        "hostname": platform.node(),
        "pid": os.getpid(),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
