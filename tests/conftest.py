"""Shared fixtures: a test CA, a loopback DNS server and real pymaild processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ca import TestCA
from tests.support.daemon import PymaildProcess, free_port
from tests.support.fixtures import dns_server  # noqa: F401  (re-exported fixture)


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


MakeDaemon = Callable[..., PymaildProcess]


@pytest.fixture
def make_daemon(tmp_path: Path, ca: TestCA) -> Iterator[MakeDaemon]:
    """Factory for started pymaild processes; all are stopped at teardown.

    Defaults: domain example.test, host mx.example.test with a certificate from the test
    CA, SMTP on a free 127.0.0.1 port, checks off (tests that want them pass
    ``checks=...`` and ``dns=...``).
    """
    started: list[PymaildProcess] = []

    def make(
        *,
        name: str = "mx",
        domain: str = "example.test",
        host: str = "127.0.0.1",
        smtp: dict[str, Any] | None = None,
        checks: dict[str, Any] | None = None,
        nameservers: list[str] | None = None,
        accounts: tuple[str, ...] = ("alice@example.test",),
        extra: dict[str, Any] | None = None,
        start: bool = True,
    ) -> PymaildProcess:
        hostname = f"mx.{domain}"
        cert, key = ca.issue(hostname)
        directory = tmp_path / name
        port = free_port(host)
        config: dict[str, Any] = {
            "hostname": hostname,
            "primary_domain": domain,
            "local_domains": [domain],
            "state_dir": str(directory / "state"),
            "tls": {"cert": str(cert), "key": str(key)},
            "listen": {"smtp": [f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"]},
            "smtp": smtp or {},
            "checks": checks if checks is not None else {"spf": False, "dkim": False, "dmarc": False},
            "dns": {"nameservers": nameservers or ["127.0.0.1:9"], "timeout": "3s"},
        }
        for key_name, value in (extra or {}).items():
            if isinstance(value, dict):
                config.setdefault(key_name, {}).update(value)
            else:
                config[key_name] = value
        daemon = PymaildProcess(directory, config)
        daemon.host, daemon.port = host, port
        for address in accounts:
            daemon.add_account(address)
        if start:
            daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Expose each phase's report as item.rep_<phase>, so fixtures can print logs on failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
