"""Test helpers for code that uses ccm_async.

:class:`FakeCcm` is a fake of the CCM Get Call Details API (an ASGI app) with
fault injection, usable in-process (``fake.client()``) or on a real socket
(``async with fake.serve() as base_url``, with ``ccm-async[testing]``)::

    fake = FakeCcm()
    fake.add_call(CallDetails(call_sid="abc123", call_state="terminal"))
    fake.fail("abc123", Fault.server_error(), times=1)
    async with fake.client() as ccm:
        ...
"""

from ccm_async._retry import instant_backoff
from ccm_async.testing._fake import FakeCcm, FakeCredentials, Fault, RecordedRequest

__all__ = ["FakeCcm", "FakeCredentials", "Fault", "RecordedRequest", "instant_backoff"]


def _shown_from_here() -> None:
    # Shown and pickled as ccm_async.testing.FakeCcm, where users import them from.
    for name in __all__:
        globals()[name].__module__ = __name__


_shown_from_here()
del _shown_from_here
