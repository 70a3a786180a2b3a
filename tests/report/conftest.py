"""Fixtures of the report tests: the tiny fixture grid (written once per session) and a headless
Chromium driven through the DevTools protocol.

The browser: ``$ANOMALY_BENCH_CHROMIUM``, else ``chromium`` (or another Chrome) on the PATH, else
Debian's ``chromium`` package installed with ``apt-get`` when running as root. Tests that need it
are skipped, with the reason, only where none can be found or installed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.report.fixture_grid import write_data, write_fixture_grid

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
APT_TIMEOUT_S = 900


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("report_data") / "mvtec")


@pytest.fixture(scope="session")
def fixture_grid(tmp_path_factory: pytest.TempPathFactory, fixture_data: Path) -> Path:
    """Two methods x two categories x two seeds; the grid says the data is MVTecAD (real)."""
    return write_fixture_grid(tmp_path_factory.mktemp("report_grid") / "grid", fixture_data)


# ------------------------------------------------------------------------------------ browser
def _find_browser() -> str | None:
    return next((found for name in BROWSER_NAMES if (found := shutil.which(name))), None)


def _apt_install() -> str:
    """Install Debian's chromium; returns what went wrong, or '' on success."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root, so `apt-get install -y chromium` cannot be run"
    if shutil.which("apt-get") is None:
        return "apt-get is not available on this system"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    last = ""
    for step in ([install], [["apt-get", "update", "-q"], install]):  # retry after refreshing the lists
        try:
            for command in step:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
                if done.returncode != 0:
                    output = (done.stderr or done.stdout).strip().splitlines()[-1:]
                    last = f"`{' '.join(command)}` failed: {output}"
                    break
            else:
                return ""
        except (OSError, subprocess.TimeoutExpired) as err:
            last = f"apt-get could not run: {err}"
    return last


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    override = os.environ.get("ANOMALY_BENCH_CHROMIUM")
    if override:
        found = override if Path(override).is_file() else shutil.which(override)
        if found is None:
            pytest.skip(f"ANOMALY_BENCH_CHROMIUM={override} is not an executable browser")
        return found
    found = _find_browser()
    if found is None:
        problem = _apt_install()
        found = _find_browser()
        if found is None:
            pytest.skip(
                "no Chromium found and none could be installed: "
                f"{problem or 'chromium not on PATH after install'}"
            )
    return found


class DevTools:
    """A minimal DevTools-protocol session with one page: commands, and every event recorded."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client

        self._ws = websocket.create_connection(
            ws_url, timeout=30, suppress_origin=True, enable_multithread=False
        )
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, timeout: float = 30.0, **params) -> dict:
        self._next_id += 1
        wanted = self._next_id
        self._ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(f"no answer to {method} within {timeout}s")

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        seen = next((e for e in self.events if e["method"] == event), None)
        deadline = time.monotonic() + timeout
        while seen is None and time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if "method" in message:
                self.events.append(message)
                if message["method"] == event:
                    seen = message
        if seen is None:
            raise TimeoutError(f"{event} did not arrive within {timeout}s")
        return seen

    def drain(self, seconds: float) -> None:
        """Collect events for a while (late console errors, late requests)."""
        self._ws.settimeout(0.1)
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                try:
                    message = json.loads(self._ws.recv())
                except Exception:  # websocket timeout: nothing arrived in this slice
                    continue
                if "method" in message:
                    self.events.append(message)
        finally:
            self._ws.settimeout(30)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluating {expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(
            self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        )

    def close(self) -> None:
        self._ws.close()


class Browser:
    """A headless Chromium process with its DevTools endpoint."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--mute-audio",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            "--window-size=1280,1000",
            "about:blank",
        ]
        self.process = subprocess.Popen(
            [binary, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.port = self._port()

    def _port(self) -> int:
        # Chromium writes the port it chose to DevToolsActivePort in the profile folder
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"chromium exited with {self.process.returncode}: {self.process.stderr.read()[-2000:]}"
                )
            if marker.is_file():
                lines = marker.read_text().splitlines()
                if lines and lines[0].isdigit():
                    return int(lines[0])
            time.sleep(0.05)
        raise TimeoutError("chromium did not open its DevTools port within 30 s")

    def new_page(self) -> DevTools:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as answer:
            target = json.loads(answer.read())
        return DevTools(target["webSocketDebuggerUrl"])

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="session")
def browser(chromium_binary: str) -> Iterator[Browser]:
    instance = Browser(chromium_binary)
    try:
        yield instance
    finally:
        instance.close()
