"""``anomaly-bench export`` and ``anomaly-bench predict --export DIR``: the CLI side of ``anomaly_bench.deploy``.

    anomaly-bench export --config configs/demo/crad.yaml --ckpt_path last --format onnx
    anomaly-bench export --config X --ckpt_path last --format onnx,openvino,torch --output exports/crad
    anomaly-bench predict --export results/CRAD/MVTecAD/all/version_0/export/onnx some/images/

``export`` reads the config exactly as ``fit`` / ``test`` do (the same parser, short model names,
0.1 option names, ``--ckpt_path last|best`` found in the newest run of the same model, data and
category), loads the checkpoint into the configured model and writes one folder per format
(default ``<run>/export/<format>``) with the graph(s) and ``metadata.json``. ``predict --export``
scores image files with the standalone inferencer (no Lightning; no torch for ONNX / OpenVINO) and
writes ``predictions.csv`` and predicted masks (default ``<export>/predictions``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from anomaly_bench import runs
from anomaly_bench.cli import (
    DEFAULT_ROOT,
    AnomalyBenchCLI,
    CheckpointMismatchError,
    ConfigError,
    _class_name,
    _import_class,
    _print,
    prepare_argv,
)
from anomaly_bench.deploy.graphs import ExportError, graph_export_blocker
from anomaly_bench.deploy.metadata import FORMATS, ExportMetadataError
from anomaly_bench.deploy.preprocess import PreprocessError
from anomaly_bench.deploy.runtimes import RuntimeMissingError

DEFAULT_OPSET = 18  # anomaly_bench.deploy.export.DEFAULT_OPSET (not imported here: it pulls in the exporters)
GRAPH_FORMATS = ("onnx", "openvino")
EXPORT_DESCRIPTION = (
    "Export a trained model to ONNX, OpenVINO or a torch program, with metadata.json (input size, "
    "normalisation, resize rule, thresholds, versions). Takes the same --config / --model / --data options "
    "as fit and test.\n\nFormats: onnx (ONNX Runtime), openvino (OpenVINO IR, float32), torch (torch.export "
    ".pt2; TorchScript or a pickled module where torch.export cannot capture the model). GLAD exports to "
    "torch only (its diffusion loop stops on data). Several formats: --format onnx,openvino."
)


def parse_formats(value: str) -> list[str]:
    """``onnx`` / ``onnx,openvino`` -> the formats, in order, each once; a one-line error otherwise.

    Args:
        value: the ``--format`` value.
    """
    formats = [part.strip().lower() for part in str(value).split(",") if part.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--format {value!r}: expected one of {', '.join(FORMATS)} (or several, comma-separated)")
    return list(dict.fromkeys(formats))


class ExportCLI(AnomalyBenchCLI):
    """The fit/test parser plus the export options; builds the model and datamodule, no Trainer."""

    checkpoint: str | None = None
    outputs: dict[str, Path]

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Checkpoint to export: last or best (the newest run of this model, data and "
                                 "category under trainer.default_root_dir) or a .ckpt file.")
        parser.add_argument("--format", type=str, default="onnx",
                            help="onnx, openvino or torch; several separated by commas (onnx,openvino).")
        parser.add_argument("--output", type=str | None, default=None,
                            help="Export folder (default <run>/export/<format>); with several formats, the "
                                 "folder that receives one sub-folder per format.")
        parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset of onnx / openvino (>= 17).")
        parser.add_argument("--check", type=bool, default=True,
                            help="Run each ONNX / OpenVINO graph in its runtime on random inputs and refuse an "
                                 "export that differs from the torch model by more than 1e-4 (relative).")

    def before_instantiate_classes(self) -> None:
        config = self.config
        formats = parse_formats(config.format)
        model_name, data_name = _class_name(config.model), _class_name(config.data)
        model_class = _import_class(config.model.get("class_path"))
        blocker = graph_export_blocker(model_class) if model_class is not None else None
        refused = [f for f in formats if f in GRAPH_FORMATS]
        if blocker is not None and refused:
            raise ConfigError(f"{model_name} exports to torch only (--format torch), not {'/'.join(refused)}: "
                              f"{blocker.split('; use --format')[0]}")
        category = config.data.get("init_args", {}).get("category") if config.data else None
        root = config.trainer.get("default_root_dir") or DEFAULT_ROOT
        exp_dir = runs.experiment_dir(root, model_name, data_name, category)
        ckpt = config.get("ckpt_path")
        run_dir: Path | None = None
        if not ckpt:
            if getattr(model_class, "needs_training", True):
                raise runs.RunDirError(
                    f"`anomaly-bench export` needs a trained model: add --ckpt_path last (the newest run of "
                    f"{model_name} on {data_name}/{runs.category_tag(category)} under {root}), best, or a file")
        elif ckpt in ("last", "best"):
            run_dir = runs.latest_run(exp_dir, ckpt)
            if run_dir is None:
                raise runs.RunDirError(
                    f"--ckpt_path {ckpt}: no run with a checkpoint under {exp_dir}; run `anomaly-bench fit` with the "
                    "same config (same model, data class and category, trainer.default_root_dir) first")
            self.checkpoint = runs.resolve_checkpoint(ckpt, run_dir)
        else:
            self.checkpoint = runs.resolve_checkpoint(ckpt, None)
            run_dir = runs.run_dir_of_checkpoint(self.checkpoint)
        self.outputs = _output_folders(formats, config.get("output"), run_dir)

    def instantiate_trainer(self, **kwargs: Any) -> None:  # type: ignore[override]
        return None  # exporting needs the model and the datamodule's settings only


def _output_folders(formats: list[str], output: str | None, run_dir: Path | None) -> dict[str, Path]:
    if output:
        base = Path(output)
        return {formats[0]: base} if len(formats) == 1 else {fmt: base / fmt for fmt in formats}
    if run_dir is None:
        raise ConfigError("--output is needed: the checkpoint is not inside a run directory "
                          "(<run>/checkpoints/*.ckpt), so there is no <run>/export to write to")
    return {fmt: run_dir / "export" / fmt for fmt in formats}


def load_checkpoint(cli: ExportCLI, checkpoint_path: str) -> None:
    """Load a checkpoint into the CLI's model the way ``trainer.test(ckpt_path=...)`` does (hooks, renames,
    thresholds), after the CLI's own check that it belongs to the configured model."""
    cli._check_checkpoint(checkpoint_path)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    module = cli.model
    module.on_load_checkpoint(checkpoint)
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointMismatchError(f"checkpoint {checkpoint_path} does not fit the configured model: "
                                      f"{' '.join(first[:2])[:300]}") from None


