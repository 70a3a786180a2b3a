"""Run directories: where one run's config, checkpoints, metrics and pictures live.

Layout under ``trainer.default_root_dir`` (``results`` by default)::

    results/<Model>/<DataModule>/<category-tag>/version_<N>/    one directory per ``fit``
    results/<Model>/<DataModule>/<category-tag>/job_<id>/       one per multi-node job (see below)
    results/<Model>/<DataModule>/<category-tag>/latest          -> the newest run with a checkpoint

``fit`` creates the next version with an exclusive ``mkdir`` (two fits started at the same instant
never share a directory); ``fit --ckpt_path last`` resumes inside the newest run that has a
checkpoint; ``validate|test|predict`` write into the run their checkpoint came from. A run that
failed before its first checkpoint carries a ``FAILED`` file and is never chosen by ``last``.

Multi-node jobs: every node must agree on one directory before the process group exists. With a
launcher job id (``TORCHELASTIC_RUN_ID`` from torchrun, ``SLURM_JOB_ID``) the directory is
``job_<id>``, the same name on every node (a requeued job with the same id resumes in it); without
one, pass the same ``--run_dir`` to every rank.

This module knows files and folders only (no Lightning, no torch): the CLI and the
``RunDirectory`` callback of the plain Python API both decide run directories here.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
import sys
import unicodedata
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from anomaly_bench.atomic import atomic_write_json, atomic_write_text

CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
LATEST_LINK = "latest"
FAILED_MARKER = "FAILED"
JOB_ID_VARIABLES = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")
_RUN_NAME = re.compile(r"(version_(\d+)|job_[A-Za-z0-9_.-]+)")


class RunDirError(FileNotFoundError):
    """A run or checkpoint the user referred to does not exist."""


def category_tag(category: Any) -> str:
    """A folder-safe name for the category selection (``all``, ``bottle``, ``bottle+cable``).

    Names are NFC-normalised first (one name typed two ways is one name). A name of plain characters
    (``[A-Za-z0-9_.+-]``, not starting with a dot) is kept; any other is made folder-safe and gets a
    short hash of the original, so two different names never share a folder.
    """
    if category is None:
        return "default"
    if isinstance(category, (list, tuple)):
        names = [str(c) for c in category]
        tag = "+".join(names) if len(names) <= 4 else f"{len(names)}cats-" + "+".join(names[:3])
    else:
        tag = str(category)
    tag = unicodedata.normalize("NFC", tag)
    if re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*", tag):
        return tag  # plain names stay as they are (metal_nut, bottle+cable)
    # anything else (unicode, '/', a leading dot) becomes '_' plus a hash of the whole name: two
    # different names never share a folder, and no name can step out of its parent
    digest = hashlib.sha1(tag.encode("utf-8")).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_+-]', '_', tag)}-{digest}"


def experiment_dir(root: str | Path, model_name: str, data_name: str, category: Any) -> Path:
    return Path(root) / model_name / data_name / category_tag(category)


def _runs(exp_dir: Path) -> list[Path]:
    """Run directories of an experiment, oldest first (versions by number, jobs by creation time)."""
    if not exp_dir.is_dir():
        return []
    found: list[tuple[float, int, Path]] = []
    for child in exp_dir.iterdir():
        match = _RUN_NAME.fullmatch(child.name)
        if match and child.is_dir() and not child.is_symlink():
            number = int(match.group(2)) if match.group(2) is not None else -1
            found.append((child.stat().st_mtime if number < 0 else 0.0, number, child))
    versions = sorted((n, p) for _, n, p in found if n >= 0)
    jobs = sorted((t, p) for t, n, p in found if n < 0)
    return [p for _, p in versions] + [p for _, p in jobs]


def checkpoint_file(run_dir: Path, which: str) -> Path | None:
    """``last`` -> ``checkpoints/last.ckpt``; ``best`` -> ``best.ckpt``, else ``last.ckpt``; None if absent."""
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    candidates = [ckpt_dir / BEST_CKPT, ckpt_dir / LAST_CKPT] if which == "best" else [ckpt_dir / LAST_CKPT]
    return next((c for c in candidates if c.is_file()), None)


def is_failed(run_dir: Path) -> bool:
    return (Path(run_dir) / FAILED_MARKER).is_file()


def latest_run(exp_dir: Path, which: str = "last") -> Path | None:
    """The newest run of an experiment that has a ``which`` checkpoint and did not fail, or None."""
    for run in reversed(_runs(Path(exp_dir))):
        if not is_failed(run) and checkpoint_file(run, which) is not None:
            return run
    return None


def new_run(exp_dir: Path) -> Path:
    """Create the next ``version_N`` exclusively (``mkdir`` fails if another process took N)."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(2)) for p in _runs(exp_dir) if (m := _RUN_NAME.fullmatch(p.name)) and m.group(2)]
    number = max(numbers) + 1 if numbers else 0
    while True:
        run = exp_dir / f"version_{number}"
        try:
            run.mkdir()
            return run
        except FileExistsError:
            number += 1


