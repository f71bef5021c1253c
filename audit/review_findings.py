"""What in one data source's activity over a period needs a human look: the activity review's queue.

Plain functions over audit events (no request, no browser): each kind of finding is one function returning
``Found`` items, and ``findings_for`` gathers them. Events are grouped per accountable person and agent, so a
noisy agent is one finding with a count, not a thousand rows; a held statement is one finding per ticket.

Only facts already in the audit trail go into a finding: counts, times, table names, recorded reasons and
reviewers' names. Never statement text or result values (a finding is shown, exported and printed).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from audit.models import AuditEvent, EventKind, FindingKind
from identity.models import Agent

# Statements a person or agent sent: allowed, denied or held (each statement is exactly one of these).
STATEMENT_KINDS = (EventKind.QUERY_SUBMITTED, EventKind.QUERY_DENIED, EventKind.TICKET_CREATED)
_KINDS_SQL = "(" + ", ".join(f"'{kind.value}'" for kind in STATEMENT_KINDS) + ")"
_TICKET_FOLLOW_UPS = (
    EventKind.TICKET_REVIEWED,
    EventKind.TICKET_APPROVED,
    EventKind.TICKET_REJECTED,
    EventKind.TICKET_CANCELLED,
    EventKind.TICKET_EXPIRED,
    EventKind.TICKET_EXECUTED,
    EventKind.TICKET_FAILED,
)
_DECIDERS = (EventKind.TICKET_REVIEWED, EventKind.TICKET_APPROVED, EventKind.TICKET_REJECTED)
KEPT_EVENT_IDS = 20  # a finding names its first few events; the rest are found by search
_TEXT_LIMIT = 160


@dataclass(frozen=True)
class Found:
    """One finding as computed from the events, before any reviewer has seen it."""

    key: str
    kind: FindingKind
    subject_name: str
    agent_name: str
    people: tuple[int, ...]
    summary: str
    event_count: int
    first_at: datetime
    last_at: datetime
    event_ids: tuple[int, ...]


@dataclass
class _Tally:
    count: int = 0
    first: datetime | None = None
    last: datetime | None = None
    ids: list[int] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    people: set[int] = field(default_factory=set)

    def add(self, event_id: int, at: datetime) -> None:
        self.count += 1
        self.first = at if self.first is None or at < self.first else self.first
        self.last = at if self.last is None or at > self.last else self.last
        if len(self.ids) < KEPT_EVENT_IDS:
            self.ids.append(event_id)


def findings_for(datasource: str, since: datetime, until: datetime) -> list[Found]:
    """Every finding of the data source's activity in [since, until), in a stable order."""
    found = [
        *denials(datasource, since, until),
        *held_statements(datasource, since, until),
        *phi_volume_outliers(datasource, since, until),
        *off_hours_access(datasource, since, until),
        *failed_sign_ins(datasource, since, until),
        *pattern_breaks(datasource, since, until),
    ]
    return sorted(found, key=lambda item: (item.kind, item.key))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _who(name: str, agent: str) -> str:
    return f"agent {agent} (for {name})" if agent else name or "(nobody identified)"


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + "…"


def _subject_key(actor_id: int | None, agent: str) -> str:
    return f"{actor_id if actor_id is not None else '-'}:{agent}"


def _found(kind: FindingKind, key: str, name: str, agent: str, tally: _Tally, summary: str) -> Found:
    assert tally.first is not None and tally.last is not None
    return Found(
        key=key[:255],
        kind=kind,
        subject_name=name[:150],
        agent_name=agent[:63],
        people=tuple(sorted(tally.people)),
        summary=summary,
        event_count=tally.count,
        first_at=tally.first,
        last_at=tally.last,
        event_ids=tuple(tally.ids),
    )


def _in_period(datasource: str, since: datetime, until: datetime) -> Iterable[AuditEvent]:
    return AuditEvent.objects.filter(datasource=datasource, occurred_at__gte=since, occurred_at__lt=until)


