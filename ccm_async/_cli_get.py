"""The run of ``ccm-async get``: a few SIDs looked up at once, one JSON object per line."""

from __future__ import annotations

import sys

import anyio

from ccm_async import AsyncCcmClient, AuthenticationError, ConfigurationError
from ccm_async._cli_files import json_line
from ccm_async._cli_summary import error_code, stderr_console
from ccm_async._command import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from ccm_async._convert import unstructure_call

__all__ = ["run_get"]


def run_get(client: AsyncCcmClient, sids: list[str]) -> int:
    """Print each call as a JSON line (input order), failures to stderr; the exit status."""
    return anyio.run(_get, client, sids)


async def _get(client: AsyncCcmClient, sids: list[str]) -> int:
    err = stderr_console()
    try:
        async with client:
            results = await client.get_calls(sids)
    except (AuthenticationError, ConfigurationError) as exc:
        err.print(f"error: {exc}")
        return EXIT_USAGE
    for result in results:
        if result.call is not None:
            sys.stdout.buffer.write(json_line(unstructure_call(result.call)))
        else:
            err.print(f"{result.call_sid}: {error_code(result.error)}: {result.error}")
    sys.stdout.flush()
    return EXIT_OK if all(result.ok for result in results) else EXIT_SOME_FAILED
