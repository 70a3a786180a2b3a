"""``anomaly-bench``: a LightningCLI subclass plus the extra subcommands (synth, evaluate, benchmark...).

    anomaly-bench fit  --config configs/grad_goodsad.yaml
    anomaly-bench test --config configs/grad_goodsad.yaml --ckpt_path last
    anomaly-bench fit  --model crad --data MVTecAD --data.root data/mvtec --data.category bottle
    anomaly-bench predict --config X --ckpt_path last --data.init_args.predict_path some/images/

What this adds to Lightning's CLI, and nothing else (the Trainer is never overridden):
- a run directory per fit under ``trainer.default_root_dir`` (``anomaly_bench.runs``), into which
  config, run info, checkpoints, logs, metrics and pictures go; ``--ckpt_path last|best`` finds the
  newest run of the same model/data/category that has that checkpoint;
- the data's ``image_size`` linked to the model's, so they cannot disagree;
- the config file and command line win over a checkpoint's hyper-parameters (a conflict that the
  weights cannot follow is an error naming the keys); ``test`` / ``predict`` refuse to score an
  untrained model;
- old option names still accepted with a deprecation line (``anomaly_bench.compat``);
- CSV logs kept (and appended to on resume) beside any other logger; W&B offline without an API key;
- a quiet terminal (Lightning's tips and known harmless warnings filtered here, at our entry point
  only) and one result table sized to the terminal;
- one-line errors (exit code 2) for bad data, options, checkpoints and run references.
The default callbacks (metrics, pictures, scores, checkpoints, seeding) are not installed here but
by every AnomalyModule (``anomaly_bench.callbacks.defaults``), so the Python API gets the same ones.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger

from anomaly_bench import __version__, compat, runs
from anomaly_bench.callbacks.rundir import mark_run_dir
from anomaly_bench.data import DATAMODULES
from anomaly_bench.data.datamodule import AnomalyDataModule
from anomaly_bench.data.io import DataError
from anomaly_bench.loggers import RunCSVLogger
from anomaly_bench.models import CONFIG_NAMES, MODELS
from anomaly_bench.models.base import CHECKPOINT_KEY, AnomalyModule
from anomaly_bench.models.components.weights import WeightsUnavailableError
from anomaly_bench.shipped import resolve_config_path
from anomaly_bench.terminal import print_metrics_table, quiet_terminal

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
    "download": ("anomaly_bench.data.download", "download_main", "fetch, verify and unpack a dataset's public archive"),
    "report": ("anomaly_bench.report", "report_main", "write a self-contained report.html for a run or a grid"),
    "weights": ("anomaly_bench.weights_cli", "weights_main", "list a config's pretrained parts and whether each is here"),
    "export": ("anomaly_bench.export_cli", "export_main", "export a model to ONNX / OpenVINO / torch + metadata"),
    "upgrade-config": ("anomaly_bench.cli", "upgrade_config_main",
                       "convert a 0.1 config (.yaml) or checkpoint (.ckpt) to today's option names"),
}
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
PREDICT_WITH_EXPORT = ("anomaly_bench.export_cli", "predict_export_main")  # `predict --export DIR`


class CheckpointMismatchError(ValueError):
    """The checkpoint cannot serve the configured model (another class, other weights' shapes, unreadable)."""


class ConfigError(ValueError):
    """A model or datamodule option has a value its class refuses; the message names the key."""


def _import_class(class_path: str | None) -> type | None:
    if not class_path or "." not in str(class_path):
        return None
    module, _, name = str(class_path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def register_all() -> None:
    """Import every model and datamodule the registries list, so ``--model X`` / ``--data X`` resolve."""
    for name, module in {**MODELS, **DATAMODULES}.items():
        getattr(importlib.import_module(module), name)


def _description() -> str:
    extra = "\n".join(f"  {name:<15} {help_}" for name, (_, _, help_) in EXTRA_SUBCOMMANDS.items())
    aliases = ", ".join(f"{cls} ({alias})" for alias, cls in CONFIG_NAMES.items())
    return (
        "Train, test and benchmark image anomaly-detection methods.\n\n"
        f"Models (--model, class or config name):  {aliases}\n"
        f"Datamodules (--data):                     {', '.join(DATAMODULES)}\n\n"
        f"Further subcommands (anomaly-bench <name> --help):\n{extra}\n"
        "  --version       print the version and exit"
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
            text = self.parser.dump(self.config, skip_none=False)
            from anomaly_bench.atomic import atomic_write_text

            atomic_write_text(run_dir / name, text)
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


_NOT_ACCEPTED = re.compile(r"class_path '([\w.]+)':\s*\n?\s*Option '(\w+)' is not accepted")
_KEY_OF_ERROR = re.compile(r'Parser key "([\w.]+)"')


class CompactErrorParser(LightningArgumentParser):
    """The CLI's parser: a mistake in a config or option is a short message, not the 50-line usage.

    jsonargparse prints the whole usage before every error, and for a misspelt model or data option
    an error about every Union member; this keeps the message, names the key, adds the closest option
    names and points at ``--help``. ``ANOMALY_BENCH_DEBUG`` (or jsonargparse's debug mode) gives the
    full original.
    """

    def error(self, message: str, ex: Exception | None = None):  # type: ignore[override]
        from jsonargparse._common import debug_mode_active  # noqa: PLC0415  (private: only for the same switch)

        if not self.exit_on_error or debug_mode_active() or os.environ.get("ANOMALY_BENCH_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        sys.stderr.write(f"anomaly-bench: error: {_readable_parse_error(message)}\n"
                         f"  (every option: {parser.prog.replace(' [options]', '')} --help; a method's: "
                         "--model.help NAME)\n")
        self.exit(2)


_BAD_INIT_VALUE = re.compile(r"class_path '([\w.]+)':\s*\n\s*Parser key \"(\w+)\":\s*\n\s*(Expected .*)")
_BAD_INIT_UNION = re.compile(r"class_path '([\w.]+)':\s*\n\s*Parser key \"(\w+)\":\s*\n\s*Does not validate[^\n]*\n"
                             r"\s*Subtypes: ([^\n]*)\n[\s\S]*?Given value: ([^\n]*)")
_BAD_OPTIONAL_VALUE = re.compile(r"Subtypes: \[<class '(\w+)'>, <class 'NoneType'>\][\s\S]*Given value: (.*)")


def _readable_parse_error(message: str) -> str:
    """jsonargparse's message, shortened where it lists every Union member, with close option names."""
    key = _KEY_OF_ERROR.search(message)
    bad_value = _BAD_INIT_VALUE.search(message)
    if bad_value is not None:  # a model / data option with a value of the wrong type
        class_path, option, expected = bad_value.groups()
        where = f"{key.group(1)}.init_args.{option}" if key else option
        expected = re.sub(r"Expected a <class '(?:[\w.]+\.)?(\w+)'>\. Got value: ", r"expected \1, got ", expected.strip())
        return f"{where} ({class_path.rsplit('.', 1)[-1]}): {expected}"
    nested = _BAD_INIT_UNION.search(message)
    if nested is not None:  # a model / data option whose type is a Union (int or a list of ints, ...)
        class_path, option, subtypes, given = nested.groups()
        where = f"{key.group(1)}.init_args.{option}" if key else option
        kinds = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", subtypes.strip()[1:-1]).replace("typing.", "")
        return f"{where} ({class_path.rsplit('.', 1)[-1]}): expected {kinds}, got {given.strip()}"
    optional = _BAD_OPTIONAL_VALUE.search(message)
    if optional is not None and key is not None and "class_path" not in message:  # e.g. trainer.max_epochs
        return f"{key.group(1)}: expected {optional.group(1)} (or null), got {optional.group(2).strip()!r}"
    match = _NOT_ACCEPTED.search(message)
    if match is None:
        return message.strip()
    class_path, option = match.groups()
    cls = _import_class(class_path)
    where = f"{key.group(1)}.init_args.{option}" if key else option
    hint = ""
    if cls is not None:
        from jsonargparse import ArgumentParser

        probe = ArgumentParser(exit_on_error=False)
        probe.add_class_arguments(cls, "x", fail_untyped=False)
        names = sorted({flag[4:] for action in probe._actions for flag in action.option_strings
                        if flag.startswith("--x.") and flag.count(".") == 1 and not flag.endswith(".help")})
        close = difflib.get_close_matches(option, names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
            f"; its options: {', '.join(names)}"
    return f"{where}: {option!r} is not an option of {class_path.rsplit('.', 1)[-1]}{hint}"


class AnomalyBenchCLI(LightningCLI):
    """LightningCLI with anomaly_bench's run directories, checkpoint rules and defaults."""

    run_dir: Path | None = None

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any) -> None:
        register_all()
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("trainer_defaults", {"default_root_dir": DEFAULT_ROOT})
        kwargs.setdefault("parser_class", CompactErrorParser)
        parser_kwargs = kwargs.pop("parser_kwargs", {}) or {}
        parser_kwargs.setdefault("description", _description())
        parser_kwargs.setdefault("formatter_class", _RawFormatter)
        self._checkpoint_hparams: dict[str, Any] | None = None
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
            help="Exact run directory (default: <trainer.default_root_dir>/<Model>/<Data>/<category>/version_N). "
                 "For multi-node jobs started by torchrun or SLURM the job id names it (job_<id>).",
        )
        # one source for the input size: the data's; models without an image_size ignore the link
        parser.link_arguments("data.init_args.image_size", "model.init_args.image_size", apply_on="parse")

    def _parse_ckpt_path(self) -> None:
        # Lightning would replace the configured model options with the checkpoint's hyper-parameters,
        # silently overriding the command line. Here the config wins; the checkpoint's values are only
        # compared with it (``_check_checkpoint``).
        return

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
        if subcommand in ("test", "predict", "validate") and not ckpt:
            model_class = _import_class(config.model.get("class_path"))
            if getattr(model_class, "needs_training", True):
                raise runs.RunDirError(
                    f"`anomaly-bench {subcommand}` needs a trained model: add --ckpt_path last (the newest run of "
                    f"{model_name} on {data_name}/{runs.category_tag(category)} under {root}), --ckpt_path best, or "
                    "a checkpoint file"
                )
        inherited = os.environ.get(RUN_DIR_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
        run_dir = runs.choose_run_dir(exp_dir, subcommand, ckpt, config.get("run_dir"), inherited)
        if "ckpt_path" in config:
            config.ckpt_path = runs.resolve_checkpoint(ckpt, run_dir)
            if config.ckpt_path:
                self._checkpoint_hparams = _read_checkpoint(config.ckpt_path)
        config.trainer.default_root_dir = str(run_dir)
        self.run_dir = run_dir
        os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by DDP child processes
        self._configure_wandb(config, run_dir, model_name, data_name)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException as err:
            # nothing ran: the run directory this command made must not look like a run
            if self.run_dir is not None and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            user_error = _cause_of_type(err, (WeightsUnavailableError, DataError))
            if user_error is not None:
                raise user_error from None
            if isinstance(err, ValueError):
                raise ConfigError(_user_message(err)) from err
            raise

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
        run_dir = Path(trainer_config["default_root_dir"])
        resume_step = None
        if self.subcommand == "fit" and self._checkpoint_hparams is not None:
            resume_step = int(self._checkpoint_hparams.get("global_step") or 0)
        csv_logger = RunCSVLogger(run_dir, self.subcommand or "run", resume_step=resume_step)
        configured = trainer_config.get("logger")
        if configured in (None, True):
            kwargs["logger"] = csv_logger
        elif configured is not False:
            # the local CSV log is kept beside W&B or any other logger
            others = list(configured) if isinstance(configured, (list, tuple)) else [configured]
            if not any(isinstance(lg, CSVLogger) for lg in others):
                kwargs["logger"] = [*others, csv_logger]
        trainer = super().instantiate_trainer(**kwargs)
        mark_run_dir(trainer, run_dir)
        return trainer

    # --------------------------------------------------------------------- subcommand kwargs
    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        ckpt = kwargs.get("ckpt_path")
        if ckpt:
            self._check_checkpoint(ckpt)
            # tensors and plain containers only, unless the user explicitly says otherwise
            if "weights_only" in self._subcommand_method_arguments[subcommand] and kwargs.get("weights_only") is None:
                kwargs["weights_only"] = True
        if subcommand in ("test", "validate") and "verbose" in kwargs:
            kwargs["verbose"] = False  # our own table (sized to the terminal) replaces Lightning's
        return kwargs

    def _check_checkpoint(self, ckpt: str) -> None:
        payload = self._checkpoint_hparams if self._checkpoint_hparams is not None else _read_checkpoint(ckpt)
        written_by = (payload.get(CHECKPOINT_KEY) or {}).get("model_class")
        wanted = f"{type(self.model).__module__}.{type(self.model).__qualname__}"
        if written_by and written_by.rsplit(".", 1)[-1] != type(self.model).__name__:
            raise CheckpointMismatchError(
                f"checkpoint {ckpt} was written by model {written_by}, but the config's model is {wanted}; "
                "use the config the checkpoint was trained with, or another --ckpt_path"
            )
        upgraded = {"hyper_parameters": dict(payload.get("hyper_parameters") or {}),
                    "state_dict": dict(payload.get("state_dict_shapes") or {})}
        compat.upgrade_checkpoint(upgraded, type(self.model))
        differences = _differences(upgraded["hyper_parameters"], self._configured_model_options())
        if not differences:
            return
        listing = ", ".join(f"model.init_args.{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in differences.items())
        # weights the configured model has (and that are not empty placeholders filled at fit time,
        # like a memory bank) but whose shape differs from the checkpoint's: the options changed the network.
        # A module's extra state (GLAD's per-category tables) is a plain dict, not a weight: no shape.
        expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()
                    if isinstance(v, torch.Tensor) and v.numel() > 0}
        conflicts = [k for k, shape in upgraded["state_dict"].items() if k in expected and expected[k] != tuple(shape)]
        if conflicts:
            raise CheckpointMismatchError(
                f"checkpoint {ckpt} does not fit the configured model ({len(conflicts)} weights have other shapes, "
                f"e.g. {conflicts[0]}): {listing}; use the options it was trained with (its run's config.yaml)"
            )
        _print(f"note: the config's values are used over the checkpoint's ({listing})")

    def _configured_model_options(self) -> dict[str, Any]:
        """The model's init args as the config and command line resolved them."""
        init_args = self.config[self.subcommand].model.get("init_args") if self.subcommand else None
        if init_args is None:
            return dict(self.model.hparams)
        return init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)

    # ------------------------------------------------------------------------ running
    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            if subcommand == "fit" and self.run_dir is not None and runs.checkpoint_file(self.run_dir, "last") is None:
                try:
                    runs.mark_failed(self.run_dir, f"{type(err).__name__}: {_user_message(err)}")
                except OSError:
                    pass
            raise

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            _print(f"run directory: {self.run_dir}")
            ckpt_dir = Path(self.trainer.default_root_dir) / runs.CHECKPOINT_DIR
            if ckpt_dir.is_dir():
                _print(f"checkpoints:   {', '.join(sorted(p.name for p in ckpt_dir.glob('*.ckpt')))}")

    def after_test(self) -> None:
        if not self.trainer.is_global_zero:
            return
        _print(f"run directory: {self.run_dir}")
        run_dir = Path(self.trainer.default_root_dir)
        if (run_dir / "metrics.json").is_file():
            print_metrics_table(run_dir)
            try:  # the run's report.html; a report must never fail a test
                from anomaly_bench.report import build_report

                _print(f"report:        {build_report(run_dir)}")
            except Exception as err:
                _print(f"note: no report.html ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})")

    def after_validate(self) -> None:
        if self.trainer.is_global_zero:
            _print(f"run directory: {self.run_dir}")

    def after_predict(self) -> None:
        if self.trainer.is_global_zero:
            _print(f"run directory: {self.run_dir}")
            predictions = Path(self.trainer.default_root_dir) / "predictions.csv"
            if predictions.is_file():
                _print(f"scores:        {predictions}")


def _looks_like_text(sample: bytes) -> bool:
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in sample


def _read_checkpoint(ckpt: str) -> dict[str, Any]:
    """The checkpoint's bookkeeping (class, hyper-parameters, weight shapes), tensors only."""
    with open(ckpt, "rb") as handle:
        head = handle.read(512)
    if head[:4] != b"PK\x03\x04":  # torch.save's zip archive; anything else is not a checkpoint we wrote
        kind = "empty" if not head else "a text file (a config?)" if _looks_like_text(head) else "another kind of file"
        raise CheckpointMismatchError(f"--ckpt_path {ckpt} is not a PyTorch checkpoint: it is {kind}; expected the "
                                      "last.ckpt / best.ckpt a fit wrote (or last / best)")
    try:
        payload = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointMismatchError(
            f"cannot read checkpoint {ckpt} as a Lightning checkpoint with tensors only ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200] if str(err) else 'no message'}); is the file complete?"
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointMismatchError(f"checkpoint {ckpt} is not a Lightning checkpoint (no state_dict)")
    return {
        CHECKPOINT_KEY: payload.get(CHECKPOINT_KEY) or {},
        "hyper_parameters": payload.get("hyper_parameters") or {},
        "state_dict_shapes": {k: tuple(v.shape) for k, v in payload["state_dict"].items() if hasattr(v, "shape")},
        "global_step": payload.get("global_step"),
    }


def _differences(stored: dict[str, Any], configured: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    out = {}
    for key, value in configured.items():
        if key.startswith("_") or key not in stored:
            continue
        old = stored[key]
        same = (list(old) == list(value)) if isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)) \
            else old == value
        if not same:
            out[key] = (old, value)
    return out


def _cause_of_type(err: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """``err`` or the first exception of ``types`` on its cause chain (jsonargparse wraps them)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _user_message(err: BaseException) -> str:
    """The message a user needs from a (possibly jsonargparse-wrapped) error: its first real line."""
    text = str(err)
    # jsonargparse wraps a constructor's ValueError into "Does not validate against any of the Union
    # subtypes ... Errors:\n  - <the message>\n  - Expected a <class 'NoneType'>"
    reasons = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")
               and "Expected a <class 'NoneType'>" not in line]
    if reasons:
        return reasons[0]
    cause = err.__cause__ or err.__context__
    if cause is not None and not str(text).strip():
        return _user_message(cause)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


class _RawFormatter(DefaultHelpFormatter):
    """Keep the description's line breaks (the model / datamodule lists) in ``--help``."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _wandb_run_id(run_dir: Path) -> str:
    """A random W&B run id kept in the run directory, so fit, test and resumes share one W&B run."""
    import secrets

    from anomaly_bench.atomic import atomic_write_text

    id_file = run_dir / "wandb_run_id"
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = secrets.token_hex(8)
    atomic_write_text(id_file, run_id)
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


# --------------------------------------------------------------------------- argv preparation
def _option_value(argv: list[str], index: int) -> tuple[str | None, int]:
    """The value of ``argv[index]`` (``--key value`` or ``--key=value``) and the index after it."""
    arg = argv[index]
    if "=" in arg:
        return arg.split("=", 1)[1], index + 1
    return (argv[index + 1], index + 2) if index + 1 < len(argv) else (None, index + 1)


def _model_alias(value: str, key: str = "--model") -> str:
    """``crad`` -> ``CRAD``; an unknown short name is a one-line error (naming ``key``) with the closest names."""
    if "." in value or value in MODELS:
        return value
    if value in CONFIG_NAMES:
        return CONFIG_NAMES[value]
    imported = _subclass_names(AnomalyModule)  # e.g. a user's own model, imported by its module
    if value in imported:
        return value
    lowered = {name.lower(): name for name in MODELS}
    if value.lower() in lowered:
        return lowered[value.lower()]
    known = [*MODELS, *CONFIG_NAMES, *sorted(set(imported) - set(MODELS))]
    close = difflib.get_close_matches(value, known, n=3, cutoff=0.5) or \
        difflib.get_close_matches(value.lower(), [k.lower() for k in known], n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"{key} {value!r} is not a known model{hint} Known: {', '.join(known)} "
                      "(or a full class path such as my_package.MyModel)")


def _subclass_names(base: type) -> list[str]:
    found, stack = set(), list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_"):
            found.add(cls.__name__)
    return sorted(found)


def _data_alias(value: str, key: str = "--data") -> str:
    if "." in value or value in DATAMODULES or value in _subclass_names(AnomalyDataModule):
        return value
    lowered = {name.lower(): name for name in DATAMODULES}
    if value.lower() in lowered:
        return lowered[value.lower()]
    close = difflib.get_close_matches(value, list(DATAMODULES), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"{key} {value!r} is not a known datamodule{hint} Known: {', '.join(DATAMODULES)}")


_OLD_MODEL_KEY = re.compile(r"^--model\.(?:init_args\.)?(\w+)$")


def options_before_a_config(argv: list[str]) -> list[str]:
    """Options given before a later ``--config``: jsonargparse applies arguments in order, so the
    config's values replace them (``fit --trainer.max_epochs 1 --config x.yaml`` trains x's epochs)."""
    seen: list[str] = []
    late: list[str] = []
    for arg in argv[1:]:
        key = arg.split("=", 1)[0]
        if key in ("--config", "-c"):
            late += [k for k in seen if k not in late]
        elif key.startswith("--") and key.count(".") >= 1 and not key.endswith(".help"):
            seen.append(key)
    return late


def prepare_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Resolve short model names and upgrade 0.1 option names in config files and on the command
    line. Returns the new argv and the deprecation notes to print."""
    out: list[str] = []
    notes: list[str] = []
    model_class: type | None = None
    named_model: str | None = None  # --model NAME (not a config): what a plain --help documents
    index = 0
    while index < len(argv):
        arg = argv[index]
        key = arg.split("=", 1)[0]
        if key in ("--model.help", "--data.help"):
            # jsonargparse wants a class path here; accept the names --model / --data accept
            value, after = _option_value(argv, index)
            if value is not None and not value.startswith("-"):
                out += [key, _model_alias(value, key) if key == "--model.help" else _data_alias(value, key)]
                index = after
            else:  # no name given (or the next option follows): leave it to jsonargparse
                out.append(arg)
                index += 1
            continue
        if key in ("--model", "--data"):
            value, index = _option_value(argv, index)
            if value is not None and not value.startswith(("{", "[")) and not value.endswith((".yaml", ".yml")):
                value = _model_alias(value) if key == "--model" else _data_alias(value)
                if key == "--model":
                    model_class = _import_class(MODELS.get(value, "") + f".{value}") if value in MODELS \
                        else _import_class(value)
                    named_model = value
            out += [key, value] if value is not None else [key]
            continue
        if key in ("--config", "-c"):
            value, index = _option_value(argv, index)
            if value is not None:
                value, cls, file_notes = _upgraded_config_file(value)
                model_class = cls or model_class
                notes += file_notes
            out += [key, value] if value is not None else [key]
            continue
        match = _OLD_MODEL_KEY.match(key)
        if match and match.group(1) in compat.REMOVED_OPTIONS:
            name = match.group(1)
            value, index = _option_value(argv, index)
            notes.append(f"{key} is deprecated: moved to {compat.REMOVED_OPTIONS[name]}")
            if str(value).lower() == "false":
                out += ["--trainer.callbacks+=" + compat.REMOVED_TO_CALLBACK[name], "--trainer.callbacks.enabled=false"]
            continue
        if match and model_class is not None:
            name = match.group(1)
            value, next_index = _option_value(argv, index)
            single = {name: value}
            new_notes = compat.upgrade_init_args(model_class, single, where="--model.init_args")
            if new_notes:
                notes += new_notes
                (new_name, new_value), = single.items()
                out += [f"--model.init_args.{new_name}", str(new_value)]
                index = next_index
                continue
        out.append(arg)
        index += 1
    if named_model is not None and any(a in ("-h", "--help") for a in out):
        # `fit --model crad --help` means the method's options: jsonargparse's plain --help lists the
        # Trainer's and only a placeholder for a subclass, so ask for the subclass's help instead
        out = [a for a in out if a not in ("-h", "--help")] + ["--model.help", named_model]
    return out, notes


def _upgraded_config_file(path: str) -> tuple[str, type | None, list[str]]:
    """A config file with 0.1 option names is converted to a temporary copy (the original is untouched)."""
    file = resolve_config_path(path)
    if file is None:
        return path, None, []  # the parser reports the missing file with its name
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError:
        return str(file), None, []  # the parser reports the syntax error with the file name
    if not isinstance(config, dict):
        return str(file), None, []
    model = config.get("model") if isinstance(config.get("model"), dict) else None
    cls = _import_class(model.get("class_path")) if model else None
    notes = compat.upgrade_config(config, _import_class)
    if not notes:
        return str(file), cls, []
    import tempfile

    handle = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"{file.stem}.upgraded.", delete=False)
    with handle:
        yaml.safe_dump(config, handle, sort_keys=False)
    notes = [f"{file}: {note}" for note in notes]
    notes.append(f"{file}: `anomaly-bench upgrade-config {file} NEW.yaml` writes the converted file")
    return handle.name, cls, notes


def upgrade_config_main(argv: list[str] | None = None) -> int:
    """``anomaly-bench upgrade-config OLD NEW``: a 0.1 config (.yaml) or checkpoint (.ckpt) with today's names."""
    import argparse

    parser = argparse.ArgumentParser(prog="anomaly-bench upgrade-config", description=upgrade_config_main.__doc__)
    parser.add_argument("old", type=Path, help="the 0.1 config (.yaml/.yml) or checkpoint (.ckpt) to convert")
    parser.add_argument("new", type=Path, help="where to write the converted file (never the same path)")
    args = parser.parse_args(argv)
    if not args.old.is_file():
        shipped = resolve_config_path(args.old) if args.old.suffix != ".ckpt" else None
        if shipped is None:
            raise ConfigError(f"upgrade-config: {args.old} does not exist")
        args.old = shipped
    if args.new.resolve() == args.old.resolve():
        raise ConfigError("upgrade-config: NEW must be another path than OLD (the original is kept)")
    is_checkpoint = args.old.suffix == ".ckpt"
    if args.new.suffix.lower() in ((".yaml", ".yml") if is_checkpoint else (".ckpt",)):
        raise ConfigError(f"upgrade-config: {args.old} is a {'checkpoint' if is_checkpoint else 'config'}; "
                          f"NEW {args.new} should end in {'.ckpt' if is_checkpoint else '.yaml'}")
    from anomaly_bench.atomic import atomic_path, atomic_write_text

    if is_checkpoint:
        try:
            checkpoint = torch.load(args.old, map_location="cpu", weights_only=True)
        except Exception as err:  # not a torch file, truncated, or holding objects we never write
            raise ConfigError(f"upgrade-config: {args.old} is not a readable anomaly_bench checkpoint "
                              f"({type(err).__name__})") from None
        model_class = _import_class((checkpoint.get(CHECKPOINT_KEY) or {}).get("model_class"))
        if model_class is None:
            raise ConfigError(f"upgrade-config: {args.old} names no anomaly_bench model class")
        notes = compat.upgrade_checkpoint(checkpoint, model_class)
        checkpoint.setdefault(CHECKPOINT_KEY, {})["version"] = __version__
        with atomic_path(args.new) as tmp:
            torch.save(checkpoint, tmp)
    else:
        try:
            config = yaml.safe_load(args.old.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"upgrade-config: {args.old} is not valid YAML ({str(err).splitlines()[0]})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"upgrade-config: {args.old} is neither a config (.yaml) nor a checkpoint (.ckpt)") from None
        if not isinstance(config, dict):
            raise ConfigError(f"upgrade-config: {args.old} is not a config (expected a mapping)")
        notes = compat.upgrade_config(config, _import_class)
        atomic_write_text(args.new, yaml.safe_dump(config, sort_keys=False))
    for note in notes or ["nothing to change: it already uses today's names"]:
        print(f"  {note}")
    print(f"wrote {args.new}")
    return 0


def _run_extra(name: str, argv: list[str]) -> int:
    module_name, function_name, _ = EXTRA_SUBCOMMANDS[name]
    function = getattr(importlib.import_module(module_name), function_name)
    return int(function(argv) or 0)


USER_ERRORS = (DataError, runs.RunDirError, CheckpointMismatchError, ConfigError, WeightsUnavailableError,
               compat.ConfigUpgradeError, OSError)  # OSError: an output that cannot be written, a file unreadable


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"  # e.g. "/proc/results: No such file or directory"
    text = str(err)
    if text.startswith("Caught ") and "Traceback" in text:
        # an error raised in a DataLoader worker: torch wraps it with the worker's traceback
        last = [line for line in text.splitlines() if line.strip()][-1]
        return re.sub(r"^[\w.]+Error: ", "", last)
    return text.splitlines()[0] if text else type(err).__name__


def main(args: list[str] | None = None) -> int:
    """Console entry point; also usable in-process: ``main(["fit", "--config", "x.yaml"])``."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = bool(os.environ.get("ANOMALY_BENCH_DEBUG"))
    if argv[:1] in (["--version"], ["-V"]):
        print(f"anomaly-bench {__version__}")
        return 0
    try:
        with quiet_terminal():
            if argv and argv[0] in EXTRA_SUBCOMMANDS:
                return _run_extra(argv[0], argv[1:])
            if argv[:1] == ["predict"] and any(a == "--export" or a.startswith("--export=") for a in argv[1:]):
                # an exported model, scored by the standalone inferencer (no Lightning, no checkpoint);
                # dispatched by name like the extra subcommands (export_cli builds on this module)
                module_name, function_name = PREDICT_WITH_EXPORT
                return int(getattr(importlib.import_module(module_name), function_name)(argv[1:]) or 0)
            late = options_before_a_config(argv)
            if late:
                print(f"anomaly-bench: note: {', '.join(late)} come(s) before a --config, whose values replace "
                      "them; put --config first to override it", file=sys.stderr)
            argv, notes = prepare_argv(argv)
            for note in notes:
                print(f"anomaly-bench: deprecated: {note}", file=sys.stderr)
            AnomalyBenchCLI(args=argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"anomaly-bench: error: {_one_line(err)}", file=sys.stderr)
        if args is None:
            sys.exit(2)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
