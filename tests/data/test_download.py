"""``anomaly-bench download``: archives served from a local HTTP server (127.0.0.1, with Range).

download -> verify -> unpack -> the datamodule loads it, for every real layout and the archive
formats tar, tar.gz, tar.xz, zip; wrong checksum, cut connection, a server without Range, unsafe
archives, datasets already on disk, the manual datasets and the catalog itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from anomaly_bench.data import GoodsAD, MPDD, MVTecAD, MVTecLOCO, VisA
from anomaly_bench.data import download as dl
from anomaly_bench.data.synthetic import write_dataset
from anomaly_bench.models.components.synthesis import TextureFolder

TINY = dict(size=32, train=3, test_good=1, per_defect=1, validation=1)


# ------------------------------------------------------------------------------------ the server
class ArchiveServer:
    """Serves ``files`` over HTTP/1.0 on 127.0.0.1 with ``Range: bytes=N-`` support (206), which
    ``http.server`` lacks by itself. ``cut_after`` makes the next response stop after that many
    body bytes; ``range_support=False`` answers every request with the whole file (200)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.range_support = True
        self.cut_after: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                name, asked = self.path.lstrip("/"), self.headers.get("Range")
                server.requests.append((name, asked))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if asked and server.range_support:
                    start = int(asked.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None  # then the connection closes
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """The test server is local: a proxy configured on the machine must not be asked."""
    for key in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture()
def server():
    running = ArchiveServer()
    yield running
    running.close()


# ------------------------------------------------------------------------------------- archives
def _files_under(folder: Path, prefix: str = "") -> list[tuple[str, Path]]:
    return [
        (f"{prefix}{p.relative_to(folder).as_posix()}", p) for p in sorted(folder.rglob("*")) if p.is_file()
    ]


def make_archive(folder: Path, kind: str, prefix: str = "") -> bytes:
    """``folder``'s files as a ``kind`` archive (tar, tar.gz, tar.xz, zip), under ``prefix``."""
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
            for name, path in _files_under(folder, prefix):
                bundle.write(path, name)
    else:
        mode = {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}[kind]
        with tarfile.open(fileobj=buffer, mode=mode) as tar:
            for name, path in _files_under(folder, prefix):
                tar.add(path, name)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _point_catalog(monkeypatch, name: str, url: str, checksum: str) -> None:
    """Let the catalog entry ``name`` fetch from the local server (as if published there)."""
    monkeypatch.setitem(dl.CATALOG, name, dataclasses.replace(dl.CATALOG[name], url=url, checksum=checksum))


def _leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


# ---------------------------------------------------------------------------------- happy paths
LAYOUT_CASES = [  # (datamodule, synthetic layout, archive file name on the server)
    (MVTecAD, "mvtec", "mvtec_anomaly_detection.tar.xz"),
    (VisA, "visa-raw", "VisA_20220922.tar"),
    (MVTecLOCO, "loco", "mvtec_loco_anomaly_detection.tar.xz"),
    (MPDD, "mpdd", "mpdd.zip"),
    (GoodsAD, "goodsad", "goodsad.tar.gz"),
]


@pytest.mark.parametrize("datamodule,layout,archive", LAYOUT_CASES, ids=[c[1] for c in LAYOUT_CASES])
def test_download_verify_unpack_then_the_datamodule_loads_it(
    tmp_path, server, monkeypatch, datamodule, layout, archive
):
    source = tmp_path / "source"
    summary = write_dataset(layout, source, **TINY)
    data = make_archive(source, archive.split(".", 1)[1])
    _point_catalog(monkeypatch, datamodule.dataset_name, server.serve(archive, data), sha256(data))
    root = tmp_path / "data" / "dataset"

    dm = datamodule(root=root, download=True, image_size=32, batch_size=2, num_workers=0, cache="none")
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(dm.categories) == sorted(summary.categories)
    assert len(dm.samples("train")) == TINY["train"] * len(summary.categories)
    assert next(iter(dm.train_dataloader())).image.shape[-2:] == (32, 32)
    # the archive is gone after unpacking; no .part, no staging folder, only the dataset
    assert _leftovers(root.parent, keep=set()) == ["dataset"]
    assert (root / dl.MARKER_NAME).is_file()

    # a second call: no network access at all (the server is even gone)
    served = len(server.requests)
    server.close()
    datamodule(root=root, download=True, num_workers=0).prepare_data()
    assert len(server.requests) == served == 1


def test_dtd_textures_unpack_from_their_dtd_folder_and_load(tmp_path, server, capsys):
    source = tmp_path / "source"
    for texture in ("banded", "dotted"):
        for i in range(2):
            path = source / "images" / texture / f"{texture}_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((16, 16, 3), 40 * i + 30, np.uint8))
    (source / "labels").mkdir()
    (source / "labels" / "labels_joint_anno.txt").write_text("banded/banded_0000.jpg banded\n")
    data = make_archive(source, "tar.gz", prefix="dtd/")  # the official archive's top folder
    url = server.serve("dtd-r1.0.1.tar.gz", data)

    root = tmp_path / "data" / "dtd"
    status = dl.download_main(["DTD", "--root", str(root), "--url", url, "--checksum", sha256(data)])
    assert status == 0
    assert (root / "images" / "banded").is_dir() and (root / "labels").is_dir()
    assert len(TextureFolder(root / "images")) == 4  # what GLAD's texture_dir reads
    assert "DTD ready" in capsys.readouterr().err


def test_md5_checksums_are_accepted_and_an_empty_root_is_filled(tmp_path, server):
    source = tmp_path / "source"
    write_dataset("mvtec", source, categories=["grid"], **TINY)
    data = make_archive(source, "tar.gz")
    url = server.serve("mvtec.tar.gz", data)
    (tmp_path / "mvtec").mkdir()  # an empty folder holds no dataset: it is replaced
    root = dl.download_dataset(
        "MVTecAD",
        tmp_path / "mvtec",
        url=url,
        checksum="md5:" + hashlib.md5(data).hexdigest(),
        progress=False,
    )
    assert MVTecAD(root).categories == ["grid"]


# ------------------------------------------------------------------------------- failure paths
@pytest.fixture()
def served_dataset(tmp_path, server):
    """(url, archive bytes) of a tiny MVTec-layout tar.gz on the server."""
    source = tmp_path / "source"
    write_dataset("mvtec", source, categories=["grid"], **TINY)
    data = make_archive(source, "tar.gz")
    return server.serve("mvtec.tar.gz", data), data


def test_wrong_checksum_is_a_clear_error_and_leaves_nothing_behind(tmp_path, served_dataset, capsys):
    url, data = served_dataset
    parent = tmp_path / "data"
    parent.mkdir()
    wrong = "sha256:" + "0" * 64
    with pytest.raises(
        dl.DownloadError, match=r"checksum mismatch .* expected 0{64} \(the expected value is from your --checksum\)"
    ):
        dl.download_dataset("MVTecAD", parent / "mvtec", url=url, checksum=wrong, progress=False)
    assert _leftovers(parent, keep=set()) == []
    # the command line says the same and exits 1
    assert (
        dl.download_main(
            ["MVTecAD", "--root", str(parent / "mvtec"), "--url", url, "--checksum", wrong, "--quiet"]
        )
        == 1
    )
    assert "checksum mismatch" in capsys.readouterr().err
    assert _leftovers(parent, keep=set()) == []


def test_a_cut_connection_is_resumed_by_the_next_call(tmp_path, server, served_dataset):
    url, data = served_dataset
    root = tmp_path / "data" / "mvtec"
    cut = len(data) // 3
    server.cut_after = cut
    with pytest.raises(dl.DownloadError, match="interrupted .* next call resumes"):
        dl.download_dataset("MVTecAD", root, url=url, checksum=sha256(data), retries=0, progress=False)
    part = root.parent / "mvtec.tar.gz.part"
    assert part.stat().st_size == cut and not root.exists()  # no half dataset

    dl.download_dataset("MVTecAD", root, url=url, checksum=sha256(data), retries=0, progress=True)
    assert server.requests[-1] == ("mvtec.tar.gz", f"bytes={cut}-")
    assert MVTecAD(root).categories == ["grid"]
    assert _leftovers(root.parent, keep={"mvtec"}) == []


def test_a_cut_connection_is_resumed_within_one_call(tmp_path, server, served_dataset):
    url, data = served_dataset
    server.cut_after = 1000
    dl.download_dataset(
        "MVTecAD", tmp_path / "mvtec", url=url, checksum=sha256(data), retries=1, progress=False
    )
    assert server.requests == [("mvtec.tar.gz", None), ("mvtec.tar.gz", "bytes=1000-")]


def test_a_server_without_range_support_gets_a_full_download(tmp_path, server, served_dataset):
    url, data = served_dataset
    server.range_support = False
    part = tmp_path / "mvtec.tar.gz.part"
    part.write_bytes(b"stale bytes that must not stay in front of the archive")
    dl.download_dataset("MVTecAD", tmp_path / "mvtec", url=url, checksum=sha256(data), progress=False)
    assert server.requests == [
        ("mvtec.tar.gz", f"bytes={len(b'stale bytes that must not stay in front of the archive')}-")
    ]
    assert MVTecAD(tmp_path / "mvtec").categories == ["grid"]


def test_a_complete_part_file_is_verified_without_downloading_again(tmp_path, server, served_dataset):
    url, data = served_dataset
    (tmp_path / "mvtec.tar.gz.part").write_bytes(data)  # killed after the last byte, before the rename
    dl.download_dataset("MVTecAD", tmp_path / "mvtec", url=url, checksum=sha256(data), progress=False)
    assert server.requests == [("mvtec.tar.gz", f"bytes={len(data)}-")]  # answered 416: nothing to fetch
    assert MVTecAD(tmp_path / "mvtec").categories == ["grid"]


def test_a_local_archive_given_as_file_url_is_unpacked_and_never_deleted(tmp_path, served_dataset):
    _, data = served_dataset
    own = tmp_path / "mvtec.tar.gz"  # the user's only copy, right where the working copy would go
    own.write_bytes(data)
    url = own.as_uri()
    with pytest.raises(dl.DownloadError, match=r"mvtec.tar.gz already exists and does not match .* left as it is"):
        dl.download_dataset("MVTecAD", tmp_path / "mvtec", url=url, checksum="sha256:" + "0" * 64, progress=False)
    assert own.read_bytes() == data and not (tmp_path / "mvtec").exists()
    dl.download_dataset("MVTecAD", tmp_path / "mvtec", url=url, checksum=sha256(data), progress=False)
    assert MVTecAD(tmp_path / "mvtec").categories == ["grid"]
    assert own.read_bytes() == data  # still there after a successful unpack (keep_archive was not asked)


def test_a_foreign_file_under_the_archive_name_is_refused_not_deleted(tmp_path, server, served_dataset):
    url, data = served_dataset
    foreign = tmp_path / "mvtec.tar.gz"
    foreign.write_bytes(b"someone's other archive")
    with pytest.raises(dl.DownloadError, match=r"already exists and does not match .* move it away, or pass another --root"):
        dl.download_dataset("MVTecAD", tmp_path / "mvtec", url=url, checksum=sha256(data), progress=False)
    assert foreign.read_bytes() == b"someone's other archive" and server.requests == []
    # a downloaded copy (not the user's) is still removed after unpacking
    other = tmp_path / "elsewhere"
    dl.download_dataset("MVTecAD", other / "mvtec", url=url, checksum=sha256(data), progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["mvtec"]


def _tar_with(member: tarfile.TarInfo, payload: bytes = b"x") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        good = tarfile.TarInfo("grid/train/good/000.png")
        good.size = 1
        tar.addfile(good, io.BytesIO(b"x"))
        member.size = len(payload) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isfile() else None)
    return buffer.getvalue()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _zip_with(name: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("grid/train/good/000.png", b"x")
        bundle.writestr(name, b"escaped")
    return buffer.getvalue()


UNSAFE = {
    "dotdot.tar.gz": (_tar_with(tarfile.TarInfo("../escaped.txt")), "outside the target folder"),
    "nested-dotdot.tar.gz": (
        _tar_with(tarfile.TarInfo("grid/../../escaped.txt")),
        "outside the target folder",
    ),
    "absolute.tar.gz": (_tar_with(tarfile.TarInfo("/tmp/escaped.txt")), "outside the target folder"),
    "symlink.tar.gz": (_tar_with(_symlink("grid/link", "../../escaped.txt")), "points outside"),
    "dotdot.zip": (_zip_with("../escaped.txt"), "outside the target folder"),
    "corrupt.tar.gz": (b"\x1f\x8b" + b"not really gzip" * 50, "cannot unpack"),
}


@pytest.mark.parametrize("name", list(UNSAFE))
def test_unsafe_or_corrupt_archives_are_refused_and_leave_nothing(tmp_path, server, name):
    data, message = UNSAFE[name]
    parent = tmp_path / "deep" / "data"
    parent.mkdir(parents=True)
    url = server.serve(name, data)
    with pytest.raises(dl.DownloadError, match=message):
        dl.download_dataset("MVTecAD", parent / "mvtec", url=url, checksum=sha256(data), progress=False)
    assert _leftovers(parent, keep={name}) == []  # no dataset, no staging folder (the archive stays)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_dataset_already_on_disk_is_never_touched(tmp_path, server, served_dataset):
    url, data = served_dataset
    root = tmp_path / "mvtec"
    (root / "bottle").mkdir(parents=True)
    (root / "bottle" / "mine.txt").write_text("user data")
    dl.download_dataset("MVTecAD", root, url=url, checksum=sha256(data), progress=False)
    assert server.requests == []
    assert sorted(p.name for p in root.rglob("*")) == ["bottle", "mine.txt"]


# ------------------------------------------------------------------------- manual and catalog
def test_manual_datasets_name_their_page_and_use_no_network(tmp_path, capsys):
    assert dl.download_main(["GoodsAD", "--root", str(tmp_path / "goods")]) == 2
    err = capsys.readouterr().err
    assert (
        "GoodsAD" in err
        and "https://github.com/jianzhang96/GoodsAD" in err
        and "no direct public archive" in err
    )
    assert not (tmp_path / "goods").exists()
    dm = MPDD(root=tmp_path / "mpdd", download=True)
    with pytest.raises(dl.ManualDownloadError, match="https://github.com/stepanje/MPDD"):
        dm.prepare_data()


def test_bad_arguments_exit_2_and_list_shows_every_dataset(tmp_path, capsys):
    assert dl.download_main(["Folder", "--root", str(tmp_path)]) == 2
    assert "no download known for dataset 'Folder'" in capsys.readouterr().err
    assert dl.download_main(["MVTecAD", "--root", str(tmp_path), "--checksum", "sha1:abc"]) == 2
    assert "expected ALGO:HEX" in capsys.readouterr().err
    assert dl.download_main(["--list"]) == 0
    listing = capsys.readouterr().out
    for name in dl.CATALOG:
        assert name in listing


def test_catalog_entries_are_complete():
    for key, source in dl.CATALOG.items():
        assert key == source.name and dl.find_source(key.upper()) is source
        if source.url is None:  # manual: a page and a note, nothing to verify
            assert source.page.startswith("https://") and source.manual_note and source.checksum is None
            continue
        assert source.url.startswith("https://") and dl.archive_name(source.url)
        assert dl.parse_checksum(source.checksum)[0] in dl.CHECKSUM_ALGORITHMS
        assert source.checksum_source
    # the datamodules' names are the catalog's keys
    for datamodule in (MVTecAD, VisA, MVTecLOCO, MPDD, GoodsAD):
        assert dl.find_source(datamodule.dataset_name).name == datamodule.dataset_name
