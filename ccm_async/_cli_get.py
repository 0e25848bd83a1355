"""The run of ``ccm-async get``: a few SIDs looked up at once, printed as JSON."""

from __future__ import annotations

import json

import anyio
import click
from rich.console import Console

from ccm_async import AsyncCcmClient, AuthenticationError
from ccm_async._cli_fetch import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from ccm_async._convert import unstructure_call

__all__ = ["run_get"]


def run_get(client: AsyncCcmClient, sids: list[str]) -> int:
    """Print each call as JSON (one object for one SID), failures to stderr; the exit status."""
    return anyio.run(_get, client, sids)


async def _get(client: AsyncCcmClient, sids: list[str]) -> int:
    err = Console(stderr=True, highlight=False)
    try:
        async with client:
            results = await client.get_calls(sids)
    except AuthenticationError as exc:
        err.print(f"error: {exc}")
        return EXIT_USAGE
    calls = [unstructure_call(result.call) for result in results if result.call is not None]
    for result in results:
        if result.error is not None:
            err.print(f"{result.call_sid}: {result.error}")
    document: object = calls[0] if len(sids) == 1 and calls else calls
    if calls:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False))
    return EXIT_OK if all(result.ok for result in results) else EXIT_SOME_FAILED