def denials(datasource: str, since: datetime, until: datetime) -> list[Found]:
    """Statements the policy denied, per person and agent, with the most frequent recorded reasons."""
    groups: dict[tuple[int | None, str, str], _Tally] = defaultdict(_Tally)
    rows = (
        _in_period(datasource, since, until)  # type: ignore[attr-defined]
        .filter(kind=EventKind.QUERY_DENIED)
        .order_by("id")
        .values_list("id", "occurred_at", "actor_id", "actor_name", "agent_name", "summary")
    )
    for event_id, at, actor_id, name, agent, summary in rows.iterator():
        tally = groups[(actor_id, name, agent)]
        tally.add(event_id, at)
        tally.notes[_short(summary) or "(no reason recorded)"] += 1
        if actor_id is not None:
            tally.people.add(actor_id)
    found = []
    for (actor_id, name, agent), tally in groups.items():
        reasons = "; ".join(f"{reason} ({count}x)" for reason, count in tally.notes.most_common(3))
        more = len(tally.notes) - 3
        summary = f"{_count(tally.count, 'statement')} by {_who(name, agent)} denied: {reasons}" + (
            f"; and {more} other reasons" if more > 0 else ""
        )
        found.append(_found(FindingKind.DENIED, f"denied:{_subject_key(actor_id, agent)}", name, agent, tally, summary))
    return found


def held_statements(datasource: str, since: datetime, until: datetime) -> list[Found]:
    """Each statement held for approval in the period, with who decided it and how it ended (so far)."""
    created = list(
        _in_period(datasource, since, until)  # type: ignore[attr-defined]
        .filter(kind=EventKind.TICKET_CREATED, ticket_id__isnull=False)
        .order_by("id")
        .values_list("id", "occurred_at", "ticket_id", "actor_id", "actor_name", "agent_name", "details__reasons")
    )
    follow_ups: dict[int | None, list[tuple[int, datetime, str, int | None, str]]] = defaultdict(list)
    for ticket_id, event_id, at, kind, actor_id, name in (
        AuditEvent.objects.filter(ticket_id__in=[row[2] for row in created], kind__in=_TICKET_FOLLOW_UPS)
        .order_by("id")
        .values_list("ticket_id", "id", "occurred_at", "kind", "actor_id", "actor_name")
    ):
        follow_ups[ticket_id].append((event_id, at, kind, actor_id, name))
    found = []
    for event_id, at, ticket_id, actor_id, name, agent, reasons in created:
        tally = _Tally()
        tally.add(event_id, at)
        if actor_id is not None:
            tally.people.add(actor_id)
        deciders: list[str] = []
        outcome = "still pending"
        for follow_id, follow_at, kind, decider_id, decider in follow_ups.get(ticket_id, []):
            tally.add(follow_id, follow_at)
            if kind in _DECIDERS and decider_id is not None:
                tally.people.add(decider_id)
                if decider not in deciders:
                    deciders.append(decider)
            if kind != EventKind.TICKET_REVIEWED:
                outcome = EventKind(kind).label.lower().removeprefix("ticket ")
        because = "; ".join(_short(reason) for reason in reasons) if isinstance(reasons, list) else ""
        summary = (
            f"ticket {ticket_id} by {_who(name, agent)} held for approval"
            + (f" ({because})" if because else "")
            + (f"; reviewed by {', '.join(deciders)}" if deciders else "; not reviewed")
            + f"; {outcome}"
        )
        found.append(_found(FindingKind.HELD, f"ticket:{ticket_id}", name, agent, tally, summary))
    return found


_PHI_ROWS = """
SELECT actor_id, actor_name, agent_name, count(*),
       sum(CASE WHEN jsonb_typeof(details->'rowcount') = 'number' THEN (details->>'rowcount')::numeric ELSE 0 END),
       min(occurred_at), max(occurred_at), (array_agg(id ORDER BY id))[1:%s]
FROM audit_auditevent
WHERE datasource = %s AND kind = 'query.executed' AND occurred_at >= %s AND occurred_at < %s
  AND jsonb_typeof(details->'phi_types') = 'array' AND jsonb_array_length(details->'phi_types') > 0
GROUP BY 1, 2, 3
"""


def _phi_rows(datasource: str, since: datetime, until: datetime) -> dict[tuple[int | None, str, str], tuple]:  # type: ignore[type-arg]
    with connection.cursor() as cursor:
        cursor.execute(_PHI_ROWS, [KEPT_EVENT_IDS, datasource, since, until])
        return {(row[0], row[1], row[2]): row[3:] for row in cursor.fetchall()}


