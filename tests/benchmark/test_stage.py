"""A cell's stage runs in its own process group under a guard: stops reach the whole group, and the
stage never outlives its runner."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from anomaly_bench.benchmark import stage as stage_module
from anomaly_bench.benchmark.stage import StopRequest, run_stage
from tests.benchmark.conftest import wait_for

PY = sys.executable


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# A stage that forks a helper into its process group, records both pids, then waits.
FAMILY = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    if sys.argv[2] == "polite":
        def bye(sig, frame):
            print("got", signal.Signals(sig).name, flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        signal.signal(signal.SIGINT, bye)
    elif sys.argv[2] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # the pids go out only once the handlers are in place: the test signals as soon as it reads them
    with open(sys.argv[1] + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {helper.pid}")
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(120)
""")


def _family(tmp_path, mode):
    script = tmp_path / "family.py"
    script.write_text(FAMILY)
    pids = tmp_path / "pids.txt"
    return [PY, str(script), str(pids), mode], pids


def _pids(path: Path) -> list[int]:
    assert wait_for(lambda: path.is_file() and path.read_text().strip(), timeout=20.0)
    return [int(p) for p in path.read_text().split()]


def _run_in_thread(**kwargs):
    box = {}
    thread = threading.Thread(target=lambda: box.update(outcome=run_stage(**kwargs)))
    thread.start()
    return thread, box


def test_exit_codes_and_the_log_with_its_header(tmp_path):
    log = tmp_path / "fit.log"
    ok = run_stage("fit", [PY, "-c", "print('hello')"], log, os.environ, tmp_path, header="=== attempt 1")
    assert ok.ok and ok.returncode == 0
    bad = run_stage("fit", [PY, "-c", "import sys; sys.exit(4)"], log, os.environ, tmp_path)
    assert (bad.reason, bad.returncode, bad.detail) == ("exit", 4, "fit exited with code 4")
    killed = run_stage("fit", [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], log,
                       os.environ, tmp_path)
    assert (killed.reason, killed.returncode) == ("signal", -9) and "SIGKILL" in killed.detail
    text = log.read_text()
    assert text.index("=== attempt 1") < text.index("hello")  # appended, header first
    assert text.count("$ ") == 3


def test_a_stop_reaches_the_whole_group_with_the_same_signal(tmp_path):
    cmd, pids_file = _family(tmp_path, "polite")
    stop = StopRequest()
    thread, box = _run_in_thread(stage="fit", command=cmd, log_path=tmp_path / "fit.log", env=os.environ,
                                 cwd=tmp_path, stop=stop, grace_s=10)
    stage_pid, helper_pid = _pids(pids_file)
    stop.request(signal.SIGINT)
    thread.join(15)
    assert box["outcome"].reason == "stopped"
    assert "got SIGINT" in (tmp_path / "fit.log").read_text()
    assert wait_for(lambda: not _alive(stage_pid) and not _alive(helper_pid), timeout=5)


def test_a_stage_that_ignores_the_stop_is_killed_after_the_grace_period(tmp_path):
    cmd, pids_file = _family(tmp_path, "stubborn")
    stop = StopRequest()
    thread, box = _run_in_thread(stage="fit", command=cmd, log_path=tmp_path / "fit.log", env=os.environ,
                                 cwd=tmp_path, stop=stop, grace_s=1.0)
    stage_pid, helper_pid = _pids(pids_file)
    start = time.monotonic()
    stop.request()
    thread.join(15)
    assert box["outcome"].reason == "stopped"
    assert 0.9 < time.monotonic() - start < 8
    assert not _alive(stage_pid) and wait_for(lambda: not _alive(helper_pid), timeout=5)


def test_a_lost_lease_kills_at_once_and_a_timeout_stops(tmp_path):
    cmd, pids_file = _family(tmp_path, "stubborn")
    lost = threading.Event()
    thread, box = _run_in_thread(stage="fit", command=cmd, log_path=tmp_path / "fit.log", env=os.environ,
                                 cwd=tmp_path, lost=lost, grace_s=60)
    stage_pid, helper_pid = _pids(pids_file)
    lost.set()
    thread.join(10)
    assert box["outcome"].reason == "lease_lost" and "lease" in box["outcome"].detail
    assert wait_for(lambda: not _alive(stage_pid) and not _alive(helper_pid), timeout=5)
    timed = run_stage("test", [PY, "-c", "import time; time.sleep(60)"], tmp_path / "test.log", os.environ,
                      tmp_path, timeout_s=0.5, grace_s=5)
    assert timed.reason == "timeout" and timed.seconds < 10


# stage.py needs the standard library only: load it by path, without the package's heavier imports
RUNNER = textwrap.dedent(f"""
    import importlib.util, os, sys
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("stage", {str(Path(stage_module.__file__))!r})
    stage = sys.modules["stage"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.run_stage("fit", sys.argv[2:], Path(sys.argv[1]), os.environ, Path.cwd(), grace_s=60)
""")


def test_a_killed_runner_takes_its_stage_down_at_once(tmp_path):
    """SIGKILL leaves the runner no time to clean up: the guard notices and kills the stage's group
    without grace (a new runner may take the cell over immediately)."""
    cmd, pids_file = _family(tmp_path, "stubborn")
    runner_script = tmp_path / "runner.py"
    runner_script.write_text(RUNNER)
    runner = subprocess.Popen([PY, str(runner_script), str(tmp_path / "fit.log"), *cmd], cwd=tmp_path)
    try:
        stage_pid, helper_pid = _pids(pids_file)
        runner.kill()
        runner.wait(10)
        assert wait_for(lambda: not _alive(stage_pid) and not _alive(helper_pid), timeout=5)
    finally:
        runner.kill()
