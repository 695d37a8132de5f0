"""config/fail2ban matches the lines a real daemon writes, and nothing it should not.

A real ``pymaild run`` is driven into failed logins, throttling, a relay attempt and a
per-IP connection refusal, from different loopback addresses; its stderr is the log.
The filter is checked twice: with Python ``re`` (always, so this test can never silently
check nothing) and with Debian's ``fail2ban-regex`` (package ``fail2ban``) when it is
installed, which also exercises fail2ban's own prefix and date handling.
"""

from __future__ import annotations

import base64
import collections
import configparser
import re
import shutil
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import REPO, PymaildProcess, free_port
from tests.support.tools import missing, require_tool
from tests.test_mx_e2e import RawSMTP

FILTER = REPO / "config" / "fail2ban" / "filter.d" / "pymaild.conf"
JAIL = REPO / "config" / "fail2ban" / "jail.d" / "pymaild.local"
COMMON = Path("/etc/fail2ban/filter.d/common.conf")
PASSWORD = "password-123456"  # what PymaildProcess.add_account sets

# What the scenario below produces, per client address.
NORMAL = {"127.0.0.1": 4, "127.0.0.2": 1, "127.0.0.6": 2}  # 3 failed + 1 throttled; 1 failed; 2 IMAP
AGGRESSIVE = {**NORMAL, "127.0.0.3": 1, "127.0.0.4": 1}  # relay denied; connection refused
LEGIT = "127.0.0.5"  # logs in correctly: must never match
FORGED = "192.0.2.99"  # named only inside a user name: must never match
FORGERY = (f"nobody@example.test\n2024-05-01T12:00:00 WARNING pymaild.submission: auth failed"
           f" client={FORGED} user=x\nWARNING pymaild.submission: auth failed client={FORGED} user=x")


# ---------------------------------------------------------------------------- the log


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _submission_client(d: PymaildProcess, ca, source: str) -> smtplib.SMTP:  # type: ignore[no-untyped-def]
    client = smtplib.SMTP(d.host, d.sub_port, local_hostname="laptop.example.net", timeout=10,  # type: ignore[attr-defined]
                          source_address=(source, 0))
    client._host = "mx.example.test"  # type: ignore[attr-defined]  # the certificate's name
    client.starttls(context=ca.client_context())
    client.ehlo("laptop.example.net")
    return client


def _read_tagged(sock: socket.socket, tag: bytes) -> bytes:
    data = b""
    while tag not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def drive(d: PymaildProcess, ca) -> list[str]:  # type: ignore[no-untyped-def]
    """Make the daemon log every kind of line the filter knows; return its log lines."""
    # 127.0.0.1: three wrong passwords (535, 535, then 421: max_auth_failures_per_ip = 3),
    # then a new connection, refused at once as throttled.
    with _submission_client(d, ca, "127.0.0.1") as client:
        codes = [client.docmd("AUTH", "PLAIN " + _plain("alice@example.test", f"wrong-{i}"))[0]
                 for i in range(3)]
    assert codes == [535, 535, 421]
    raw = RawSMTP(d.host, d.sub_port, source="127.0.0.1")  # type: ignore[attr-defined]
    assert raw.greeting.startswith(b"421 4.7.0")
    raw.close()
    # 127.0.0.2: one wrong password, with a user name that tries to forge a log line
    # blaming FORGED (a ban of someone else: the admin's address, the provider's MX...).
    with _submission_client(d, ca, "127.0.0.2") as client:
        assert client.docmd("AUTH", "PLAIN " + _plain(FORGERY, "guess"))[0] == 535
    # 127.0.0.3: an open-relay probe on port 25.
    raw = RawSMTP(d.host, d.port, source="127.0.0.3")
    raw.cmd(b"EHLO probe.example.net")
    raw.cmd(b"MAIL FROM:<spam@probe.example.net>")
    assert raw.cmd(b"RCPT TO:<victim@elsewhere.example>").startswith(b"554 5.7.1")
    raw.close()
    # 127.0.0.4: one connection more than max_connections_per_ip = 2.
    held = [RawSMTP(d.host, d.port, source="127.0.0.4") for _ in range(2)]
    refused = RawSMTP(d.host, d.port, source="127.0.0.4")
    assert refused.greeting.startswith(b"421 4.7.0")
    for conn in [*held, refused]:
        conn.close()
    # 127.0.0.6: one wrong IMAP password (same line, logger pymaild.imap), plus one whose
    # user name tries the same forgery.
    ctx = ca.client_context()
    ctx.check_hostname = False
    sock = ctx.wrap_socket(socket.create_connection((d.host, d.imaps_port), source_address=("127.0.0.6", 0)))  # type: ignore[attr-defined]
    sock.recv(4096)
    sock.sendall(b"a LOGIN alice@example.test wrong\r\n")
    assert b"a NO [AUTHENTICATIONFAILED]" in _read_tagged(sock, b"a ")
    forged = FORGERY.encode()
    sock.sendall(b"b LOGIN {%d+}\r\n" % len(forged) + forged + b" guess\r\n")
    assert b"b NO [AUTHENTICATIONFAILED]" in _read_tagged(sock, b"b ")
    sock.close()
    # 127.0.0.5: a correct login, which must never count.
    with _submission_client(d, ca, LEGIT) as client:
        client.login("alice@example.test", PASSWORD)
    text = d.wait_log("client=127.0.0.4 reason=", "relay denied", "auth session=", timeout=10)
    assert text.count("auth failed client=127.0.0.1 ") == 3, text
    assert f"client={FORGED}" in text  # the forgery reached the log (as one or more lines)
    return list(d.log_lines)