def phi_volume_outliers(datasource: str, since: datetime, until: datetime) -> list[Found]:
    """Reads returning PHI columns whose row total is far above the same agent's own recent average.

    The baseline is the agent's average over the ``ACTIVITY_REVIEW_BASELINE_PERIODS`` periods of the same
    length just before this one: zero for a new agent, whose first sizeable volume is then an outlier.
    """
    length = until - since
    periods = settings.ACTIVITY_REVIEW_BASELINE_PERIODS
    now = _phi_rows(datasource, since, until)
    before = _phi_rows(datasource, since - periods * length, since) if now else {}
    found = []
    for (actor_id, name, agent), (reads, rows, first, last, ids) in now.items():
        rows = int(rows or 0)
        baseline = int((before.get((actor_id, name, agent)) or (0, 0))[1] or 0) / periods
        if rows < settings.ACTIVITY_REVIEW_PHI_MIN_ROWS or rows <= settings.ACTIVITY_REVIEW_PHI_FACTOR * baseline:
            continue
        tally = _Tally(count=int(reads), first=first, last=last, ids=list(ids or []))
        if actor_id is not None:
            tally.people.add(actor_id)
        summary = (
            f"{_who(name, agent)} read {_count(rows, 'row')} with PHI columns in {_count(int(reads), 'read')}; its own "
            "average over the "
            f"previous {periods} periods is {baseline:.0f} rows"
        )
        found.append(
            _found(FindingKind.PHI_VOLUME, f"phi-volume:{_subject_key(actor_id, agent)}", name, agent, tally, summary)
        )
    return found


_OFF_HOURS = f"""
SELECT actor_id, actor_name, agent_name, count(*), min(occurred_at), max(occurred_at),
       (array_agg(id ORDER BY id))[1:%s]
FROM audit_auditevent
WHERE datasource = %s AND occurred_at >= %s AND occurred_at < %s AND kind IN {_KINDS_SQL}
  AND (extract(isodow FROM occurred_at AT TIME ZONE %s) > 5
       OR extract(hour FROM occurred_at AT TIME ZONE %s) < %s
       OR extract(hour FROM occurred_at AT TIME ZONE %s) >= %s)
GROUP BY 1, 2, 3
"""


def off_hours_access(datasource: str, since: datetime, until: datetime) -> list[Found]:
    """Statements sent at weekends or outside business hours (ACTIVITY_REVIEW_TIME_ZONE), per person and agent."""
    zone = settings.ACTIVITY_REVIEW_TIME_ZONE
    start, end = settings.ACTIVITY_REVIEW_BUSINESS_START_HOUR, settings.ACTIVITY_REVIEW_BUSINESS_END_HOUR
    with connection.cursor() as cursor:
        cursor.execute(_OFF_HOURS, [KEPT_EVENT_IDS, datasource, since, until, zone, zone, start, zone, end])
        rows = cursor.fetchall()
    found = []
    for actor_id, name, agent, count, first, last, ids in rows:
        tally = _Tally(count=count, first=first, last=last, ids=list(ids or []))
        if actor_id is not None:
            tally.people.add(actor_id)
        summary = (
            f"{_count(count, 'statement')} by {_who(name, agent)} outside business hours "
            f"(Monday to Friday {start:02d}:00 to {end:02d}:00, {zone})"
        )
        found.append(
            _found(FindingKind.OFF_HOURS, f"off-hours:{_subject_key(actor_id, agent)}", name, agent, tally, summary)
        )
    return found


def failed_sign_ins(datasource: str, since: datetime, until: datetime) -> list[Found]:
    """Failed and refused sign-ins, per claimed identity: those naming this data source, and those that name
    none (the web and API sign-ins), which every data source's review shows since any of them may be the aim."""
    groups: dict[str, _Tally] = defaultdict(_Tally)
    addresses: dict[str, set[str]] = defaultdict(set)
    rows = (
        AuditEvent.objects.filter(
            kind=EventKind.AUTH_FAILED, datasource__in=[datasource, ""], occurred_at__gte=since, occurred_at__lt=until
        )
        .order_by("id")
        .values_list("id", "occurred_at", "actor_id", "actor_name", "agent_name", "source_address", "details")
    )
    for event_id, at, actor_id, name, agent, address, details in rows.iterator():
        details = details if isinstance(details, dict) else {}
        claimed = str(name or agent or details.get("username") or details.get("agent") or "")[:150]
        tally = groups[claimed]
        tally.add(event_id, at)
        tally.notes[_short(str(details.get("reason") or "no reason recorded"))] += 1
        if actor_id is not None:
            tally.people.add(actor_id)
        if address:
            addresses[claimed].add(str(address))
    claimed_people = _people_named(set(groups) - {""})
    found = []
    for claimed, tally in groups.items():
        tally.people |= claimed_people.get(claimed, set())
        seen_from = sorted(addresses[claimed])
        reasons = "; ".join(f"{reason} ({count}x)" for reason, count in tally.notes.most_common(3))
        summary = (
            f"{_count(tally.count, 'failed sign-in')} as {claimed or '(nobody identified)'}"
            + (f" from {', '.join(seen_from[:5])}" + (" and others" if len(seen_from) > 5 else "") if seen_from else "")
            + f": {reasons}"
        )
        found.append(_found(FindingKind.FAILED_SIGN_IN, f"failed-sign-in:{claimed}", claimed, "", tally, summary))
    return found


