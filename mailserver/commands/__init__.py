"""Subcommands of the ``pymaild`` CLI.

Each module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func=handler`` where ``handler(args, cfg) -> int``. ``cfg`` is the loaded Config
(loaded lazily by cli.py; commands that need no config set ``needs_config=False``).
Handlers raise ``CommandError`` for user-facing failures: cli.py prints it as one line
on stderr and exits 1.
"""


class CommandError(Exception):
    """A user-facing failure of a command: printed as one line, exit status 1."""
