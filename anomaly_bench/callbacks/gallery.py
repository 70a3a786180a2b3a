"""The heat-map gallery: the same seeded choice of test images for every method, and its files.

A report compares methods on the *same* pictures, so which images get their maps saved must not
depend on the method: each test image gets a key from a hash of (seed, category, label, defect,
its last two path parts), and per category the images with the smallest keys are chosen, ``k``
normal ones and ``k`` anomalous ones with at least one per defect type. The path's last two parts
(not the whole path) make the choice the same wherever the dataset lies (a laptop, a cluster).
The choice can be made streaming (:class:`GalleryCollector`, batch by batch during ``test``,
memory bounded by ``k`` maps per defect type) and equals :func:`select_gallery` on the full list.

On disk, per category (``<run_dir>/gallery/<category>/``)::

    index.json       format anomaly_bench.gallery: the selected images (path, label, defect, score,
                     file names) and the category's display range of map values
    <id>.npy         the raw anomaly map, float16, long side at most ``max_side``
    <id>.png         a thumbnail of the input image (when the file could be read)
    <id>_mask.png    the ground-truth mask at the thumbnail size, 0/255 (anomalous images with masks)

Whether an image is a hit, a miss, a false alarm or a correct normal depends on a method's
threshold: :func:`classify` and :func:`most_confident` do that in the report. No Lightning here.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.atomic import atomic_path, atomic_write_bytes, atomic_write_json

GALLERY_FOLDER = "gallery"
INDEX_FILE = "index.json"
GALLERY_FORMAT = "anomaly_bench.gallery"
GALLERY_VERSION = 1
DEFAULT_PER_CLASS = 4
DEFAULT_SEED = 0
DEFAULT_MAX_SIDE = 256

HIT, MISS, FALSE_ALARM, CORRECT_NORMAL = "hit", "miss", "false_alarm", "correct_normal"
OUTCOMES = (HIT, MISS, FALSE_ALARM, CORRECT_NORMAL)
NORMAL, ANOMALOUS = 0, 1


class GalleryError(ValueError):
    """A gallery index is missing, unreadable or not in the expected format."""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _tail(path: str) -> str:
    parts = Path(str(path).replace("\\", "/")).parts
    return "/".join(parts[-2:])


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


@dataclass(frozen=True)
class GalleryCandidate:
    """A test image as the selection sees it."""

    path: str
    category: str
    defect: str
    label: int

    def key(self, seed: int = DEFAULT_SEED) -> int:
        """The selection key: smaller keys are chosen first; independent of any method.

        Args:
            seed: the selection seed.
        """
        return _hash64(f"{seed}|{self.category}|{self.label}|{self.defect}|{_tail(self.path)}")

    @property
    def item_id(self) -> str:
        """A file-safe id, the same for this image in every run (independent of the seed)."""
        digest = f"{_hash64(f'id|{self.category}|{self.label}|{self.defect}|{_tail(self.path)}'):016x}"[:8]
        return f"{_safe(f'{self.defect}_{Path(self.path).stem}')}_{digest}"


def _choose(
    normals: Sequence[tuple[int, Any]],
    anomalous_by_defect: dict[str, Sequence[tuple[int, Any]]],
    per_class: int,
) -> list[Any]:
    """Anomalous first (each defect's smallest key, then the smallest remaining keys up to
    ``per_class``), then the ``per_class`` normal images with the smallest keys."""
    by_key = lambda kv: kv[0]  # noqa: E731  (keys are unique; never compare the values)
    firsts = sorted((min(items, key=by_key) for items in anomalous_by_defect.values() if items), key=by_key)
    chosen_keys = {key for key, _ in firsts}
    rest = sorted(
        (kv for items in anomalous_by_defect.values() for kv in items if kv[0] not in chosen_keys), key=by_key
    )
    anomalous = firsts + rest[: max(0, per_class - len(firsts))]
    normal = sorted(normals, key=by_key)[:per_class]
    return [value for _, value in anomalous] + [value for _, value in normal]


def select_gallery(
    candidates: Iterable[GalleryCandidate], per_class: int = DEFAULT_PER_CLASS, seed: int = DEFAULT_SEED
) -> list[GalleryCandidate]:
    """The gallery images of a test set: per category, ``per_class`` normal and ``per_class``
    anomalous images (at least one per defect type), chosen by key, not by any score.

    Args:
        candidates: every labelled test image (labels other than 0 / 1 are ignored).
        per_class: normal images, and anomalous images, per category.
        seed: the selection seed (every method of a grid must use the same one).
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    normals: dict[str, dict[int, GalleryCandidate]] = {}
    anomalous: dict[str, dict[str, dict[int, GalleryCandidate]]] = {}
    for candidate in candidates:
        key = candidate.key(seed)
        if candidate.label == NORMAL:
            normals.setdefault(candidate.category, {})[key] = candidate
        elif candidate.label == ANOMALOUS:
            anomalous.setdefault(candidate.category, {}).setdefault(candidate.defect, {})[key] = candidate
    out: list[GalleryCandidate] = []
    for category in sorted(set(normals) | set(anomalous)):
        by_defect = {d: list(items.items()) for d, items in anomalous.get(category, {}).items()}
        out += _choose(list(normals.get(category, {}).items()), by_defect, per_class)
    return out


