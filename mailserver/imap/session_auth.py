"""Logging in: STARTTLS, LOGIN, AUTHENTICATE PLAIN (RFC 3501 6.2, RFC 4616), credentials.

Passwords are taken only over TLS (RFC 3501 6.2.3 LOGINDISABLED, ``[PRIVACYREQUIRED]``);
a connection with too many failed logins is closed, so the client goes through the
per-address throttle again.
"""

from __future__ import annotations

import logging

from mailserver.auth.login import AuthResult, loggable

from . import format as fmt
from .commands import Authenticate, Command, Login
from .session_core import Action, Refused, SessionCore, State

log = logging.getLogger("pymaild.imap")


class AuthCommands(SessionCore):
    async def _starttls(self, cmd: Command) -> Action:
        if self.tls or not self.starttls_available:
            raise Refused("TLS is already active" if self.tls else "STARTTLS is not available", status="BAD")
        self._ok(cmd.tag, "Begin TLS negotiation now")
        return Action.STARTTLS

    def tls_started(self) -> None:
        self.tls = True

    async def _login(self, cmd: Command) -> Action:
        assert isinstance(cmd, Login)
        if not self.tls:
            return self._refused_without_tls(cmd.tag, "LOGIN")
        return await self._check_credentials(cmd.tag, cmd.username, cmd.password)

    async def _authenticate(self, cmd: Command) -> Action:
        assert isinstance(cmd, Authenticate)
        if not self.tls:
            action = self._refused_without_tls(cmd.tag, "AUTHENTICATE")
            return Action.RESUME if action is Action.NONE else action
        if cmd.mechanism != "PLAIN":
            raise Refused(f"mechanism {cmd.mechanism[:20]} is not supported (use PLAIN)", code="CANNOT")
        if cmd.initial_response is None:
            self._auth_tag = cmd.tag
            self.out.write(b"+ \r\n")
            return Action.CONTINUE_AUTH
        return await self._plain(cmd.tag, cmd.initial_response)

    async def auth_response(self, tag: str, data: bytes | None) -> Action:
        """The client's answer to the ``+`` challenge (None: it cancelled with ``*``)."""
        if data is None:
            self.out.write(fmt.tagged(tag, "BAD", "authentication cancelled"))
            return Action.NONE  # the framer already reads commands again
        return await self._plain(tag, data)

    async def _plain(self, tag: str, data: bytes) -> Action:
        parts = data.split(b"\x00")
        if len(parts) != 3:
            self.out.write(fmt.tagged(tag, "BAD", "malformed PLAIN response"))
            return Action.RESUME
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            self.out.write(fmt.tagged(tag, "BAD", "PLAIN response is not UTF-8"))
            return Action.RESUME
        if authzid and authzid.strip().lower() != user.strip().lower():
            # mbsync sends authzid == login name: fine. Acting as someone else: never.
            self.backend.throttle.failure(self.client_ip, user.strip().lower())
            return self._login_failed(tag, "authorization identity must be the login name",
                                      "AUTHORIZATIONFAILED", Action.RESUME)
        try:
            action = await self._check_credentials(tag, user, password)
        except Refused as exc:
            self.out.write(fmt.tagged(tag, exc.status, exc.text, code=exc.code))
            return Action.RESUME
        return Action.RESUME if action is Action.NONE else action

    def _refused_without_tls(self, tag: str, command: str) -> Action:
        # A client set up without STARTTLS: the operator should see it (not a fail2ban line).
        log.warning("login refused without TLS session=%s client=%s command=%s", self.id,
                    self.client_ip, command)
        return self._login_failed(tag, "Log in only after STARTTLS, so the password is never sent"
                                  " in clear text", "PRIVACYREQUIRED", Action.NONE)

    def _login_failed(self, tag: str, text: str, code: str, action: Action) -> Action:
        """NO for a failed login; after a few on one connection, BYE too and close (the
        client must reconnect, and go through the per-address throttle again)."""
        self.out.write(fmt.tagged(tag, "NO", text, code=code))
        self.auth_failures += 1
        if self.auth_failures >= self.backend.logins.policy.max_failures_per_connection:
            log.info("closing session=%s client=%s: too many failed logins", self.id, self.client_ip)
            self.out.write(fmt.untagged_status("BYE", "too many failed logins"))
            return Action.CLOSE
        return action

    async def _check_credentials(self, tag: str, user: str, password: str) -> Action:
        backend = self.backend
        result = await backend.authenticate(self.client_ip, user, password, self.listener)
        if result is AuthResult.THROTTLED:  # (LoginChecker already waited failure_delay)
            return self._login_failed(tag, "too many failed logins, try again later", "UNAVAILABLE",
                                      Action.NONE)
        if result is AuthResult.INVALID:
            return self._login_failed(tag, "invalid user name or password", "AUTHENTICATIONFAILED",
                                      Action.NONE)
        user = user.strip().lower()
        if not backend.acquire_session(user):
            log.warning("session limit session=%s client=%s user=%s", self.id, self.client_ip, loggable(user))
            raise Refused(f"too many sessions for {user} (limit {backend.limits.max_sessions_per_user})",
                          code="LIMIT")
        self.user = self.login_name = user
        try:
            tree = await self.run_in_thread(backend.mailbox_store, user)
        except OSError as exc:
            backend.release_session(user)
            self.user = None
            log.error("session=%s cannot open the mailbox of %s: %s", self.id, user, exc)
            raise Refused("your mailbox cannot be opened right now", code="UNAVAILABLE") from None
        self.tree = tree
        self.state = State.AUTHENTICATED
        log.info("login session=%s client=%s user=%s", self.id, self.client_ip, user)
        self._ok(tag, "Logged in", code=fmt.code_capability(self.capabilities()))
        return Action.NONE
