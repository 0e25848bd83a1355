"""The ``Retry-After`` header (RFC 9110 section 10.2.3): seconds to wait, or None.

It is delay-seconds or an HTTP-date; whatever else a server sends is ignored
as the junk it is, rather than trusted or raised.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
from typing import Final

__all__ = ["parse_retry_after"]


_LONGEST_RETRY_AFTER: Final = 1e9
"""Seconds: a longer Retry-After (a huge number, a date centuries ahead) is capped here."""

# RFC 9110 section 10.2.3: Retry-After = HTTP-date / delay-seconds, delay-seconds = 1*DIGIT.
# Explicit [0-9]: int() and float() also take "1_0", "1e3", "+5" and other scripts' digits.
_DELAY_SECONDS: Final = re.compile(r"0*([0-9]+)")

# RFC 9110 section 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms,
# all in GMT. HTTP-date is case-sensitive.
_MONTHS: Final = (
    *("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    *("Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
)
_DAY: Final = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_DAY: Final = r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTH: Final = rf"(?P<month>{'|'.join(_MONTHS)})"
_TIME: Final = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_IMF_FIXDATE: Final = rf"{_DAY}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT"
_RFC850_DATE: Final = rf"{_LONG_DAY}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT"
_ASCTIME_DATE: Final = rf"{_DAY} {_MONTH} (?P<day>[0-9]{{2}}| [0-9]) {_TIME} (?P<year>[0-9]{{4}})"


@functools.cache
def _http_dates() -> tuple[re.Pattern[str], ...]:
    # Compiled on the first HTTP-date seen (most Retry-After values are seconds):
    # at import they took ~2 ms.
    return tuple(map(re.compile, (_IMF_FIXDATE, _RFC850_DATE, _ASCTIME_DATE)))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, as RFC 9110 defines it.

    Either delay-seconds (ASCII digits only) or an HTTP-date (IMF-fixdate, or the
    obsolete RFC 850 and asctime forms); a date in the past is 0. Returns None when
    absent or invalid; the result is at most 1e9 seconds.
    """
    if value is None:
        return None
    value = value.strip(" \t")  # HTTP whitespace only
    delay = _DELAY_SECONDS.fullmatch(value)
    if delay:
        digits = delay[1]
        if len(digits) > 10:  # past the cap; int() would refuse more than 4300 digits
            return _LONGEST_RETRY_AFTER
        return min(float(digits), _LONGEST_RETRY_AFTER)
    now = time.time() if now is None else now
    when = _http_date(value, now)
    if when is None:
        return None
    return min(max(when - now, 0.0), _LONGEST_RETRY_AFTER)


def _http_date(value: str, now: float) -> float | None:
    """The POSIX time of an HTTP-date, or None when ``value`` is not one."""
    match = next((m for form in _http_dates() if (m := form.fullmatch(value))), None)
    if match is None:
        return None
    year = int(match["year"])
    if len(match["year"]) == 2:
        year = _rfc850_year(year, now)
    second = int(match["second"])
    if second > 60:
        return None
    try:
        minute = dt.datetime(
            year,
            _MONTHS.index(match["month"]) + 1,
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            tzinfo=dt.UTC,
        )
    except ValueError:  # 31 Feb, hour 24, minute 60
        return None
    return minute.timestamp() + second  # a leap second (:60) is the next minute's first


def _rfc850_year(two_digits: int, now: float) -> int:
    # RFC 9110: a two-digit year more than 50 years ahead is the latest such year past.
    this_year = dt.datetime.fromtimestamp(now, dt.UTC).year
    year = this_year - this_year % 100 + two_digits
    if year > this_year + 50:
        return year - 100
    if year <= this_year - 50:
        return year + 100
    return year
