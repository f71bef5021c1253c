"""EXPLAIN for agents and reviewers: the plan and estimated row count of a statement, never its execution.

Runs in the gateway, on the read-only role, in a READ ONLY transaction with the read statement timeout. Only
plain EXPLAIN is ever sent (no ANALYZE, which would run the statement). The statement is classified first:
one statement only, nothing the classifier denies, and no EXPLAIN of its own.

The read role cannot plan a write (PostgreSQL checks table privileges even for a plain EXPLAIN), so a write is
explained through the read that selects the rows it would touch: ``DELETE FROM t USING u WHERE c`` becomes
``SELECT FROM t, u WHERE c``, UPDATE likewise, and INSERT its source query. That is the number a reviewer
wants: how many rows the change would hit.

Row estimates come from column statistics, so they say something about stored values ("how many patients are
called Smith"). The inference guard that holds such filters on PHI for agents therefore also refuses their
EXPLAIN. Every EXPLAIN is audited before it runs (query.submitted with ``"explain": true``) and ends in one
outcome record like any statement (audit.events): query.executed (the plan's lines), query.failed or, when
refused, query.denied.

The ticket page's estimate (gateway.ticket_lookups) reuses the same pieces with the ticket's bind parameters,
judged for the people who may open the page, and is audited as a look-up linked to the ticket (ticket.estimated),
never as a statement of the person viewing it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import psycopg
from django.conf import settings
from django.db import transaction
from pglast import ast, enums
from pglast.stream import RawStream

from audit import events
from audit.events import Context
from gateway.pipeline import DatasourceRuntime, exposing_relations, touches_phi
from identity.principal import Principal
from policy.classifier import Classification, UnparsableStatement, Verdict, classify
from policy.lineage import ParseError, UnsupportedStatement, analyze
from policy.lineage_masking import inference_verdict
from policy.models import DataSource, InferenceAction
from policy.parse_depth import parse_statements
from policy.target_catalog import TargetCatalog

_EXPLAIN = {"explain": True}  # marks the records of an EXPLAIN made for an agent or a page
FORMATS = ("JSON", "TEXT")  # JSON for the estimate, TEXT for people
WRITE_NOTE = "the read-only role cannot plan a write: this is the plan of the rows the {kind} would touch"


class ExplainRefused(Exception):
    """The statement may not be explained; the message says why and is safe to show."""


def explain_statement(
    principal: Principal,
    datasource_name: str,
    sql: str,
    runtime: DatasourceRuntime,
    *,
    context: Context | None = None,
) -> dict[str, Any]:
    """``{"plan": text, "estimated_rows": n, "explained": sql actually planned, "note": ...}``.

    Raises ExplainRefused (audited as query.denied) for anything that may not be planned.
    """
    context = context or Context()
    datasource = DataSource.objects.filter(name=datasource_name, is_active=True).first()
    if datasource is None:
        _refuse(principal, context, datasource_name[:63], sql, f"unknown data source {datasource_name!r}")
    catalog = runtime.catalog(datasource.name)
    try:
        classification = classify(sql, catalog.functions, relations=catalog)
    except UnparsableStatement as exc:
        _refuse(principal, context, datasource.name, sql, f"syntax error: {exc}")
    try:
        explained, kind = explainable_read(sql, classification)
        check_planning(
            classification,
            explained,
            catalog,
            identity_kinds=(principal.identity_kind,),
            fail_closed_when_unfollowable=principal.is_agent,
        )
    except ExplainRefused as exc:
        _refuse(principal, context, datasource.name, sql, str(exc), classification)
    statement_id = _audit_submitted(principal, context, datasource.name, sql, explained, classification)
    started = time.monotonic()
    try:
        plan_json = _run(runtime, datasource.name, composed(explained, "JSON"))
        plan_text = _run(runtime, datasource.name, composed(explained, "TEXT"))
    except psycopg.Error as exc:
        error = events.StatementError.scrubbed(
            exc.diag.sqlstate, exc.diag.message_primary, touches_phi=touches_phi(classification, catalog)
        )
        _audit_outcome(
            events.failed(
                principal, context, datasource=datasource.name, statement_id=statement_id, error=error, extra=_EXPLAIN
            )
        )
        raise ExplainRefused(error.message) from exc
    result: dict[str, Any] = {
        "plan": "\n".join(plan_text),
        "estimated_rows": estimated_rows(plan_json[0]),
        "explained": explained,
    }
    # What was sent back is the plan, the same for every front: its lines are the result's rows.
    sent = json.dumps(result, separators=(",", ":"), sort_keys=True).encode()
    _audit_outcome(
        events.executed(
            principal,
            context,
            datasource=datasource.name,
            statement_id=statement_id,
            rowcount=len(plan_text),
            truncated=False,
            masking={},
            result_sha256=hashlib.sha256(sent).hexdigest(),
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            extra={**_EXPLAIN, "estimated_rows": result["estimated_rows"]},
        )
    )
    if kind != "SELECT":
        result["note"] = WRITE_NOTE.format(kind=kind)
    return result


def explain_via_gateway(
    principal: Principal, datasource: str, sql: str, *, context: Context | None = None
) -> dict[str, Any]:
    """The web side (which holds no target credential): ask the gateway to run ``explain_statement``.

    Raises ExplainRefused when the statement may not be explained, and gateway.rpc.GatewayUnavailable when no
    gateway answers. Pass the caller's audit context (``identity.authentication.web_context(request)`` for a page).
    """
    # gateway.rpc imports this module (its "explain" operation), so it is imported here, at call time.
    from approvals.notify import redis_client
    from gateway import rpc

    try:
        return rpc.call_operation(
            redis_client(),
            "explain",
            principal=principal,
            datasource=datasource,
            context=context or Context(front="web"),
            timeout_seconds=settings.READ_STATEMENT_TIMEOUT_MS / 1000 + 10,
            arguments={"sql": sql},
        )
    except rpc.OperationRefused as exc:
        raise ExplainRefused(str(exc)) from exc


def estimated_rows(plan_json: str) -> int:
    """The top plan node's row estimate, from EXPLAIN (FORMAT JSON)'s one value."""
    return round(float(json.loads(plan_json)[0]["Plan"].get("Plan Rows", 0)))


def explainable_read(sql: str, classification: Classification) -> tuple[str, str]:
    """(the read to plan, the statement's kind): the statement itself for a read, the rows a write touches."""
    if len(classification.statement_types) != 1:
        raise ExplainRefused("EXPLAIN takes exactly one statement")
    if classification.verdict == Verdict.DENIED:
        raise ExplainRefused("denied by policy: " + "; ".join(classification.reasons))
    statement = parse_statements(sql)[0].stmt
    if isinstance(statement, ast.ExplainStmt):
        if _analyzes(statement):
            raise ExplainRefused("EXPLAIN ANALYZE runs the statement; only plain EXPLAIN is available")
        raise ExplainRefused("send the statement itself: phigate adds EXPLAIN (never ANALYZE)")
    if isinstance(statement, ast.SelectStmt) and statement.intoClause is None:
        return sql, "SELECT"
    if isinstance(statement, ast.DeleteStmt):
        return _deparse(_rows_of(statement.relation, statement.usingClause, statement.whereClause, statement)), "DELETE"
    if isinstance(statement, ast.UpdateStmt):
        return _deparse(_rows_of(statement.relation, statement.fromClause, statement.whereClause, statement)), "UPDATE"
    if isinstance(statement, ast.InsertStmt) and statement.selectStmt is not None:
        return _deparse(_insert_source(statement)), "INSERT"
    raise ExplainRefused(
        f"EXPLAIN covers SELECT, INSERT ... SELECT/VALUES, UPDATE and DELETE, not {classification.statement_types[0]}"
    )


def _analyzes(statement: ast.ExplainStmt) -> bool:
    """Fail closed: any ANALYZE option counts, whatever its value."""
    return any(isinstance(o, ast.DefElem) and (o.defname or "").lower() == "analyze" for o in statement.options or ())


def _rows_of(relation: ast.Node | None, extra: Any, where: Any, statement: ast.Node) -> ast.SelectStmt:
    if isinstance(where, ast.CurrentOfExpr):
        raise ExplainRefused("WHERE CURRENT OF needs a cursor; it cannot be explained on its own")
    return ast.SelectStmt(
        fromClause=(relation, *(extra or ())),
        whereClause=where,
        withClause=getattr(statement, "withClause", None),
        op=enums.SetOperation.SETOP_NONE,
    )


def _insert_source(statement: ast.InsertStmt) -> ast.Node:
    source = statement.selectStmt
    assert source is not None  # INSERT ... DEFAULT VALUES is refused before
    if statement.withClause is None:
        return source
    if not isinstance(source, ast.SelectStmt) or source.withClause is not None:
        raise ExplainRefused("an INSERT with WITH clauses on both the INSERT and its query cannot be explained")
    fields = {name: getattr(source, name) for name in source}
    return ast.SelectStmt(**{**fields, "withClause": statement.withClause})


def composed(explained: str, form: str) -> str:
    return f"EXPLAIN (FORMAT {form}) {explained}"


def _deparse(node: ast.Node) -> str:
    return str(RawStream()(node))


def check_planning(
    classification: Classification,
    explained: str,
    catalog: TargetCatalog,
    *,
    identity_kinds: Sequence[str],
    fail_closed_when_unfollowable: bool,
) -> None:
    """What planning may reveal: the composed EXPLAIN must classify as allowed, and its row estimate must not
    answer a question about PHI values the policy would hold or deny for any of ``identity_kinds`` (everyone
    who will see the estimate). ``fail_closed_when_unfollowable``: refuse when lineage cannot say what the
    estimate depends on (agents)."""
    for form in FORMATS:  # exactly the texts that will be sent
        try:
            planned = classify(composed(explained, form), catalog.functions, relations=catalog)
        except UnparsableStatement as exc:
            raise ExplainRefused(f"cannot be explained: {exc}") from exc
        explain = parse_statements(composed(explained, form))[0].stmt
        if planned.statement_types != ("EXPLAIN",) or not isinstance(explain, ast.ExplainStmt) or _analyzes(explain):
            raise ExplainRefused("cannot be explained on its own")
        if planned.verdict != Verdict.ALLOWED:
            raise ExplainRefused("planning it is not allowed: " + "; ".join(planned.reasons))
    exposing = exposing_relations(planned.relations)
    if exposing:
        raise ExplainRefused(f"{', '.join(exposing)} exposes stored values or other sessions' statements")
    try:
        lineage = analyze(explained, catalog)
    except (ParseError, UnsupportedStatement) as exc:
        if fail_closed_when_unfollowable and touches_phi(classification, catalog):
            raise ExplainRefused(f"cannot tell what the estimate reveals about PHI: {exc}") from exc
        return
    for identity_kind in identity_kinds:
        guard = inference_verdict(lineage, catalog, identity_kind)
        if guard.action != InferenceAction.ALLOW:
            raise ExplainRefused(
                "row estimates come from column statistics and would reveal PHI values: " + "; ".join(guard.reasons)
            )


def _run(runtime: DatasourceRuntime, datasource: str, sql: str) -> list[str]:
    """One column per row (what EXPLAIN returns), as PostgreSQL's text."""
    raw = runtime.executor(datasource).run(
        sql, cursor_capable=False, row_cap=100_000, timeout_ms=settings.READ_STATEMENT_TIMEOUT_MS
    )
    return [row[0] or "" for row in raw.rows]


def _details(classification: Classification | None, **extra: object) -> dict[str, object]:
    details: dict[str, object] = {"explain": True, **extra}
    if classification is not None:
        details.update(
            statement_types=list(classification.statement_types),
            relations=list(classification.relations),
            fingerprint=classification.fingerprint,
        )
    return details


def _refuse(
    principal: Principal,
    context: Context,
    datasource: str,
    sql: str,
    why: str,
    classification: Classification | None = None,
) -> NoReturn:
    with transaction.atomic():
        events.refused(
            principal,
            context,
            datasource=datasource,
            statement=sql,
            summary=f"EXPLAIN refused: {why}",
            details=_details(classification, verdict="denied", reasons=[why]),
        ).record()
    raise ExplainRefused(why)


def _audit_submitted(
    principal: Principal, context: Context, datasource: str, sql: str, explained: str, classification: Classification
) -> str:
    """Committed before the plan is asked for, like any read. Returns the statement id of its outcome record."""
    statement_id = events.new_statement_id()
    with transaction.atomic():
        events.submitted(
            principal,
            context,
            datasource=datasource,
            statement=sql,
            statement_id=statement_id,
            summary="EXPLAIN (planned, not run)",
            details=_details(classification, verdict="allowed", reasons=[], explained=explained),
        ).record()
    return statement_id


def _audit_outcome(event: events.Event) -> None:
    with transaction.atomic():
        event.record()
