"""Capturing a torch model's inference once and writing it in each format (the exporter's tools).

``capture`` runs ``torch.export`` on ``ScoringGraph(model)`` with a dynamic batch; the program is
then written as ONNX (``torch.onnx.export``, the dynamo exporter), converted from that ONNX file to
OpenVINO, or saved as a torch program. ONNX and OpenVINO get the same portable program
(``decompositions.portable_program``), so both run one graph.
"""

from __future__ import annotations

import inspect
import pickle
import re
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anomaly_bench.deploy.metadata import INPUT_NAME, OUTPUT_NAMES

MAX_BATCH = 4096
# methods whose inference is not a fixed graph, by Lightning or torch model class name, and why
GRAPH_BLOCKERS = {
    "GLAD": "GLAD's inference is an iterative diffusion loop whose ADS rule stops each image's denoising "
            "on data (data-dependent stopping), which an ONNX / OpenVINO graph cannot express; use --format torch",
}
GRAPH_BLOCKERS["GLADModel"] = GRAPH_BLOCKERS["GLAD"]


class ExportError(ValueError):
    """The model cannot be exported in the asked format, or the export disagrees with the model."""


def graph_export_blocker(model: Any) -> str | None:
    """Why ``model`` (an instance or class) cannot become an ONNX / OpenVINO graph, or None.

    A class may say so itself with a ``graph_export_blocker`` string attribute.

    Args:
        model: a Lightning module, torch model, or their class.
    """
    cls = model if isinstance(model, type) else type(model)
    own = getattr(cls, "graph_export_blocker", None)
    if isinstance(own, str) and own:
        return own
    for klass in cls.__mro__:
        if klass.__name__ in GRAPH_BLOCKERS:
            return GRAPH_BLOCKERS[klass.__name__]
    return None


