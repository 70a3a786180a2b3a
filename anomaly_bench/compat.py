"""Old configs and checkpoints keep working: options and modules renamed since version 0.1.

Each method declares what changed on its Lightning class (``AnomalyModule``):

- ``option_renames``: ``{old option: new option}`` (``anomaly_map_blur`` -> ``blur_anomaly_map``);
- ``option_value_renames``: ``{option: {old value: new value}}`` (``image_score: official`` ->
  ``blur_pool_max``);
- ``state_dict_renames``: ``[(old key prefix, new key prefix)]`` for modules that moved.

Options every method lost are listed here (``REMOVED_OPTIONS``). The CLI upgrades a config file or
command-line key on the fly and prints one deprecation line naming the new key;
``anomaly-bench upgrade-config OLD NEW`` writes the converted file (YAML config or checkpoint).
This module imports no model: it reads those class attributes from the class it is given.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, MutableMapping
from typing import Any

log = logging.getLogger(__name__)

# options of every 0.1 model that moved elsewhere: (old key, where it went, how to convert)
REMOVED_OPTIONS: dict[str, str] = {
    "evaluator": "trainer.callbacks (an anomaly_bench.metrics.Evaluator entry; `false` = Evaluator(enabled=False))",
    "visualizer": "trainer.callbacks (an anomaly_bench.callbacks.Visualizer entry; `false` = Visualizer(enabled=False))",
}
REMOVED_TO_CALLBACK = {"evaluator": "anomaly_bench.metrics.Evaluator",
                        "visualizer": "anomaly_bench.callbacks.Visualizer"}


class ConfigUpgradeError(ValueError):
    """An old option cannot be converted automatically; the message says what to write instead."""


def _renames(cls: Any) -> tuple[dict[str, str], dict[str, dict[Any, Any]], list[tuple[str, str]]]:
    return (dict(getattr(cls, "option_renames", {}) or {}), dict(getattr(cls, "option_value_renames", {}) or {}),
            list(getattr(cls, "state_dict_renames", []) or []))


def upgrade_init_args(cls: Any, init_args: MutableMapping[str, Any], where: str = "model.init_args",
                      notes: list[str] | None = None) -> list[str]:
    """Rename old options / values of ``cls`` in place; returns one note per change.

    Removed callback switches (``evaluator`` / ``visualizer``) are taken out of ``init_args``;
    ``upgrade_config`` turns them into ``trainer.callbacks`` entries.
    """
    notes = [] if notes is None else notes
    names, values, _ = _renames(cls)
    for old, new in names.items():
        if old not in init_args:
            continue
        if new in init_args and init_args[new] != init_args[old]:
            raise ConfigUpgradeError(f"{where}: both the old option {old!r} and its new name {new!r} are set, "
                                     "with different values; keep only "
                                     f"{where}.{new}")
        init_args[new] = init_args.pop(old)
        notes.append(f"{where}.{old} is deprecated: renamed to {where}.{new}")
    for option, table in values.items():
        value = init_args.get(option)
        if isinstance(value, (str, int, float, bool)) and value in table:
            init_args[option] = table[value]
            notes.append(f"{where}.{option}: {value!r} is deprecated: it is now called {table[value]!r}")
    return notes


def upgrade_config(config: MutableMapping[str, Any], resolve_class: Any) -> list[str]:
    """Upgrade a whole config dict (``model`` / ``trainer`` sections) in place; returns the notes.

    Args:
        config: a parsed YAML config (``{"model": {"class_path": ..., "init_args": {...}}, ...}``).
        resolve_class: ``class_path -> class`` (the CLI passes its importer), None for unknown ones.
    """
    notes: list[str] = []
    model = config.get("model")
    if not isinstance(model, MutableMapping):
        return notes
    init_args = model.get("init_args")
    if not isinstance(init_args, MutableMapping):
        return notes
    cls = resolve_class(model.get("class_path")) if model.get("class_path") else None
    if cls is not None:
        upgrade_init_args(cls, init_args, notes=notes)
    data_args = (config.get("data") or {}).get("init_args") if isinstance(config.get("data"), Mapping) else None
    if "image_size" in init_args and isinstance(data_args, Mapping) and "image_size" in data_args:
        # the model's input size is linked from the data's now: one source, never two values
        model_size, data_size = init_args.pop("image_size"), data_args["image_size"]
        if _as_list(model_size) != _as_list(data_size):
            raise ConfigUpgradeError(
                f"model.init_args.image_size={model_size!r} disagrees with data.init_args.image_size={data_size!r}; "
                "the model now takes the data's size: set only data.init_args.image_size")
        notes.append("model.init_args.image_size is deprecated: the model takes data.init_args.image_size; removed")
    for old, target in REMOVED_TO_CALLBACK.items():
        if old not in init_args:
            continue
        value = init_args.pop(old)
        if value is True:
            notes.append(f"model.init_args.{old} is deprecated: the default callbacks are always installed; removed")
            continue
        trainer = config.setdefault("trainer", {})
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if value is False:
            callbacks.append({"class_path": target, "init_args": {"enabled": False}})
        elif isinstance(value, Mapping) and "class_path" in value:
            callbacks.append(dict(value))
        else:
            raise ConfigUpgradeError(f"model.init_args.{old}: cannot convert {value!r}; configure it under "
                                     f"{REMOVED_OPTIONS[old]}")
        trainer["callbacks"] = callbacks
        notes.append(f"model.init_args.{old} is deprecated: moved to {REMOVED_OPTIONS[old]}")
    return notes


def _as_list(size: Any) -> list[int]:
    return [int(size), int(size)] if isinstance(size, (int, float)) else [int(v) for v in size]


def upgrade_checkpoint(checkpoint: MutableMapping[str, Any], cls: Any) -> list[str]:
    """Upgrade a loaded checkpoint dict of ``cls`` in place (hyper-parameters and state-dict keys)."""
    notes: list[str] = []
    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, MutableMapping):
        upgrade_init_args(cls, hparams, where="hyper_parameters", notes=notes)
        for old in REMOVED_TO_CALLBACK:
            if hparams.pop(old, None) is not None:
                notes.append(f"hyper_parameters.{old} dropped (callbacks are configured on the trainer)")
    _, _, prefixes = _renames(cls)
    state = checkpoint.get("state_dict")
    if isinstance(state, MutableMapping) and prefixes:
        renamed = 0
        for key in list(state):
            for old, new in prefixes:
                if key.startswith(old) and not key.startswith(new):
                    state[new + key[len(old):]] = state.pop(key)
                    renamed += 1
                    break
        if renamed:
            notes.append(f"{renamed} state-dict entries renamed to the current module names")
    for note in notes:
        log.info("checkpoint upgrade: %s", note)
    return notes


def warn_deprecated(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(note, FutureWarning, stacklevel=3)
