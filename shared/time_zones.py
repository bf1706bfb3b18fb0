"""The IANA time zone names a client may give: a datasource's ``time_zone``, a query's ``tz``."""

from __future__ import annotations

from functools import cache
from zoneinfo import available_timezones


@cache
def known_time_zones() -> frozenset[str]:
    """Read once (it walks the zoneinfo files); no file paths, and not the machine-local
    'localtime'."""
    return frozenset((available_timezones() | {"UTC"}) - {"localtime"})
