"""The human-readable half of an evidence bundle: what the events say, summarised, as a PDF.

Built from the same event documents that go into ``events.jsonl`` (one pass, constant memory per event), so
the report can never say something the machine-checkable files do not.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fpdf import FPDF

_SQL_PREVIEW = 140
_TICKET_OUTCOMES = frozenset(
    {"ticket.approved", "ticket.rejected", "ticket.cancelled", "ticket.expired", "ticket.executed", "ticket.failed"}
)


@dataclass
class PersonAccess:
    statements: int = 0
    tables: set[str] = field(default_factory=set)
    masked_reads: int = 0
    phi_types: set[str] = field(default_factory=set)
    rows: int = 0


@dataclass
class TicketTrail:
    requested_by: str = ""
    statement: str = ""
    reviews: list[str] = field(default_factory=list)
    outcome: str = "pending"


@dataclass
class EvidenceSummary:
    """Aggregates for the report, fed one event document at a time."""

    kinds: Counter[str] = field(default_factory=Counter)
    access: dict[str, PersonAccess] = field(default_factory=lambda: defaultdict(PersonAccess))
    tickets: dict[int, TicketTrail] = field(default_factory=lambda: defaultdict(TicketTrail))
    denials: list[tuple[str, str, str]] = field(default_factory=list)
    executed_reads: int = 0
    masked_reads: int = 0
    masked_columns: Counter[str] = field(default_factory=Counter)

    def add(self, event: Mapping[str, Any]) -> None:
        kind, details = event["kind"], event.get("details") or {}
        self.kinds[kind] += 1
        who = event["actor_name"] + (f" via agent {event['agent_name']}" if event["agent_name"] else "")
        if kind == "query.submitted":
            person = self.access[who]
            person.statements += 1
            person.tables.update(f"{event['datasource']}:{name}" for name in details.get("relations", []))
        elif kind == "query.executed":
            person = self.access[who]
            masking = details.get("masking") or {}
            self.executed_reads += 1
            person.rows += int(details.get("rowcount") or 0)
            if masking:
                self.masked_reads += 1
                person.masked_reads += 1
                for spec in masking.values():
                    person.phi_types.add(str(spec.get("phi_type", "")))
                    self.masked_columns[f"{spec.get('phi_type', '?')} -> {spec.get('mask', '?')}"] += 1
        elif kind == "query.denied":
            self.denials.append((event["occurred_at"], who, event["summary"]))
        elif event["ticket_id"] is not None and kind.startswith("ticket."):
            trail = self.tickets[int(event["ticket_id"])]
            if kind == "ticket.created":
                trail.requested_by, trail.statement = who, event["statement"]
            elif kind == "ticket.reviewed":
                trail.reviews.append(f"{details.get('decision', '?')} by {event['actor_name']}")
            elif kind in _TICKET_OUTCOMES:
                trail.outcome = kind.split(".")[1]


def _text(value: object) -> str:
    """The PDF core fonts are Latin-1: anything else is shown as '?', never dropped silently."""
    return str(value).encode("latin-1", "replace").decode("latin-1")


class _Report(FPDF):
    def header(self) -> None:
        self.set_font("Helvetica", "B", 9)
        self.cell(0, 6, _text("phigate evidence report"), align="R")
        self.ln(8)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", "", 8)
        self.cell(0, 6, f"page {self.page_no()}", align="C")


def render_pdf(summary: EvidenceSummary, meta: Mapping[str, Any]) -> bytes:
    pdf = _Report(format="A4")
    pdf.set_compression(False)  # plain text streams: greppable by an auditor's tools (and by our tests)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def heading(text: str) -> None:
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(width, 7, _text(text))
        pdf.set_font("Helvetica", "", 9)

    def line(text: str) -> None:
        pdf.multi_cell(width, 5, _text(text))

    pdf.set_font("Helvetica", "B", 16)
    pdf.multi_cell(width, 9, "Audit evidence bundle")
    pdf.set_font("Helvetica", "", 9)
    for label, value in meta.items():
        line(f"{label}: {value}")

    heading("Chain status")
    line(str(meta.get("chain status", "")))

    heading("Events by kind")
    for kind, count in sorted(summary.kinds.items()):
        line(f"{kind}: {count}")
    if not summary.kinds:
        line("No events in this period.")

    heading("Who accessed which tables")
    for who, person in sorted(summary.access.items()):
        line(
            f"{who}: {person.statements} statements; tables {', '.join(sorted(person.tables)) or '-'}; "
            f"{person.masked_reads} reads returned PHI masked ({', '.join(sorted(person.phi_types)) or '-'}); "
            f"{person.rows} rows returned"
        )

    heading("Statements that needed approval")
    for ticket_id, trail in sorted(summary.tickets.items()):
        preview = " ".join(trail.statement.split())[:_SQL_PREVIEW]
        line(
            f"ticket {ticket_id}: requested by {trail.requested_by or '?'}; "
            f"reviews: {'; '.join(trail.reviews) or 'none'}; outcome: {trail.outcome}; {preview}"
        )
    if not summary.tickets:
        line("None.")

    heading("Denials")
    for moment, who, reason in summary.denials[:500]:
        line(f"{moment} {who}: {reason[:300]}")
    if len(summary.denials) > 500:
        line(f"... and {len(summary.denials) - 500} more (all are in events.jsonl)")
    if not summary.denials:
        line("None.")

    heading("Masking coverage")
    coverage = (100.0 * summary.masked_reads / summary.executed_reads) if summary.executed_reads else 0.0
    line(
        f"{summary.executed_reads} reads executed; {summary.masked_reads} of them returned PHI columns "
        f"({coverage:.1f}%), each under the mask below ('pass' would mean shown as stored)."
    )
    for rule, count in summary.masked_columns.most_common():
        line(f"{rule}: {count} columns")
    return bytes(pdf.output())
