"""The ticket page's look-ups, in the gateway (the holder of the read-only credential): once per ticket.

* **Estimate**: plain EXPLAIN (never ANALYZE) of the rows the statement touches (gateway.explain), with the
  ticket's bind parameters bound as the client sent them (gateway.bound_read), so ``WHERE id = $2`` is planned
  with the real value instead of failing with "there is no parameter $2".
* **Preview** (UPDATE and DELETE): up to ``PREVIEW_LIMIT`` of the rows the statement would touch, read through the
  same read path as any read (classified as an allowed SELECT, no value-exposing relation, lineage, the inference
  guard, computed PHI withheld, masks), and for UPDATE each SET column's new value beside the row's current one.

Both are judged and masked for every kind of person who may open the page (``approvals.ticket_lookups.
LOOKUP_KINDS``), the strictest winning: the result is kept and shown to all of them. A look-up that may not be
made is answered with the reason, which the page shows.

Audit: each read sent to the target is one event linked to the ticket, ``ticket.estimated`` or
``ticket.previewed``, naming the person whose page view caused it (never a ``query.*`` event: they did not run the
statement). The events and the kept result commit in one transaction before the answer leaves the gateway.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from pglast import ast, enums
from pglast.stream import RawStream

from approvals.models import Status, Ticket
from approvals.rules import can_view
from approvals.ticket_lookups import (
    LOOKUP_KINDS,
    PREVIEW_LIMIT,
    PREVIEWED_STATEMENTS,
    gateway_timeout_seconds,
    skip_reason,
)
from audit.models import EventKind, Outcome
from audit.preview import result_preview
from audit.recorder import Context, masking_details, record
from gateway.bound_read import BoundParams, BoundReadFailed, run_bound
from gateway.explain import ExplainRefused, check_planning, composed, estimated_rows, explainable_read
from gateway.pipeline import DatasourceRuntime, exposing_relations, touches_phi
from identity.principal import Principal
from policy.classifier import Classification, UnparsableStatement, Verdict, classify
from policy.errors import scrub_error
from policy.lineage import ParseError, UnsupportedStatement, analyze
from policy.lineage_masking import inference_verdict, plan_for_result, strictest_plan
from policy.masking import require_pseudonym_key
from policy.models import InferenceAction
from policy.parse_depth import parse_statements
from policy.target_catalog import TargetCatalog
from policy.withholding import CannotWithhold, withheld_statement


class LookupRefused(Exception):
    """The look-ups cannot be made for this ticket now (not pending, not visible, claimed by another); the
    message is safe to show."""


@dataclass
class _Event:
    """An audit event to write with the kept result, in one transaction."""

    kind: EventKind
    outcome: Outcome
    statement: str
    summary: str
    details: dict[str, Any]


@dataclass
class _Run:
    ticket: Ticket
    catalog: TargetCatalog
    classification: Classification
    params: BoundParams
    runtime: DatasourceRuntime
    events: list[_Event] = field(default_factory=list)

    @property
    def datasource(self) -> str:
        return self.ticket.datasource.name

    def read(self, sql: str, row_cap: int) -> Any:
        return run_bound(
            self.runtime.executor(self.datasource),
            sql,
            self.params,
            row_cap=row_cap,
            timeout_ms=settings.READ_STATEMENT_TIMEOUT_MS,
        )

    def scrubbed(self, failure: BoundReadFailed) -> str:
        return scrub_error(
            failure.sqlstate, failure.message, touches_phi=touches_phi(self.classification, self.catalog)
        )


def lookups_via_gateway(principal: Principal, ticket: Ticket, claim: str, context: Context) -> dict[str, Any]:
    """The web side (no target credential): ask the gateway to compute and keep the ticket's look-ups under
    ``claim``. Raises LookupRefused, or gateway.rpc.GatewayUnavailable when no gateway answers in time."""
    from approvals.notify import redis_client
    from gateway import rpc

    try:
        return rpc.call_operation(
            redis_client(),
            "ticket_lookups",
            principal=principal,
            datasource=ticket.datasource.name,
            context=context,
            timeout_seconds=gateway_timeout_seconds(),
            arguments={"ticket_id": ticket.pk, "claim": claim},
        )
    except rpc.OperationRefused as exc:
        raise LookupRefused(str(exc)) from exc


def compute_lookups(
    principal: Principal, datasource: str, arguments: dict[str, Any], context: Context, runtime: DatasourceRuntime
) -> dict[str, Any]:
    """The gateway operation: compute, audit and keep one ticket's look-ups; returns what was kept."""
    ticket = (
        Ticket.objects.select_related("datasource", "owner", "agent").filter(pk=int(arguments["ticket_id"])).first()
    )
    if ticket is None or ticket.datasource.name != datasource or principal.is_agent or not can_view(ticket, principal):
        raise LookupRefused("no such ticket")
    claim = str(arguments["claim"])
    if not isinstance(ticket.lookups, dict) or ticket.lookups.get("claim") != claim:
        raise LookupRefused("the look-ups of this ticket are being made for another view")
    skipped = skip_reason(ticket)
    if skipped is not None:
        raise LookupRefused(skipped)
    catalog = runtime.catalog(datasource)
    try:
        classification = classify(ticket.sql, catalog.functions, relations=catalog)
    except UnparsableStatement as exc:
        raise LookupRefused(f"the statement cannot be parsed: {exc}") from exc
    run = _Run(ticket, catalog, classification, BoundParams.of(ticket.statement_params, ticket.param_types), runtime)
    kept: dict[str, Any] = {"estimate": _estimate(run), "preview": None}
    if classification.statement_types[0] in PREVIEWED_STATEMENTS:
        kept["preview"] = _preview(run)
    with transaction.atomic():
        for event in run.events:
            record(
                event.kind,
                principal=principal,
                context=context,
                outcome=event.outcome,
                datasource=datasource,
                ticket_id=ticket.pk,
                statement=event.statement,
                summary=event.summary,
                details=event.details,
            )
        stored = Ticket.objects.filter(pk=ticket.pk, status=Status.PENDING, lookups__claim=claim).update(
            lookups={**kept, "computed_by": principal.human.get_username()}
        )
    if not stored:
        raise LookupRefused("the ticket was decided while its look-ups were being made")
    return kept


