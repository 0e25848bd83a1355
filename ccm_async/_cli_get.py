"""The run of ``ccm-async get``: a few SIDs looked up at once, one JSON object per line."""

from __future__ import annotations

import anyio

from ccm_async import AsyncCcmClient, AuthenticationError, ConfigurationError
from ccm_async._cli_files import OutputError, RecordFile
from ccm_async._cli_summary import error_code, stderr_console
from ccm_async._command import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE

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
    out = RecordFile.open(None, "jsonl", append=False)
    for result in results:
        if result.call is None:
            err.print(f"{result.call_sid}: {error_code(result.error)}: {result.error}")
            continue
        try:
            out.write(result.call)
        except OutputError as exc:
            err.print(f"error: {exc}")
            return EXIT_USAGE
    return EXIT_OK if all(result.ok for result in results) else EXIT_SOME_FAILED