# ---------------------------------------------------------------------------- classification
def classify(label: int, score: float, threshold: float) -> str:
    """hit / miss / false_alarm / correct_normal of one image at ``threshold`` (score >= threshold
    means flagged as anomalous, as in the metrics' curves).

    Args:
        label: 1 anomalous, 0 normal.
        score: the image's raw score.
        threshold: the method's image threshold.
    """
    flagged = score >= threshold
    if label == ANOMALOUS:
        return HIT if flagged else MISS
    if label == NORMAL:
        return FALSE_ALARM if flagged else CORRECT_NORMAL
    raise ValueError(f"label must be 0 or 1, got {label!r}")


def confidence(score: float, threshold: float, scale: float = 1.0) -> float:
    """How far a score lies from the threshold, in units of ``scale`` (e.g. the score spread), so
    that methods with different score ranges compare.

    Args:
        score: the image's raw score.
        threshold: the method's threshold.
        scale: the unit (values <= 0 or non-finite count as 1).
    """
    unit = scale if scale > 0 and math.isfinite(scale) else 1.0
    return abs(score - threshold) / unit


def most_confident(
    scored: Sequence[tuple[int, float]], threshold: float, scale: float = 1.0
) -> dict[str, list[int]]:
    """Indices of ``scored`` grouped by outcome, each group most confident first (ties by index).

    Args:
        scored: (label, score) per image.
        threshold: the method's threshold.
        scale: the unit of :func:`confidence`.
    """
    groups: dict[str, list[int]] = {outcome: [] for outcome in OUTCOMES}
    for i, (label, score) in enumerate(scored):
        groups[classify(label, score, threshold)].append(i)
    for indices in groups.values():
        indices.sort(key=lambda i: (-confidence(scored[i][1], threshold, scale), i))
    return groups


# ----------------------------------------------------------------------------- collecting
@dataclass
class GalleryEntry:
    """A selected image with its score and its (downsized) raw map."""

    candidate: GalleryCandidate
    score: float
    anomaly_map: np.ndarray  # float16 [h, w]
    map_max: float
    mask_paths: tuple[str, ...] = ()


@dataclass
class _CategoryRange:
    low: float = math.inf
    maxima: list[float] = field(default_factory=list)

    def display_range(self) -> tuple[float, float]:
        low = self.low if math.isfinite(self.low) else 0.0
        high = float(np.percentile(self.maxima, 99)) if self.maxima else low + 1.0
        return low, max(high, low + 1e-12)


def _to_numpy(anomaly_map: Any) -> np.ndarray:
    if hasattr(anomaly_map, "detach"):  # a torch tensor, without importing torch here
        anomaly_map = anomaly_map.detach().float().cpu().numpy()
    array = np.asarray(anomaly_map, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"anomaly map must be [h, w], got shape {array.shape}")
    return array


def _downsize(array: np.ndarray, max_side: int) -> np.ndarray:
    h, w = array.shape
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return array
    import cv2

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)