# --- the estimate ---------------------------------------------------------------------------------------------------


def _estimate(run: _Run) -> dict[str, Any]:
    try:
        explained, kind = explainable_read(run.ticket.sql, run.classification)
        check_planning(
            run.classification,
            explained,
            run.catalog,
            identity_kinds=LOOKUP_KINDS,
            fail_closed_when_unfollowable=False,
        )
    except ExplainRefused as exc:
        return {"unavailable": str(exc)}
    details: dict[str, Any] = {"lookup": "estimate", "explained": explained, "params": len(run.params.values)}
    try:
        plan_json = run.read(composed(explained, "JSON"), 1)
        plan_text = run.read(composed(explained, "TEXT"), 10_000)
    except BoundReadFailed as exc:
        error = run.scrubbed(exc)
        run.events.append(
            _Event(
                EventKind.TICKET_ESTIMATED,
                Outcome.FAILURE,
                composed(explained, "JSON"),
                f"row estimate for the ticket failed: {error}",
                {**details, "sqlstate": exc.sqlstate},
            )
        )
        return {"unavailable": f"EXPLAIN failed: {error}"}
    rows = estimated_rows(plan_json.rows[0][0] or "[]")
    run.events.append(
        _Event(
            EventKind.TICKET_ESTIMATED,
            Outcome.SUCCESS,
            composed(explained, "JSON"),
            f"row estimate for the ticket page: {rows} (planned, not run)",
            {**details, "estimated_rows": rows},
        )
    )
    estimate: dict[str, Any] = {
        "rows": rows,
        "explained": explained,
        "plan": "\n".join(row[0] or "" for row in plan_text.rows),
        "with_params": bool(run.params.values),
    }
    if kind != "SELECT":
        estimate["note"] = f"the plan of the rows the {kind} would touch (the read-only role cannot plan a write)"
    return estimate


# --- the preview ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PreviewRead:
    sql: str
    set_columns: tuple[str, ...]  # UPDATE: the SET columns whose new value is read, in order (last columns)
    not_shown: tuple[str, ...]  # UPDATE: SET columns whose new value cannot be shown on its own


def _preview(run: _Run) -> dict[str, Any]:
    try:
        read = _preview_read(run.ticket.sql)
        run_sql, lineage = _judge_preview(read.sql, run.catalog)
    except ExplainRefused as exc:
        return {"unavailable": str(exc)}
    details: dict[str, Any] = {"lookup": "preview", "read_from_target": True, "limit": PREVIEW_LIMIT}
    if run_sql != read.sql:
        details["executed_statement"] = run_sql
    try:
        raw = run.read(run_sql, PREVIEW_LIMIT)
    except BoundReadFailed as exc:
        error = run.scrubbed(exc)
        run.events.append(
            _Event(
                EventKind.TICKET_PREVIEWED,
                Outcome.FAILURE,
                read.sql,
                f"preview of the rows the statement would touch failed: {error}",
                {**details, "sqlstate": exc.sqlstate},
            )
        )
        return {"unavailable": f"the preview failed: {error}"}
    classification = classify(read.sql, run.catalog.functions, relations=run.catalog)
    plan = strictest_plan(
        [plan_for_result(raw.origins, classification, lineage, run.catalog, kind) for kind in LOOKUP_KINDS]
    )
    rows = plan.apply(raw.rows, require_pseudonym_key())
    masking = plan.describe(raw.columns)
    sent = json.dumps({"columns": raw.columns, "rows": rows}, separators=(",", ":")).encode()
    run.events.append(
        _Event(
            EventKind.TICKET_PREVIEWED,
            Outcome.SUCCESS,
            read.sql,
            f"masked preview for the ticket page: {len(rows)} row{'s' if len(rows) != 1 else ''}"
            + (f" (first {PREVIEW_LIMIT})" if raw.truncated else ""),
            {
                **details,
                "rowcount": len(rows),
                "truncated": raw.truncated,
                **masking_details(masking),
                "result_sha256": hashlib.sha256(sent).hexdigest(),
                "preview": result_preview(raw.columns, rows),
            },
        )
    )
    new_from = len(raw.columns) - len(read.set_columns)
    return {
        "columns": raw.columns[:new_from],
        "rows": [row[:new_from] for row in rows],
        "new_values": {
            "columns": list(read.set_columns),
            "rows": [row[new_from:] for row in rows],
        },
        "not_shown": list(read.not_shown),
        "truncated": raw.truncated,
        "masking": masking,
        "limit": PREVIEW_LIMIT,
        "sql": read.sql,
    }


