"""The accounting of disclosures (45 CFR 164.528): every read of one patient's records, by whom and when.

The gateway records, in each ``query.executed`` record, the pseudonyms of the patient keys its rows carried
(policy.patient_keys). A compliance officer types a patient's key and its kind (``patient_id``, ``mrn``); the
server computes that key's pseudonym with ``PATIENT_PSEUDONYM_KEY`` and finds the records that hold it, through the
details' GIN index. The key typed is never stored, logged or put in a URL (the page and the API take it in a POST
body): the look-up is recorded (``audit.disclosures_listed``) with the pseudonym only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from audit import filters
from audit.events import LINK, Context, disclosures_listed
from audit.models import AuditEvent, EventKind
from audit.views import compliance_officer
from identity.authentication import web_context
from identity.principal import Principal
from policy.models import PatientKeyColumn
from policy.patient_keys import looked_up_pseudonym, require_patient_key

MAX_READS = 500  # reads listed at once, newest first (the count says how many there are in all)
MAX_KEY_LENGTH = 200


class LookupRefused(ValueError):
    """The look-up cannot be made as asked; ``errors`` names each field and why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {text}" for name, text in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Read:
    """One read of the patient: a ``query.executed`` record, its statement, and what it returned."""

    event: AuditEvent
    statement: AuditEvent | None  # the statement's own record (query.submitted), when found
    columns: list[tuple[str, str]]  # (column, mask: "-" for none) as the result went out
    key_columns: dict[str, str]

    @property
    def occurred_at(self) -> datetime:
        return self.event.occurred_at


@dataclass
class Accounting:
    datasource: str
    key_name: str
    pseudonym: str
    total: int
    reads: list[Read] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The API's answer: the same facts the page shows (no raw key)."""
        return {
            "datasource": self.datasource,
            "key_name": self.key_name,
            "pseudonym": self.pseudonym,
            "total": self.total,
            "shown": len(self.reads),
            "reads": [
                {
                    "event": read.event.pk,
                    "occurred_at": read.event.occurred_at.isoformat(),
                    "person": read.event.actor_name,
                    "agent": read.event.agent_name,
                    "front": read.event.front,
                    "session_id": read.event.session_id,
                    "statement_event": read.statement.pk if read.statement is not None else None,
                    "rowcount": (read.event.details or {}).get("rowcount"),
                    "columns": [{"column": name, "mask": mask} for name, mask in read.columns],
                    "key_columns": read.key_columns,
                }
                for read in self.reads
            ],
        }


def key_kinds() -> list[tuple[str, str]]:
    """(data source, key name) pairs configured in the policy: what a look-up may ask for."""
    return sorted(set(PatientKeyColumn.objects.values_list("datasource__name", "key_name")))


def list_disclosures(principal: Principal, context: Context, datasource: str, key_name: str, typed: str) -> Accounting:
    """Every read of the patient whose ``key_name`` is ``typed`` in ``datasource``; the look-up is recorded first.

    Raises LookupRefused for a data source or key kind the policy does not configure, or an empty key."""
    errors: dict[str, str] = {}
    if (datasource, key_name) not in set(key_kinds()):
        errors["key_name"] = "choose a data source and a kind of patient key that the policy configures"
    key_text = typed.strip()
    if not key_text:
        errors["key"] = "type the patient's key"
    elif len(key_text) > MAX_KEY_LENGTH:
        errors["key"] = f"at most {MAX_KEY_LENGTH} characters"
    if errors:
        raise LookupRefused(errors)
    pseudonym = looked_up_pseudonym(require_patient_key(), datasource, key_name, key_text)
    events = AuditEvent.objects.disclosing_patient(datasource, pseudonym)
    total = events.count()
    with transaction.atomic():  # no look-up without its record (and the record holds no raw key)
        disclosures_listed(
            principal, context, datasource=datasource, key_name=key_name, pseudonym=pseudonym, reads=total
        ).record()
    found = list(events[:MAX_READS])
    return Accounting(datasource, key_name, pseudonym, total, _reads(found))


def _reads(events: list[AuditEvent]) -> list[Read]:
    statements = _statements_of(events)
    reads = []
    for event in events:
        details = event.details or {}
        masking = _member(details, "masking")
        names = [str(name) for name in _member(details, "preview").get("columns") or []]
        columns = [(name, str(_member(masking, name).get("mask", "-"))) for name in names]
        key_columns = {str(k): str(v) for k, v in _member(_member(details, "patients"), "key_columns").items()}
        reads.append(Read(event, statements.get(_statement_key(event)), columns, key_columns))
    return reads


_TICKET_KINDS = (EventKind.TICKET_CREATED, EventKind.TICKET_EXECUTED)


def _statement_key(event: AuditEvent) -> tuple[str, str]:
    """What links a result to its statement's record, the same on both: the session and statement id of a read;
    the ticket's statement id alone for an approved statement (created in the agent's session, executed by a
    worker)."""
    link = str((event.details or {}).get(LINK))
    return ("", link) if event.kind in _TICKET_KINDS else (event.session_id or "", link)


def _member(details: Any, name: str) -> dict[str, Any]:
    """A mapping member of stored details, or an empty one (older or foreign records may lack it)."""
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, dict) else {}


def _statements_of(events: list[AuditEvent]) -> dict[tuple[str, str], AuditEvent]:
    """The statement record of each read, by (session, statement id): one query, on the details' GIN index."""
    condition = Q(pk=-1)
    for event in events:
        link = (event.details or {}).get(LINK)
        if not (isinstance(link, str) and link):
            continue
        if event.kind == EventKind.TICKET_EXECUTED:
            condition |= Q(kind=EventKind.TICKET_CREATED, details__contains={LINK: link})
        else:
            condition |= Q(kind=EventKind.QUERY_SUBMITTED, session_id=event.session_id, details__contains={LINK: link})
    return {_statement_key(found): found for found in AuditEvent.objects.filter(condition)}


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def disclosures_page(request: HttpRequest) -> HttpResponse:
    """The form (GET) and one patient's reads (POST: the key stays out of the URL, the history and the logs)."""
    principal = compliance_officer(request)
    zone = filters.zone_named(request.POST.get("tz", "")) or ZoneInfo(filters.default_zone_name())
    context: dict[str, Any] = {
        "kinds": [(f"{datasource}:{key_name}", datasource, key_name) for datasource, key_name in key_kinds()],
        "errors": {},
        "accounting": None,
        "chosen": request.POST.get("kind", ""),
        "zone": zone.key,
        "zones": filters.zone_choices(),
        "zone_abbreviation": filters.zone_abbreviation(zone),
    }
    status = 200
    if request.method == "POST":
        datasource, _, key_name = context["chosen"].partition(":")
        try:
            context["accounting"] = list_disclosures(
                principal, web_context(request), datasource, key_name, request.POST.get("key", "")
            )
        except LookupRefused as error:
            context["errors"], status = error.errors, 400
        except ImproperlyConfigured:
            context["errors"] = {"key": "the accounting's pseudonym key is not configured on this server"}
            status = 503
    with timezone.override(zone):
        return render(request, "audit/disclosures.html", context, status=status)