def _configured_categories(datamodule: Any) -> list[str] | None:
    category = getattr(datamodule, "category", None)
    if isinstance(category, str) and category != "all":
        return [category]
    if isinstance(category, (list, tuple)):
        return [str(c) for c in category]
    return None


def export_main(argv: list[str] | None = None) -> int:
    """``anomaly-bench export``: config + checkpoint -> graph folders with ``metadata.json``."""
    from anomaly_bench.deploy.export import export_module

    argv, notes = prepare_argv(list(sys.argv[1:] if argv is None else argv))
    for note in notes:
        print(f"anomaly-bench: deprecated: {note}", file=sys.stderr)
    cli = ExportCLI(args=argv, run=False, parser_kwargs={"prog": "anomaly-bench export",
                                                          "description": EXPORT_DESCRIPTION})
    module, datamodule, config = cli.model, cli.datamodule, cli.config
    if cli.checkpoint:
        load_checkpoint(cli, cli.checkpoint)
    normalization = getattr(datamodule, "normalization", None) or module.input_normalization
    data = {"class_path": config.data.get("class_path"), "category": getattr(datamodule, "category", None),
            "image_size": list(datamodule.image_size)}
    try:
        written = export_module(module, cli.outputs, datamodule.image_size, normalization,
                                checkpoint=cli.checkpoint, categories=_configured_categories(datamodule),
                                opset=int(config.opset), check=bool(config.check), extra={"data": data})
    except (ExportError, ExportMetadataError, RuntimeMissingError) as err:
        raise ConfigError(str(err)) from None
    for fmt, metadata in written.items():
        _report(fmt, cli.outputs[fmt], metadata)
    return 0