def _people_named(names: set[str]) -> dict[str, set[int]]:
    """The people a claimed name points at: the user of that name, or the owner of the agent of that name."""
    named: dict[str, set[int]] = defaultdict(set)
    for username, pk in get_user_model().objects.filter(username__in=names).values_list("username", "pk"):
        named[username].add(pk)
    for agent, owner_id in Agent.objects.filter(name__in=names).values_list("name", "owner_id"):
        named[agent].add(owner_id)
    return named


_RELATIONS = f"""
SELECT e.actor_id, e.actor_name, e.agent_name, coalesce(r.name, ''), count(*), min(e.occurred_at),
       max(e.occurred_at), (array_agg(e.id ORDER BY e.id))[1:%s]
FROM audit_auditevent e
LEFT JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(e.details->'relations') = 'array' THEN e.details->'relations' ELSE '[]'::jsonb END
) AS r(name) ON true
WHERE e.datasource = %s AND e.occurred_at >= %s AND e.occurred_at < %s AND e.kind IN {_KINDS_SQL}
GROUP BY 1, 2, 3, 4
"""
_TOUCHED_BEFORE = f"""
SELECT DISTINCT coalesce(r.name, '')
FROM audit_auditevent e
LEFT JOIN LATERAL jsonb_array_elements_text(
    CASE WHEN jsonb_typeof(e.details->'relations') = 'array' THEN e.details->'relations' ELSE '[]'::jsonb END
) AS r(name) ON true
WHERE e.datasource = %s AND e.occurred_at < %s AND e.kind IN {_KINDS_SQL}
  AND e.actor_id IS NOT DISTINCT FROM %s AND e.agent_name = %s
"""


def _table(name: str) -> str:
    """Tables as statements name them, with or without the default schema, compared as one."""
    return name.lower().removeprefix("public.")


def pattern_breaks(datasource: str, since: datetime, until: datetime) -> list[Found]:
    """Breaks of an agent's (or person's) usual pattern: its first statements on this data source ever, or
    statements on tables it never touched here before the period."""
    with connection.cursor() as cursor:
        cursor.execute(_RELATIONS, [KEPT_EVENT_IDS, datasource, since, until])
        rows = cursor.fetchall()
        subjects: dict[tuple[int | None, str, str], dict[str, tuple]] = defaultdict(dict)  # type: ignore[type-arg]
        for actor_id, name, agent, table, count, first, last, ids in rows:
            tables = subjects[(actor_id, name, agent)]
            same = tables.get(_table(table))  # "patients" and "public.patients" are one table
            if same is not None:
                count, first, last = count + same[0], min(first, same[1]), max(last, same[2])
                ids = sorted({*ids, *same[3]})[:KEPT_EVENT_IDS]
            tables[_table(table)] = (count, first, last, ids)
        found = []
        for (actor_id, name, agent), tables in subjects.items():
            cursor.execute(_TOUCHED_BEFORE, [datasource, since, actor_id, agent])
            before = [row[0] for row in cursor.fetchall()]
            known = {_table(table) for table in before}
            new = sorted(table for table in tables if table and table not in known)
            first_use = not before
            if not first_use and not new:
                continue
            counted = tables if first_use else {table: tables[table] for table in new}
            tally = _Tally()
            for count, first, last, ids in counted.values():
                tally.count += count
                tally.first = first if tally.first is None else min(tally.first, first)
                tally.last = last if tally.last is None else max(tally.last, last)
                tally.ids.extend(event_id for event_id in ids if event_id not in tally.ids)
            tally.ids = sorted(tally.ids)[:KEPT_EVENT_IDS]
            if actor_id is not None:
                tally.people.add(actor_id)
            listed = ", ".join(f"{table} ({tables[table][0]})" for table in sorted(t for t in counted if t))
            if first_use:
                kind, key = FindingKind.NEW_DATASOURCE, f"new-datasource:{_subject_key(actor_id, agent)}"
                summary = f"first statements ever by {_who(name, agent)} on data source {datasource}" + (
                    f"; tables: {listed}" if listed else ""
                )
            else:
                kind, key = FindingKind.NEW_TABLES, f"new-tables:{_subject_key(actor_id, agent)}"
                summary = f"{_who(name, agent)} touched tables it never touched here before: {listed}"
            found.append(_found(kind, key, name, agent, tally, summary))
    return found
