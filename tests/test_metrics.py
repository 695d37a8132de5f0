"""Prometheus metrics: the registry, the text format, and a real scrape over HTTP."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from mailserver.metrics import CONTENT_TYPE, Metrics, MetricsServer


def scrape(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[str, float]:
    """Series name with labels -> value, checking every line is valid exposition format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) pymaild_[a-z_]+ \S", line), line
            continue
        m = re.match(r'^(pymaild_[a-z_]+(?:\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})?) (\S+)$', line)
        assert m, line
        out[m.group(1)] = float(m.group(2))
    return out


@pytest.fixture
async def served() -> AsyncIterator[tuple[Metrics, str]]:
    metrics = Metrics()
    server = MetricsServer(metrics, timeout=1.0)
    await server.listen("127.0.0.1", 0)
    yield metrics, f"http://127.0.0.1:{server.sockets[0][1]}"
    await server.close()


async def test_scrape_shows_counters_with_labels(served: tuple[Metrics, str]) -> None:
    metrics, base = served
    metrics.inc("connections_total", listener="smtp")
    metrics.inc("connections_total", listener="smtp")
    metrics.inc("connections_total", listener="submission")
    metrics.inc("messages_total", direction="in", result="delivered")
    metrics.inc("check_results_total", check="spf", result="pass")
    metrics.inc("delivery_attempts_total", 3, result="temp")
    status, content_type, text = await asyncio.to_thread(scrape, base + "/metrics")
    assert status == 200 and content_type == CONTENT_TYPE
    got = samples(text)
    assert got['pymaild_connections_total{listener="smtp"}'] == 2
    assert got['pymaild_connections_total{listener="submission"}'] == 1
    assert got['pymaild_messages_total{direction="in",result="delivered"}'] == 1
    assert got['pymaild_check_results_total{check="spf",result="pass"}'] == 1
    assert got['pymaild_delivery_attempts_total{result="temp"}'] == 3
    assert "# TYPE pymaild_auth_failures_total counter" in text  # declared even before any failure
    # Counters only go up between scrapes.
    metrics.inc("connections_total", listener="smtp")
    _, _, text = await asyncio.to_thread(scrape, base + "/metrics")
    assert samples(text)['pymaild_connections_total{listener="smtp"}'] == 3


async def test_gauges_call_their_callbacks_at_each_scrape(served: tuple[Metrics, str]) -> None:
    metrics, base = served
    queue = [1, 2, 3]
    calls = []

    def queued() -> float:
        calls.append(1)
        return len(queue)

    metrics.gauge("queue_messages", queued)
    metrics.gauge("queue_oldest_age_seconds", lambda: 12.5)
    _, _, text = await asyncio.to_thread(scrape, base + "/metrics")
    assert samples(text)["pymaild_queue_messages"] == 3
    assert samples(text)["pymaild_queue_oldest_age_seconds"] == 12.5
    assert "# TYPE pymaild_queue_messages gauge" in text
    queue.clear()
    _, _, text = await asyncio.to_thread(scrape, base + "/metrics")
    assert samples(text)["pymaild_queue_messages"] == 0
    assert len(calls) == 2


async def test_a_failing_gauge_leaves_the_rest(served: tuple[Metrics, str]) -> None:
    metrics, base = served
    metrics.gauge("queue_messages", lambda: 1 / 0)
    metrics.gauge("queue_oldest_age_seconds", lambda: 4)
    metrics.inc("auth_failures_total", listener="submission")
    status, _, text = await asyncio.to_thread(scrape, base + "/metrics")
    got = samples(text)
    assert status == 200 and "pymaild_queue_messages" not in got
    assert got["pymaild_queue_oldest_age_seconds"] == 4
    assert got['pymaild_auth_failures_total{listener="submission"}'] == 1


async def test_other_paths_and_methods(served: tuple[Metrics, str]) -> None:
    _, base = served
    assert (await asyncio.to_thread(scrape, base + "/"))[0] == 404
    assert (await asyncio.to_thread(scrape, base + "/metrics/../metrics"))[0] == 404
    request = urllib.request.Request(base + "/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
    assert info.value.code == 405


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.inc("check_results_total", check="dkim", result='we"ird\\\nvalue')
    line = next(x for x in metrics.render().splitlines() if x.startswith("pymaild_check_results_total"))
    assert line == 'pymaild_check_results_total{check="dkim",result="we\\"ird\\\\\\nvalue"} 1'
    assert samples(metrics.render())


def test_typos_fail_loudly() -> None:
    metrics = Metrics()
    with pytest.raises(KeyError):
        metrics.inc("message_total", direction="in", result="delivered")
    with pytest.raises(KeyError):
        metrics.inc("messages_total", direction="in")  # missing label
    with pytest.raises(KeyError):
        metrics.inc("connections_total", listener="smtp", extra="x")
    with pytest.raises(KeyError):
        metrics.gauge("queue_size", lambda: 0)
    with pytest.raises(ValueError):
        metrics.inc("connections_total", -1, listener="smtp")
    metrics.inc("messages_total", direction="out", result="sent")
    assert metrics.value("messages_total", direction="out", result="sent") == 1
    assert metrics.value("messages_total", direction="out", result="bounced") == 0
