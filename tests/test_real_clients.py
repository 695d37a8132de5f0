"""Third-party SMTP clients against a real pymaild: swaks (Debian's swaks package)."""

from __future__ import annotations

import subprocess

from tests.support.tools import needs_tool

pytestmark = needs_tool("swaks", "swaks")


def swaks(d, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", f"{d.host}:{d.port}", "--helo", "client.example.net",
         "--from", "bob@example.net", "--timeout", "20", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_swaks_starttls_with_verified_certificate(make_daemon, ca):
    d = make_daemon()
    result = swaks(d, "--to", "alice@example.test", "--tls", "--tls-verify",
                   "--tls-ca-path", str(ca.cert_path), "--tls-sni", "mx.example.test",
                   "--header", "Subject: via swaks")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  250 2.0.0 Ok: delivered as" in result.stdout
    files = list((d.state_dir / "mail/example.test/alice/new").iterdir())
    assert len(files) == 1
    assert b"Subject: via swaks" in files[0].read_bytes()


def test_swaks_pipelining_and_refusals(make_daemon):
    d = make_daemon()
    ok = swaks(d, "--to", "alice@example.test", "--pipeline")
    assert ok.returncode == 0, ok.stdout
    unknown = swaks(d, "--to", "nobody@example.test")
    assert "550 5.1.1" in unknown.stdout and unknown.returncode != 0
    relay = swaks(d, "--to", "victim@elsewhere.example")
    assert "554 5.7.1" in relay.stdout and relay.returncode != 0
    assert len(list((d.state_dir / "mail/example.test/alice/new").iterdir())) == 1
