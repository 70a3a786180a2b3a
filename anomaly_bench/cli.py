"""``anomaly-bench``: a LightningCLI subclass plus the extra subcommands synth, evaluate, benchmark.

    anomaly-bench fit  --config configs/grad_goodsad.yaml
    anomaly-bench test --config configs/grad_goodsad.yaml --ckpt_path last
    anomaly-bench fit  --model CRAD --data MVTecAD --data.root data/mvtec --data.category bottle
    anomaly-bench predict --config X --ckpt_path last --data.predict_path some/images/

What this adds to Lightning's CLI, and nothing else (the Trainer is never overridden):
- a run directory per fit under ``trainer.default_root_dir`` (see ``anomaly_bench.runs``), into
  which config, run info, checkpoints, logs, metrics and pictures go;
- ``--ckpt_path last|best`` that finds the latest run of the same model/data/category;
- default callbacks that a user's own instances replace: ``last.ckpt`` + ``best.ckpt``
  checkpointing and per-epoch reseeding (exact resume);
- CSV logging by default; W&B offline when no API key is configured;
- one-line errors for bad data roots, checkpoints and run references.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from anomaly_bench import runs
from anomaly_bench.callbacks.checkpoint import BestAndLastCheckpoint
from anomaly_bench.callbacks.seeding import EpochSeed
from anomaly_bench.data import AnomalyDataModule
from anomaly_bench.data.io import DataError
from anomaly_bench.models import AnomalyModule

DEFAULT_SEED = 42
RUN_DIR_ENV = "ANOMALY_BENCH_RUN_DIR"
DEFAULT_ROOT = "results"

# extra subcommands: name -> (module, function, one-line help)
EXTRA_SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "synth": ("anomaly_bench.data.synthetic", "synth_main", "write a seeded synthetic dataset in a real layout"),
    "evaluate": ("anomaly_bench.metrics.evaluate_cli", "evaluate_main",
                 "score a folder of saved anomaly maps against a dataset's ground truth"),
    "benchmark": ("anomaly_bench.benchmark.cli", "benchmark_main",
                  "run a grid of models x datasets x categories x seeds and report"),
}


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by another model class than the config asks for."""


def _subclass_names(base: type) -> list[str]:
    found, stack = set(), list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("anomaly_bench.") and not cls.__name__.startswith("_"):
            found.add(cls.__name__)
    return sorted(found)


