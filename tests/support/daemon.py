"""Run a real ``pymaild run`` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mailserver.auth.passwords import make_hasher
from mailserver.auth.store import AccountStore

from .ports import free_port  # noqa: F401  (race-free, see ports.py; tests import it from here)

REPO = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, config: dict[str, Any]) -> Path:
    lines: list[str] = []
    tables = {k: v for k, v in config.items() if isinstance(v, dict)}
    for key, value in config.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {toml_value(value)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


class PymaildProcess:
    """One daemon: config in ``directory``, started as a subprocess, logs captured."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = write_config(directory / "pymaild.toml", config)
        self.proc: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self._ready = threading.Event()
        self.host = ""  # the SMTP listener, set by whoever builds the config
        self.port = 0
        self.env: dict[str, str] = {}  # extra environment for the process

    @property
    def state_dir(self) -> Path:
        return Path(self.config["state_dir"])

    def add_account(self, address: str, password: str = "password-123456") -> Path:
        # Cheap argon2 parameters: tests are about mail flow, not hashing cost.
        cheap = make_hasher(time_cost=1, memory_cost_kib=8, parallelism=1)
        store = AccountStore.in_state_dir(self.state_dir, hasher=cheap)
        store.create_account(address, password)
        path = store.maildir_path(address)
        store.close()
        return path

    def start(self, timeout: float = 20.0) -> None:
        self._ready.clear()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailserver.cli", "run", "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("pymaild did not start:\n" + "\n".join(self.log_lines[-40:]))

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log_lines.append(line.rstrip("\n"))
            if "pymaild ready" in line:
                self._ready.set()

    def log_text(self) -> str:
        return "\n".join(self.log_lines)

    def wait_log(self, *needles: str, timeout: float = 5.0) -> str:
        """The log once every needle is in it (log lines are written by a thread)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if all(n in text for n in needles) or time.monotonic() > deadline:
                return text
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