class GalleryCollector:
    """Chooses the gallery images while test batches stream past and keeps only their maps.

    Call :meth:`offer` for every test image (any order, duplicates ignored), then :meth:`write`.
    The result equals :func:`select_gallery` over the same images.

    Args:
        per_class: normal images, and anomalous images, per category.
        seed: the selection seed (the same for every method of a grid; not the training seed).
        max_side: long side of the stored maps and thumbnails in pixels.
    """

    def __init__(
        self, per_class: int = DEFAULT_PER_CLASS, seed: int = DEFAULT_SEED, max_side: int = DEFAULT_MAX_SIDE
    ) -> None:
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        if max_side < 8:
            raise ValueError(f"max_side must be >= 8 pixels, got {max_side}")
        self.per_class = per_class
        self.seed = seed
        self.max_side = max_side
        # per category: bounded lists of (key, entry), the `per_class` smallest keys of each bucket
        self._normals: dict[str, list[tuple[int, GalleryEntry]]] = {}
        self._anomalous: dict[str, dict[str, list[tuple[int, GalleryEntry]]]] = {}
        self._ranges: dict[str, _CategoryRange] = {}
        self._counts: dict[str, int] = {}
        self._seen: set[tuple[str, int]] = set()

    def offer(
        self,
        path: str,
        category: str,
        defect: str,
        label: int,
        score: float,
        anomaly_map: Any,
        mask_paths: Sequence[str] = (),
    ) -> None:
        """Consider one test image.

        Args:
            path: the image file.
            category: its category.
            defect: its defect type (``good`` for normal images).
            label: 1 anomalous, 0 normal; other labels are ignored.
            score: the method's raw image score.
            anomaly_map: the raw map ``[h, w]`` (numpy or torch).
            mask_paths: ground-truth mask files (unioned for the thumbnail).
        """
        label = int(label)
        if label not in (NORMAL, ANOMALOUS):
            return
        candidate = GalleryCandidate(str(path), str(category), str(defect), label)
        key = candidate.key(self.seed)
        if (category, key) in self._seen:
            return
        self._seen.add((category, key))
        array = _to_numpy(anomaly_map)
        map_max = float(array.max()) if array.size else 0.0
        span = self._ranges.setdefault(category, _CategoryRange())
        if array.size:
            span.low = min(span.low, float(array.min()))
            span.maxima.append(map_max)
        self._counts[category] = self._counts.get(category, 0) + 1
        bucket = (
            self._normals.setdefault(category, [])
            if label == NORMAL
            else self._anomalous.setdefault(category, {}).setdefault(candidate.defect, [])
        )
        if len(bucket) >= self.per_class and key >= bucket[-1][0]:
            return
        entry = GalleryEntry(
            candidate,
            float(score),
            _downsize(array, self.max_side).astype(np.float16),
            map_max,
            tuple(str(p) for p in mask_paths),
        )
        bucket.append((key, entry))
        bucket.sort(key=lambda kv: kv[0])
        del bucket[self.per_class :]

    def merge(self, other: "GalleryCollector") -> None:
        """Add what another collector saw (e.g. another DDP rank's, gathered as objects).

        Args:
            other: a collector with the same ``per_class`` and ``seed``.
        """
        if (other.per_class, other.seed) != (self.per_class, self.seed):
            raise ValueError("cannot merge gallery collectors with different per_class or seed")
        for category, span in other._ranges.items():
            mine = self._ranges.setdefault(category, _CategoryRange())
            mine.low = min(mine.low, span.low)
            mine.maxima.extend(span.maxima)
        for category, count in other._counts.items():
            self._counts[category] = self._counts.get(category, 0) + count
        buckets = [(self._normals.setdefault(c, []), b) for c, b in other._normals.items()]
        buckets += [
            (self._anomalous.setdefault(c, {}).setdefault(d, []), b)
            for c, by_defect in other._anomalous.items()
            for d, b in by_defect.items()
        ]
        for mine_bucket, theirs in buckets:
            known = {k for k, _ in mine_bucket}
            mine_bucket.extend(kv for kv in theirs if kv[0] not in known)
            mine_bucket.sort(key=lambda kv: kv[0])
            del mine_bucket[self.per_class :]
        self._seen |= other._seen

    def categories(self) -> list[str]:
        """The categories seen so far, sorted."""
        return sorted(self._counts)

    def selected(self, category: str) -> list[GalleryEntry]:
        """The chosen images of one category: anomalous first, then normal.

        Args:
            category: a category seen by :meth:`offer`.
        """
        by_defect = {d: list(items) for d, items in self._anomalous.get(category, {}).items()}
        return _choose(list(self._normals.get(category, [])), by_defect, self.per_class)

    def display_range(self, category: str) -> tuple[float, float]:
        """(low, high) for colouring this category's maps: the smallest map value and the 99th
        percentile of the per-image maxima over every image offered (not only the chosen ones).

        Args:
            category: a category seen by :meth:`offer`.
        """
        return self._ranges.get(category, _CategoryRange()).display_range()

    def write(self, run_dir: str | Path) -> list[Path]:
        """Write every category's maps, thumbnails and ``index.json``; returns the index files.

        Args:
            run_dir: the run directory (files go to ``<run_dir>/gallery/<category>/``).
        """
        written = []
        for category in self.categories():
            written.append(
                write_category_gallery(
                    run_dir,
                    category,
                    self.selected(category),
                    self.display_range(category),
                    self._counts[category],
                    self.per_class,
                    self.seed,
                    self.max_side,
                )
            )
        return written