def _preview_read(sql: str) -> _PreviewRead:
    """The SELECT of (at most ``PREVIEW_LIMIT`` + 1 of) the rows an UPDATE or DELETE touches: the target table's
    columns, and for UPDATE each plain SET column's new expression, evaluated on the same row."""
    statement = parse_statements(sql)[0].stmt
    set_targets: tuple[ast.Node, ...] = ()
    if isinstance(statement, ast.DeleteStmt):
        extra = statement.usingClause
    elif isinstance(statement, ast.UpdateStmt):
        extra, set_targets = statement.fromClause, tuple(statement.targetList or ())
    else:
        raise ExplainRefused("a preview covers UPDATE and DELETE")
    if isinstance(statement.whereClause, ast.CurrentOfExpr):
        raise ExplainRefused("WHERE CURRENT OF needs the client's cursor; there is no preview on its own")
    relation = statement.relation
    assert isinstance(relation, ast.RangeVar)
    written = (relation.alias.aliasname,) if relation.alias is not None else (relation.schemaname, relation.relname)
    names = [str(name) for name in written if name]
    targets: list[ast.ResTarget] = [
        ast.ResTarget(val=ast.ColumnRef(fields=(*(ast.String(sval=name) for name in names), ast.A_Star())))
    ]
    shown: list[str] = []
    not_shown: list[str] = []
    for target in set_targets:
        if not isinstance(target, ast.ResTarget) or target.name is None:
            continue
        if target.indirection or isinstance(target.val, ast.MultiAssignRef | ast.SetToDefault):
            not_shown.append(target.name)  # a subscript or field, a multi-column assignment, or DEFAULT
            continue
        shown.append(target.name)
        targets.append(ast.ResTarget(name=f"new {target.name}", val=target.val))
    select = ast.SelectStmt(
        targetList=tuple(targets),
        fromClause=(relation, *(extra or ())),
        whereClause=statement.whereClause,
        withClause=statement.withClause,
        limitCount=ast.A_Const(val=ast.Integer(ival=PREVIEW_LIMIT + 1)),
        limitOption=enums.LimitOption.LIMIT_OPTION_COUNT,
        op=enums.SetOperation.SETOP_NONE,
    )
    return _PreviewRead(str(RawStream()(select)), tuple(shown), tuple(dict.fromkeys(not_shown)))


def _judge_preview(sql: str, catalog: TargetCatalog) -> tuple[str, Any]:
    """The read policy of any read, for every kind in LOOKUP_KINDS: (the text to run, its lineage)."""
    try:
        classification = classify(sql, catalog.functions, relations=catalog)
    except UnparsableStatement as exc:
        raise ExplainRefused(f"no preview: {exc}") from exc
    if classification.statement_types != ("SELECT",) or classification.verdict != Verdict.ALLOWED:
        raise ExplainRefused("reading those rows is not allowed on its own: " + "; ".join(classification.reasons))
    exposing = exposing_relations(classification.relations)
    if exposing:
        raise ExplainRefused(f"{', '.join(exposing)} exposes stored values or other sessions' statements")
    try:
        lineage = analyze(sql, catalog)
    except (ParseError, UnsupportedStatement):
        return sql, None  # the fail-closed column plan masks by each column's origin
    withheld: dict[int, str] = {}
    for kind in LOOKUP_KINDS:
        guard = inference_verdict(lineage, catalog, kind)
        if guard.action != InferenceAction.ALLOW:
            raise ExplainRefused("the rows are chosen by PHI the policy holds: " + "; ".join(guard.reasons))
        withheld.update((column.target, column.name) for column in guard.withheld)
    if not withheld:
        return sql, lineage
    try:
        return withheld_statement(sql, sorted(withheld.items())), lineage
    except (CannotWithhold, UnsupportedStatement) as exc:
        raise ExplainRefused(f"a computed PHI value cannot be withheld: {exc}") from exc
