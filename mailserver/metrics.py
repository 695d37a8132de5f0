"""Prometheus metrics: a few counters, gauges read at scrape time, plain-HTTP ``/metrics``.

Written by hand rather than with ``prometheus-client``: the text exposition format for
counters and gauges is a dozen lines, while the library would add a dependency, a
process-global default registry (duplicate-registration errors between tests and daemon
instances) and an HTTP server of its own that runs in a thread; ours is served by the same
``HTTPListener`` as the HTTPS documents, on the event loop.

The daemon holds one ``Metrics`` whether or not ``listen.metrics`` is set: ``inc`` is a dict
update, so the call sites need no ``if metrics``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from .net.http import HTTPListener, Request, Response, error_response

log = logging.getLogger("pymaild.metrics")

PREFIX = "pymaild_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name -> (help, label names). Fixed here so a typo at a call site fails its first test
# instead of silently creating a new series.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "connections_total": ("Connections accepted, by listener.", ("listener",)),
    "connections_evicted_total": ("Idle connections closed to make room in a full connection table.",
                                  ("listener",)),
    "connections_pregreet_total": ("SMTP clients cut off for talking before the greeting.", ("listener",)),
    "messages_total": (
        "Messages by direction (in, out) and result (delivered, rejected, deferred, junk, sent, bounced).",
        ("direction", "result"),
    ),
    "check_results_total": ("Inbound check results, by check (spf, dkim, dmarc) and result.",
                            ("check", "result")),
    "auth_failures_total": ("Failed SMTP/IMAP authentications, by listener.", ("listener",)),
    "auth_checks_total": ("Login attempts by outcome: ok (argon2), cached (no hash), failed, "
                          "throttled (refused without a check).", ("result",)),
    "delivery_attempts_total": ("Remote delivery attempts, by result (sent, temp, perm).", ("result",)),
}
GAUGES: dict[str, str] = {
    "queue_messages": "Messages in the outbound queue.",
    "queue_oldest_age_seconds": "Age of the oldest message in the outbound queue (0 if empty).",
    "imap_sessions": "Logged-in IMAP sessions.",
}

LabelKey = tuple[str, ...]


def _escape(value: str) -> str:
    # The three escapes the text format defines for label values.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _series(name: str, labels: tuple[str, ...], values: LabelKey) -> str:
    if not labels:
        return PREFIX + name
    pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(labels, values, strict=True))
    return f"{PREFIX}{name}{{{pairs}}}"


class Metrics:
    """Counters the daemon increments and gauges computed when scraped.

    ``metrics.inc("messages_total", direction="in", result="delivered")``;
    ``metrics.gauge("queue_messages", lambda: len(queue))``. Gauge callbacks run on the
    event loop during a scrape: they must be cheap and must not do I/O.
    """

    def __init__(self) -> None:
        self._counters: dict[str, dict[LabelKey, float]] = {name: {} for name in COUNTERS}
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to a counter. KeyError for an unknown counter or wrong label names."""
        _, names = COUNTERS[name]
        if set(labels) != set(names):
            raise KeyError(f"{name} takes labels {', '.join(names)}, got {', '.join(sorted(labels))}")
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = tuple(str(labels[n]) for n in names)
        series = self._counters[name]
        series[key] = series.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> float:
        """A counter's current value (0 if never incremented): for tests and the CLI."""
        _, names = COUNTERS[name]
        return self._counters[name].get(tuple(str(labels[n]) for n in names), 0)

    def gauge(self, name: str, callback: Callable[[], float]) -> None:
        """Read ``callback()`` at every scrape; replaces an earlier callback for ``name``."""
        if name not in GAUGES:
            raise KeyError(f"unknown gauge {name!r}; known: {', '.join(GAUGES)}")
        self._gauges[name] = callback

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        out: list[str] = []
        for name, (help_text, labels) in COUNTERS.items():
            out += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} counter"]
            for key, value in sorted(self._counters[name].items()):
                out.append(f"{_series(name, labels, key)} {_number(value)}")
        for name, help_text in GAUGES.items():
            callback = self._gauges.get(name)
            if callback is None:
                continue
            try:
                value = float(callback())
            except Exception:
                # A broken gauge must not hide every other metric: leave it out (Prometheus
                # then shows it as absent, which alerts can catch) and say why in the log.
                log.exception("metrics: gauge %s failed", name)
                continue
            out += [f"# HELP {PREFIX}{name} {help_text}", f"# TYPE {PREFIX}{name} gauge",
                    f"{PREFIX}{name} {_number(value)}"]
        return "\n".join(out) + "\n"


class MetricsServer:
    """``listen.metrics``: ``GET /metrics`` over plain HTTP. Keep it on loopback (or behind a
    firewall): the counters say how much mail flows and which checks fail."""

    def __init__(self, metrics: Metrics, *, timeout: float = 10.0, max_connections: int = 100) -> None:
        self.metrics = metrics
        # Scrapes every 15 s would flood the journal: request lines only at debug level.
        self.listener = HTTPListener("metrics", self.route, timeout=timeout,
                                     max_connections=max_connections, log_level=logging.DEBUG)

    async def listen(self, host: str, port: int) -> None:
        await self.listener.listen(host, port)

    async def close(self) -> None:
        await self.listener.close()

    @property
    def sockets(self) -> list[tuple[str, int]]:
        return self.listener.sockets

    def route(self, request: Request) -> Response:
        if request.path != "/metrics":
            return error_response(404)
        return Response(200, self.metrics.render().encode("utf-8"), content_type=CONTENT_TYPE)