# ------------------------------------------------------------------------------ the files
def gallery_folder(run_dir: str | Path, category: str) -> Path:
    """``<run_dir>/gallery/<category>`` (the name made file-safe).

    Args:
        run_dir: the run directory.
        category: the category name.
    """
    return Path(run_dir) / GALLERY_FOLDER / _safe(category)


def _encode_png(array: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", array)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def _thumbnails(entry: GalleryEntry, max_side: int) -> tuple[bytes | None, bytes | None]:
    """PNG bytes of the input image (BGR order as cv2 writes) and of its mask union, or None."""
    import cv2

    from anomaly_bench.data.io import DataError, read_ground_truth, read_image_rgb

    try:
        image = read_image_rgb(entry.candidate.path)
    except (DataError, OSError, ValueError):
        return None, None
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    thumb = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    mask_png = None
    if entry.mask_paths:
        try:  # the one ground-truth reader (the Evaluator and the visualiser use it too)
            union = read_ground_truth(entry.mask_paths, size_hw=(size[1], size[0]))[0] * 255
            mask_png = _encode_png(union.astype(np.uint8))
        except (DataError, OSError, ValueError):
            mask_png = None
    return _encode_png(cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR)), mask_png


def write_category_gallery(
    run_dir: str | Path,
    category: str,
    entries: Sequence[GalleryEntry],
    display_range: tuple[float, float],
    num_images: int,
    per_class: int = DEFAULT_PER_CLASS,
    seed: int = DEFAULT_SEED,
    max_side: int = DEFAULT_MAX_SIDE,
) -> Path:
    """Write one category's gallery; ``index.json`` last, so a reader never sees a partial one.

    Args:
        run_dir: the run directory.
        category: the category name.
        entries: the chosen images with their maps.
        display_range: (low, high) map values for colouring.
        num_images: how many test images of the category were seen.
        per_class: the selection's ``per_class`` (recorded).
        seed: the selection seed (recorded).
        max_side: long side of the thumbnails in pixels.
    """
    folder = gallery_folder(run_dir, category)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for entry in entries:
        item_id = entry.candidate.item_id
        with atomic_path(folder / f"{item_id}.npy", fsync=False) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, entry.anomaly_map.astype(np.float16))
        image_png, mask_png = _thumbnails(entry, max_side)
        if image_png is not None:
            atomic_write_bytes(folder / f"{item_id}.png", image_png, fsync=False)
        if mask_png is not None:
            atomic_write_bytes(folder / f"{item_id}_mask.png", mask_png, fsync=False)
        items.append(
            {
                "id": item_id,
                "path": entry.candidate.path,
                "label": entry.candidate.label,
                "defect": entry.candidate.defect,
                "score": entry.score,
                "map_max": entry.map_max,
                "map": f"{item_id}.npy",
                "image": f"{item_id}.png" if image_png is not None else None,
                "mask": f"{item_id}_mask.png" if mask_png is not None else None,
            }
        )
    keep = {name for item in items for name in (item["map"], item["image"], item["mask"]) if name}
    for old in folder.iterdir():  # maps of an earlier test of the same run that were not chosen again
        if old.is_file() and old.suffix in (".npy", ".png") and old.name not in keep:
            old.unlink(missing_ok=True)
    index = {
        "format": GALLERY_FORMAT,
        "version": GALLERY_VERSION,
        "category": category,
        "selection": {
            "per_class": per_class,
            "seed": seed,
            "method": "sha256 key of (seed, category, label, "
            "defect, last two path parts); smallest keys; >= 1 per defect type",
        },
        "display_range": [float(display_range[0]), float(display_range[1])],
        "num_images": int(num_images),
        "items": items,
    }
    path = folder / INDEX_FILE
    atomic_write_json(path, index)
    return path


