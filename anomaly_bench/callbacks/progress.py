"""``LossProgressBar``: the progress bar shows the method's losses, readably, and nothing else.

Lightning's bar adds the logger's version (``v_num: fit``) and, for a value logged both per step
and per epoch, two entries (``train/loss_step``, ``train/loss_epoch``) printed with three decimals,
so a CRAD loss of 0.0004 shows as ``0.000``. Here: no version, one entry per quantity (the step
value while training), short names, four significant digits.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


def progress_items(metrics: dict[str, Any]) -> dict[str, str]:
    """``{"train/loss_step": 0.00041, "train/loss_epoch": 0.0005, "v_num": "fit"}`` -> ``{"loss": "0.00041"}``."""
    items: dict[str, str] = {}
    for key, value in metrics.items():
        if key == "v_num":
            continue
        name = key.split("/")[-1]
        if name.endswith("_epoch") and f"{key[:-len('_epoch')]}_step" in metrics:
            continue  # the per-step value of the same quantity is shown
        name = name[:-len("_step")] if name.endswith("_step") else name
        items[name] = f"{value:.4g}" if isinstance(value, float) else str(value)
    return items


class LossProgressBar(TQDMProgressBar):
    """The default progress bar of anomaly_bench runs where Lightning would use tqdm (see the module docstring)."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        return progress_items(dict(trainer.progress_bar_metrics))


class LossRichProgressBar(RichProgressBar):
    """The same where Lightning would use rich (its default when rich is installed)."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        return progress_items(dict(trainer.progress_bar_metrics))


def readable_progress_bar(present: list[Any]) -> Any | None:
    """The replacement for Lightning's own default bar among ``present`` (None when the user chose one)."""
    if any(type(cb) is RichProgressBar for cb in present):
        return LossRichProgressBar()
    if any(type(cb) is TQDMProgressBar for cb in present):
        return LossProgressBar()
    return None
