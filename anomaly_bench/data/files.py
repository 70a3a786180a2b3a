"""Listing dataset folders strictly: every file is either used or reported, never silently skipped.

Real releases contain only images in their image folders; anything else there (a stray text file,
an image with an unknown extension) usually means a broken extraction, so we say which file it is.
Hidden files and OS litter (``.DS_Store``, ``Thumbs.db``) are the one exception.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_bench.data.io import DataError

# VisA uses upper-case .JPG, GoodsAD lower-case .jpg; compare case-insensitively.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_OS_LITTER = {"thumbs.db", "desktop.ini"}


def is_ignorable(path: Path) -> bool:
    """Hidden files and OS metadata files that no dataset contains on purpose."""
    return path.name.startswith(".") or path.name.lower() in _OS_LITTER


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise a DataError saying what was expected there."""
    if not path.is_dir():
        raise DataError(f"expected {what} at {path}, but it is missing or not a directory")
    return path


def list_images(folder: Path, what: str, allow_subdirs: bool = False) -> list[Path]:
    """Sorted image files directly inside ``folder``.

    Raises a DataError for a missing folder and for any non-image file in it (named), so that a
    half-extracted archive or a mis-placed file is noticed instead of shrinking the dataset.
    """
    require_dir(folder, what)
    images: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if is_ignorable(entry):
            continue
        if entry.is_dir():
            if allow_subdirs:
                continue
            raise DataError(f"unexpected sub-folder {entry} inside {what} ({folder}); expected only image files")
        if entry.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(
                f"unexpected file {entry} inside {what}; expected image files with one of the extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}"
            )
        images.append(entry)
    return images


def list_subdirs(folder: Path, what: str) -> list[Path]:
    """Sorted sub-directories of ``folder`` (hidden ones skipped)."""
    require_dir(folder, what)
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not is_ignorable(p)]


def list_images_recursive(path: Path) -> list[Path]:
    """A single image file, or every image below a folder (for predict on unlabelled data)."""
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"predict_path {path} is not an image file (extensions {', '.join(IMAGE_EXTENSIONS)})")
        return [path]
    if not path.is_dir():
        raise DataError(f"predict_path {path} does not exist; expected an image file or a folder of images")
    found = sorted(
        p for p in path.rglob("*")
        if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
        raise DataError(f"predict_path {path} contains no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return found