@dataclass
class GalleryItem:
    """One saved image of a gallery index."""

    id: str
    path: str
    label: int
    defect: str
    score: float
    map_file: str
    image_file: str | None = None
    mask_file: str | None = None
    map_max: float | None = None


@dataclass
class GalleryIndex:
    """One category's ``index.json`` and the folder it lies in."""

    category: str
    folder: Path
    display_range: tuple[float, float]
    num_images: int
    per_class: int
    seed: int
    items: list[GalleryItem]

    def load_map(self, item: GalleryItem) -> np.ndarray:
        """The saved raw map of ``item`` as float32.

        Args:
            item: one of ``self.items``.
        """
        path = self.folder / item.map_file
        try:
            return np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as err:
            raise GalleryError(f"{path}: cannot read anomaly map ({err})") from err

    def image_path(self, item: GalleryItem) -> Path | None:
        """The thumbnail file of ``item``, if one was written.

        Args:
            item: one of ``self.items``.
        """
        return self.folder / item.image_file if item.image_file else None

    def mask_path(self, item: GalleryItem) -> Path | None:
        """The mask thumbnail of ``item``, if one was written.

        Args:
            item: one of ``self.items``.
        """
        return self.folder / item.mask_file if item.mask_file else None


def _field(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise GalleryError(f"{where}: key {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def read_gallery_index(path: str | Path) -> GalleryIndex:
    """Read one ``index.json``; problems raise :class:`GalleryError` naming the file and key.

    Args:
        path: a ``gallery/<category>/index.json`` file.
    """
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except OSError as err:
        raise GalleryError(f"{path}: cannot read gallery index ({err.strerror or err})") from err
    except json.JSONDecodeError as err:
        raise GalleryError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(payload, dict) or payload.get("format") != GALLERY_FORMAT:
        raise GalleryError(f"{path}: 'format' must be {GALLERY_FORMAT!r}")
    if not isinstance(payload.get("version"), int) or payload["version"] > GALLERY_VERSION:
        raise GalleryError(f"{path}: unsupported 'version' {payload.get('version')!r}")
    display = payload.get("display_range")
    if not (
        isinstance(display, list) and len(display) == 2 and all(isinstance(v, (int, float)) for v in display)
    ):
        raise GalleryError(f"{path}: 'display_range' must be [low, high]")
    raw_items = payload.get("items")
    if not isinstance(raw_items, list):
        raise GalleryError(f"{path}: 'items' must be a list")
    items = []
    for i, record in enumerate(raw_items):
        where = f"{path}: items[{i}]"
        if not isinstance(record, dict):
            raise GalleryError(f"{where} must be a mapping")
        label = _field(record, "label", int, where)
        if label not in (NORMAL, ANOMALOUS):
            raise GalleryError(f"{where}: 'label' must be 0 or 1, got {label}")
        items.append(
            GalleryItem(
                id=_field(record, "id", str, where),
                path=_field(record, "path", str, where),
                label=label,
                defect=_field(record, "defect", str, where),
                score=float(_field(record, "score", (int, float), where)),
                map_file=_field(record, "map", str, where),
                image_file=record.get("image") or None,
                mask_file=record.get("mask") or None,
                map_max=float(record["map_max"]) if isinstance(record.get("map_max"), (int, float)) else None,
            )
        )
    selection = payload.get("selection") or {}
    return GalleryIndex(
        category=_field(payload, "category", str, str(path)),
        folder=path.parent,
        display_range=(float(display[0]), float(display[1])),
        num_images=int(payload.get("num_images") or 0),
        per_class=int(selection.get("per_class", DEFAULT_PER_CLASS)),
        seed=int(selection.get("seed", DEFAULT_SEED)),
        items=items,
    )


def read_gallery(run_dir: str | Path) -> dict[str, GalleryIndex]:
    """Every readable gallery index of a run, by category; an absent folder gives an empty dict.

    Args:
        run_dir: the run directory.
    """
    found: dict[str, GalleryIndex] = {}
    root = Path(run_dir) / GALLERY_FOLDER
    if not root.is_dir():
        return found
    for path in sorted(root.glob(f"*/{INDEX_FILE}")):
        try:
            index = read_gallery_index(path)
        except GalleryError:
            continue
        found[index.category] = index
    return found