def job_id() -> str | None:
    """The launcher's job id (torchrun, SLURM) that every node of a multi-node job shares."""
    for name in JOB_ID_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value and value != "none":
            return re.sub(r"[^A-Za-z0-9_.-]", "_", value)
    return None


def job_run(exp_dir: Path, job: str) -> Path:
    """``job_<id>``: the run directory every node of one launcher job agrees on."""
    run = Path(exp_dir) / f"job_{job}"
    run.mkdir(parents=True, exist_ok=True)
    return run


def point_latest(run: Path) -> None:
    """Point ``<experiment>/latest`` at ``run`` (replaced atomically; skipped where links are impossible)."""
    run = Path(run)
    link = run.parent / LATEST_LINK
    tmp = run.parent / f".{LATEST_LINK}.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # file systems without symlinks: the run scan still finds the newest run
        try:
            tmp.unlink()
        except OSError:
            pass


def mark_failed(run_dir: Path, reason: str) -> None:
    """Mark a run that failed before writing a checkpoint, so ``last`` never picks it."""
    atomic_write_text(Path(run_dir) / FAILED_MARKER, reason.strip() + "\n")


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
        found = checkpoint_file(run_dir, ckpt_path)
        if found is None:
            raise RunDirError(
                f"--ckpt_path {ckpt_path}: no checkpoint in {Path(run_dir) / CHECKPOINT_DIR} (expected "
                f"{LAST_CKPT}); did the fit finish its first epoch?"
            )
        return str(found)
    path = Path(ckpt_path)
    if path.is_dir():
        inside = [p for p in (path / CHECKPOINT_DIR / LAST_CKPT, path / LAST_CKPT) if p.is_file()]
        hint = f"; did you mean {inside[0]}?" if inside else " (expected a .ckpt file, or last / best)"
        raise RunDirError(f"--ckpt_path {ckpt_path} is a folder{hint}")
    if not path.is_file():
        raise RunDirError(f"--ckpt_path: checkpoint file not found: {ckpt_path}")
    return ckpt_path


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/x.ckpt``), if it is one."""
    path = Path(ckpt_path).resolve()
    if path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return None


def choose_run_dir(exp_dir: Path, subcommand: str, ckpt_path: str | None, run_dir: str | Path | None = None,
                   inherited: str | Path | None = None) -> Path:
    """Where a run writes; the one rule shared by the CLI and the Python API.

    Args:
        exp_dir: ``<root>/<Model>/<Data>/<category>``.
        subcommand: ``fit`` | ``validate`` | ``test`` | ``predict``.
        ckpt_path: ``None``, ``last``, ``best`` or a checkpoint file.
        run_dir: an exact directory the user asked for (``--run_dir``); created if missing.
        inherited: a directory chosen by the parent process (DDP children re-run the command).
    """
    if inherited:
        return Path(inherited)
    if run_dir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    if ckpt_path in ("last", "best"):
        found = latest_run(exp_dir, ckpt_path)
        if found is None:
            raise RunDirError(
                f"--ckpt_path {ckpt_path}: no run with a checkpoint under {exp_dir}; run `anomaly-bench fit` "
                "with the same config (same model, data class and category, trainer.default_root_dir) first"
            )
        return found
    if ckpt_path:
        of_checkpoint = run_dir_of_checkpoint(ckpt_path)
        if of_checkpoint is not None and Path(ckpt_path).is_file():
            return of_checkpoint
    job = job_id()
    if job is not None and subcommand == "fit":
        return job_run(exp_dir, job)
    return new_run(exp_dir)


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

        torch_version = torch.__version__
        cuda = torch.version.cuda
        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch is a hard dependency; this only guards odd CUDA setups
        torch_version, cuda, devices = None, None, []
    return {
        "subcommand": subcommand,
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "torch": torch_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": cuda,
        "gpus": devices,
        "hostname": platform.node(),
        "pid": os.getpid(),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON state file atomically (temporary file in the same folder, then rename)."""
    atomic_write_json(path, payload)