class ScoringGraph(nn.Module):
    """What every export holds: ``images -> (anomaly_map, pred_score)`` as float32 tensors.

    Args:
        model: a torch model whose ``forward(images)`` returns an ``AnomalyOutput``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        output = self.model(images)
        return output.anomaly_map.float(), output.pred_score.float()


def category_models(model: nn.Module) -> dict[str | None, nn.Module]:
    """``{None: model}``, or ``{category: its model}`` when the model scores each category with its own
    network (it lists ``categories`` and returns each one's module from ``category(name)``).

    Args:
        model: the torch model.
    """
    categories = list(getattr(model, "categories", None) or [])
    chooser = getattr(model, "category", None)
    if len(categories) > 1 and callable(chooser):
        return {str(c): chooser(c) for c in categories}
    return {None: model}


def graph_file_name(category: str | None, suffix: str) -> str:
    """``model<suffix>`` for a graph of every category, else the category's name made file-safe.

    Args:
        category: the graph's category or None.
        suffix: the format's file suffix (``.onnx``, ``.xml``, ``.pt2``...).
    """
    if category is None:
        return f"model{suffix}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"_{ord(m.group()):x}", category)
    return f"{safe}{suffix}"


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress lines and their warnings about every traced Python branch."""
    with warnings.catch_warnings(), redirect_stdout(StringIO()):
        warnings.simplefilter("ignore")
        yield


def _where(err: BaseException | None) -> str:
    """The model line a torch.export error points at (``file:line (code)``), if it names one."""
    text = str(err)
    for pattern in (r'raised this error:\s*File "([^"]+)", line (\d+)[^\n]*\n\s*(.+)',
                    r'File "([^"]*anomaly_bench[^"]*)", line (\d+)[^\n]*\n\s*(.+)'):
        match = re.search(pattern, text)
        if match:
            return f" at {Path(match.group(1)).name}:{match.group(2)} ({match.group(3).strip()[:80]})"
    return ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def capture(graph: nn.Module, example: Tensor, what: str) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` of ``graph`` with a dynamic batch (a batch of one if the model fixes it).

    Args:
        graph: the ``ScoringGraph`` to capture (eval mode, CPU).
        example: an example batch of at least two images (a batch of one is specialised).
        what: names the model in errors.

    Returns:
        ``(program, dynamic_batch)``; an ``ExportError`` names the failing line when even a
        batch of one cannot be captured.
    """
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    attempts = (((example,), dynamic, True), ((example[:1],), None, False))  # a model may fix its batch
    failure: BaseException | None = None
    with quiet(), torch.no_grad():
        for args, shapes, is_dynamic in attempts:
            try:
                return torch.export.export(graph, args, dynamic_shapes=shapes, strict=False), is_dynamic
            except Exception as err:  # noqa: BLE001 - torch.export raises many types; reported below
                failure = err
    raise ExportError(f"{what}: torch.export cannot capture the model's forward{_where(failure)}: "
                      f"{_first_line(failure)}")


def write_onnx(program: torch.export.ExportedProgram, example: Tensor, path: Path, opset: int) -> list[str]:
    """Write ``program`` as ONNX at ``path`` (weights inline below 2 GB); returns the file names."""
    with quiet():
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=opset,
                                         input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), optimize=True)
        onnx_program.save(str(path))
    return sorted(p.name for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(path.name + "."))


def write_openvino(onnx_path: Path, path: Path) -> list[str]:
    """Convert an ONNX file to OpenVINO IR at ``path`` (``.xml`` + ``.bin``, float32 weights)."""
    import openvino as ov

    converted = ov.convert_model(str(onnx_path))
    ov.save_model(converted, str(path), compress_to_fp16=False)
    return [path.name, path.with_suffix(".bin").name]


def takes_categories(model: nn.Module) -> bool:
    """Whether ``model.forward`` also takes each image's category (``categories``)."""
    try:
        return "categories" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def write_torch(program: torch.export.ExportedProgram | None, graph: nn.Module, model: nn.Module, folder: Path,
                category: str | None, reason: str | None) -> tuple[str, str, str, str | None]:
    """Save the torch format: the ``torch.export`` program, else TorchScript, else the pickled module.

    Args:
        program: the captured program, or None when capturing failed or was not tried.
        graph: the ``ScoringGraph`` (scripted when there is no program).
        model: the torch model (pickled whole as the last resort).
        folder: where the file goes.
        category: the graph's category (names the file).
        reason: why there is no program (recorded).

    Returns:
        ``(file name, torch_program, call, note)``.
    """
    if program is not None:
        name = graph_file_name(category, ".pt2")
        torch.export.save(program, str(folder / name))
        return name, "torch.export", "images", None
    notes = [reason] if reason else []
    try:
        with quiet():
            scripted = torch.jit.script(graph)
        name = graph_file_name(category, ".ts")
        scripted.save(str(folder / name))
        return name, "torchscript", "images", "; ".join(notes) or None
    except Exception as err:  # noqa: BLE001 - the pickled module is the last resort
        notes.append(f"torch.jit.script failed ({_first_line(err)[:200]})")
    name = graph_file_name(category, ".pt")
    torch.save(model, str(folder / name), pickle_module=_MethodPickling)
    return name, "pickled_module", "images_and_categories" if takes_categories(model) else "images", "; ".join(notes)


def bind(function: Any, instance: Any) -> types.MethodType:
    """``function`` bound to ``instance`` (what an unpickled bound-method attribute is rebuilt with)."""
    return types.MethodType(function, instance)


class _BoundMethodPickler(pickle.Pickler):
    """Pickles a method bound onto a module as an attribute (e.g. GLAD's DINO position embedding,
    ``vit._pos_embed = MethodType(dino_position_embedding, vit)``) as ``bind(function, instance)``:
    the default pickles it as ``getattr(instance, function name)``, which fails on loading."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.MethodType) and not isinstance(obj.__self__, type):
            return bind, (obj.__func__, obj.__self__)
        return NotImplemented


class _MethodPickling:
    """The ``pickle_module`` ``torch.save`` uses for pickled modules (only ``Pickler`` is needed)."""

    Pickler = _BoundMethodPickler