def _description() -> str:
    extra = "\n".join(f"  {name:<10} {help_}" for name, (_, _, help_) in EXTRA_SUBCOMMANDS.items())
    return (
        "Train, test and benchmark image anomaly-detection methods.\n\n"
        f"Models (--model):      {', '.join(_subclass_names(AnomalyModule))}\n"
        f"Datamodules (--data):  {', '.join(_subclass_names(AnomalyDataModule))}\n\n"
        f"Further subcommands (anomaly-bench <name> --help):\n{extra}"
    )


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config and run info into the run directory (not the logger's folder).

    ``config.yaml`` for fit, ``config_<subcommand>.yaml`` otherwise, plus ``run_info_<subcommand>.json``
    (git SHA, package versions, devices). W&B receives the flattened config.
    """

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            stage = str(getattr(stage, "value", stage))  # TrainerFn: "fit", "validate", "test", "predict"
            name = "config.yaml" if stage == "fit" else f"config_{stage}.yaml"
            self.parser.save(self.config, str(run_dir / name), overwrite=True, multifile=False)
            runs.write_json(run_dir / f"run_info_{stage}.json", runs.run_info(stage))
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def save_config(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ != "WandbLogger":
                continue
            try:
                flat = _flatten(self.config.clone().as_dict())
                logger.experiment.config.update(flat, allow_val_change=True)
            except Exception as err:  # W&B must never fail a run
                print(f"[anomaly_bench] could not send the config to W&B: {err}")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
    elif isinstance(tree, list):
        flat[prefix[:-1]] = str(tree) if any(isinstance(v, (dict, list)) for v in tree) else tree
    else:
        flat[prefix[:-1]] = tree
    return flat


def _class_name(spec: Any) -> str:
    class_path = spec.get("class_path") if hasattr(spec, "get") else None
    return str(class_path).rsplit(".", 1)[-1] if class_path else "Unknown"


class AnomalyBenchCLI(LightningCLI):
    """LightningCLI with anomaly_bench's run directories, checkpoints and defaults."""

    run_dir: Path | None = None

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("trainer_defaults", {"default_root_dir": DEFAULT_ROOT})
        parser_kwargs = kwargs.pop("parser_kwargs", {}) or {}
        parser_kwargs.setdefault("description", _description())
        parser_kwargs.setdefault("formatter_class", _RawFormatter)
        super().__init__(
            AnomalyModule,
            AnomalyDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            **kwargs,
        )

    # ---------------------------------------------------------------------------- parsing
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_dir", type=str | None, default=None,
            help="Exact run directory (default: <trainer.default_root_dir>/<Model>/<Data>/<category>/version_N).",
        )

    # ------------------------------------------------------------------------ run directory
    def before_instantiate_classes(self) -> None:
        subcommand = self.subcommand
        if subcommand is None:
            return
        config = self.config[subcommand]
        model_name = _class_name(config.model)
        data_name = _class_name(config.data)
        category = config.data.get("init_args", {}).get("category") if config.data else None
        root = config.trainer.get("default_root_dir") or DEFAULT_ROOT
        exp_dir = runs.experiment_dir(root, model_name, data_name, category)
        ckpt = config.get("ckpt_path")

        if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
            # a DDP child process re-runs this command line: use rank 0's run directory
            run_dir = Path(os.environ[RUN_DIR_ENV])
        elif config.get("run_dir"):
            run_dir = Path(config.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        elif ckpt in ("last", "best"):
            run_dir = runs.latest_run(exp_dir)
            if run_dir is None:
                raise runs.RunDirError(
                    f"--ckpt_path {ckpt}: no earlier run under {exp_dir}; run `anomaly-bench fit` with the same "
                    "config (same model, data class and category, trainer.default_root_dir) first"
                )
        elif ckpt and runs.run_dir_of_checkpoint(ckpt) is not None and Path(ckpt).is_file():
            run_dir = runs.run_dir_of_checkpoint(ckpt)
        else:
            run_dir = runs.new_run(exp_dir)

        if "ckpt_path" in config:
            config.ckpt_path = runs.resolve_checkpoint(ckpt, run_dir)
        config.trainer.default_root_dir = str(run_dir)
        self.run_dir = run_dir
        os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by DDP child processes
        self._configure_wandb(config, run_dir, model_name, data_name)

    @staticmethod
    def _configure_wandb(config: Any, run_dir: Path, model_name: str, data_name: str) -> None:
        """W&B files in the run directory, one W&B run per run directory (fit and test together),
        offline without an API key. Only values the user left unset are filled in."""
        loggers = config.trainer.get("logger")
        loggers = loggers if isinstance(loggers, list) else [loggers]
        for spec in loggers:
            if not hasattr(spec, "get") or not str(spec.get("class_path", "")).endswith("WandbLogger"):
                continue
            if spec.get("init_args") is None:
                spec.init_args = type(spec)()
            args = spec.init_args
            if args.get("save_dir") in (None, ".", ""):
                args.save_dir = str(run_dir)
            if args.get("name") is None:
                args.name = f"{model_name}/{data_name}/{run_dir.parent.name}/{run_dir.name}"
            if args.get("id") is None and args.get("version") is None:
                args.id = _wandb_run_id(run_dir)
            if not os.environ.get("WANDB_MODE") and not _wandb_key_available() and not args.get("offline"):
                args.offline = True  # no key: keep the run, write W&B files locally (`wandb sync` later)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = CSVLogger(save_dir=trainer_config["default_root_dir"], name="logs",
                                         version=self.subcommand or "run")
        configured = trainer_config.get("callbacks") or []
        configured = list(configured) if isinstance(configured, (list, tuple)) else [configured]
        extra = configured + [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        defaults: list[Callback] = []
        if not any(isinstance(cb, ModelCheckpoint) for cb in extra) and trainer_config.get("enable_checkpointing",
                                                                                           True) is not False:
            defaults.append(BestAndLastCheckpoint(dirpath=str(Path(trainer_config["default_root_dir"]) /
                                                              runs.CHECKPOINT_DIR)))
        if not any(isinstance(cb, EpochSeed) for cb in extra):
            seed = self._get(self.config, "seed_everything")
            defaults.append(EpochSeed(seed if isinstance(seed, int) and not isinstance(seed, bool) else 0))
        if defaults:
            kwargs["callbacks"] = configured + defaults  # Lightning appends the callback_keys ones itself
        return super().instantiate_trainer(**kwargs)

    # --------------------------------------------------------------------- subcommand kwargs
    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        ckpt = kwargs.get("ckpt_path")
        if ckpt:
            self._check_checkpoint_class(ckpt)
            # tensors and plain containers only, unless the user explicitly says otherwise
            if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
                kwargs["weights_only"] = True
        return kwargs

    def _check_checkpoint_class(self, ckpt: str) -> None:
        try:
            payload = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise CheckpointMismatchError(
                f"cannot read checkpoint {ckpt} as a Lightning checkpoint with tensors only ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:300]})"
            ) from err
        written_by = (payload.get("anomaly_bench") or {}).get("model_class")
        wanted = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
        if written_by and written_by.rsplit(".", 1)[-1] != type(self.model).__name__:
            raise CheckpointMismatchError(
                f"checkpoint {ckpt} was written by model {written_by}, but the config's model is {wanted}; "
                "use the config the checkpoint was trained with, or another --ckpt_path"
            )

    # ------------------------------------------------------------------------ reporting
    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            _print(f"run directory: {self.run_dir}")
            ckpt_dir = Path(self.trainer.default_root_dir) / runs.CHECKPOINT_DIR
            if ckpt_dir.is_dir():
                _print(f"checkpoints:   {', '.join(sorted(p.name for p in ckpt_dir.glob('*.ckpt')))}")

    def after_test(self) -> None:
        self._report_metrics()

    def after_validate(self) -> None:
        if self.trainer.is_global_zero:
            _print(f"run directory: {self.run_dir}")

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            _print(f"run directory: {self.run_dir}")
            predictions = Path(self.trainer.default_root_dir) / "predictions.csv"
            if predictions.is_file():
                _print(f"scores:        {predictions}")

    def _report_metrics(self) -> None:
        if not self.trainer.is_global_zero:
            return
        _print(f"run directory: {self.run_dir}")
        metrics_csv = Path(self.trainer.default_root_dir) / "metrics.csv"
        if metrics_csv.is_file():
            print_metrics_table(metrics_csv)


class _RawFormatter(DefaultHelpFormatter):
    """Keep the description's line breaks (the model / datamodule lists) in ``--help``."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _wandb_run_id(run_dir: Path) -> str:
    """A random W&B run id kept in the run directory, so fit, test and resumes share one W&B run."""
    import secrets

    id_file = run_dir / "wandb_run_id"
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = secrets.token_hex(8)
    run_dir.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run_id)
    return run_id


def _wandb_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def _print(message: str) -> None:
    print(f"[anomaly-bench] {message}", flush=True)


def print_metrics_table(metrics_csv: Path) -> None:
    """Print ``metrics.csv`` as a table (rich when available)."""
    import csv

    with metrics_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    columns = list(rows[0].keys())

    def fmt(value: str) -> str:
        try:
            return f"{float(value):.4f}"
        except ValueError:
            return value

    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"metrics ({metrics_csv})")
        for column in columns:
            table.add_column(column, justify="left" if column == "category" else "right")
        for row in rows:
            table.add_row(*[fmt(row.get(c, "")) for c in columns],
                          style="bold" if row.get("category") == "mean" else None)
        Console(width=max(120, 12 * len(columns))).print(table)
    except ImportError:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(fmt(row.get(c, "")) for c in columns))


def _run_extra(name: str, argv: list[str]) -> int:
    module_name, function_name, _ = EXTRA_SUBCOMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(argv) or 0)


USER_ERRORS = (DataError, runs.RunDirError, CheckpointMismatchError)


def main(args: list[str] | None = None) -> int:
    """Console entry point; also usable in-process: ``main(["fit", "--config", "x.yaml"])``."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = bool(os.environ.get("ANOMALY_BENCH_DEBUG"))
    try:
        if argv and argv[0] in EXTRA_SUBCOMMANDS:
            return _run_extra(argv[0], argv[1:])
        AnomalyBenchCLI(args=None if args is None else argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"anomaly-bench: error: {err}", file=sys.stderr)
        if args is None:
            sys.exit(2)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
