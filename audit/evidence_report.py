"""The human-readable half of an evidence bundle: what the events say, summarised, as a PDF an auditor can read.

Built from the same event documents that go into ``events.jsonl`` (one pass; per event, only aggregates are
kept), so the report can never say something the machine-checkable files do not. It prints no PHI (invariant 7):
statement text is shown with every constant replaced by a placeholder, result previews are never printed, and
failed statements are described by their recorded, scrubbed reasons only.

Layout: fpdf2's ``multi_cell`` leaves the cursor at the right edge unless told otherwise, so every paragraph here
passes ``new_x``/``new_y``; tables use ``FPDF.table`` with a heading row that repeats on each page.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fpdf import FPDF, FontFace, XPos, YPos
from pglast import parser

from audit.events import statement_key
from audit.models import EventKind

# The sections, in order. The tests find each of these headings in the PDF's text and check content follows.
SECTION_TITLES = (
    "1. Scope and integrity",
    "2. Activity per person",
    "3. Activity per agent",
    "4. PHI types accessed per person",
    "5. Accounting of disclosures",
    "6. Approvals",
    "7. Denials",
    "8. Failed sign-ins",
    "9. Token changes",
    "10. Policy changes",
    "11. Masking coverage",
    "12. Events by kind",
    "13. Activity reviews",
    "14. Attestation",
)
_LIST_LIMIT = 500  # rows per list section; everything is in events.jsonl
_STATEMENT_PREVIEW = 600
_TICKET_OUTCOMES = frozenset(
    {"ticket.approved", "ticket.rejected", "ticket.cancelled", "ticket.expired", "ticket.executed", "ticket.failed"}
)
# What the audit trail's own readers and keepers did (searches, views, reveals, replays, exports, purges, review
# sign-offs): every kind of the "audit." family, so a kind added later is counted here without being listed.
_AUDIT_KINDS = frozenset(kind.value for kind in EventKind if kind.value.startswith("audit."))
PATIENT_ACCOUNTING_NOTE = (
    "Patients are counted by their keys: a read whose result returned a patient-key column unmodified (the policy's "
    "patient_keys, such as patients.id or patients.mrn) records the distinct keys sent, pseudonymised with a key "
    "held outside the bundle, so this report names no patient; a compliance officer lists the reads of one "
    "patient on the Accounting of disclosures page. The first table counts, per person and data source, the "
    "distinct patients whose records were read, per kind of key (one patient read by id and by record number "
    "counts once in each), and the reads of patient tables that returned no key column, which cannot be tied to "
    "patients. The second table lists the reads per person, agent, data source and table."
)


def masked_statement(sql: str) -> str:
    """A statement with every literal replaced by a placeholder (PostgreSQL's own normalization, via pglast):
    the report shows what was run, never the values in it. Text that does not parse is not shown at all."""
    try:
        text = parser.normalize(_without_comments(sql))
    except Exception:  # anything pglast cannot normalize is withheld, never printed raw
        return "[statement withheld: it could not be parsed to mask its constants; see events.jsonl]"
    text = " ".join(text.split())
    return text if len(text) <= _STATEMENT_PREVIEW else text[:_STATEMENT_PREVIEW] + " ..."


def _without_comments(sql: str) -> str:
    """Normalization keeps comments, which can carry anything: each is replaced by a space, as PostgreSQL's own
    scanner (pglast's ``scan``) delimits them."""
    kept, position = [], 0
    for token in parser.scan(sql):
        if token.name in {"C_COMMENT", "SQL_COMMENT"}:
            kept.append(sql[position : token.start] + " ")
            position = token.end + 1
    return "".join(kept) + sql[position:]


@dataclass
class StatementCounts:
    allowed: int = 0
    held: int = 0
    denied: int = 0
    reads: int = 0
    rows: int = 0
    phi_columns: int = 0

    @property
    def statements(self) -> int:
        return self.allowed + self.held + self.denied


@dataclass
class PersonActivity:
    counts: StatementCounts = field(default_factory=StatementCounts)
    agents: set[str] = field(default_factory=set)
    phi_types: Counter[str] = field(default_factory=Counter)
    reviews: int = 0
    audit_actions: int = 0
    sign_ins: int = 0
    other: int = 0


@dataclass
class ReadAccount:
    reads: int = 0
    rows: int = 0
    first: str = ""
    last: str = ""


@dataclass
class PatientAccount:
    """One person's reads of patients in one data source: distinct pseudonyms per kind of key (never printed)."""

    keys: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    identified_reads: int = 0
    unidentified_reads: int = 0
    truncated_reads: int = 0  # reads whose key list was cut at its bound: the counts are at least these


@dataclass
class Review:
    at: str
    reviewer: str
    decision: str
    comment: str


@dataclass
class TicketTrail:
    requested_at: str = ""
    requested_by: str = ""
    agent: str = ""
    datasource: str = ""
    reason: str = ""
    held_because: str = ""
    statement: str = ""  # masked when recorded: the raw text is never kept
    reviews: list[Review] = field(default_factory=list)
    outcome: str = "pending"
    outcome_at: str = ""
    outcome_note: str = ""


@dataclass
class PolicyChange:
    at: str
    by: str
    datasource: str
    before: str
    after: str
    summary: str


@dataclass
class ReviewSignOff:
    """An activity review's sign-off event, as the report prints it (audit.activity_review)."""

    at: str
    event_id: int
    review_id: int
    signed_by: str
    datasource: str
    period_start: str
    period_end: str
    findings: Mapping[str, Any]
    digest: str


@dataclass
class EvidenceSummary:
    """Aggregates for the report, fed one event document at a time."""

    kinds: Counter[str] = field(default_factory=Counter)
    people: dict[str, PersonActivity] = field(default_factory=lambda: defaultdict(PersonActivity))
    agents: dict[tuple[str, str], StatementCounts] = field(default_factory=lambda: defaultdict(StatementCounts))
    reads: dict[tuple[str, str, str, str], ReadAccount] = field(default_factory=lambda: defaultdict(ReadAccount))
    patients: dict[tuple[str, str], PatientAccount] = field(default_factory=lambda: defaultdict(PatientAccount))
    tickets: dict[int, TicketTrail] = field(default_factory=lambda: defaultdict(TicketTrail))
    denials: list[tuple[str, str, str, str]] = field(default_factory=list)
    failed_sign_ins: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    token_changes: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    policy_changes: list[PolicyChange] = field(default_factory=list)
    executed_reads: int = 0
    masked_reads: int = 0
    masked_columns: Counter[str] = field(default_factory=Counter)
    datasources: set[str] = field(default_factory=set)
    review_sign_offs: list[ReviewSignOff] = field(default_factory=list)
    # Tables of submitted statements not yet matched by their result record (audit.events.statement_key):
    # popped when the result arrives.
    _pending_relations: dict[str, str] = field(default_factory=dict)

    def add(self, event: Mapping[str, Any]) -> None:
        kind, details = event["kind"], event.get("details") or {}
        self.kinds[kind] += 1
        person_name, agent = event["actor_name"], event.get("agent_name") or ""
        at = str(event["occurred_at"])
        if event.get("datasource"):
            self.datasources.add(str(event["datasource"]))
        if kind == "auth.failed":
            self._failed_sign_in(event, details, at)
            return
        if not person_name:
            return
        person = self.people[person_name]
        if agent:
            person.agents.add(agent)
        counts = [person.counts] + ([self.agents[(agent, person_name)]] if agent else [])
        if kind == "query.submitted":
            for tally in counts:
                tally.allowed += 1
            relations = ", ".join(sorted(str(name) for name in details.get("relations", []))) or "(none named)"
            self._pending_relations[f"{person_name}:{statement_key(event['id'], kind, details)}"] = relations
        elif kind == "query.executed":
            self._executed(event, details, person, counts, at)
        elif kind == "query.denied":
            for tally in counts:
                tally.denied += 1
            if len(self.denials) < _LIST_LIMIT:
                self.denials.append((at, _who(person_name, agent), event.get("datasource") or "", event["summary"]))
        elif kind == "ticket.created":
            for tally in counts:
                tally.held += 1
        elif kind == "ticket.reviewed" or kind == "review.refused":
            person.reviews += 1
        elif kind in _AUDIT_KINDS:
            person.audit_actions += 1
        elif kind == "auth.succeeded":
            person.sign_ins += 1
        else:
            person.other += 1
        if kind in {"token.issued", "token.revoked"} and len(self.token_changes) < _LIST_LIMIT:
            self.token_changes.append((at, kind.split(".")[1], person_name, agent or "-", event["summary"]))
        if kind == "policy.changed":
            self._policy_changed(event, details, at, person_name)
        if kind == "audit.review_signed":
            period = details.get("period") or {}
            self.review_sign_offs.append(
                ReviewSignOff(
                    at,
                    int(event["id"]),
                    int(details.get("review") or 0),
                    person_name,
                    event.get("datasource") or "",
                    str(period.get("start") or ""),
                    str(period.get("end") or ""),
                    details.get("findings") or {},
                    str(details.get("digest") or ""),
                )
            )
        if event.get("ticket_id") is not None and kind.startswith("ticket."):
            self._ticket(int(event["ticket_id"]), kind, event, details, at, person_name, agent)
        if kind in ("ticket.executed", "query.failed") and isinstance(details.get("patients"), Mapping):
            self._patients(event, details["patients"])  # an approved statement's rows, read by its requester

    def _executed(
        self,
        event: Mapping[str, Any],
        details: Mapping[str, Any],
        person: PersonActivity,
        counts: list[StatementCounts],
        at: str,
    ) -> None:
        masking = details.get("masking") or {}
        rows = int(details.get("rowcount") or 0)
        self.executed_reads += 1
        for tally in counts:
            tally.reads += 1
            tally.rows += rows
            tally.phi_columns += len(masking)
        if masking:
            self.masked_reads += 1
            for spec in masking.values():
                phi_type = str(spec.get("phi_type", "")) or "unspecified"
                person.phi_types[phi_type] += 1
                self.masked_columns[f"{phi_type} -> {spec.get('mask', '?')}"] += 1
        link = f"{event['actor_name']}:{statement_key(event['id'], event['kind'], details)}"
        tables = self._pending_relations.pop(link, "(not linked to its statement)")
        account = self.reads[
            (event["actor_name"], event.get("agent_name") or "-", event.get("datasource") or "", tables)
        ]
        account.reads += 1
        account.rows += rows
        account.first = account.first or at
        account.last = at
        patients = details.get("patients")
        if isinstance(patients, Mapping):
            self._patients(event, patients)

    def _patients(self, event: Mapping[str, Any], patients: Mapping[str, Any]) -> None:
        """A read's accounting (policy.patient_keys: ``patients`` in its executed record)."""
        account = self.patients[(event["actor_name"], event.get("datasource") or "")]
        if not patients.get("identified"):
            account.unidentified_reads += 1
            return
        account.identified_reads += 1
        account.truncated_reads += 1 if patients.get("truncated") else 0
        for pseudonym in patients.get("pseudonyms") or []:
            key_name, _, _ = str(pseudonym).partition(":")
            account.keys[key_name].add(str(pseudonym))

    def _failed_sign_in(self, event: Mapping[str, Any], details: Mapping[str, Any], at: str) -> None:
        if len(self.failed_sign_ins) < _LIST_LIMIT:
            claimed = event["actor_name"] or event.get("agent_name") or "(nobody identified)"
            where = " ".join(part for part in (event.get("front") or "", event.get("source_address") or "") if part)
            self.failed_sign_ins.append((at, claimed, where or "-", str(details.get("reason") or ""), event["summary"]))

    def _policy_changed(self, event: Mapping[str, Any], details: Mapping[str, Any], at: str, by: str) -> None:
        def version(document: object) -> str:
            return str(document.get("version", "?")) if isinstance(document, Mapping) else "?"

        if len(self.policy_changes) < _LIST_LIMIT:
            self.policy_changes.append(
                PolicyChange(
                    at,
                    by,
                    event.get("datasource") or "",
                    version(details.get("before")),
                    version(details.get("after")),
                    event["summary"],
                )
            )

    def _ticket(
        self,
        ticket_id: int,
        kind: str,
        event: Mapping[str, Any],
        details: Mapping[str, Any],
        at: str,
        person_name: str,
        agent: str,
    ) -> None:
        trail = self.tickets[ticket_id]
        if kind == "ticket.created":
            trail.requested_at, trail.requested_by, trail.agent = at, person_name, agent
            trail.datasource = event.get("datasource") or ""
            trail.reason = str(details.get("reason") or "")
            trail.held_because = "; ".join(str(reason) for reason in details.get("reasons", [])) or event["summary"]
            trail.statement = masked_statement(event.get("statement") or "")
        elif kind == "ticket.reviewed":
            trail.reviews.append(
                Review(at, person_name, str(details.get("decision", "?")), str(details.get("comment") or ""))
            )
        elif kind in _TICKET_OUTCOMES:
            trail.outcome, trail.outcome_at = kind.split(".")[1], at
            trail.outcome_note = event["summary"]


def _who(person: str, agent: str) -> str:
    return f"{person} via agent {agent}" if agent else person


def _text(value: object) -> str:
    """The PDF core fonts are Latin-1: anything else is shown as '?', never dropped silently."""
    return str(value).encode("latin-1", "replace").decode("latin-1")


def _short_time(moment: str) -> str:
    """2026-12-07T18:47:48.123456Z -> 2026-12-07 18:47:48Z: the events keep the microseconds."""
    return moment[:19].replace("T", " ") + ("Z" if moment.endswith("Z") or "+00:00" in moment else "")


class _Report(FPDF):
    def __init__(self, running_title: str) -> None:
        super().__init__(format="A4")
        self.running_title = _text(running_title)

    def header(self) -> None:
        self.set_font("Helvetica", "", 8)
        self.set_text_color(90)
        self.cell(0, 5, self.running_title, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.set_draw_color(160)
        self.line(self.l_margin, self.get_y() + 1, self.w - self.r_margin, self.get_y() + 1)
        self.set_text_color(0)
        self.ln(4)

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", "", 8)
        self.set_text_color(90)
        self.cell(0, 6, f"Page {self.page_no()} of {{nb}}", align="C")
        self.set_text_color(0)


class _Writer:
    """Headings, paragraphs and tables, each starting at the left margin of the line after the previous one."""

    def __init__(self, pdf: _Report) -> None:
        self.pdf = pdf

    def heading(self, text: str) -> None:
        pdf = self.pdf
        if pdf.get_y() > pdf.h - 45:  # a heading never sits alone at the foot of a page
            pdf.add_page()
        pdf.ln(4)
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(0, 7, _text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1)
        pdf.set_font("Helvetica", "", 9)

    def subheading(self, text: str) -> None:
        pdf = self.pdf
        if pdf.get_y() > pdf.h - 40:
            pdf.add_page()
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 6, _text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("Helvetica", "", 9)

    def paragraph(self, text: str, *, size: float = 9, mono: bool = False) -> None:
        self.pdf.set_font("Courier" if mono else "Helvetica", "", size)
        self.pdf.multi_cell(0, size * 0.5 + 0.5, _text(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.pdf.set_font("Helvetica", "", 9)
        self.pdf.ln(1)

    def table(
        self,
        headings: Sequence[str],
        rows: Sequence[Sequence[object]],
        widths: Sequence[float],
        *,
        empty: str = "None in this period.",
        size: float = 8,
        mono_columns: Sequence[int] = (),
    ) -> None:
        if not rows:
            self.paragraph(empty)
            return
        pdf = self.pdf
        pdf.set_font("Helvetica", "", size)
        with pdf.table(
            col_widths=tuple(widths),
            width=pdf.epw,
            text_align="LEFT",
            line_height=size * 0.5 + 0.6,
            headings_style=FontFace(emphasis="BOLD", fill_color=(225, 225, 225)),
            padding=1,
        ) as table:
            heading_row = table.row()
            for text in headings:
                heading_row.cell(_text(text))
            for values in rows:
                row = table.row()
                for index, value in enumerate(values):
                    style = FontFace(family="Courier", size_pt=size - 0.5) if index in mono_columns else None
                    row.cell(_text(value), style=style)
        pdf.set_font("Helvetica", "", 9)
        pdf.ln(2)


def render_pdf(summary: EvidenceSummary, meta: Mapping[str, Any]) -> bytes:
    """``meta`` holds the cover's facts (see audit.evidence.export_evidence): bundle id, period, scope, who and
    when, key id and fingerprint, file digests, chain status."""
    pdf = _Report(f"phigate evidence bundle {meta['bundle id']} | period {meta['period']}")
    pdf.set_compression(False)  # plain text streams: readable by an auditor's tools
    pdf.set_title(f"phigate evidence bundle {meta['bundle id']}")
    pdf.set_author("phigate")
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.add_page()
    out = _Writer(pdf)

    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 10, "Audit evidence report", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 10)
    pdf.multi_cell(
        0,
        5,
        _text(f"Evidence bundle {meta['bundle id']}: database access through the phigate gateway."),
        new_x=XPos.LMARGIN,
        new_y=YPos.NEXT,
    )
    _scope(out, summary, meta)
    _people(out, summary)
    _agents(out, summary)
    _phi_types(out, summary)
    _accounting(out, summary)
    _approvals(out, summary)
    _denials(out, summary)
    _failed_sign_ins(out, summary)
    _token_changes(out, summary)
    _policy_changes(out, summary)
    _masking(out, summary)
    _kinds(out, summary)
    _activity_reviews(out, summary, meta)
    _attestation(out, meta)
    return bytes(pdf.output())


def _scope(out: _Writer, summary: EvidenceSummary, meta: Mapping[str, Any]) -> None:
    out.heading(SECTION_TITLES[0])
    facts = [
        ("Bundle", meta["bundle id"]),
        ("Period", meta["period"]),
        ("Person", meta["person"]),
        ("Data sources", meta["data sources"]),
        ("Events in the bundle", meta["events"]),
        ("Generated at", meta["exported at"]),
        ("Generated by", meta["exported by"]),
        ("Statement text", "constants replaced by placeholders ($1, $2, ...); no result values are printed"),
        ("Signing key id", meta["signing key id"]),
        ("Key fingerprint", meta["key fingerprint"]),
        ("Chain status", meta["chain status"]),
    ]
    out.table(("Item", "Value"), facts, (1, 3.2), mono_columns=())
    out.subheading("Files in the bundle (SHA-256)")
    digests: Mapping[str, str] = meta["file digests"]
    out.table(("File", "SHA-256"), sorted(digests.items()), (1, 3.2), mono_columns=(1,))
    out.paragraph(
        "This report (report.pdf) cannot carry its own digest: manifest.json lists the SHA-256 of every file in "
        "the bundle, this report included, and manifest.sig is the Ed25519 signature of the manifest by the key "
        "above. Check both offline with: python -m audit.verify <bundle.zip>."
    )
    if not summary.kinds:
        out.paragraph("No events were recorded in this period.")


def _people(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[1])
    out.paragraph(
        "Everyone recorded in the period: requesters, agents' owners, reviewers and compliance officers. "
        "Statements = allowed + held for approval + denied; rows and PHI columns are those of executed reads."
    )
    rows = [
        (
            name,
            ", ".join(sorted(person.agents)) or "-",
            person.counts.statements,
            person.counts.allowed,
            person.counts.held,
            person.counts.denied,
            person.counts.rows,
            person.counts.phi_columns,
            person.reviews,
            person.audit_actions,
            person.sign_ins + person.other,
        )
        for name, person in sorted(summary.people.items())
    ]
    out.table(
        (
            "Person",
            "Agents",
            "Statements",
            "Allowed",
            "Held",
            "Denied",
            "Rows returned",
            "PHI columns read",
            "Reviews",
            "Audit actions",
            "Other events",
        ),
        rows,
        (2.2, 2.2, 1.3, 1.1, 1, 1.1, 1.2, 1.2, 1.1, 1.1, 1.1),
        size=7.5,
    )


def _agents(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[2])
    rows = [
        (agent, owner, c.statements, c.allowed, c.held, c.denied, c.reads, c.rows, c.phi_columns)
        for (agent, owner), c in sorted(summary.agents.items())
    ]
    out.table(
        ("Agent", "Owner", "Statements", "Allowed", "Held", "Denied", "Reads", "Rows returned", "PHI columns read"),
        rows,
        (2.2, 2, 1.2, 1, 1, 1, 1, 1.2, 1.2),
        empty="No agent acted in this period.",
    )


def _phi_types(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[3])
    rows = [
        (name, ", ".join(f"{phi} ({count} columns)" for phi, count in sorted(person.phi_types.items())))
        for name, person in sorted(summary.people.items())
        if person.phi_types
    ]
    out.table(("Person", "PHI types read (masked), with columns returned"), rows, (1, 3), empty="No PHI was read.")


def _accounting(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[4])
    out.paragraph(PATIENT_ACCOUNTING_NOTE)
    patients = [
        (
            person,
            datasource,
            ", ".join(f"{len(keys)} by {key_name}" for key_name, keys in sorted(account.keys.items())) or "0",
            account.identified_reads,
            account.unidentified_reads,
            account.truncated_reads or "-",
        )
        for (person, datasource), account in sorted(summary.patients.items())
    ]
    out.table(
        (
            "Person",
            "Data source",
            "Distinct patients read (by kind of key)",
            "Reads naming patients",
            "Reads of patient tables without a key",
            "Reads with keys cut at the bound",
        ),
        patients,
        (1.5, 1.1, 2.2, 1.1, 1.4, 1.2),
        empty="No read of a patient table was recorded in this period.",
    )
    rows = [
        (person, agent, datasource, tables, account.reads, account.rows, account.first, account.last)
        for (person, agent, datasource, tables), account in sorted(summary.reads.items())
    ]
    out.table(
        ("Person", "Agent", "Data source", "Tables", "Reads", "Rows", "First read", "Last read"),
        [(*row[:6], _short_time(str(row[6])), _short_time(str(row[7]))) for row in rows],
        (1.5, 1.5, 1.1, 2, 0.8, 0.8, 1.6, 1.6),
        empty="No reads were executed in this period.",
    )


def _approvals(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[5])
    if not summary.tickets:
        out.paragraph("No statement was held for approval in this period.")
        return
    out.paragraph(
        "Every statement held for approval, with its requester, the requester's reason, each review and the "
        "outcome. Times are UTC."
    )
    for ticket_id, trail in sorted(summary.tickets.items()):
        out.subheading(f"Ticket {ticket_id}: {trail.outcome}")
        facts = [
            ("Requested by", _who(trail.requested_by, trail.agent) if trail.requested_by else "(before this period)"),
            ("Requested at", _short_time(trail.requested_at) if trail.requested_at else "-"),
            ("Data source", trail.datasource or "-"),
            ("Reason given", trail.reason or "(none given)"),
            ("Held because", trail.held_because or "-"),
            ("Statement (masked)", trail.statement or "-"),
            ("Outcome", f"{trail.outcome} {_short_time(trail.outcome_at) if trail.outcome_at else ''}".strip()),
            ("Outcome record", trail.outcome_note or "-"),
        ]
        out.table(("Item", "Value"), facts, (1, 3.5), mono_columns=())
        out.table(
            ("Reviewed at", "Reviewer", "Decision", "Comment"),
            [(_short_time(r.at), r.reviewer, r.decision, r.comment or "-") for r in trail.reviews],
            (1.3, 1.3, 0.9, 3),
            empty="No reviews recorded in this period.",
        )


def _denials(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[6])
    out.table(
        ("Time", "Who", "Data source", "Reason"),
        [(_short_time(at), who, source, reason[:300]) for at, who, source, reason in summary.denials],
        (1.2, 1.6, 0.9, 3.3),
    )
    _overflow(out, summary.kinds["query.denied"], len(summary.denials))


def _failed_sign_ins(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[7])
    out.table(
        ("Time", "Claimed identity", "Front and address", "Reason", "Record"),
        [
            (_short_time(at), who, where, reason or "-", note)
            for at, who, where, reason, note in summary.failed_sign_ins
        ],
        (1.2, 1.3, 1.2, 1.3, 2.5),
    )
    _overflow(out, summary.kinds["auth.failed"], len(summary.failed_sign_ins))


def _token_changes(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[8])
    out.table(
        ("Time", "Change", "Person", "Agent", "Record"),
        [(_short_time(at), change, who, agent, note) for at, change, who, agent, note in summary.token_changes],
        (1.2, 0.8, 1.3, 1.3, 3),
    )


def _policy_changes(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[9])
    out.paragraph(
        "Statement records do not carry the policy version they were decided under: the version in force at any "
        "moment is the 'to' version of the latest change before it (or the 'from' version of the first change "
        "after it)."
    )
    out.table(
        ("Time", "Changed by", "Data source", "From version", "To version", "Record"),
        [(_short_time(c.at), c.by, c.datasource, c.before, c.after, c.summary) for c in summary.policy_changes],
        (1.2, 1.2, 1, 0.8, 0.8, 3),
    )


def _masking(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[10])
    coverage = (100.0 * summary.masked_reads / summary.executed_reads) if summary.executed_reads else 0.0
    out.paragraph(
        f"{summary.executed_reads} reads executed; {summary.masked_reads} of them returned PHI columns "
        f"({coverage:.1f}%), each under the mask below ('pass' would mean shown as stored)."
    )
    out.table(
        ("PHI type -> mask", "Columns returned"),
        summary.masked_columns.most_common(),
        (3, 1),
        empty="No PHI columns were returned.",
    )


def _kinds(out: _Writer, summary: EvidenceSummary) -> None:
    out.heading(SECTION_TITLES[11])
    out.table(("Event kind", "Events"), sorted(summary.kinds.items()), (3, 1), empty="No events in this period.")


def _activity_reviews(out: _Writer, summary: EvidenceSummary, meta: Mapping[str, Any]) -> None:
    """The activity reviews of the period (45 CFR 164.308(a)(1)(ii)(D)): each sign-off with its findings and
    notes (from reviews.jsonl, whose digest the sign-off certifies), then the periods still not signed off."""
    out.heading(SECTION_TITLES[12])
    out.paragraph(
        "Each data source's activity is reviewed per period by a compliance officer, who marks every finding "
        "explained or for follow-up and signs the review off. A sign-off is an audit event in the chain (it is in "
        "events.jsonl even when signed after the period); its digest covers the findings and notes in "
        "reviews.jsonl, which python -m audit.verify recomputes. Times are UTC."
    )
    reviews: Mapping[Any, Mapping[str, Any]] = meta.get("reviews") or {}
    if not summary.review_sign_offs:
        out.paragraph("No activity review of a period overlapping this bundle has been signed off.")
    for sign_off in summary.review_sign_offs:
        counts = sign_off.findings
        out.subheading(
            f"{sign_off.datasource}: {_short_time(sign_off.period_start)} to {_short_time(sign_off.period_end)}"
        )
        facts = [
            ("Signed off by", sign_off.signed_by),
            ("Signed off at", _short_time(sign_off.at)),
            ("Sign-off event", f"{sign_off.event_id} (review {sign_off.review_id})"),
            (
                "Findings",
                f"{counts.get('total', 0)}: {counts.get('explained', 0)} explained, "
                f"{counts.get('follow_up', 0)} for follow-up",
            ),
            ("Digest of findings and notes", sign_off.digest),
        ]
        out.table(("Item", "Value"), facts, (1, 3.5), mono_columns=())
        review = reviews.get(sign_off.review_id) or {}
        out.table(
            ("Finding", "Disposition", "Note", "Noted by"),
            [
                (
                    f"{finding['kind']}: {finding['summary']}",
                    str(finding["disposition"]).replace("_", "-"),
                    finding["note"] or "-",
                    f"{finding['noted_by_name']} {_short_time(finding['noted_at'] or '')}".strip(),
                )
                for finding in review.get("findings", [])[:_LIST_LIMIT]
            ],
            (3, 0.9, 2.6, 1.3),
            empty="No findings: nothing in the period needed a closer look."
            if review
            else "The findings of this review are missing from the bundle.",
        )
    unsigned = meta.get("unsigned reviews") or []
    if unsigned:
        out.subheading("Periods not signed off")
        out.table(
            ("Data source", "Period start", "Period end", "Status"),
            [
                (row["datasource"], _short_time(row["period_start"]), _short_time(row["period_end"]), row["status"])
                for row in unsigned
            ],
            (1.5, 1.5, 1.5, 1),
        )


def _attestation(out: _Writer, meta: Mapping[str, Any]) -> None:
    out.heading(SECTION_TITLES[13])
    out.paragraph(
        f"This report was generated by phigate from the events of bundle {meta['bundle id']} at "
        f"{meta['exported at']} for {meta['exported by']}. The bundle's manifest is signed with the Ed25519 key "
        f"{meta['signing key id']} (fingerprint above); the chain check at export said: {meta['chain status']}."
    )
    out.table(
        ("Reviewed by (name and role)", "Signature", "Date"),
        [("", "", "")],
        (2, 2, 1),
    )


def _overflow(out: _Writer, total: int, shown: int) -> None:
    if total > shown:
        out.paragraph(f"... and {total - shown} more (all are in events.jsonl).")
