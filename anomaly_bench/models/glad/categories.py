"""GLAD's per-category inference settings: the official per-class tables, over scalar defaults.

The official code tunes five values per class (T_start, τ, t_min, the start-noise offset and the
pixel-L1 weight v). ``CategoryTable`` holds them with the scalar defaults they fall back to, plus τ
values calibrated on normal images, and answers ``params_for(category)``. It is plain data (no
tensors), so the torch model saves it whole in its state dict (``get_extra_state``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CATEGORY_KEYS = ("t_start", "tau", "t_min", "noise_offset", "pixel_l1_weight")
INTEGER_KEYS = frozenset({"t_start", "t_min", "noise_offset"})


def validate_category_params(table: Any, where: str = "GLAD category_params") -> dict[str, dict[str, float]]:
    """Check ``{category: {key: number}}`` and return a plain copy (one-line errors name the key).

    Args:
        table: the mapping to check; None means no per-category entries.
        where: how error messages name the table (the config key).
    """
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ValueError(f"{where} must be a mapping category -> {{{', '.join(CATEGORY_KEYS)}}}, "
                         f"got {type(table).__name__}")
    checked: dict[str, dict[str, float]] = {}
    for category, entry in table.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}[{category!r}] must be a mapping, got {type(entry).__name__}")
        unknown = set(entry) - set(CATEGORY_KEYS)
        if unknown:
            raise ValueError(f"{where}[{category!r}] has unknown keys {sorted(unknown)}; "
                             f"allowed: {list(CATEGORY_KEYS)}")
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{where}[{category!r}][{key!r}] must be a number, got {value!r}")
        checked[str(category)] = {key: (int(v) if key in INTEGER_KEYS else float(v)) for key, v in entry.items()}
    return checked


@dataclass
class CategoryTable:
    """Inference hyper-parameters per category: table entry, then calibrated τ, over the defaults.

    Attributes:
        defaults: the scalar values every category starts from (``CATEGORY_KEYS``).
        entries: ``{category: {key: value}}`` overriding the defaults (the official per-class table).
        calibrated_tau: ``{category: τ}`` measured on normal images; used instead of the table's τ
            while ``use_calibrated_tau`` is True.
        use_calibrated_tau: False makes the table's τ win even where a calibrated value exists.
    """

    defaults: dict[str, float]
    entries: dict[str, dict[str, float]] = field(default_factory=dict)
    calibrated_tau: dict[str, float] = field(default_factory=dict)
    use_calibrated_tau: bool = True
    _warned: set[str] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def from_options(cls, t_start: int, tau: float, t_min: int, noise_offset: int, pixel_l1_weight: float,
                     category_params: Mapping[str, Mapping[str, float]] | None) -> "CategoryTable":
        """Build from the model's options (the scalar defaults and ``category_params``)."""
        defaults = dict(t_start=int(t_start), tau=float(tau), t_min=int(t_min), noise_offset=int(noise_offset),
                        pixel_l1_weight=float(pixel_l1_weight))
        return cls(defaults, validate_category_params(category_params))

    def default_category(self) -> str | None:
        """The category images without one are scored as: the only calibrated one, if exactly one."""
        return next(iter(self.calibrated_tau)) if len(self.calibrated_tau) == 1 else None

    def params_for(self, category: str | None, with_calibration: bool = True) -> dict[str, float]:
        """The five inference values of one category (None: the scalar defaults).

        Args:
            category: the category name; None gives the scalar defaults.
            with_calibration: let a calibrated τ replace the table's (False while calibrating).
        """
        params = dict(self.defaults)
        if category is None:
            return params
        params.update(self.entries.get(category, {}))
        if not with_calibration:
            return params
        if self.use_calibrated_tau and category in self.calibrated_tau:
            params["tau"] = self.calibrated_tau[category]
        elif self.use_calibrated_tau and self.calibrated_tau and category not in self._warned:
            # a calibrated model meeting a category it was not calibrated on
            self._warned.add(category)
            log.warning("GLAD: no calibrated tau for category %r (calibrated: %s); using the table/default tau %.3f",
                        category, sorted(self.calibrated_tau), params["tau"])
        return params

    def categories(self, names: Sequence[str | None] | None, batch: int) -> list[str | None]:
        """Per-image category names: the given ones, else ``default_category()`` for every image."""
        if names is None:
            return [self.default_category()] * batch
        if len(names) != batch:
            raise ValueError(f"GLAD got {len(names)} categories for {batch} images")
        return list(names)

    # ---------------------------------------------------------------------------- saved state
    def state(self) -> dict[str, Any]:
        return {"defaults": dict(self.defaults), "category_params": {c: dict(e) for c, e in self.entries.items()},
                "calibrated_tau": dict(self.calibrated_tau)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.defaults = {key: state["defaults"][key] for key in CATEGORY_KEYS}
        self.entries = validate_category_params(state.get("category_params"), "saved GLAD category_params")
        self.calibrated_tau = {str(c): float(v) for c, v in (state.get("calibrated_tau") or {}).items()}
        self._warned.clear()
