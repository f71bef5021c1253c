"""The one policy pipeline every front uses (HTTP now; wire and MCP later).

authenticate (done by the front) -> classify -> audit -> hold | deny | execute the read -> mask -> audit.

The audit record of an allowed read commits *before* the statement runs: if it cannot be written the read
never happens (non-negotiable 6). Runs in the gateway process, which holds the read-only credential.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.conf import settings
from django.db import transaction
from pglast import ast
from pglast.stream import RawStream

from approvals.lifecycle import open_ticket
from approvals.models import Ticket
from approvals.params import StatementParams
from approvals.rules import required_approvals
from audit import events
from audit.events import Context
from audit.preview import result_preview
from gateway.param_types import resolved_parameter_types
from gateway.read_executor import ReadExecutor
from identity.principal import Principal
from policy import session_settings
from policy.catalog_cache import CatalogCache
from policy.classification import held_until_classified
from policy.classifier import Classification, UnparsableStatement, Verdict, classify, explain_options
from policy.credentials import Access, target_url
from policy.exposure import exposing_relation
from policy.lineage import ParseError, UnsupportedStatement, analyze_select
from policy.lineage_masking import default_inference, inference_verdict, plan_for_result
from policy.lineage_types import Derivation, Lineage, OutputColumn
from policy.masking import MaskingPlan, require_pseudonym_key
from policy.models import DataSource, InferenceAction
from policy.parse_depth import TooDeep, parse_statements
from policy.patient_keys import PatientAccess, rows_disclosed
from policy.result_values import JsonValue, describe_columns, result_columns, typed_rows
from policy.target_catalog import TargetCatalog
from policy.withholding import CannotWithhold, withheld_statement

log = logging.getLogger(__name__)

# Plain SELECTs are read through a server-side cursor so the row cap bounds memory; other allowed statements
# (SHOW, EXPLAIN, VALUES) return small results.
_CURSOR_CAPABLE = frozenset({"SELECT"})
# An API request is one statement in one transaction on a pooled connection: statements that only make sense
# with session state (SET, cursors, BEGIN ...) are refused there, so no request can leave state for the next.
ONE_SHOT_TYPES = frozenset({"SELECT", "SHOW", "EXPLAIN"})
# Statements whose rows come from a query: the read policy (lineage, inference guard, withholding) judges it.
READ_SHAPED_TYPES = frozenset({"SELECT", "DECLARE CURSOR", "EXPLAIN"})


@dataclass
class StatementOutcome:
    status: str  # executed | pending | denied | invalid | failed
    columns: list[str] = field(default_factory=list)
    # Per column: PostgreSQL type name and OID, JSON kind and mask (policy.result_values.ResultColumn.describe).
    column_types: list[dict[str, Any]] = field(default_factory=list)
    rows: list[list[JsonValue]] = field(default_factory=list)  # masked, then typed (policy.result_values)
    rowcount: int = 0
    truncated: bool = False
    reasons: list[str] = field(default_factory=list)
    ticket_id: int | None = None
    ticket_url: str = ""
    error: str = ""
    masking: dict[str, dict[str, str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


class DatasourceRuntime:
    """Read-only connections and catalog snapshots per data source, created on first use."""

    def __init__(self) -> None:
        self._executors: dict[str, ReadExecutor] = {}
        self._lock = threading.Lock()
        self.catalogs = CatalogCache(Access.READ)

    def executor(self, datasource: str) -> ReadExecutor:
        with self._lock:
            if datasource not in self._executors:
                self._executors[datasource] = ReadExecutor(target_url(datasource, Access.READ))
            return self._executors[datasource]

    def catalog(self, datasource: str, must_know: Iterable[str] = ()) -> TargetCatalog:
        return self.catalogs.get(datasource, target_url(datasource, Access.READ), must_know)

    def close(self) -> None:
        with self._lock:
            for executor in self._executors.values():
                executor.close()
            self._executors.clear()


def touches_phi(classification: Classification, catalog: TargetCatalog) -> bool:
    for name in classification.relations:
        oid = catalog.relation_oid(name)
        if oid is None or oid < 0 or oid in catalog.tagged_relations:
            return True
    return False


@dataclass
class Decision:
    """What the policy decided for one statement, before anything ran. Shared by every front."""

    verdict: str  # allowed | held | denied | invalid
    reasons: list[str] = field(default_factory=list)
    error: str = ""
    sqlstate: str = "42601"  # of an invalid statement: a syntax error, or what PostgreSQL's analysis reported
    error_position: str = ""  # where in the text PostgreSQL's analysis found it (1-based characters), if it said
    datasource: DataSource | None = None
    classification: Classification | None = None
    catalog: TargetCatalog | None = None
    ticket: Ticket | None = None
    submitted: dict[str, object] = field(default_factory=dict)
    lineage: Lineage | None = None
    # The statement text that runs, when it is not the agent's own: computed PHI columns withheld
    # (policy.withholding), or plan costs left out of an EXPLAIN over PHI. Never cached by shape.
    run_sql: str | None = None
    # What the wire front derives from this decision once and reuses while the decision is cached: the
    # serialized audit details, and the masking plan per result description (gateway.wire.session).
    wire_memo: dict[object, Any] = field(default_factory=dict, repr=False, compare=False)


def decide(
    *,
    principal: Principal,
    datasource_name: str,
    sql: str,
    reason: str,
    context: Context,
    runtime: DatasourceRuntime,
    session_statements: bool = False,
    params: StatementParams | None = None,
    open_tickets: bool = True,
) -> Decision:
    """Classify, and for denied and held statements also audit (and open the ticket), in one transaction each.

    An allowed statement is *not* audited here: the caller records the submission with ``audit_submission``
    and must not release any of its result before that record is committed.
    """

    def denial(datasource: str, summary: str, details: dict[str, object] | None = None) -> None:
        with transaction.atomic():
            events.refused(
                principal, context, datasource=datasource, statement=sql, summary=summary, details=details
            ).record()

    datasource = DataSource.objects.filter(name=datasource_name, is_active=True).first()
    if datasource is None:
        denial(datasource_name, "unknown or inactive data source")
        return Decision(verdict="denied", reasons=[f"unknown data source {datasource_name!r}"])

    catalog = runtime.catalog(datasource.name)
    try:
        classification = classify(sql, catalog.functions, relations=catalog)
    except UnparsableStatement as exc:
        denial(datasource.name, "statement could not be parsed", {"verdict": "invalid", "error": str(exc)})
        position = "" if exc.position is None else str(exc.position + 1)  # PostgreSQL counts characters from 1
        error = str(exc) if str(exc).startswith("syntax error") else f"syntax error: {exc}"
        return Decision(verdict="invalid", error=error, error_position=position, datasource=datasource)

    if any(catalog.relation_oid(name) is None for name in classification.relations):
        # A relation the snapshot has not seen (created since): refresh so masking knows what it is, and classify
        # again, since a new view's definition is only in the new snapshot.
        catalog = runtime.catalog(datasource.name, must_know=classification.relations)
        classification = classify(sql, catalog.functions, relations=catalog)
    verdict, reasons = classification.verdict, list(classification.reasons)
    lineage: Lineage | None = None
    run_sql: str | None = None
    read_shaped = len(classification.statement_types) == 1 and classification.statement_types[0] in READ_SHAPED_TYPES
    if verdict == Verdict.ALLOWED and read_shaped:
        verdict, reasons, lineage, run_sql = _read_policy(classification, sql, catalog, principal, verdict, reasons)
        if lineage is not None and _only_unknown_names(lineage):
            # A misspelt column is not inference: PostgreSQL refuses it before reading any row, so its own
            # answer (42703, 42P01) is what the agent gets, rather than a ticket no reviewer should see. If
            # PostgreSQL does resolve the name, it means something lineage cannot follow (a function called
            # with column syntax, ``p.f`` for ``f(p)``, say), which may have effects: held.
            rejected = runtime.executor(datasource.name).analysis_error(sql)
            if rejected is not None:
                sqlstate, message, position = rejected
                denial(datasource.name, "statement rejected by PostgreSQL", {"verdict": "invalid", "error": message})
                return Decision(
                    verdict="invalid", error=message, sqlstate=sqlstate, error_position=position, datasource=datasource
                )
            if verdict == Verdict.ALLOWED:
                verdict = Verdict.HELD
                reasons = [f"PostgreSQL resolves a name lineage cannot: {'; '.join(lineage.unknown_reasons)}"]

    # Issue 12: an agent reads only relations the PHI policy has classified (policy.classification).
    verdict, reasons = held_until_classified(
        verdict, reasons, classification.relations, catalog, principal.identity_kind
    )

    if verdict == Verdict.ALLOWED and classification.statement_types == ("SET",):
        run_sql = session_settings.capped_statement(sql)  # a limit raised or disabled runs as the limit
    session_only = sorted(set(classification.statement_types) - ONE_SHOT_TYPES)
    if verdict == Verdict.ALLOWED and session_only and not session_statements:
        verdict = Verdict.DENIED
        reasons = [
            f"{', '.join(session_only)} needs a session; it is only available on the wire protocol "
            "(each API request is one statement in its own transaction)"
        ]
    submitted: dict[str, object] = {
        "verdict": str(verdict),
        "risk": str(classification.risk),
        "reasons": reasons,
        "fingerprint": classification.fingerprint,
        "statement_types": list(classification.statement_types),
        "relations": list(classification.relations),
        "reason": reason,
    }
    if params is not None:
        submitted["params"] = params.for_audit()
    if run_sql is not None:
        submitted["executed_statement"] = run_sql
    decision = Decision(
        verdict=str(verdict),
        reasons=reasons,
        datasource=datasource,
        classification=classification,
        catalog=catalog,
        submitted=submitted,
        lineage=lineage,
        run_sql=run_sql,
    )

    if verdict == Verdict.DENIED:
        denial(datasource.name, "denied by policy: " + "; ".join(reasons), submitted)
    elif verdict == Verdict.HELD and open_tickets:
        # Reviewers see each parameter with its type, also one the client left to PostgreSQL to infer.
        param_types = (
            None
            if params is None
            else resolved_parameter_types(runtime.executor(datasource.name), sql, params.type_oids)
        )
        with transaction.atomic():
            decision.ticket = open_ticket(
                principal=principal,
                datasource=datasource,
                sql=sql,
                params=params,
                param_types=param_types,
                reason=reason,
                risk=str(classification.risk),
                reasons=reasons,
                statement_types=classification.statement_types,
                relations=classification.relations,
                approvals_required=required_approvals(classification, datasource),
                fingerprint=classification.fingerprint,
                context=context,
            )
    return decision


def exposing_relations(relations: Iterable[str]) -> list[str]:
    """Relations (as written) on policy.exposure's list: a second look behind the classifier, which denies them."""
    exposing = []
    for written in relations:
        schema, _, name = written.rpartition(".")
        if exposing_relation(schema.rpartition(".")[2] or None, name) is not None:
            exposing.append(written)
    return sorted(exposing)


