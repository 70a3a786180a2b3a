"""A command builder that runs ``fake_cli.py`` instead of the real CLI, importable by name so that
subprocess runners and Ray workers can use it too."""

import sys
from pathlib import Path

FAKE_CLI = Path(__file__).with_name("fake_cli.py")


def fake_command(stage, config_path, run_dir, ckpt):
    """argv for ``fake_cli.py``: stage, cell config, run dir, checkpoint (``None`` for a fresh fit)."""
    return [sys.executable, str(FAKE_CLI), stage, str(config_path), str(run_dir), str(ckpt)]
