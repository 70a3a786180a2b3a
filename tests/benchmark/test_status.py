"""Live progress: status.json follows every state change, `--status` prints it, plain lines when
stdout is not a terminal, and dashed flags still work with a note."""

import json
import socket
import threading
import time

import yaml

from anomaly_bench.benchmark.cli import benchmark_main
from anomaly_bench.benchmark.grid import expand_grid, parse_grid
from anomaly_bench.benchmark.runner import GridRunner
from tests.benchmark.conftest import grid_dict


def _status(tmp_path):
    return json.loads((tmp_path / "out" / "status.json").read_text())


def test_status_file_shows_running_then_final_states(tmp_path, fake_command):
    raw = grid_dict(tmp_path, seeds=[0])
    raw["models"][0]["init_args"].update(epochs=3, epoch_s=0.5)
    raw["models"].append({"name": "crashy", "class_path": "fake.Crash", "init_args": {"fail_at": "test"}})
    grid = parse_grid(raw)
    lines: list[str] = []
    runner = GridRunner(grid, expand_grid(grid), command_builder=fake_command, log=lines.append, live=False)
    thread = threading.Thread(target=runner.run)
    thread.start()
    seen_running, stages = None, set()
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        try:
            cells = {c["id"]: c for c in _status(tmp_path)["cells"]}
        except (OSError, ValueError):
            cells = {}
        good = cells.get("good/synth/all/seed0")
        if good and good["state"] == "running":
            seen_running = good
            stages.add(good["stage"])
        time.sleep(0.1)
    thread.join()
    assert seen_running is not None and seen_running["node"] == socket.gethostname()
    assert "fit" in stages and seen_running["attempt"] == 1
    status = _status(tmp_path)
    assert status["finished"] and status["outcome"] == "finished"
    states = {c["id"]: c["state"] for c in status["cells"]}
    assert states == {"good/synth/all/seed0": "done", "okay/synth/all/seed0": "done",
                      "crashy/synth/all/seed0": "failed"}
    assert status["counts"]["done"] == 2 and status["counts"]["failed"] == 1
    good = next(c for c in status["cells"] if c["id"] == "good/synth/all/seed0")
    # fake metrics: categories a, b -> image_auroc 0.90 and 0.92, mean 0.91
    assert good["metric"] == "image_auroc" and abs(good["value"] - 0.91) < 1e-9
    assert any("good/synth/all/seed0: running on" in line for line in lines)
    assert any(line.startswith("[3/3]") for line in lines)
    assert any("crashy/synth/all/seed0: failed" in line and "error.log" in line for line in lines)


def test_status_flag_prints_the_table(tmp_path, fake_command, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(grid_dict(tmp_path, seeds=[0])))
    assert benchmark_main(["--status", str(cfg)]) == 2
    assert "no status file" in capsys.readouterr().out
    assert benchmark_main(["--config", str(cfg), "--no_live"], command_builder=fake_command) == 0
    capsys.readouterr()
    assert benchmark_main(["--status", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "good/synth/all/seed0" in out and "okay/synth/all/seed0" in out
    assert "2 done" in out and "finished" in out
    # a second run skips both; the table says so
    assert benchmark_main(["--config", str(cfg), "--no_live"], command_builder=fake_command) == 0
    assert benchmark_main(["--status", str(cfg), "--follow"]) == 0  # finished: prints once, returns
    assert "2 skipped" in capsys.readouterr().out


def test_dashed_flags_work_with_a_deprecation_note(tmp_path, capsys):
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(grid_dict(tmp_path)))
    assert benchmark_main(["--config", str(cfg), "--dry-run", "--output-dir", str(tmp_path / "o2")]) == 0
    captured = capsys.readouterr()
    assert "o2" in captured.out
    assert "--dry-run is deprecated, use --dry_run" in captured.err
    assert "--output-dir is deprecated, use --output_dir" in captured.err
    assert benchmark_main(["--config", str(cfg), "--dry_run"]) == 0
    assert "deprecated" not in capsys.readouterr().err


def test_launcher_ray_without_ray_is_one_clear_line(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(grid_dict(tmp_path)))
    assert benchmark_main(["--config", str(cfg), "--launcher", "ray"]) == 2
    err = capsys.readouterr().err
    assert "anomaly_bench[cluster]" in err and len(err.strip().splitlines()) == 1
