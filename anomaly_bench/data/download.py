"""Fetch a dataset's public archive, verify it, unpack it safely: ``anomaly-bench download`` and
``AnomalyDataModule(download=True)``.

    anomaly-bench download MVTecAD --root data/mvtec_ad
    anomaly-bench download DTD --root data/dtd          # GLAD / ATP textures: texture_dir data/dtd/images
    anomaly-bench download --list

What a call does, and why each step is there:

1. ``<root>/.anomaly_bench_download.json`` exists: nothing to do, no network at all. ``root``
   exists and holds anything else: it is a dataset already on disk and is never touched.
2. Stream the archive into ``<parent of root>/<archive>.part``. A ``.part`` left by an interrupted
   call is resumed with ``Range: bytes=N-``; a server that answers 200 instead of 206 (no Range
   support) is downloaded again from byte 0. A cut connection is retried (resuming) a few times.
3. Verify the pinned checksum (sha256 or MD5, with where it was published) of the whole file
   before anything is unpacked. A mismatch deletes the file: nothing is left behind.
4. Unpack into a temporary sibling folder; a member whose path or link target would land outside
   it (absolute paths, ``..``) or a device file rejects the whole archive. Then the marker is
   written (atomically) into that folder and the folder is renamed onto ``root`` in one step: an
   interrupted or corrupt download never leaves a half dataset that a later run would load.

Datasets without a direct public archive (a sign-up form, a OneDrive / Baidu link) are listed with
the page where a user gets them; ``--url`` / ``--checksum`` fetch any archive the user has a link to.
Only the standard library does the HTTP (urllib, honouring the usual proxy variables).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from anomaly_bench.atomic import atomic_write_json
from anomaly_bench.data.io import DataError

MARKER_NAME = ".anomaly_bench_download.json"
PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
CHECKSUM_ALGORITHMS = ("sha256", "md5")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar", ".zip")
USER_AGENT = "anomaly-bench-download/1"


class DownloadError(DataError):
    """A dataset could not be fetched, verified or unpacked (the message says which and what to do)."""


class ManualDownloadError(DownloadError):
    """The dataset has no direct public archive: the user must fetch it from its page."""


@dataclass(frozen=True)
class DatasetSource:
    """Where one dataset comes from.

    Args:
        name: the catalog key, equal to the datamodule's ``dataset_name`` (``MVTecAD``, ...).
        title: the dataset's full name.
        page: the page where a user reads about it and downloads it by hand.
        url: the direct archive URL; None when there is none (manual download only).
        checksum: ``"<algorithm>:<hex>"`` of the archive (sha256 or md5); None when unknown.
        checksum_source: where that checksum was published.
        archive_folder: the top folder inside the archive whose contents become ``root``
            (None: the archive's top level is the dataset root).
        manual_note: for manual datasets, what the user downloads and where it goes.
        aliases: other names accepted on the command line (case-insensitive).
    """

    name: str
    title: str
    page: str
    url: str | None = None
    checksum: str | None = None
    checksum_source: str | None = None
    archive_folder: str | None = None
    manual_note: str = ""
    aliases: tuple[str, ...] = ()


ANOMALIB_COMMIT = "open-edge-platform/anomalib@b723368 (2026-08-21)"

CATALOG: dict[str, DatasetSource] = {
    "MVTecAD": DatasetSource(
        name="MVTecAD",
        title="MVTec AD (15 categories)",
        page="https://www.mvtec.com/company/research/datasets/mvtec-ad",
        url=(
            "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
            "mvtec_anomaly_detection.tar.xz"
        ),
        checksum="sha256:cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        checksum_source=f"anomalib src/anomalib/data/datamodules/image/mvtecad.py DOWNLOAD_INFO, "
        f"{ANOMALIB_COMMIT}",
        aliases=("mvtec", "mvtec_ad", "mvtec-ad"),
    ),
    "VisA": DatasetSource(
        name="VisA",
        title="VisA (12 categories, the raw release, read in place)",
        page="https://github.com/amazon-science/spot-diff",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        checksum="sha256:2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        checksum_source=f"anomalib src/anomalib/data/datamodules/image/visa.py DOWNLOAD_INFO, "
        f"{ANOMALIB_COMMIT}",
        aliases=("visa",),
    ),
    "MVTecLOCO": DatasetSource(
        name="MVTecLOCO",
        title="MVTec LOCO AD (5 categories)",
        page="https://www.mvtec.com/company/research/datasets/mvtec-loco",
        url=(
            "https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/430647091-1646842701/"
            "mvtec_loco_anomaly_detection.tar.xz"
        ),
        checksum="sha256:9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
        checksum_source=f"anomalib src/anomalib/data/datasets/image/mvtec_loco.py DOWNLOAD_INFO, "
        f"{ANOMALIB_COMMIT}",
        aliases=("loco", "mvtec_loco", "mvtec-loco", "mvtec_loco_ad"),
    ),
    "DTD": DatasetSource(
        name="DTD",
        title="Describable Textures Dataset r1.0.1 (anomaly textures for GLAD / ATP)",
        page="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
        url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        checksum="sha256:e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
        checksum_source=(
            f"anomalib src/anomalib/models/image/draem/lightning_model.py DTD_DOWNLOAD_INFO, "
            f"{ANOMALIB_COMMIT}; torchvision datasets/dtd.py pins the same URL with MD5 "
            "fff73e5086ae6bdbea199a49dfb8a4c1"
        ),
        archive_folder="dtd",
        aliases=("dtd", "textures"),
    ),
    "MPDD": DatasetSource(
        name="MPDD",
        title="MPDD, Metal Parts Defect Detection (6 categories)",
        page="https://github.com/stepanje/MPDD",
        manual_note=(
            "the authors share it only as a SharePoint (OneDrive) folder linked from their README; "
            "download it there and unpack it so that <root>/<category>/train/good exists"
        ),
        aliases=("mpdd",),
    ),
    "GoodsAD": DatasetSource(
        name="GoodsAD",
        title="PKU-GoodsAD (6 categories, 1.1-3.0 GB each)",
        page="https://github.com/jianzhang96/GoodsAD",
        manual_note=(
            "the authors share one archive per category on OneDrive and Baidu Disk (links in their "
            "README); unpack each so that <root>/<category>/train/good exists"
        ),
        aliases=("goodsad", "goods_ad", "pku-goodsad"),
    ),
}


# ---------------------------------------------------------------------------------------- lookup
def find_source(name: str) -> DatasetSource:
    """The catalog entry for a dataset.

    Args:
        name: the datamodule name (``MVTecAD``) or an alias (``mvtec``), case-insensitive.
    """
    wanted = name.strip().lower()
    for source in CATALOG.values():
        if wanted == source.name.lower() or wanted in source.aliases:
            return source
    raise DownloadError(
        f"no download known for dataset {name!r}; known: {', '.join(CATALOG)} (anomaly-bench download --list)"
    )


def parse_checksum(text: str) -> tuple[str, str]:
    """(algorithm, lower-case hex digest) of a checksum string.

    Args:
        text: ``"sha256:<hex>"`` or ``"md5:<hex>"``; a bare hex string is taken as sha256 (64
            digits) or MD5 (32 digits).
    """
    algorithm, sep, digest = text.strip().partition(":")
    if not sep:
        algorithm, digest = {64: "sha256", 32: "md5"}.get(len(text.strip()), ""), text.strip()
    algorithm, digest = algorithm.lower(), digest.lower()
    expected_len = {"sha256": 64, "md5": 32}.get(algorithm)
    if (
        expected_len is None
        or len(digest) != expected_len
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise DownloadError(
            f"checksum {text!r}: expected ALGO:HEX with ALGO in {CHECKSUM_ALGORITHMS} "
            "(sha256: 64 hex digits, md5: 32)"
        )
    return algorithm, digest


def archive_name(url: str) -> str:
    """The archive's file name (the URL's last path segment), checked to be an archive.

    Args:
        url: the archive's URL.
    """
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DownloadError(
            f"URL {url} does not end in an archive name ({', '.join(ARCHIVE_SUFFIXES)}); "
            "give the direct link to the archive file"
        )
    return name


def is_present(root: Path) -> bool:
    """True when a folder exists and holds anything (a dataset on disk, ours or the user's).

    Args:
        root: the dataset root.
    """
    return root.is_dir() and any(root.iterdir())


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in chunks.

    Args:
        path: the file.
        algorithm: ``sha256`` or ``md5``.
    """
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -------------------------------------------------------------------------------------- download
def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    url: str | None = None,
    checksum: str | None = None,
    keep_archive: bool = False,
    retries: int = 3,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> Path:
    """Fetch, verify and unpack dataset ``name`` into ``root`` (see the module doc); returns ``root``.

    Args:
        name: a catalog name (``MVTecAD``, ``VisA``, ``MVTecLOCO``, ``DTD``, ``MPDD``, ``GoodsAD``)
            or an alias.
        root: the dataset root to create (the datamodule's ``root``). If it already holds anything
            it is left as it is and nothing is downloaded.
        url: another URL for the archive (a mirror, or the user's own link for a manual dataset).
        checksum: ``ALGO:HEX`` (sha256 or md5) overriding the pinned one; required when no
            checksum is pinned for the dataset.
        keep_archive: keep the verified archive beside ``root`` after unpacking.
        retries: how many times a cut connection is resumed within this call.
        timeout_s: socket timeout of one connection (seconds without data).
        progress: show a progress bar (rich) on stderr.

    Raises:
        ManualDownloadError: the dataset has no direct archive and no ``url`` was given.
        DownloadError: network failure (the partial file is kept; calling again resumes), checksum
            mismatch (the file is deleted) or an unsafe / corrupt archive (nothing is unpacked).
    """
    source = find_source(name)
    root = Path(root).expanduser()
    if (root / MARKER_NAME).is_file():
        _say(progress, f"{source.name} already downloaded in {root}")
        return root
    if is_present(root):
        _say(progress, f"{root} already holds data; not downloading {source.name} into it")
        return root
    url = url or source.url
    if url is None:
        raise ManualDownloadError(manual_instructions(source, root))
    pinned = checksum or source.checksum  # a mirror of the same archive keeps the pinned checksum
    if pinned is None:
        raise DownloadError(
            f"no checksum is known for {url}; pass --checksum sha256:<hex> (the publisher's value) "
            "so the archive can be verified before it is unpacked"
        )
    algorithm, expected = parse_checksum(pinned)
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = root.parent / archive_name(url)
    # a file:// URL naming that very path is the user's own archive: verified and unpacked, never deleted
    own_file = _local_path(url) == archive.resolve()
    with _exclusive(root.parent):
        if (root / MARKER_NAME).is_file() or is_present(root):  # another process finished meanwhile
            return root
        _fetch_verified(
            url, archive, algorithm, expected, pinned_source(source, checksum), retries, timeout_s, progress
        )
        _unpack_into(
            archive, root, source, {"dataset": source.name, "url": url, "checksum": f"{algorithm}:{expected}"}
        )
        if not keep_archive and not own_file:
            archive.unlink(missing_ok=True)
    _say(progress, f"{source.name} ready in {root}")
    return root


def pinned_source(source: DatasetSource, checksum: str | None) -> str:
    """Where the checksum in use was published (for error messages).

    Args:
        source: the catalog entry.
        checksum: the checksum the user gave (None: the pinned one is used).
    """
    if checksum:
        return "your --checksum"
    return source.checksum_source or "the catalog"


def manual_instructions(source: DatasetSource, root: Path) -> str:
    """One line telling the user where to get a dataset that cannot be fetched automatically.

    Args:
        source: the catalog entry (its page and note).
        root: where the dataset should end up.
    """
    return (
        f"{source.name} ({source.title}) has no direct public archive: {source.manual_note}; "
        f"get it from {source.page} and place it at {root} (or pass --url <direct archive link> "
        "--checksum sha256:<hex> if you have one)"
    )


def _fetch_verified(
    url: str,
    archive: Path,
    algorithm: str,
    expected: str,
    published: str,
    retries: int,
    timeout_s: float,
    progress: bool,
) -> None:
    """Leave a verified ``archive`` (downloading into ``archive.part`` first)."""
    if archive.is_file():
        if file_digest(archive, algorithm) == expected:
            return
        # Never ours: a download lands in <archive>.part and takes this name only once verified. It
        # may be the user's own file (a file:// source, another archive): refuse rather than delete it.
        raise DownloadError(
            f"{archive} already exists and does not match {algorithm}:{expected} (the expected value "
            f"is from {published}); it was left as it is: move it away, or pass another --root"
        )
    part = archive.with_name(archive.name + PART_SUFFIX)
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, timeout_s, progress)
            break
        except _Interrupted as err:
            if attempt < retries:
                time.sleep(min(2.0**attempt, 10.0))
                continue
            if _size(part) == 0:
                part.unlink(missing_ok=True)
                raise DownloadError(f"cannot download {url}: {err}") from None
            raise DownloadError(
                f"download of {url} interrupted ({err}); {part} keeps {_size(part)} bytes "
                "and the next call resumes from there"
            ) from None
    actual = file_digest(part, algorithm)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {url}: {algorithm} {actual}, expected {expected} "
            f"(the expected value is from {published}); the download was deleted and nothing was unpacked"
        )
    os.replace(part, archive)