_ReadPolicy = tuple[Verdict, list[str], Lineage | None, str | None]


def _read_policy(
    classification: Classification,
    sql: str,
    catalog: TargetCatalog,
    principal: Principal,
    verdict: Verdict,
    reasons: list[str],
) -> _ReadPolicy:
    """PHI rules for an allowed read: catalogs that expose values, then lineage, the inference guard and the
    columns to withhold. Returns the verdict, its reasons, the lineage the result is masked by, and the text to
    run when it is not ``sql``."""
    exposing = exposing_relations(classification.relations)
    if exposing:
        return (
            Verdict.DENIED,
            [f"{', '.join(exposing)} exposes stored values or other sessions' statements"],
            None,
            None,
        )
    try:
        statement = _single_statement(sql)
    except UnsupportedStatement as error:
        return _unfollowable(classification, catalog, principal, verdict, reasons, str(error))
    if isinstance(statement, ast.ExplainStmt):
        return _explain_policy(statement, classification, catalog, principal, verdict, reasons)
    query = statement.query if isinstance(statement, ast.DeclareCursorStmt) else statement
    try:
        if not isinstance(query, ast.SelectStmt):
            raise UnsupportedStatement(f"{type(query).__name__} is not a read query")
        lineage = analyze_select(query, catalog)
    except (ParseError, UnsupportedStatement) as error:
        return _unfollowable(classification, catalog, principal, verdict, reasons, str(error))
    guard = inference_verdict(lineage, catalog, principal.identity_kind)
    if guard.action == "deny":
        return Verdict.DENIED, list(guard.reasons), lineage, None
    if guard.action == "hold":
        return Verdict.HELD, list(guard.reasons), lineage, None
    if not guard.withheld:
        return verdict, reasons, lineage, None
    try:
        run_sql = withheld_statement(sql, [(column.target, column.name) for column in guard.withheld])
    except (CannotWithhold, UnsupportedStatement) as error:
        return Verdict.HELD, [f"computed PHI cannot be withheld: {error}"], lineage, None
    return verdict, reasons, lineage, run_sql


