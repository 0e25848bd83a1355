"""Polling one call until it is terminal: ``AsyncCcmClient.wait_for_terminal``.

Each poll is an ordinary lookup (``get_call``, so the client's retries,
bounds and rate limit apply); the interval grows by half each time, up to a
ceiling. A call not found yet counts as not ended: a call just made may take
a moment to appear.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ccm_async._config import validate_call_sid
from ccm_async._errors import CallNotFoundError, WaitTimeoutError
from ccm_async._models import CallDetails

__all__ = ["poll_until_terminal"]


async def poll_until_terminal(
    get_call: Callable[[str], Awaitable[CallDetails]],
    call_sid: str,
    *,
    timeout: float,  # noqa: ASYNC109 - the public API's; it raises WaitTimeoutError
    interval: float,
    max_interval: float,
) -> CallDetails:
    """The call once ``get_call`` finds it terminal; WaitTimeoutError after ``timeout``."""
    call_sid = validate_call_sid(call_sid)
    last_state: str | None = None
    with anyio.move_on_after(timeout):
        while True:
            try:
                call = await get_call(call_sid)
            except CallNotFoundError:
                pass
            else:
                if call.is_terminal:
                    return call
                last_state = None if call.call_state is None else str(call.call_state)
            await anyio.sleep(interval)
            interval = min(max_interval, interval * 1.5)
    raise WaitTimeoutError(
        f"call {call_sid} was not terminal after {timeout:g}s "
        f"(last state: {last_state or 'not found'})",
        call_sid=call_sid,
        last_state=last_state,
    )
