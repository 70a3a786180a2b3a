"""Every option a user can set has help text (issue 14): `anomaly-bench fit --model X --help` documents
each one. The test walks every registered model, datamodule and default callback through the same
jsonargparse machinery the CLI uses (so options forwarded through ``**model_options`` count)."""

from __future__ import annotations

import importlib

import pytest
from jsonargparse import ArgumentParser

from anomaly_bench.data import DATAMODULES
from anomaly_bench.models import MODELS

CALLBACKS = {
    "Evaluator": "anomaly_bench.metrics.evaluator",
    "Visualizer": "anomaly_bench.callbacks.visualizer",
    "ScoreWriter": "anomaly_bench.callbacks.scores",
    "EpochSeed": "anomaly_bench.callbacks.seeding",
    "BestAndLastCheckpoint": "anomaly_bench.callbacks.checkpoint",
    "TestStatsRecorder": "anomaly_bench.callbacks.test_stats",
}
MIN_HELP = 15


def _options(cls: type) -> dict[str, str]:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "x", fail_untyped=False)
    found = {}
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--x.") and not flag.endswith((".help", "+")) and flag.count(".") == 1:
                found[flag[len("--x."):]] = action.help or ""
    return found


def _problems(cls: type) -> list[str]:
    problems = []
    for name, text in _options(cls).items():
        words = text.strip()
        if len(words) < MIN_HELP:
            problems.append(f"{name}: help {words!r} is shorter than {MIN_HELP} characters")
        elif words.rstrip(".").lower().replace(" ", "_") == name.lower():
            problems.append(f"{name}: help only repeats the option's name")
    return problems


def _load(name: str, module: str) -> type:
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", sorted({**MODELS, **DATAMODULES, **CALLBACKS}))
def test_every_init_option_has_real_help_text(name: str) -> None:
    module = {**MODELS, **DATAMODULES, **CALLBACKS}[name]
    cls = _load(name, module)
    options = _options(cls)
    assert options, f"{name}: no options found (is the signature resolvable?)"
    assert not _problems(cls), f"{name}:\n  " + "\n  ".join(_problems(cls))


def test_the_check_catches_missing_and_placeholder_help() -> None:
    class Undocumented:
        def __init__(self, alpha: int = 1, beta_value: float = 2.0, gamma: str = "x") -> None:
            """A class with poor docs.

            Args:
                alpha: alpha.
                beta_value: beta value
            """

    problems = _problems(Undocumented)
    assert any(p.startswith("alpha") for p in problems)
    assert any(p.startswith("beta_value") for p in problems)
    assert any(p.startswith("gamma") for p in problems)


def _cli_help(capsys, argv: list[str]) -> str:
    from anomaly_bench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["fit", "--model", "crad", "--help"],  # the command README.md documents
    ["fit", "--model=CRAD", "-h"],
    ["fit", "--model.help", "crad"],        # jsonargparse's own flag, with the config name
    ["test", "--model.help", "anomaly_bench.models.crad.lightning_model.CRAD"],
])
def test_the_documented_help_commands_print_the_methods_options_and_their_help(capsys, argv: list[str]) -> None:
    out = _cli_help(capsys, argv)
    assert "--model.grid_lr" in out and "--model.feature_cache" in out
    # the Args: text, not only the flag
    grid_lr_help = " ".join(out.split("--model.grid_lr GRID_LR", 2)[-1].split()[:40])
    assert "learning rate" in grid_lr_help.lower(), grid_lr_help


def test_plain_help_without_a_model_stays_the_trainers(capsys) -> None:
    out = _cli_help(capsys, ["fit", "--help"])
    assert "--trainer.max_epochs" in out and "--model.grid_lr" not in out


def test_data_help_accepts_the_datamodules_short_name(capsys) -> None:
    out = _cli_help(capsys, ["fit", "--data.help", "mvtecad"])
    assert "--data.category" in out


def test_a_misspelt_name_in_model_help_names_that_flag(capsys) -> None:
    from anomaly_bench.cli import ConfigError, main

    with pytest.raises(ConfigError, match=r"--model.help 'crd' is not a known model; did you mean 'crad'"):
        main(["fit", "--model.help", "crd"])