def _only_unknown_names(lineage: Lineage) -> bool:
    """Whether lineage is incomplete only because names do not resolve (a column or relation that, as far as the
    snapshot knows, does not exist)."""
    return bool(lineage.unknown_reasons) and all(
        (reason.startswith("column ") and reason.endswith(" cannot be resolved"))
        or (reason.startswith("relation ") and reason.endswith(" is not in the catalog"))
        for reason in lineage.unknown_reasons
    )


def _single_statement(sql: str) -> ast.Node:
    """The one statement of an allowed request (the classifier has parsed it already)."""
    try:
        statements = parse_statements(sql)
    except (ParseError, TooDeep, UnicodeError) as error:
        raise UnsupportedStatement(str(error)) from error
    if len(statements) != 1 or statements[0].stmt is None:
        raise UnsupportedStatement("expected exactly one statement")
    return statements[0].stmt


def _unfollowable(
    classification: Classification,
    catalog: TargetCatalog,
    principal: Principal,
    verdict: Verdict,
    reasons: list[str],
    why: str,
) -> _ReadPolicy:
    """Lineage cannot be established: over PHI that is the kind's default inference action (fail closed);
    otherwise the fail-closed column plan masks the result."""
    if touches_phi(classification, catalog) and _infers_by_default(principal):
        return Verdict.HELD, [f"lineage cannot be established over a PHI table: {why}"], None, None
    return verdict, reasons, None, None


