"""The ``pymaild`` command: one entry point, subcommands in ``mailserver/commands``.

Exit codes: 0 ok, 1 a command failed (one line on stderr), 2 configuration or usage
error (systemd's RestartPreventExitStatus=2 stops restart loops on a broken config).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, NoReturn

from . import __version__
from .commands import CommandError
from .config import ConfigError, load_config, resolve_config_path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One clear line, like every other error, instead of argparse's usage dump.
        self.exit(2, f"pymaild: {message} (see pymaild --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pymaild", description="A complete self-hosted mail server.")
    parser.add_argument("--version", action="version", version=f"pymaild {__version__}")
    parser.add_argument("-c", "--config", dest="config_global", metavar="FILE",
                        help="config file (also accepted after the command)")
    common = _Parser(add_help=False)
    common.add_argument("-c", "--config", help="config file (default: $PYMAILD_CONFIG or "
                        "/etc/pymaild/pymaild.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    original_add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> _Parser:
        # Every subcommand (and sub-subcommand) accepts -c.
        return original_add(name, parents=[*kwargs.pop("parents", []), common], **kwargs)

    # A wrapped method on this one object: argparse has no hook for common parents.
    sub.add_parser = add_parser  # type: ignore[method-assign]  # see the comment above
    run = sub.add_parser("run", help="run the mail server (logs to stderr)")
    run.set_defaults(func=_run)
    from .commands import accounts, dns, init
    from .commands import queue as queue_cmd

    init.register(sub)
    accounts.register(sub)
    dns.register(sub)
    queue_cmd.register(sub)
    _propagate_common(parser, common)
    return parser


def _propagate_common(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Give nested sub-subcommands (creds create ...) the -c option too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if not any("--config" in a.option_strings for a in child._actions):
                    child.add_argument("-c", "--config", default=argparse.SUPPRESS,
                                       help=argparse.SUPPRESS)
                _propagate_common(child, common)


def _run(args: argparse.Namespace, cfg: object) -> int:
    from .config import Config
    from .daemon import run
    from .logs import setup_logging

    assert isinstance(cfg, Config)
    setup_logging(cfg.log.level)
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Whatever goes wrong ends as one line on stderr: ConfigError exit 2,
    CommandError and OS errors exit 1, anything unexpected exit 1 with its type named
    (``PYMAILD_DEBUG=1`` shows the traceback), so no input gives a Python traceback."""
    try:
        return _main(argv)
    except ConfigError as exc:
        _say(f"config error: {exc}")
        return 2
    except CommandError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `pymaild queue list | head`: the reader left; not an error worth a line.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        _say(f"{where}{exc.strerror or exc}")
        return 1
    except Exception as exc:
        if os.environ.get("PYMAILD_DEBUG"):
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (PYMAILD_DEBUG=1 shows the traceback;"
             " please report it)")
        return 1


MAX_ERROR_LENGTH = 400


def _say(message: str) -> None:
    """One line on stderr, whatever the message holds (echoed input may be long or multi-line)."""
    text = " ".join(message.split())
    if len(text) > MAX_ERROR_LENGTH:
        text = text[: MAX_ERROR_LENGTH - 1] + "…"
    print(f"pymaild: {text}", file=sys.stderr)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = resolve_config_path(getattr(args, "config", None) or args.config_global)
    args.config_path = path  # commands that write the config (init) need where, not what
    cfg = None
    if getattr(args, "needs_config", True):
        cfg = load_config(path)
    return int(args.func(args, cfg))


if __name__ == "__main__":
    sys.exit(main())