def _local_path(url: str) -> Path | None:
    """The resolved file a ``file://`` URL names; None for other schemes."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parsed.path)).expanduser().resolve()


class _Interrupted(Exception):
    """The connection ended before the whole file arrived (resumable)."""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _fetch(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (or restart it when the server ignores Range)."""
    offset = _size(part)
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.build_opener().open(request, timeout=timeout_s)  # proxies read now
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return  # the partial file is already whole; the checksum decides
        if err.code >= 500:
            raise _Interrupted(f"HTTP {err.code} {err.reason}") from None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _Interrupted(f"cannot connect: {reason}") from None
    with response:
        if offset and response.status == 206 and _range_start(response) == offset:
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # 200: no Range support (or a different range): from the start
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        written = offset
        with (
            part.open(mode) as handle,
            _progress_bar(progress, part.name[: -len(PART_SUFFIX)], total, offset) as bar,
        ):
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    written += len(chunk)
                    bar(len(chunk))
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(f"{type(err).__name__} after {written} bytes") from None
    if total is not None and written < total:
        raise _Interrupted(f"connection closed after {written} of {total} bytes")


def _range_start(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str, total: int | None, done: int) -> Iterator:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (POSIX ``flock`` on the directory itself, so no lock
    file is left behind) so two processes never write one ``.part``."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # no flock here: the checksum still catches a mixed file
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------- unpack
def _unpack_into(archive: Path, root: Path, source: DatasetSource, marker: dict[str, str]) -> None:
    """Unpack into a temporary sibling of ``root``, write the marker, rename onto ``root``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.unpack-", dir=root.parent))
    try:
        try:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, staging)
            else:
                _extract_tar(archive, staging)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise DownloadError(f"cannot unpack {archive}: {type(err).__name__}: {err}") from None
        content = staging
        if source.archive_folder and (staging / source.archive_folder).is_dir():
            content = staging / source.archive_folder
        marker = {
            **marker,
            "archive": archive.name,
            "unpacked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(content / MARKER_NAME, marker)
        if root.is_dir():
            root.rmdir()  # empty (checked by the caller): the rename below replaces it
        os.replace(content, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _member_path(name: str, archive: Path) -> PurePosixPath:
    """The member's relative path; refuses absolute paths, drive letters and ``..``."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise DownloadError(
            f"{archive}: member {name!r} would be written outside the target folder; "
            "refusing the archive (nothing was unpacked)"
        )
    return path