def _infers_by_default(principal: Principal) -> bool:
    """Whether this kind of identity has inference held (or denied) unless the policy says otherwise."""
    return default_inference(principal.identity_kind) != InferenceAction.ALLOW


# EXPLAIN returns one text column of plan lines; what it reveals is judged from the explained statement.
_PLAN_LINEAGE = Lineage(
    outputs=(OutputColumn("QUERY PLAN", frozenset(), Derivation.DIRECT),),
    filters=frozenset(),
    relations=frozenset(),
    unknown_reasons=(),
)


def _explain_policy(
    statement: ast.ExplainStmt,
    classification: Classification,
    catalog: TargetCatalog,
    principal: Principal,
    verdict: Verdict,
    reasons: list[str],
) -> _ReadPolicy:
    """EXPLAIN: a plan reveals what the explained statement filters on (row estimates come from the values'
    statistics); with ANALYZE it also reveals real row counts and timings, and runs the statement.

    Over PHI, the plan's costs are left out for identities that have inference held (widths and row estimates
    are statistics of the values), and ANALYZE is held.
    """
    over_phi = touches_phi(classification, catalog)
    held_by_default = _infers_by_default(principal)
    analyzes = explain_options(statement).analyze
    if analyzes and over_phi and held_by_default:
        return (
            Verdict.HELD,
            ["EXPLAIN ANALYZE runs the statement and reports row counts and timings over PHI"],
            None,
            None,
        )
    query = statement.query
    if isinstance(query, ast.SelectStmt) and query.intoClause is None:
        try:
            lineage = analyze_select(query, catalog)
        except (ParseError, UnsupportedStatement) as error:
            return _unfollowable(classification, catalog, principal, verdict, reasons, str(error))
        if not analyzes:
            # Only planned: nothing is computed, but estimates follow filters, and functions may be folded.
            lineage = dataclasses.replace(lineage, outputs=(), computed_on=frozenset())
        guard = inference_verdict(lineage, catalog, principal.identity_kind)
        if guard.action == "deny":
            return Verdict.DENIED, list(guard.reasons), None, None
        if guard.action == "hold":
            return Verdict.HELD, list(guard.reasons), None, None
    elif over_phi and held_by_default:
        return _unfollowable(
            classification, catalog, principal, verdict, reasons, "EXPLAIN of a statement that is not a query"
        )
    if not (over_phi and held_by_default):
        return verdict, reasons, _PLAN_LINEAGE, None
    # A node of its own (parse_statements' trees are memoised and shared); the query under it is only read.
    costs_off = ast.DefElem(defname="costs", arg=ast.String("false"))
    rewritten = ast.ExplainStmt(query=statement.query, options=(*(statement.options or ()), costs_off))
    return verdict, reasons, _PLAN_LINEAGE, str(RawStream()(rewritten))


