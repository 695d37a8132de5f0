#!/usr/bin/env bash
# Install pymaild into ./.venv and start a demo server on loopback: inbound SMTP on
# 127.0.0.1:2525, submission on 5587 (STARTTLS) and 5465 (TLS), IMAP on 1143 (STARTTLS)
# and 1993 (TLS), a self-signed
# certificate, state in ./demo, one account demo@example.test whose password is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv || { echo "quickstart: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[fast]"

mkdir -p demo
[ -f demo/pymaild.toml ] || cp config/local.toml demo/pymaild.toml
if [ ! -f demo/demo-password.txt ]; then
  .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(12))" > demo/demo-password.txt
  chmod 600 demo/demo-password.txt
  .venv/bin/pymaild creds create demo@example.test --password-stdin -c demo/pymaild.toml < demo/demo-password.txt
fi
echo "demo account: demo@example.test  password: $(cat demo/demo-password.txt)"
echo "receive: swaks --server 127.0.0.1:2525 --tls --to demo@example.test"
echo "send:    swaks --server 127.0.0.1:5587 --tls --auth PLAIN --auth-user demo@example.test --auth-password \"\$(cat demo/demo-password.txt)\" --from demo@example.test --to demo@example.test"
echo "read:    IMAP on 127.0.0.1:1993 (TLS) or 1143 (STARTTLS), user demo@example.test (self-signed certificate)"
echo "mail lands in demo/state/mail/example.test/demo/new/"
exec .venv/bin/pymaild run -c demo/pymaild.toml