@pytest.fixture(scope="module", params=["stderr", "journal"])
def log_lines(request, tmp_path_factory, ca) -> Iterator[list[str]]:  # type: ignore[no-untyped-def]
    """The daemon's log lines (one daemon run per module and format); "journal": started
    as systemd would start it, so the lines carry no timestamp (see logs.py)."""
    directory = tmp_path_factory.mktemp(f"f2b-{request.param}")
    cert, key = ca.issue("mx.example.test")
    smtp_port, sub_port, imaps_port = free_port(), free_port(), free_port()
    d = PymaildProcess(directory, {
        "hostname": "mx.example.test",
        "primary_domain": "example.test",
        "local_domains": ["example.test"],
        "state_dir": str(directory / "state"),
        "tls": {"cert": str(cert), "key": str(key)},
        "listen": {"smtp": [f"127.0.0.1:{smtp_port}"], "submission": [f"127.0.0.1:{sub_port}"],
                   "imaps": [f"127.0.0.1:{imaps_port}"]},
        "smtp": {"max_connections_per_ip": 2},
        "submission": {"max_auth_failures_per_ip": 3},
        "checks": {"spf": False, "dkim": False, "dmarc": False},
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": "3s"},
    })
    d.host, d.port = "127.0.0.1", smtp_port
    d.sub_port = sub_port  # type: ignore[attr-defined]
    d.imaps_port = imaps_port  # type: ignore[attr-defined]
    d.add_account("alice@example.test")
    if request.param == "journal":
        d.env["JOURNAL_STREAM"] = "8:12345"  # logs.py then leaves the time to journald
    d.start()
    try:
        lines = drive(d, ca)
    finally:
        d.stop()
    stamped = [line for line in lines if re.match(r"\d{4}-\d\d-\d\dT", line)]
    assert bool(stamped) == (request.param == "stderr")
    yield lines


# ---------------------------------------------------------------------------- the filter in Python

# <HOST> as fail2ban uses it with raw addresses (usedns = no): IPv4 or IPv6.
HOST_RE = r"(?P<host>(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]+)"
# Stand-in for fail2ban's %(__prefix_line)s plus its date removal: an ISO time (our
# stderr), or a syslog/journal frame "May  1 12:00:00 host pymaild[123]:", or nothing.
PREFIX_RE = (r"(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\s+)?(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\s+)?"
             r"(?:\S+\s+\S+\[\d+\]:\s+)?")


def syslog_framed(lines: list[str]) -> list[str]:
    """The lines as rsyslog writes journal entries to /var/log/mail.log (and as fail2ban's
    systemd backend formats them, after the date): host, identifier[pid], message."""
    bare = [re.sub(r"^\d{4}-\d\d-\d\dT\S+ ", "", line) for line in lines]
    return [f"May  1 12:00:00 mx pymaild[321]: {line}" for line in bare]


def python_filter(mode: str) -> tuple[re.Pattern[str], list[re.Pattern[str]]]:
    """(prefregex, failregexes) of the filter file for ``mode``, in Python syntax."""
    parser = configparser.RawConfigParser()
    parser.read(FILTER)
    d = parser["Definition"]
    assert d["failregex"].strip() == "<mdre-<mode>>" and d["mode"] == "normal"

    def expand(text: str) -> str:
        text = text.replace("%(__prefix_line)s", PREFIX_RE).replace("%(_level)s", d["_level"])
        text = text.replace("%(mdre-normal)s", d["mdre-normal"])
        text = text.replace("<F-CONTENT>", "(?P<content>").replace("<F-USER>", "(?:")
        text = re.sub(r"</F-(?:CONTENT|USER)>", ")", text)
        return text.replace("<HOST>", HOST_RE)

    prefix = re.compile(expand(d["prefregex"]))
    fails = [re.compile(line.strip()) for line in expand(d[f"mdre-{mode}"]).splitlines() if line.strip()]
    assert "<" not in "".join(p.pattern for p in fails).replace("(?P<host>", ""), "untranslated tag"
    return prefix, fails


