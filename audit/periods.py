"""The one way a moment is read from a person (API filters, command options) or from a bundle's manifest."""

from __future__ import annotations

from datetime import datetime, time

from django.utils.dateparse import parse_date, parse_datetime
from django.utils.timezone import make_aware


def parse_moment(raw: str) -> datetime:
    """An ISO 8601 date (its midnight) or date-time; without a zone, in the current time zone (UTC).

    Raises ValueError, with a message fit to show, for anything else.
    """
    try:
        moment = parse_datetime(raw)
        if moment is None:
            day = parse_date(raw)
            if day is None:
                raise ValueError(raw)
            moment = datetime.combine(day, time.min)
    except ValueError:
        raise ValueError("expected an ISO 8601 date or date-time") from None
    return moment if moment.tzinfo else make_aware(moment)
