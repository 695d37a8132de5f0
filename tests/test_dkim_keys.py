"""DKIM key files: creation, loading, rotation, and real dkimpy sign + verify with them."""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from mailserver.config import Config, config_from_dict
from mailserver.dkim_keys import (
    ED25519_ALGORITHM,
    RSA_ALGORITHM,
    DKIMKey,
    DKIMKeyError,
    _create_exclusive,
    dns_txt_for,
    ensure_keys,
    key_path,
    load_keys,
    parse_private_key,
)

MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>\r\n"
    b"Subject: DKIM test\r\n"
    b"Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
    b"Message-ID: <dkim-test@example.org>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"this line is signed.\r\n"
)


def make_cfg(tmp_path: Path, **extra: object) -> Config:
    raw: dict[str, object] = {
        "hostname": "mx1.example.org",
        "primary_domain": "example.org",
        "local_domains": ["example.org", "example.net"],
        "state_dir": str(tmp_path / "state"),
        "tls": {"self_signed": True},
    }
    raw.update(extra)
    return config_from_dict(raw)


def dnsfunc_from_files(dkim_dir: Path):
    """A dkimpy dnsfunc answering <sel>._domainkey.<domain> from the .dns files on disk."""

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        qname = name.decode().rstrip(".")
        selector, _, domain = qname.partition("._domainkey.")
        path = dkim_dir / f"{domain}.{selector}.dns"
        return path.read_bytes().strip() if path.exists() else None

    return dnsfunc


def sign(key: DKIMKey, message: bytes = MESSAGE) -> bytes:
    return dkim.sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.dkimpy_privkey,
        signature_algorithm=key.dkimpy_algorithm,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, list[DKIMKey]]:
    cfg = make_cfg(tmp_path_factory.mktemp("dkim"))
    return cfg, ensure_keys(cfg)


# ---------------------------------------------------------------------------- creation


