"""Logging: one line per event on stderr, so journald and fail2ban can read it."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str = "info") -> None:
    # Under systemd, journald timestamps every line; elsewhere we add our own.
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
