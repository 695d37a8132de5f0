"""MXHandler counts check results from the structured verdict, as it did from the summary line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mailserver.metrics import Metrics
from mailserver.pipeline.dkim_verify import DKIMResult
from mailserver.pipeline.dmarc import DMARCResult
from mailserver.pipeline.inbound import InboundVerdict
from mailserver.pipeline.spf import SPFResult
from mailserver.smtp.mx_policy import MXHandler
from mailserver.smtpreply import SMTPReply


def _counted(verdict: InboundVerdict) -> list[str]:
    metrics = Metrics()
    MXHandler._count_checks(SimpleNamespace(metrics=metrics), verdict)  # type: ignore[arg-type]  # only .metrics is used
    return sorted(line for line in metrics.render().splitlines()
                  if line.startswith("pymaild_check_results_total{"))


def _dkim(result: str) -> DKIMResult:
    return DKIMResult(result, "example.com", "s", "ed25519-sha256", "abc")  # type: ignore[arg-type]  # test values


@pytest.mark.parametrize(
    ("spf", "dkim", "dmarc", "expected"),
    [
        (None, None, None, []),
        (SPFResult("pass", "example.com", "mailfrom", "a@example.com"), (),
         DMARCResult("fail", "example.com"),
         ['check="dkim",result="none"} 1', 'check="dmarc",result="fail"} 1', 'check="spf",result="pass"} 1']),
        (None, (_dkim("pass"), _dkim("fail"), _dkim("pass")), None,
         ['check="dkim",result="fail"} 1', 'check="dkim",result="pass"} 2']),
    ],
)
def test_counts_one_result_per_check_and_signature(
    spf: SPFResult | None, dkim: tuple[DKIMResult, ...] | None, dmarc: DMARCResult | None, expected: list[str]
) -> None:
    verdict = InboundVerdict("accept", SMTPReply(250, "2.6.0", "message accepted"), b"", spf, dkim, dmarc,
                             summary="")
    assert [line.removeprefix("pymaild_check_results_total{") for line in _counted(verdict)] == expected