def preview(
    *, principal: Principal, datasource_name: str, sql: str, context: Context, runtime: DatasourceRuntime
) -> Decision:
    """``decide`` for the wire's Parse: a held statement opens no ticket yet (its Bind parameters come later).

    Denials are final and audited here; the ticket for a held statement is opened at Execute.
    """
    return decide(
        principal=principal,
        datasource_name=datasource_name,
        sql=sql,
        reason="",
        context=context,
        runtime=runtime,
        session_statements=True,
        open_tickets=False,
    )


def audit_submission(principal: Principal, decision: Decision, sql: str, context: Context) -> str:
    """The record of an allowed statement; commits before the statement's result may be released. Returns the
    statement id its outcome record links to."""
    assert decision.datasource is not None
    statement_id = events.new_statement_id()
    with transaction.atomic():
        events.submitted(
            principal,
            context,
            datasource=decision.datasource.name,
            statement=sql,
            statement_id=statement_id,
            details=decision.submitted,
        ).record()
    return statement_id


def audit_outcome(event: events.Event) -> None:
    """A statement's outcome record (``events.executed`` or ``events.failed``), in a transaction of its own."""
    with transaction.atomic():
        event.record()


def handle_statement(
    *,
    principal: Principal,
    datasource_name: str,
    sql: str,
    reason: str,
    context: Context,
    runtime: DatasourceRuntime,
) -> StatementOutcome:
    """The HTTP front's whole pipeline: decide, then (for allowed reads) audit, run, mask, audit."""
    decision = decide(
        principal=principal, datasource_name=datasource_name, sql=sql, reason=reason, context=context, runtime=runtime
    )
    if decision.verdict == "invalid":
        return StatementOutcome(status="invalid", error=decision.error)
    if decision.verdict == "denied":
        return StatementOutcome(status="denied", reasons=decision.reasons)
    if decision.verdict == "held":
        assert decision.ticket is not None
        return StatementOutcome(
            status="pending", reasons=decision.reasons, ticket_id=decision.ticket.pk, ticket_url=decision.ticket.url
        )
    return _run_allowed_read(principal, decision, sql, context, runtime)