def _extract_tar(archive: Path, staging: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            path = _member_path(member.name, archive)
            if member.issym() or member.islnk():
                # a hard link names another member; a symlink is relative to its own folder
                target = PurePosixPath(member.linkname) if member.islnk() else path.parent / member.linkname
                if member.linkname.startswith("/") or not _stays_inside(target):
                    raise DownloadError(
                        f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the "
                        "target folder; refusing the archive (nothing was unpacked)"
                    )
            elif not (member.isfile() or member.isdir()):
                raise DownloadError(
                    f"{archive}: member {member.name!r} is a device or pipe; refusing the archive"
                )
            # the standard library's "data" filter (Python >= 3.10.12 / 3.11.4) re-checks paths and
            # drops unsafe permission bits
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extract(member, staging, **extra)


def _stays_inside(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        depth += -1 if part == ".." else (0 if part in (".", "") else 1)
        if depth < 0:
            return False
    return True


def _extract_zip(archive: Path, staging: Path) -> None:
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            _member_path(info.filename, archive)
            bundle.extract(info, staging)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[anomaly-bench] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- CLI
def catalog_table() -> str:
    """The catalog as text: name, fetched or manual, URL / page, checksum and its source."""
    lines = []
    for source in CATALOG.values():
        how = "fetched" if source.url else "manual"
        lines.append(f"{source.name:<10} {how:<8} {source.title}")
        lines.append(f"{'':<19} {'archive' if source.url else 'page'}: {source.url or source.page}")
        if source.checksum:
            lines.append(f"{'':<19} checksum: {source.checksum}")
            lines.append(f"{'':<19} published in: {source.checksum_source}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``anomaly-bench download`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="anomaly-bench download",
        description=(
            "Download, verify (pinned sha256 / MD5) and unpack a dataset's public archive into --root. "
            "A root that already holds data is never touched; a second call does nothing. Exit status: "
            "0 done or already there, 1 download / verification failed, 2 not downloadable "
            "automatically (the page to get it from is printed) or bad arguments."
        ),
        epilog="Datasets:\n" + catalog_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", nargs="?", help=f"dataset name: {', '.join(CATALOG)} (case-insensitive)")
    parser.add_argument(
        "--root", help="folder to create with the dataset inside (the datamodule's data.root)"
    )
    parser.add_argument(
        "--url",
        default=None,
        help="another archive URL (a mirror, or your own link for a dataset without a public archive)",
    )
    parser.add_argument(
        "--checksum",
        default=None,
        help="ALGO:HEX (sha256 or md5) of the archive; overrides the "
        "pinned checksum, required with --url for manual datasets",
    )
    parser.add_argument("--keep_archive", action="store_true", help="keep the verified archive beside --root")
    parser.add_argument(
        "--retries", type=int, default=3, help="how often a cut connection is resumed (default 3)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    parser.add_argument("--list", action="store_true", help="list the datasets, their archives and checksums")
    return parser


def download_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anomaly-bench download``; returns the exit status (0, 1 or 2, see ``--help``).

    Args:
        argv: the arguments after ``download`` (None: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.list:
        print(catalog_table())
        return 0
    if not args.dataset or not args.root:
        parser.print_usage(sys.stderr)
        print("anomaly-bench download: error: DATASET and --root are required (or --list)", file=sys.stderr)
        return 2
    try:  # bad arguments first: exit status 2
        find_source(args.dataset)
        if args.checksum:
            parse_checksum(args.checksum)
        if args.url:
            archive_name(args.url)
    except DownloadError as err:
        print(f"anomaly-bench download: error: {err}", file=sys.stderr)
        return 2
    try:
        download_dataset(
            args.dataset,
            args.root,
            url=args.url,
            checksum=args.checksum,
            keep_archive=args.keep_archive,
            retries=args.retries,
            progress=not args.quiet,
        )
    except ManualDownloadError as err:
        print(f"anomaly-bench download: {err}", file=sys.stderr)
        return 2
    except DownloadError as err:
        print(f"anomaly-bench download: error: {err}", file=sys.stderr)
        return 1
    return 0