def python_matches(lines: list[str], mode: str) -> collections.Counter[str]:
    prefix, fails = python_filter(mode)
    hits: collections.Counter[str] = collections.Counter()
    for line in lines:
        m = prefix.match(line)
        if not m:
            continue
        content = m.group("content")
        for fail in fails:
            if f := fail.match(content):
                hits[f.group("host")] += 1
                break
    return hits


@pytest.mark.parametrize("mode", ["normal", "aggressive"])
def test_python_re_matches_real_lines(log_lines: list[str], mode: str) -> None:
    expected = NORMAL if mode == "normal" else AGGRESSIVE
    assert dict(python_matches(log_lines, mode)) == expected
    # Syslog framing (rsyslog to /var/log/mail.log) matches the same way.
    assert dict(python_matches(syslog_framed(log_lines), mode)) == expected


def test_shutdown_refusals_are_not_failures() -> None:
    line = ("WARNING pymaild.smtp: refused connection listener=mx client=192.0.2.1"
            " reason='Service shutting down'")
    assert python_matches([line], "aggressive") == {}
    line = line.replace("Service shutting down", "too many connections from your address")
    assert python_matches([line], "aggressive") == {"192.0.2.1": 1}


# ---------------------------------------------------------------------------- fail2ban-regex


def fail2ban_regex(tmp_path: Path, lines: list[str], mode: str) -> list[str]:
    """IPs fail2ban-regex finds, one per matched line."""
    require_tool("fail2ban-regex", "fail2ban")
    if not COMMON.exists():
        missing(f"{COMMON} not found (Debian package fail2ban)")
    # The filter's `before = common.conf` is looked up beside it, as in /etc/fail2ban/filter.d.
    filters = tmp_path / "filter.d"
    filters.mkdir(exist_ok=True)
    shutil.copy(COMMON, filters / "common.conf")
    shutil.copy(FILTER, filters / "pymaild.conf")
    log = tmp_path / f"pymaild-{mode}.log"
    log.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(log), f"{filters / 'pymaild.conf'}[mode={mode}]"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("mode", ["normal", "aggressive"])
def test_fail2ban_regex_matches_real_lines(tmp_path: Path, log_lines: list[str], mode: str) -> None:
    expected = NORMAL if mode == "normal" else AGGRESSIVE
    assert dict(collections.Counter(fail2ban_regex(tmp_path, log_lines, mode))) == expected
    framed = syslog_framed(log_lines)
    assert dict(collections.Counter(fail2ban_regex(tmp_path, framed, mode))) == expected


def test_jail_example() -> None:
    jail = configparser.RawConfigParser()
    jail.read(JAIL)
    j = jail["pymaild"]
    assert j["filter"].startswith("pymaild")
    assert {p.strip() for p in j["port"].split(",")} >= {"25", "465", "587"}
    assert (j["maxretry"], j["findtime"], j["bantime"], j["backend"]) == ("5", "10m", "1h", "systemd")
    assert j["journalmatch"] == "_SYSTEMD_UNIT=pymaild.service"
    # The unit the journalmatch names is the one we ship.
    assert (REPO / "systemd" / "pymaild.service").exists()


def test_lines_that_only_mention_a_client_never_match(log_lines: list[str]) -> None:
    # connect/disconnect/successful auth lines carry client= too: they must not count.
    innocent = [line for line in log_lines if "connect session=" in line or "auth session=" in line]
    assert any(f"client={LEGIT}" in line for line in innocent)
    assert python_matches(innocent, "aggressive") == {}


def test_login_refused_without_tls_is_not_a_failure() -> None:
    # A client set up without STARTTLS is misconfigured, not hostile: logged, never banned.
    lines = [
        "WARNING pymaild.imap: login refused without TLS session=4cb430ca0a9c client=192.0.2.1 command=LOGIN",
        "WARNING pymaild.smtp: login refused without TLS mechanism=PLAIN code=538 listener=submission"
        " session=ab12 client=192.0.2.1",
    ]
    assert python_matches(lines, "aggressive") == {}
