"""The ``ccm-async`` console script: the command, or how to install it; the exit statuses.

The command is the ``cli`` extra (click, rich, uvicorn); a plain install has
the script but not them, and says how to add them instead of a traceback.
This module imports nothing else: ``status`` starts fast.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Final

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "main"]

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
    from ccm_async._cli import cli  # noqa: PLC0415 - click is there: checked above

    cli(prog_name="ccm-async")
