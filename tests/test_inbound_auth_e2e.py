"""SPF, DKIM and DMARC verdicts end to end: a real daemon whose resolver asks a DNS server
on loopback that publishes a foreign domain's SPF, DKIM keys and DMARC policy."""

from __future__ import annotations

import base64
import smtplib
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.dnsserver import DNSServer

SENDER_DOMAIN = "sender.example"


@pytest.fixture(scope="module")
def keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    rsa_pem = rsa_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    rsa_pub = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    ed_seed = ed_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                   serialization.NoEncryption())
    ed_pub = ed_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "rsa": (rsa_pem, f"v=DKIM1; k=rsa; p={base64.b64encode(rsa_pub).decode()}"),
        "ed": (base64.b64encode(ed_seed), f"v=DKIM1; k=ed25519; p={base64.b64encode(ed_pub).decode()}"),
    }


def publish(dns_server: DNSServer, keys, domain: str = SENDER_DOMAIN, policy: str = "reject") -> None:
    dns_server.add(f"{domain}.", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add(f"rsa1._domainkey.{domain}.", "TXT", keys["rsa"][1])
    dns_server.add(f"ed1._domainkey.{domain}.", "TXT", keys["ed"][1])
    dns_server.add(f"_dmarc.{domain}.", "TXT", f"v=DMARC1; p={policy}; rua=mailto:dmarc@{domain}")


def build(domain: str = SENDER_DOMAIN, body: str = "Hello Alice.\r\n") -> bytes:
    return (f"From: Bob <bob@{domain}>\r\nTo: alice@example.test\r\nSubject: checks\r\n"
            f"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@{domain}>\r\n"
            f"\r\n{body}").encode()


def sign(msg: bytes, keys, domain: str = SENDER_DOMAIN) -> bytes:
    headers = [b"from", b"to", b"subject", b"date", b"message-id"]
    sig_rsa = dkim.sign(msg, b"rsa1", domain.encode(), keys["rsa"][0], include_headers=headers,
                        linesep=b"\r\n")
    sig_ed = dkim.sign(msg, b"ed1", domain.encode(), keys["ed"][0], include_headers=headers,
                       signature_algorithm=b"ed25519-sha256", linesep=b"\r\n")
    return sig_ed + sig_rsa + msg


def send(d, msg: bytes, *, source: str = "127.0.0.1", domain: str = SENDER_DOMAIN) -> tuple[int, bytes]:
    with smtplib.SMTP(d.host, d.port, local_hostname=f"mail.{domain}", timeout=30,
                      source_address=(source, 0)) as client:
        client.ehlo()
        client.mail(f"bob@{domain}")
        code, reply = client.rcpt("alice@example.test")
        assert code == 250, reply
        return client.data(msg)


def stored(d, folder: str = "") -> list[bytes]:
    base = d.state_dir / "mail/example.test/alice" / folder / "new"
    return [p.read_bytes() for p in sorted(base.iterdir())]


def ar_header(data: bytes) -> str:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ")
    lines = [line for line in unfolded.split("\r\n") if line.lower().startswith("authentication-results:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def checked(make_daemon, dns_server):
    return make_daemon(checks={}, nameservers=[dns_server.nameserver])


def test_signed_mail_passes_everything(checked, dns_server, keys):
    publish(dns_server, keys)
    code, reply = send(checked, sign(build(), keys))
    assert code == 250, reply
    (msg,) = stored(checked)
    ar = ar_header(msg)
    assert ar.startswith("Authentication-Results: mx.example.test;")
    assert "spf=pass" in ar and "smtp.mailfrom=bob@sender.example" in ar
    assert ar.count("dkim=pass") == 2
    assert "header.a=rsa-sha256" in ar and "header.a=ed25519-sha256" in ar
    assert "dmarc=pass" in ar and "header.from=sender.example" in ar
    log = checked.wait_log("outcome=delivered")
    assert "spf=pass" in log and "dmarc=pass" in log


def test_altered_body_fails_dkim(checked, dns_server, keys):
    publish(dns_server, keys)
    signed = sign(build(), keys)
    tampered = signed.replace(b"Hello Alice.", b"Hello Alice!")
    code, _ = send(checked, tampered)
    assert code == 250  # SPF still passes and aligns: DMARC passes, the message is kept
    ar = ar_header(stored(checked)[0])
    assert "dkim=fail" in ar and "dkim=pass" not in ar
    assert "spf=pass" in ar and "dmarc=pass" in ar


def test_spf_fail_with_dmarc_reject_is_refused(checked, dns_server, keys):
    publish(dns_server, keys, policy="reject")
    code, reply = send(checked, build(), source="127.0.0.5")  # not in the SPF record, unsigned
    assert code == 550 and reply.startswith(b"5.7.1"), reply
    assert b"DMARC" in reply
    assert stored(checked) == []
    assert "outcome=rejected" in checked.wait_log("outcome=rejected")


def test_dmarc_quarantine_goes_to_junk(checked, dns_server, keys):
    publish(dns_server, keys, domain="quarantine.example", policy="quarantine")
    code, reply = send(checked, build(domain="quarantine.example"), source="127.0.0.5",
                       domain="quarantine.example")
    assert code == 250, reply
    assert stored(checked) == []
    (junk,) = stored(checked, ".Junk")
    assert "dmarc=fail" in ar_header(junk)
    assert "folder=Junk" in checked.wait_log("folder=Junk")


def test_dns_temporary_error_defers(checked, dns_server, keys):
    publish(dns_server, keys)
    dns_server.servfail(f"{SENDER_DOMAIN}.")
    dns_server.servfail(f"_dmarc.{SENDER_DOMAIN}.")
    code, reply = send(checked, build())
    assert code == 451 and reply.startswith(b"4.7."), reply
    assert stored(checked) == []


def test_unsigned_mail_without_dmarc_record_is_delivered(checked, dns_server):
    dns_server.add("plain.example.", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    code, _ = send(checked, build(domain="plain.example"), domain="plain.example")
    assert code == 250
    ar = ar_header(stored(checked)[0])
    assert "spf=pass" in ar and "dkim=none" in ar and "dmarc=none" in ar