def _run_allowed_read(
    principal: Principal, decision: Decision, sql: str, context: Context, runtime: DatasourceRuntime
) -> StatementOutcome:
    assert decision.datasource is not None and decision.classification is not None and decision.catalog is not None
    key = require_pseudonym_key()
    statement_id = audit_submission(principal, decision, sql, context)  # no audit record, no read
    datasource = decision.datasource.name
    try:
        return _read_and_record(principal, decision, sql, context, runtime, statement_id, key)
    except psycopg.Error as exc:
        error = events.StatementError.scrubbed(
            exc.diag.sqlstate,
            exc.diag.message_primary,
            touches_phi=touches_phi(decision.classification, decision.catalog),
        )
        audit_outcome(events.failed(principal, context, datasource=datasource, statement_id=statement_id, error=error))
        return StatementOutcome(status="failed", error=error.message)
    except Exception:
        # The gateway's own fault (masking, typing, a lost control plane): the statement still gets its outcome.
        failure = events.StatementError("XX000", "XX000: internal error in the gateway")
        with contextlib.suppress(Exception):
            audit_outcome(
                events.failed(principal, context, datasource=datasource, statement_id=statement_id, error=failure)
            )
        raise


def _patients_in(
    decision: Decision, plan: MaskingPlan, columns: list[str], rows: list[list[str | None]]
) -> PatientAccess | None:
    """Which patients' rows the result carries (policy.patient_keys), from the raw values of its key columns."""
    assert decision.datasource is not None and decision.catalog is not None
    return rows_disclosed(
        datasource=decision.datasource.name,
        classification=decision.classification,
        lineage=decision.lineage,
        catalog=decision.catalog,
        patient_keys=plan.patient_keys,
        columns=columns,
        rows=rows,
    )


def _read_and_record(
    principal: Principal,
    decision: Decision,
    sql: str,
    context: Context,
    runtime: DatasourceRuntime,
    statement_id: str,
    key: bytes,
) -> StatementOutcome:
    """Run the allowed read, mask it and record what was sent (its executed record)."""
    assert decision.datasource is not None and decision.classification is not None and decision.catalog is not None
    started = time.monotonic()
    raw = runtime.executor(decision.datasource.name).run(
        decision.run_sql or sql,
        cursor_capable=set(decision.classification.statement_types) <= _CURSOR_CAPABLE,
        row_cap=settings.RESULT_ROW_CAP,
        timeout_ms=settings.READ_STATEMENT_TIMEOUT_MS,
    )
    plan = plan_for_result(
        raw.origins, decision.classification, decision.lineage, decision.catalog, principal.identity_kind
    )
    patients = _patients_in(decision, plan, raw.columns, raw.rows)  # the raw keys, before masking
    rows = plan.apply(raw.rows, key)
    masking = plan.describe(raw.columns)
    columns = result_columns(raw.columns, raw.type_oids, plan, decision.catalog.types)
    column_types = describe_columns(columns)
    typed = typed_rows(rows, columns)  # a masked value stays the string (or NULL) its mask made
    sent = json.dumps(
        {"columns": raw.columns, "column_types": column_types, "rows": typed}, separators=(",", ":")
    ).encode()
    audit_outcome(
        events.executed(
            principal,
            context,
            datasource=decision.datasource.name,
            statement_id=statement_id,
            rowcount=raw.rowcount,
            truncated=raw.truncated,
            masking=masking,
            result_sha256=hashlib.sha256(sent).hexdigest(),
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            preview=result_preview(raw.columns, rows),
            patients=patients,
        )
    )
    return StatementOutcome(
        status="executed",
        columns=raw.columns,
        column_types=column_types,
        rows=typed,
        rowcount=raw.rowcount,
        truncated=raw.truncated,
        masking=masking,
    )
