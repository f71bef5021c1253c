"""The audit search's filters as people use them: every closed-set filter has labelled choices and refuses
values outside them.

Why: the event table stores codes (``ticket.approved``, ``ssn``, ``held``). A compliance officer who types
``kind=ticket`` or ``phi_type=SSN`` and gets "no events" would conclude nothing happened, which is the most
harmful answer an audit search can give. So the page offers the codes as labelled choices, a kind may be a
whole family (``ticket`` is every ticket event), and a value outside the choices is an error that names the
field (the page shows it; the API answers 400), never an empty result. Times are read in a zone the page
names, because "since 09:00" means nothing without one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import models

from audit.models import EventKind

KIND_FAMILIES = {
    "auth": "Sign-ins",
    "token": "API tokens",
    "account": "Linked accounts",
    "query": "Statements",
    "ticket": "Tickets",
    "review": "Reviews",
    "audit": "The audit trail itself",
    "policy": "Policy",
}


class Decision(models.TextChoices):
    """The policy's verdict on a statement (``details.verdict`` of ``query.*`` and ``ticket.created``)."""

    ALLOWED = "allowed", "Allowed"
    HELD = "held", "Held for approval"
    DENIED = "denied", "Denied"


def kind_choices() -> list[tuple[str, list[tuple[str, str]]]]:
    """Kinds grouped by family, each group led by "any event of the family" (for ``<optgroup>``)."""
    groups: dict[str, list[tuple[str, str]]] = {
        family: [(family, f"Any: {label}")] for family, label in KIND_FAMILIES.items()
    }
    for kind in EventKind:
        groups.setdefault(kind.value.split(".", 1)[0], []).append((kind.value, kind.label))
    return [(KIND_FAMILIES.get(family, family), choices) for family, choices in groups.items()]


def kind_label(code: str) -> str:
    """A kind's label for a person; a code the enum no longer knows is shown as it is rather than hidden."""
    if code in EventKind.values:
        return str(EventKind(code).label)
    if code in KIND_FAMILIES:
        return f"Any: {KIND_FAMILIES[code]}"
    return code


def is_kind_family(code: str) -> bool:
    return code in KIND_FAMILIES


def known_kind(code: str) -> bool:
    return code in EventKind.values or code in KIND_FAMILIES


def phi_type_choices() -> list[tuple[str, str]]:
    from policy.models import PhiType

    return [(str(choice.value), str(choice.label)) for choice in PhiType]


def datasource_names() -> list[str]:
    """Data sources configured now, and any named by events (a removed source's history stays searchable)."""
    from audit.models import AuditEvent
    from policy.models import DataSource

    configured = set(DataSource.objects.values_list("name", flat=True))
    return sorted(configured | set(_recorded_datasources(AuditEvent)))


def _recorded_datasources(model: type[models.Model]) -> list[str]:
    # A loose index scan over audit_datasource_time: one probe per distinct name, not a scan of every event.
    from django.db import connection

    table = model._meta.db_table
    sql = f"""
        WITH RECURSIVE names(name) AS (
            (SELECT datasource FROM {table} WHERE datasource > '' ORDER BY datasource LIMIT 1)
            UNION ALL
            SELECT (SELECT datasource FROM {table} WHERE datasource > names.name ORDER BY datasource LIMIT 1)
            FROM names WHERE names.name IS NOT NULL
        )
        SELECT name FROM names WHERE name IS NOT NULL LIMIT 500
    """
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


def known_datasource(name: str) -> bool:
    from audit.models import AuditEvent
    from policy.models import DataSource

    return DataSource.objects.filter(name=name).exists() or AuditEvent.objects.filter(datasource=name).exists()


# --- Time zones ----------------------------------------------------------------------------------------------

# The zones offered on the audit pages: the deployment's own first, UTC, then the United States' (HIPAA's
# audience). A short list a person can scan, not the 600 of the tz database.
_OFFERED_ZONES = (
    "UTC",
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
    "America/Puerto_Rico",
)


def default_zone_name() -> str:
    return str(getattr(settings, "AUDIT_TIME_ZONE", "") or settings.TIME_ZONE)


def zone_choices() -> list[str]:
    default = default_zone_name()
    return [default, *(name for name in _OFFERED_ZONES if name != default)]


def zone_named(name: str) -> ZoneInfo | None:
    """The offered zone of that name, or None (any other name is refused, not looked up)."""
    return ZoneInfo(name) if name in zone_choices() else None


def zone_abbreviation(zone: ZoneInfo, moment: datetime | None = None) -> str:
    """ "EST", "UTC": what the zone is called at that moment (now by default), for labels next to times."""
    from django.utils import timezone

    return (moment or timezone.now()).astimezone(zone).tzname() or zone.key


# --- HTTP sessions -------------------------------------------------------------------------------------------

# The session an HTTP or MCP request falls into when its client names none: one per identity per UTC day
# (identity.authentication.http_session). Replay splits those at idle gaps; a client-named session is kept whole.
_DAY_SESSION = re.compile(r"^(http|mcp):(agent|user)-\d+:\d{8}$")

IDLE_GAP_CHOICES = (5, 15, 30, 60, 120, 240)


def is_day_session(session_id: str) -> bool:
    return bool(_DAY_SESSION.match(session_id))


def default_idle_gap() -> int:
    return int(getattr(settings, "AUDIT_SESSION_IDLE_MINUTES", 30))


def idle_gap_choices() -> list[int]:
    return sorted({*IDLE_GAP_CHOICES, default_idle_gap()})


@dataclass(frozen=True)
class Part:
    """One stretch of a day session with no idle gap longer than the limit inside it."""

    number: int  # 1-based
    start: datetime
    end: datetime
    events: int

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def split_at_idle_gaps(moments: list[datetime], gap: timedelta) -> list[Part]:
    """Sorted moments cut wherever two neighbours are more than ``gap`` apart."""
    parts: list[Part] = []
    if not moments:
        return parts
    start = previous = moments[0]
    count = 0
    for moment in moments:
        if moment - previous > gap:
            parts.append(Part(len(parts) + 1, start, previous, count))
            start, count = moment, 0
        count += 1
        previous = moment
    parts.append(Part(len(parts) + 1, start, previous, count))
    return parts
