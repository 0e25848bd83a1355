"""The ``ccm-async`` console script: the command, or how to install it.

The command is the ``cli`` extra (click, rich, uvicorn); a plain install has
the script but not them, and says how to add them instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["main"]

_EXTRA = ("click", "rich", "uvicorn")


def main() -> None:
    """The console script's entry point."""
    missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(
            f"ccm-async: the command needs the cli extra ({', '.join(missing)} missing): "
            "pip install 'ccm-async[cli]', or from a clone of the project: pip install '.[cli]'\n"
        )
        sys.exit(2)
    from ccm_async._cli import cli  # noqa: PLC0415 - click is there: checked above

    cli(prog_name="ccm-async")
