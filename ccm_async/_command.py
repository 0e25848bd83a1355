"""The ``ccm-async`` console script: the command, or how to install it; the exit statuses.

The command is the ``cli`` extra (click, rich, uvicorn); a plain install has
the script but not them, and says how to add them instead of a traceback.
This module imports nothing else: ``status`` starts fast.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from types import FrameType
from typing import Final

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "main", "silence_stdout"]

# The exit statuses every command shares (and 130, 143 for SIGINT, SIGTERM).
EXIT_OK: Final = 0
EXIT_SOME_FAILED: Final = 1
EXIT_USAGE: Final = 2

_EXTRA = ("click", "rich", "uvicorn")


def main() -> None:
    """The console script's entry point."""
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(
            f"ccm-async: the command needs the cli extra ({', '.join(missing)} missing): "
            "pip install 'ccm-async[cli]', or from a clone of the project: pip install '.[cli]'\n"
        )
        sys.exit(EXIT_USAGE)
    # Until a run takes them over: Ctrl-C or SIGTERM while starting up exits by the
    # convention (130, 143), not with a traceback or click's "Aborted!".
    signal.signal(signal.SIGINT, _exit_on_signal)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    from ccm_async._cli import cli  # noqa: PLC0415 - click is there: checked above

    try:
        cli(prog_name="ccm-async")
    except OSError as exc:  # stdout itself failed (a full disk, a closed pipe)
        silence_stdout()
        sys.stderr.write(f"error: cannot write stdout: {exc.strerror or exc}\n")
        sys.exit(EXIT_USAGE)


def _exit_on_signal(number: int, _: FrameType | None) -> None:
    raise SystemExit(128 + number)


def silence_stdout() -> None:
    """Point stdout at the null device: the interpreter's flush at exit must not fail too."""
    if sys.stdout is not None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
