"""The HTTP answer an error makes (``CcmError.to_problem``)."""

# Annotations are evaluated here, not left as strings: the class lives at
# ccm_async.Problem (see __init__), where typing.get_type_hints looks them up.
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["Problem"]


@attrs.frozen
class Problem:
    """An error as an HTTP answer (:meth:`CcmError.to_problem`).

    Attributes:
        status: the HTTP status to answer with (400-599).
        headers: ``content-type: application/problem+json``, and ``Retry-After``
            (whole seconds) when the API said how long to wait.
        body: an RFC 9457 problem document, ready for ``json.dumps``: ``type``,
            ``title``, ``status``, ``detail`` (the error's message on one bounded
            line), and ``call_sid``, ``code`` and ``request_id`` when known.
    """

    status: int
    headers: Mapping[str, str]
    body: Mapping[str, Any]
