"""A wire session's audit events as COPY lines, built without a dict per event.

Every statement of a wire session produces two events whose columns are mostly the same for the whole session
(who, which agent, which data source, from where, which session). Those are formatted once; per event only
the time, kind, statement, summary and details are. The result is byte-for-byte what
``audit.journal_format.copy_line(audit.recorder.event_row(...))`` would give, which a test checks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from audit.journal_format import copy_field
from audit.models import EventKind, Outcome
from audit.recorder import Context
from identity.principal import Principal

_JSON = json.JSONEncoder(separators=(",", ":"), default=str)


class SessionLines:
    """Formats events for one (principal, context, data source)."""

    def __init__(self, principal: Principal, context: Context, datasource: str) -> None:
        agent = principal.agent
        # The columns between ``outcome`` and ``statement`` in audit.batch_writer.COLUMNS, in order.
        constant = (
            principal.human.pk,
            principal.human.get_username(),
            agent.pk if agent else None,
            (agent.name if agent else "")[:63],
            datasource,
            None,  # ticket_id: a read has no ticket
            context.front,
            context.source_address or None,
            context.session_id,
        )
        self._middle = "\t".join(copy_field(value) for value in constant)

    def line(
        self,
        kind: EventKind,
        statement: str,
        summary: str,
        details: dict[str, Any] | str,
        outcome: Outcome = Outcome.SUCCESS,
    ) -> bytes:
        """One event. ``details`` may be given already serialized as JSON (a cached prefix plus a few fields)."""
        encoded = details if isinstance(details, str) else _JSON.encode(details)
        return (
            f"{datetime.now(UTC).isoformat()}\t{kind.value}\t{outcome.value}\t{self._middle}\t"
            f"{copy_field(statement)}\t{copy_field(summary)}\t{copy_field(encoded)}\n"
        ).encode()


def json_text(value: Any) -> str:
    """Compact JSON, as the events' details are stored (for building a details text from cached parts)."""
    return _JSON.encode(value)