def _report(fmt: str, folder: Path, metadata: dict[str, Any]) -> None:
    graphs = metadata["graphs"]
    files = ", ".join(g["file"] for g in graphs)
    _print(f"{fmt}: {folder} ({files}; {metadata['total_bytes'] / 1e6:.1f} MB)")
    check = metadata.get("check")
    if check:
        worst = max(v for errors in check["relative_difference"].values() for v in errors.values())
        _print(f"  checked against torch: largest relative difference {worst:.1e} (limit {check['tolerance']:g})")
    if metadata.get("torch_program") and metadata["torch_program"] != "torch.export":
        _print(f"  torch program: {metadata['torch_program']} ({metadata['exporter']['load']})")
        for note in metadata.get("notes", []):
            _print(f"  why: {note}")
    if not metadata.get("thresholds"):
        _print("  no thresholds in the checkpoint: the inferencer gives raw scores and maps, no verdicts")


# ------------------------------------------------------------------------------ predict --export
def predict_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomaly-bench predict --export",
        description="Score images with an exported model (anomaly_bench.deploy.Inferencer: no Lightning, no torch "
                    "for onnx / openvino exports) and write predictions.csv and predicted masks.")
    parser.add_argument("--export", required=True, type=Path, help="a folder written by `anomaly-bench export`")
    parser.add_argument("paths", nargs="*", type=Path, help="image files or folders (searched recursively)")
    parser.add_argument("--data.init_args.predict_path", dest="predict_paths", action="append", type=Path,
                        default=[], help="an image file or folder, as for the Lightning predict (repeatable)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where predictions.csv and masks/ go (default <export>/predictions)")
    parser.add_argument("--category", default=None,
                        help="the images' category: selects its graph (per-category exports) and its thresholds")
    parser.add_argument("--batch_size", type=int, default=8, help="images per graph call (memory, not results)")
    parser.add_argument("--device", default="CPU", help="CPU, an OpenVINO device (GPU, AUTO) or a torch device")
    parser.add_argument("--num_threads", type=int, default=None, help="runtime threads (default: all cores)")
    parser.add_argument("--resize_backend", default="auto", choices=("auto", "opencv", "numpy"),
                        help="auto: OpenCV when installed (identical to training), else NumPy (within one level)")
    return parser


def predict_export_main(argv: list[str] | None = None) -> int:
    """``anomaly-bench predict --export DIR PATHS...``: the standalone inferencer over image files."""
    from anomaly_bench.data.files import list_images_recursive
    from anomaly_bench.deploy.inferencer import Inferencer
    from anomaly_bench.deploy.predictions import write_predictions

    args = predict_export_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    roots = [*args.paths, *args.predict_paths]
    if not roots:
        raise ConfigError("predict --export: give image files or folders to score (PATHS or "
                          "--data.init_args.predict_path)")
    try:
        inferencer = Inferencer(args.export, device=args.device, num_threads=args.num_threads,
                                resize_backend=args.resize_backend)
        images = [image for root in roots for image in list_images_recursive(root)]
        output = args.output or args.export / "predictions"
        csv_path, results = write_predictions(inferencer, images, output, args.category, args.batch_size,
                                              roots=[r for r in roots if r.is_dir()])
    except (ExportMetadataError, PreprocessError, RuntimeMissingError) as err:
        raise ConfigError(str(err)) from None
    flagged = sum(1 for r in results if r.label == 1)
    verdicts = f", {flagged} flagged anomalous" if any(r.label is not None for r in results) else \
        " (no thresholds in the export: raw scores only)"
    _print(f"scored {len(results)} images with {args.export} ({inferencer.format}){verdicts}")
    _print(f"scores:        {csv_path}")
    return 0