def test_creates_rsa_and_ed25519_per_domain(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    assert [(k.domain, k.selector, k.algorithm) for k in keys] == [
        ("example.org", "default", RSA_ALGORITHM),
        ("example.org", "default-ed25519", ED25519_ALGORITHM),
        ("example.net", "default", RSA_ALGORITHM),
        ("example.net", "default-ed25519", ED25519_ALGORITHM),
    ]
    assert all(k.created for k in keys)
    for k in keys:
        assert k.private_key_path == cfg.dkim_dir / f"{k.domain}.{k.selector}.key"
        assert k.dns_path == cfg.dkim_dir / f"{k.domain}.{k.selector}.dns"
        assert k.dns_name == f"{k.selector}._domainkey.{k.domain}"
        assert stat.S_IMODE(k.private_key_path.stat().st_mode) == 0o600
        assert k.dns_path.read_text() == k.dns_txt + "\n"
    assert stat.S_IMODE(cfg.dkim_dir.stat().st_mode) == 0o700
    # Nothing else left behind (no tmp files).
    assert sorted(p.name for p in cfg.dkim_dir.iterdir()) == sorted(
        [k.private_key_path.name for k in keys] + [k.dns_path.name for k in keys]
    )


def test_key_files_are_pkcs8_pem_and_rsa_is_2048(state: tuple[Config, list[DKIMKey]]) -> None:
    _, keys = state
    for k in keys:
        data = k.private_key_path.read_bytes()
        assert data.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        loaded = serialization.load_pem_private_key(data, password=None)
        if k.algorithm == RSA_ALGORITHM:
            assert isinstance(loaded, rsa.RSAPrivateKey)
            assert loaded.key_size == 2048
        else:
            assert isinstance(loaded, ed25519.Ed25519PrivateKey)


def test_dns_txt_format(state: tuple[Config, list[DKIMKey]]) -> None:
    _, keys = state
    rsa_key, ed_key = keys[0], keys[1]
    assert rsa_key.dns_txt.startswith("v=DKIM1; k=rsa; p=MIIB")
    der = base64.b64decode(rsa_key.dns_txt.split("p=", 1)[1])
    public = serialization.load_der_public_key(der)
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == rsa_key.private_key.public_key().public_numbers()
    # RFC 8463: p= is the base64 of the raw 32-byte public key.
    assert ed_key.dns_txt.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(ed_key.dns_txt.split("p=", 1)[1])
    assert len(raw) == 32
    assert raw == ed_key.private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_dkimpy_privkey_forms(state: tuple[Config, list[DKIMKey]]) -> None:
    _, keys = state
    rsa_key, ed_key = keys[0], keys[1]
    assert rsa_key.dkimpy_privkey.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    seed = base64.b64decode(ed_key.dkimpy_privkey)
    assert len(seed) == 32
    assert seed == ed_key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def test_repr_does_not_leak_private_key(state: tuple[Config, list[DKIMKey]]) -> None:
    _, keys = state
    for k in keys:
        text = repr(k)
        assert "PRIVATE" not in text and k.dkimpy_privkey.decode() not in text


# ---------------------------------------------------------------------------- dkimpy


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_dkimpy_signs_and_verifies_with_published_value(
    state: tuple[Config, list[DKIMKey]], index: int
) -> None:
    cfg, keys = state
    key = keys[index]
    signature = sign(key)
    assert f"a={key.algorithm}".encode() in signature
    signed = signature + MESSAGE
    assert dkim.verify(signed, dnsfunc=dnsfunc_from_files(cfg.dkim_dir))
    # Tampering breaks it: the check is real.
    assert not dkim.verify(signed.replace(b"signed.", b"forged."), dnsfunc=dnsfunc_from_files(cfg.dkim_dir))


def test_both_signatures_verify_on_one_message(state: tuple[Config, list[DKIMKey]]) -> None:
    cfg, keys = state
    rsa_key, ed_key = keys[0], keys[1]
    signed = sign(rsa_key)
    signed = sign(ed_key, signed + MESSAGE) + signed + MESSAGE
    verifier = dkim.DKIM(signed)
    dnsfunc = dnsfunc_from_files(cfg.dkim_dir)
    # dkim.verify() checks only the first signature (library notes): check each one.
    assert verifier.verify(idx=0, dnsfunc=dnsfunc)
    assert verifier.verify(idx=1, dnsfunc=dnsfunc)


def test_wrong_published_key_fails_verification(state: tuple[Config, list[DKIMKey]]) -> None:
    _, keys = state
    signed = sign(keys[0]) + MESSAGE
    # example.net's key published under example.org's name: must not verify.
    assert not dkim.verify(signed, dnsfunc=lambda name, timeout=5: keys[2].dns_txt.encode())


# ---------------------------------------------------------------------------- idempotence


def test_second_run_loads_and_never_overwrites(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    first = ensure_keys(cfg)
    before = {k.private_key_path: k.private_key_path.read_bytes() for k in first}
    second = ensure_keys(cfg)
    assert [k.created for k in second] == [False, False]
    assert [k.dns_txt for k in second] == [k.dns_txt for k in first]
    assert {k.private_key_path: k.private_key_path.read_bytes() for k in second} == before
    assert [k.dns_txt for k in load_keys(cfg)] == [k.dns_txt for k in first]


def test_existing_key_is_used_not_replaced(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    cfg.dkim_dir.mkdir(parents=True)
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = key_path(cfg, "example.org", "default")
    # PKCS#1, as opendkim-genkey writes it: carried over unchanged.
    pem = mine.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    keys = ensure_keys(cfg)
    assert keys[0].selector == "default" and not keys[0].created
    assert keys[0].dns_txt == dns_txt_for(mine)
    assert path.read_bytes() == pem
    assert keys[1].created  # the missing ed25519 one is made


def test_missing_or_stale_dns_file_is_rewritten(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    keys = ensure_keys(cfg)
    keys[0].dns_path.write_text("v=DKIM1; k=rsa; p=stale\n")
    keys[1].dns_path.unlink()
    again = ensure_keys(cfg)
    assert keys[0].dns_path.read_text() == again[0].dns_txt + "\n"
    assert keys[1].dns_path.read_text() == again[1].dns_txt + "\n"


def test_load_keys_is_read_only(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert load_keys(cfg) == []
    assert not cfg.dkim_dir.exists()
    keys = ensure_keys(cfg)
    keys[0].dns_path.unlink()
    loaded = load_keys(cfg)
    assert [k.dns_txt for k in loaded] == [k.dns_txt for k in keys]
    assert not any(k.created for k in loaded)
    assert not keys[0].dns_path.exists()


def test_exclusive_create_does_not_replace(tmp_path: Path) -> None:
    target = tmp_path / "example.org.default.key"
    assert _create_exclusive(target, b"first", 0o600)
    assert not _create_exclusive(target, b"second", 0o600)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


# ---------------------------------------------------------------------------- rotation


def test_rotation_loads_old_and_new_selectors(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"], dkim={"selector": "2025"})
    old = ensure_keys(cfg)
    assert [k.selector for k in old] == ["2025", "2025-ed25519"]
    rotated = make_cfg(tmp_path, local_domains=["example.org"], dkim={"selector": "2026"})
    keys = ensure_keys(rotated)
    # Configured (new) selectors first, then the old ones still present, by name.
    assert [(k.selector, k.created) for k in keys] == [
        ("2026", True), ("2026-ed25519", True), ("2025", False), ("2025-ed25519", False),
    ]
    assert {k.dns_txt for k in keys[2:]} == {k.dns_txt for k in old}
    dnsfunc = dnsfunc_from_files(cfg.dkim_dir)
    for k in keys:  # old keys still sign and verify: mail in flight stays valid
        assert dkim.verify(sign(k) + MESSAGE, dnsfunc=dnsfunc)


def test_discovery_skips_foreign_and_temporary_files(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org", "example.org.uk"])
    ensure_keys(cfg)
    extra = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for name in (
        "example.com.default.key",  # not a local domain
        ".example.org.s2.key.123.abcd.tmp",  # crash leftover
        "example.org.uk.old.key",  # belongs to example.org.uk, not selector "uk.old"
        "example.org.a.b.key",  # dotted selector not in the config: ambiguous, skipped
        "example.org.old",  # no .key suffix
    ):
        (cfg.dkim_dir / name).write_bytes(extra)
    keys = load_keys(cfg)
    assert [(k.domain, k.selector) for k in keys] == [
        ("example.org", "default"),
        ("example.org", "default-ed25519"),
        ("example.org.uk", "default"),
        ("example.org.uk", "default-ed25519"),
        ("example.org.uk", "old"),
    ]


# ---------------------------------------------------------------------------- formats & errors


def test_bare_base64_ed25519_seed_is_accepted(tmp_path: Path) -> None:
    """opendkim/rspamd keep ed25519 keys as a base64 seed: such a file loads as is."""
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    cfg.dkim_dir.mkdir(parents=True)
    seed = os.urandom(32)
    path = key_path(cfg, "example.org", "default-ed25519")
    path.write_bytes(base64.b64encode(seed) + b"\n")
    path.chmod(0o600)
    keys = ensure_keys(cfg)
    ed_key = keys[1]
    assert not ed_key.created
    assert base64.b64decode(ed_key.dkimpy_privkey) == seed
    assert dkim.verify(sign(ed_key) + MESSAGE, dnsfunc=dnsfunc_from_files(cfg.dkim_dir))


def test_algorithm_follows_the_file_not_the_selector(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    cfg.dkim_dir.mkdir(parents=True)
    path = key_path(cfg, "example.org", "default")
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    path.chmod(0o600)
    assert ensure_keys(cfg)[0].algorithm == ED25519_ALGORITHM


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"garbage", "not a PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "cannot parse PEM"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "unsupported key type",
        ),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
    ],
)
def test_unusable_key_file_names_the_file(tmp_path: Path, content: bytes, problem: str) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    cfg.dkim_dir.mkdir(parents=True)
    path = key_path(cfg, "example.org", "default")
    path.write_bytes(content)
    with pytest.raises(DKIMKeyError) as err:
        ensure_keys(cfg)
    assert str(err.value).startswith(f"{path}: ")
    assert problem in str(err.value)


def test_parse_private_key_rejects_wrong_seed_length() -> None:
    with pytest.raises(DKIMKeyError, match="base64 ed25519 seed"):
        parse_private_key(base64.b64encode(b"x" * 31), "k")


def test_same_selector_for_both_algorithms_is_refused(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, dkim={"selector": "mail", "ed25519_selector": "mail"})
    with pytest.raises(DKIMKeyError, match="must differ"):
        ensure_keys(cfg)


def test_world_readable_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    keys = ensure_keys(cfg)
    keys[0].private_key_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="mailserver.dkim_keys"):
        load_keys(cfg)
    assert "readable by others" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_dir_is_one_clear_error(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    cfg.dkim_dir.mkdir(parents=True)
    cfg.dkim_dir.chmod(0o500)
    try:
        with pytest.raises(DKIMKeyError, match="permission denied"):
            ensure_keys(cfg)
    finally:
        cfg.dkim_dir.chmod(0o700)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_root_hands_new_files_to_the_state_dir_owner(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, local_domains=["example.org"])
    cfg.state_path.mkdir(parents=True)
    os.chown(cfg.state_path, 4242, 4343)
    keys = ensure_keys(cfg)
    for p in [cfg.dkim_dir, *(k.private_key_path for k in keys), *(k.dns_path for k in keys)]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (4242, 4343), p
