"""One client connection to the wire gateway: start-up, SCRAM sign-in, then every statement through the policy.

Two coroutines per session:

* the **client loop** reads the client's messages, decides each statement (``gateway.pipeline.decide``, in a
  worker thread), forwards what may run to the session's own read-only upstream connection, and queues replies;
* the **relay** is the only writer to the client. It works through one ordered queue whose items are either
  "the upstream's responses to a message we forwarded" or "a reply the gateway makes itself" (a refusal, a
  ticket, a notice). Keeping both in one queue keeps replies in protocol order under pipelining.

Rows of an allowed statement are released only once its audit record is durable (``gate``): the statement runs
meanwhile, which is harmless on the read-only role, so auditing overlaps execution instead of adding to it.

The common case, one simple Query at a time whose ALLOWED decision is cached, skips both coroutines: the client
socket's callback takes it (``try_fast_query``) and the upstream socket's callback relays the answer, through
the same per-frame step (``_relay_frame``) the relay task uses. Waking a coroutine costs more than that work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from approvals.params import StatementParams
from audit.models import EventKind
from audit.preview import PREVIEW_ROWS, wire_value
from audit.recorder import Context, masking_details
from audit.sinks import WireAuditSink, open_wire_audit_sink
from audit.wire_lines import SessionLines, json_text
from gateway.decision_cache import DecisionCache
from gateway.pgwire.backend import (
    BackendMessage,
    CommandComplete,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    FieldDescription,
    NoticeResponse,
    NotificationResponse,
    ParameterStatus,
    ReadyForQuery,
    RowDescription,
    decode_backend_body,
)
from gateway.pgwire.errors import ProtocolError
from gateway.pgwire.frontend import (
    Bind,
    Close,
    Describe,
    Execute,
    Flush,
    FunctionCall,
    Parse,
    Query,
    Sync,
    Terminate,
)
from gateway.pgwire.notices import error_response, notice_response, protocol_error_response
from gateway.pgwire.parser import FrontendParser
from gateway.pgwire.transaction import TransactionTracker
from gateway.pipeline import (
    DatasourceRuntime,
    Decision,
    decide,
    preview,
    touches_phi,
)
from gateway.wire import bridge, sign_in
from gateway.wire.sign_in import FORWARDED_PARAMETERS
from gateway.wire.upstream import Upstream, UpstreamError
from identity.principal import Principal
from policy.binary_text import binary_to_text
from policy.errors import scrub_error
from policy.lineage_masking import plan_for_result
from policy.masking import ColumnMask, MaskingPlan, mask_value

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
WAIT_HEARTBEAT_SECONDS = 10.0
AUTHENTICATION_TIMEOUT_SECONDS = 30.0  # like PostgreSQL's authentication_timeout: no half-open sessions
TEXT_OID = 25
CLIENT_BACKLOG_BYTES = 1 << 20  # past this much unsent output, stop reading the upstream until the client drains
FAST_QUERY_MAX_BYTES = 64 * 1024  # a larger statement takes the client loop (it is rare, and parsed there anyway)
_QUERY = ord("Q")
# Backend message type codes the relay handles without decoding (gateway.pgwire.backend).
_DATA_ROW = ord("D")
_ROW_DESCRIPTION = ord("T")
_COMMAND_COMPLETE = ord("C")
_READY_FOR_QUERY = ord("Z")
_NO_DATA = ord("n")
_RESULT_ENDS = frozenset({_COMMAND_COMPLETE, ord("I"), ord("s")})  # CommandComplete, EmptyQuery, PortalSuspended
_ACKNOWLEDGEMENTS = frozenset({ord("1"), ord("2"), ord("3"), _NO_DATA, ord("t")})  # Parse/Bind/Close, NoData, params
# SQLSTATEs of the approval flow (class HA is ours: "held for approval").
APPROVAL_REQUIRED = "HA001"
APPROVAL_REJECTED = "HA002"
APPROVAL_EXPIRED = "HA003"
APPROVED_BUT_FAILED = "HA004"
APPROVAL_CANCELLED = "HA005"


class SessionClosed(Exception):
    """The client went away or the session must end (the reason has been sent when possible)."""


@dataclass
class StatementState:
    sql: str
    decision: Decision | None
    param_types: tuple[int, ...] = ()
    row_description: RowDescription | None = None


@dataclass
class PortalState:
    statement: StatementState
    params: StatementParams
    row_description: RowDescription | None = None


@dataclass
class Outgoing:
    """A reply made by the gateway itself, written when the relay reaches it."""

    messages: list[BackendMessage]
    ready_for_query: bool = False  # append ReadyForQuery with the upstream's current transaction status
    in_batch: bool = False  # part of an extended-protocol batch: dropped if upstream already failed the batch


@dataclass
class Expected:
    """The upstream's responses to one forwarded message (``kind`` says which)."""

    kind: str  # parse | bind | describe_statement | describe_portal | execute | close | sync | query
    statement: StatementState | None = None
    portal: PortalState | None = None
    decision: Decision | None = None
    gate: asyncio.Future[None] | None = None  # resolves once the statement's audit record is durable
    swallow: bool = False  # the gateway asked for it for itself: do not show it to the client
    sql: str = ""
    statement_id: str = ""  # links the submitted and executed audit records

    @property
    def statement_decision(self) -> Decision | None:
        """The decision behind these responses: the item's own, or its statement's (via the portal)."""
        if self.decision is not None:
            return self.decision
        if self.statement is not None:
            return self.statement.decision
        return self.portal.statement.decision if self.portal is not None else None


QueueItem = Outgoing | Expected | None


@dataclass
class ResultMeter:
    """What was actually sent for one statement, for its audit record."""

    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0  # when the result's end arrived (its record is built later, after the bytes leave)
    rows: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    masking: dict[str, dict[str, str]] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    preview: list[list[str | None]] = field(default_factory=list)
    masking_json: str = ""  # ``masking`` as audit details (audit.recorder.masking_details), when known already

    def keep_preview(self, row: DataRow, fields: tuple[FieldDescription, ...]) -> None:
        """The first rows as sent (already masked), for session replay."""
        if len(self.preview) < PREVIEW_ROWS:
            formats = [f.format for f in fields] if len(fields) == len(row.values) else [0] * len(row.values)
            self.preview.append([wire_value(value, fmt == 1) for value, fmt in zip(row.values, formats, strict=True)])


@dataclass
class FastQuery:
    """A simple Query answered on the fast path (``WireSession.try_fast_query``)."""

    relay: RelayState
    done: asyncio.Future[None]  # the client loop waits for it before handling anything sent after the query
    held: tuple[int, bytes] | None = None  # a frame waiting for the audit gate
    waiting: bool = False  # for the audit gate
    paused: bool = False  # upstream reading paused until the client drains


class WireClientProtocol(asyncio.StreamReaderProtocol):
    """The client socket's protocol: bytes go to the session's StreamReader, except a lone simple Query the
    session answers on its fast path."""

    session: WireSession | None = None

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            if session.try_fast_query(data):
                return
            session.client_parked = False  # the client loop has bytes to read now
        super().data_received(data)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.session is not None:
            self.session.fast_resume_reading()


class Step(enum.Enum):
    """What relaying one upstream frame led to (``WireSession._relay_frame``)."""

    MORE = "more"  # keep reading frames
    FLUSHED = "flushed"  # output was written to the client: a good moment to respect its backpressure
    NEEDS_GATE = "needs gate"  # the frame would release a result whose audit record is not durable yet
    DONE = "done"  # the responses to this item are complete


@dataclass
class RelayState:
    """Where the relay of one item's responses stands."""

    item: Expected
    released: bool = False
    meter: ResultMeter | None = None
    plan: MaskingPlan | None = None
    fields: tuple[FieldDescription, ...] = ()
    masked: bool = False

    def __post_init__(self) -> None:
        self.released = self.item.gate is None


@dataclass(frozen=True)
class CancelKey:
    process_id: int
    secret: bytes


class WireSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        runtime: DatasourceRuntime,
        registry: dict[CancelKey, WireSession],
        tls: Any = None,
        throttle: Callable[[str, str], float] | None = None,
        audit: WireAuditSink | None = None,
        decisions: DecisionCache | None = None,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.runtime = runtime
        self.registry = registry
        self.tls = tls
        self.throttle = throttle
        self.audit = audit or open_wire_audit_sink()
        self.decisions = decisions or DecisionCache()
        self.parser = FrontendParser()
        self.queue: asyncio.Queue[QueueItem] = asyncio.Queue()
        self.upstream: Upstream | None = None
        self.principal: Principal | None = None
        self.datasource = ""
        self.wait_for_approval = False
        self.context = Context(front="wire", source_address=_peer_address(writer), session_id=uuid.uuid4().hex)
        self.statements: dict[str, StatementState] = {}
        self.portals: dict[str, PortalState] = {}
        self.discarding = False  # after a refusal inside an extended batch: ignore until Sync, like PostgreSQL
        self.upstream_failed_batch = False
        self.transaction = TransactionTracker()
        self.cancel_key = CancelKey(secrets.randbelow(2**31 - 1) + 1, secrets.token_bytes(4))
        self.waiting_ticket: int | None = None
        self.cancelled_wait = asyncio.Event()
        self.out: list[bytes] = []  # relayed bytes waiting for the next flush to the client
        self.audit_lines: SessionLines | None = None
        self.audit_lines_datasource = ""
        self.statements_run = 0
        self.relay_idle = False  # the relay task waits for work and nothing is queued: a query may relay inline
        self.serving = False  # signed in, statements accepted
        self.client_parked = False  # the client loop waits for bytes and has none buffered: the fast path may run
        self.fast: FastQuery | None = None
        self.results_sent: list[tuple[Expected, ResultMeter]] = []  # complete results whose record is not queued

    # ----------------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        try:
            if not await asyncio.wait_for(self._start_up(), timeout=AUTHENTICATION_TIMEOUT_SECONDS):
                return
            self.registry[self.cancel_key] = self
            relay = asyncio.create_task(self._relay(), name=f"relay-{self.context.session_id}")
            try:
                await self._client_loop()
            finally:
                await self.queue.put(None)
                await asyncio.wait({relay}, timeout=30)
                if not relay.done():
                    relay.cancel()
                if relay.done() and not relay.cancelled() and relay.exception() is not None:
                    log.warning("wire session %s relay ended: %s", self.context.session_id, relay.exception())
        except ProtocolError as error:
            self._send_now(protocol_error_response(error))
        except TimeoutError:
            self._send_now(error_response("FATAL", "08006", "start-up and sign-in took too long"))
        except (SessionClosed, ConnectionError, asyncio.IncompleteReadError):
            pass
        except UpstreamError as error:
            self._send_now(error_response("FATAL", error.sqlstate, f"target database: {error}"))
        finally:
            self._record_results()  # results relayed but not flushed (the session ended abruptly) are recorded too
            self.registry.pop(self.cancel_key, None)
            if self.upstream is not None:
                self.upstream.close()
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.writer.drain()
            self.writer.close()

    def _send_now(self, *messages: BackendMessage) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(message.encode() for message in messages))

    async def _read_client(self) -> Any:
        while True:
            message = self.parser.next_message()
            if message is not None:
                return message
            self.client_parked = True
            data = await self.reader.read(READ_SIZE)
            self.client_parked = False
            if not data:
                raise SessionClosed()
            self.parser.feed(data)

    # ---------------------------------------------------------------------------------------------- start-up

    async def _start_up(self) -> bool:
        """Encryption negotiation, cancel requests and sign-in (gateway.wire.sign_in); True once serving."""
        signed_in = await sign_in.start_up(self)
        if signed_in is None:
            return False
        self.principal = signed_in.principal
        self.datasource = signed_in.datasource
        self.wait_for_approval = signed_in.wait_for_approval
        self.upstream = signed_in.upstream
        return True

    def cancel_target(self, process_id: int, secret: bytes) -> WireSession | None:
        """The session a CancelRequest with this key is for, if it is open."""
        return self.registry.get(CancelKey(process_id, secret))

    def backend_key(self) -> tuple[int, bytes]:
        return self.cancel_key.process_id, self.cancel_key.secret

    def terminate(self, sqlstate: str, message: str) -> None:
        """End the session now, from the event loop (revocation, shutdown, a lost upstream): what was relayed
        goes out, then a FATAL ErrorResponse with ``sqlstate`` (57P01 like PostgreSQL's administrator
        command, 08006...), then both sockets close. The client loop then sees the connection end."""
        self._flush_client()
        if not self.writer.is_closing():
            self.writer.write(error_response("FATAL", sqlstate, message).encode())
            self.writer.close()
        if self.upstream is not None:
            self.upstream.close()

    async def cancel(self) -> None:
        """A CancelRequest for this session arrived: stop the upstream statement, or the wait for approval."""
        if self.waiting_ticket is not None:
            self.cancelled_wait.set()
        elif self.upstream is not None:
            await self.upstream.cancel()

    # ----------------------------------------------------------------------------------------------- client

    async def _client_loop(self) -> None:
        assert self.upstream is not None
        self.serving = True
        while True:
            message = await self._read_client()
            if self.fast is not None:
                await self.fast.done  # the fast path's answer goes out before anything that came after it
            if isinstance(message, Terminate):
                return
            if self.discarding:
                if isinstance(message, Sync):
                    self.discarding = False
                    self._forward(message, Expected("sync"))
                    await self._flush_upstream()
                continue
            if isinstance(message, Query):
                await self._simple_query(message.sql)
            elif isinstance(message, Parse):
                await self._parse(message)
            elif isinstance(message, Bind):
                self._bind(message)
            elif isinstance(message, Describe):
                self._describe(message)
            elif isinstance(message, Execute):
                await self._execute(message)
            elif isinstance(message, Close):
                self._close(message)
            elif isinstance(message, Sync):
                self._forward(message, Expected("sync"))
            elif isinstance(message, Flush):
                self.upstream.send(message.encode())
            elif isinstance(message, FunctionCall):
                self._reply(error_response("ERROR", "0A000", "the function call protocol is not supported"), ready=True)
            else:
                raise ProtocolError("08P01", f"unexpected {type(message).__name__} message")
            if not self.parser.buffered:
                await self._flush_upstream()

    async def _flush_upstream(self) -> None:
        assert self.upstream is not None
        await self.upstream.drain()

    def _forward(self, message: Any, expected: Expected | None) -> None:
        assert self.upstream is not None
        self.upstream.send(message.encode())
        if expected is not None:
            self.queue.put_nowait(expected)

    def _reply(self, *messages: BackendMessage, ready: bool = False, in_batch: bool = False) -> None:
        self.queue.put_nowait(Outgoing(list(messages), ready_for_query=ready, in_batch=in_batch))

    def _cached(self, sql: str) -> tuple[Decision | None, Any]:
        """A cached ALLOWED decision for this statement shape under the current catalog snapshot, if any."""
        return self.decisions.lookup(self._cache_scope, sql, self.runtime.catalogs.peek(self.datasource))

    async def _decide(self, sql: str, params: StatementParams | None = None) -> Decision:
        assert self.principal is not None and self.upstream is not None
        cached, shape = self._cached(sql)
        if cached is not None:
            return cached
        self.upstream.flush()  # what was forwarded before this statement must not wait for its decision
        decision = await asyncio.to_thread(
            decide,
            principal=self.principal,
            datasource_name=self.datasource,
            sql=sql,
            reason="",
            context=self.context,
            runtime=self.runtime,
            session_statements=True,
            params=params,
        )
        self.decisions.store(self._cache_scope, shape, decision)
        return decision

    def _next_statement_id(self) -> str:
        """Links a statement's submitted and executed records: unique per session, no system call per statement."""
        self.statements_run += 1
        return f"{self.context.session_id[:20]}{self.statements_run:012x}"

    def _lines_for(self, decision: Decision) -> SessionLines:
        assert self.principal is not None and decision.datasource is not None
        name = decision.datasource.name
        if self.audit_lines is None or self.audit_lines_datasource != name:
            self.audit_lines = SessionLines(self.principal, self.context, name)
            self.audit_lines_datasource = name
        return self.audit_lines

    def _start_audit(self, decision: Decision, sql: str) -> tuple[asyncio.Future[None], str]:
        """Queue the statement's audit record for the next flush. Returns the future its rows wait for, and the
        statement id that links this record to the result's."""
        statement_id = self._next_statement_id()
        prefix = decision.wire_memo.get("submitted_json")
        if prefix is None:  # the decision's details serialized once, the statement id appended per statement
            prefix = json_text(decision.submitted)[:-1]
            prefix = prefix + "," if prefix != "{" else prefix
            decision.wire_memo["submitted_json"] = prefix
        details = f'{prefix}"statement_id":"{statement_id}"}}'
        line = self._lines_for(decision).line(EventKind.QUERY_SUBMITTED, sql, "allowed: provably read-only", details)
        gate = self.audit.submit_line(line)
        assert gate is not None
        return gate, statement_id

    async def _simple_query(self, sql: str) -> None:
        if not sql.strip():
            self._reply(EmptyQueryResponse(), ready=True)
            return
        decision = await self._decide(sql)
        if decision.verdict != "allowed":
            await self._refuse(decision, in_batch=False)
            return
        gate, statement_id = self._start_audit(decision, sql)
        item = Expected("query", decision=decision, gate=gate, sql=sql, statement_id=statement_id)
        query = Query(decision.run_sql or sql)  # the text that runs: computed PHI withheld (policy.withholding)
        if not (self.relay_idle and self.queue.empty() and not self.parser.buffered):
            self._forward(query, item)
            return
        # Nothing else is in flight or waiting: relay this result right here. The common case (one statement
        # at a time) then skips the hand-over to the relay task, which costs more than the relaying itself.
        assert self.upstream is not None
        self.upstream.send(query.encode())
        await self._flush_upstream()
        await self._relay_responses(item)
        self._flush_client()
        await self.writer.drain()

    async def _refuse(self, decision: Decision, *, in_batch: bool) -> None:
        """Answer a statement that will not run now: invalid, denied, or held for approval."""
        if decision.verdict == "invalid":
            error = error_response("ERROR", decision.sqlstate, decision.error)
            self._reply(error, ready=not in_batch, in_batch=in_batch)
        elif decision.verdict == "denied":
            message = "denied by policy: " + "; ".join(decision.reasons)
            self._reply(error_response("ERROR", "42501", message), ready=not in_batch, in_batch=in_batch)
        else:
            assert decision.ticket is not None
            if self.wait_for_approval:
                await self._wait_for_ticket(decision.ticket.pk, decision.ticket.url, in_batch=in_batch)
            else:
                self._reply(_held_error(decision), ready=not in_batch, in_batch=in_batch)
        if in_batch:
            self.discarding = True

    # ------------------------------------------------------------------------------------ extended protocol

    async def _parse(self, message: Parse) -> None:
        decision = await self._decide_at_parse(message.query)
        statement = StatementState(sql=message.query, decision=decision, param_types=message.param_types)
        if decision.verdict in ("invalid", "denied"):
            await self._refuse(decision, in_batch=True)
            return
        self.statements[message.statement] = statement
        # Parsing a held statement upstream is harmless (nothing runs before Execute) and gives the client the
        # real parameter and row descriptions; its Execute is what becomes a ticket. An allowed statement is
        # parsed as the text that runs (computed PHI withheld); the ticket of a held one keeps the agent's text.
        if decision.verdict == "allowed" and decision.run_sql is not None:
            message = dataclasses.replace(message, query=decision.run_sql)
        self._forward(message, Expected("parse", statement=statement))

    async def _decide_at_parse(self, sql: str) -> Decision:
        """Classify without opening a ticket: a held statement's ticket needs its Bind parameters."""
        assert self.principal is not None and self.upstream is not None
        cached, shape = self._cached(sql)
        if cached is not None:
            return cached
        self.upstream.flush()
        decision = await asyncio.to_thread(
            preview,
            principal=self.principal,
            datasource_name=self.datasource,
            sql=sql,
            context=self.context,
            runtime=self.runtime,
        )
        self.decisions.store(self._cache_scope, shape, decision)
        return decision

    def _bind(self, message: Bind) -> None:
        statement = self.statements.get(message.statement) or StatementState(sql="", decision=None)
        portal = PortalState(
            statement=statement,
            params=StatementParams.from_bind(message.params, message.param_formats, statement.param_types),
        )
        self.portals[message.portal] = portal
        self._forward(message, Expected("bind", portal=portal))

    def _describe(self, message: Describe) -> None:
        if message.kind == "S":
            statement = self.statements.get(message.name)
            self._forward(message, Expected("describe_statement", statement=statement))
        else:
            portal = self.portals.get(message.name)
            self._forward(message, Expected("describe_portal", portal=portal))

    async def _execute(self, message: Execute) -> None:
        portal = self.portals.get(message.portal)
        decision = portal.statement.decision if portal else None
        if portal is None or decision is None:
            # Unknown to us means unknown upstream too: let PostgreSQL report it.
            self._forward(message, Expected("execute", portal=portal))
            return
        if decision.catalog is not self.runtime.catalogs.peek(self.datasource):
            # Decided under an older snapshot: tags, classification or rules may have changed since Parse (a
            # prepared statement lives as long as the session), so the statement is judged again.
            current = await self._decide_at_parse(portal.statement.sql)
            if current.verdict in ("invalid", "denied"):
                await self._refuse(current, in_batch=True)
                return
            if current.verdict == "allowed" and current.run_sql != decision.run_sql:
                # What PostgreSQL prepared is no longer the text the policy would run.
                changed = "the PHI policy changed since this statement was prepared; prepare it again"
                self._reply(error_response("ERROR", "0A000", changed), in_batch=True)
                self.discarding = True
                return
            portal.statement.decision = decision = current
        if decision.verdict == "held":
            held = await self._decide(portal.statement.sql, portal.params)
            await self._refuse(held, in_batch=True)
            return
        executing = dataclasses.replace(
            decision, submitted={**decision.submitted, "params": portal.params.for_audit()}, wire_memo={}
        )
        gate, statement_id = self._start_audit(executing, portal.statement.sql)
        if portal.row_description is None:
            # Masking needs the column origins and formats of this portal: ask for them, for ourselves.
            self._forward(Describe("P", message.portal), Expected("describe_portal", portal=portal, swallow=True))
        self._forward(
            message,
            Expected(
                "execute",
                portal=portal,
                decision=executing,
                gate=gate,
                sql=portal.statement.sql,
                statement_id=statement_id,
            ),
        )

    def _close(self, message: Close) -> None:
        if message.kind == "S":
            self.statements.pop(message.name, None)
        else:
            self.portals.pop(message.name, None)
        self._forward(message, Expected("close"))

    # --------------------------------------------------------------------------------------- waiting mode

    async def _wait_for_ticket(self, ticket_id: int, url: str, *, in_batch: bool) -> None:
        """``-c gateway.approval=wait``: hold the statement open, with a NOTICE every ~10 s, until it is decided."""
        assert self.principal is not None and self.upstream is not None
        self.upstream.flush()
        self.waiting_ticket = ticket_id
        self.cancelled_wait.clear()
        self._reply(notice_response("NOTICE", "00000", f"approval required: ticket {ticket_id}; waiting ({url})"))
        last_notice = time.monotonic()
        try:
            while True:
                state = await asyncio.to_thread(bridge.ticket_state, ticket_id)
                if state.final:
                    break
                if self.cancelled_wait.is_set():
                    await asyncio.to_thread(bridge.cancel_waiting_ticket, ticket_id, self.principal, self.context)
                    self._reply(
                        error_response(
                            "ERROR", "57014", f"canceling statement due to user request (ticket {ticket_id} cancelled)"
                        ),
                        ready=not in_batch,
                        in_batch=in_batch,
                    )
                    return
                if time.monotonic() - last_notice >= WAIT_HEARTBEAT_SECONDS:
                    last_notice = time.monotonic()
                    self._reply(
                        notice_response(
                            "NOTICE",
                            "00000",
                            f"still waiting for approval of ticket {ticket_id}: "
                            f"{state.approvals} of {state.approvals_required} approvals ({state.status})",
                        )
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.cancelled_wait.wait(), timeout=1.0)
        finally:
            self.waiting_ticket = None
        self._reply(*_ticket_outcome(ticket_id, state, in_batch=in_batch), ready=not in_batch, in_batch=in_batch)

    # -------------------------------------------------------------------------------------------- fast path

    def try_fast_query(self, data: bytes) -> bool:
        """Take a lone simple Query straight from the socket callback and relay its answer from the upstream's
        socket callback, waking no coroutine: the common case of one statement at a time, where task hand-overs
        cost more than the work. Only when nothing else is buffered or in flight, for a statement whose ALLOWED
        decision is cached; anything else returns False and takes the client loop, unchanged."""
        upstream = self.upstream
        if not (
            self.serving
            and self.client_parked
            and self.fast is None
            and self.relay_idle
            and upstream is not None
            and not upstream.pending
            and not self.discarding
            and not self.parser.buffered
            and self.queue.empty()
            and 5 < len(data) <= FAST_QUERY_MAX_BYTES
            and data[0] == _QUERY
            and int.from_bytes(data[1:5], "big") + 1 == len(data)
        ):
            return False
        try:
            sql = Query.decode_body(data[5:]).sql
        except ProtocolError:
            return False  # the client loop reports it
        if not sql.strip():
            return False
        decision, _ = self._cached(sql)
        if decision is None or decision.verdict != "allowed" or decision.run_sql is not None:
            return False  # the fast path relays the client's own frame
        # The statement leaves first and its audit record is built while it runs: nothing it returns can be
        # read before this callback ends, and the rows then wait for the record's fsync (the gate).
        upstream.writer.write(data)  # the client's own frame
        upstream.protocol.divert = self._fast_received
        gate, statement_id = self._start_audit(decision, sql)
        item = Expected("query", decision=decision, gate=gate, sql=sql, statement_id=statement_id)
        self.fast = FastQuery(RelayState(item), asyncio.get_running_loop().create_future())
        return True

    def _fast_received(self, data: bytes) -> None:
        assert self.upstream is not None
        try:
            self.upstream.parser.feed(data)
        except ProtocolError as error:
            self._fast_abort(protocol_error_response(error), error)
            return
        self._fast_pump()

    def _fast_pump(self) -> None:
        """Relay what the upstream has sent so far, until the gate, backpressure or the end of the answer."""
        fast, upstream = self.fast, self.upstream
        if fast is None or fast.waiting or fast.paused or upstream is None:
            return
        relay = fast.relay
        try:
            while True:
                framed = fast.held or upstream.parser.next_frame()
                fast.held = None
                if framed is None:
                    break
                step = self._relay_frame(relay, *framed)
                if step is Step.NEEDS_GATE:
                    fast.held = framed
                    gate = relay.item.gate
                    assert gate is not None
                    if not gate.done():
                        fast.waiting = True
                        self._flush_client()  # what is already allowed out need not wait for this record
                        gate.add_done_callback(self._fast_gate_done)
                        return
                    if gate.exception() is not None:
                        self._fast_audit_failed(gate.exception())
                        return
                    relay.released = True
                elif step is Step.DONE:
                    self._fast_finish()
                    return
                elif step is Step.FLUSHED and self._client_backlogged():
                    fast.paused = True  # the client reads slowly: stop reading the upstream until it catches up
                    upstream.pause_reading()
                    return
        except ProtocolError as error:
            self._fast_abort(protocol_error_response(error), error)
            return
        self._flush_client()
        if self._client_backlogged():
            fast.paused = True
            upstream.pause_reading()

    def _client_backlogged(self) -> bool:
        """More than CLIENT_BACKLOG_BYTES written to the client and not yet taken by its socket."""
        return self.writer.transport.get_write_buffer_size() > CLIENT_BACKLOG_BYTES

    def _fast_gate_done(self, gate: asyncio.Future[None]) -> None:
        fast = self.fast
        if fast is None:
            return
        fast.waiting = False
        if gate.cancelled() or gate.exception() is not None:
            self._fast_audit_failed(None if gate.cancelled() else gate.exception())
            return
        fast.relay.released = True
        self._fast_pump()

    def fast_resume_reading(self) -> None:
        """The client's socket drained (WireClientProtocol.resume_writing): read the upstream again."""
        fast = self.fast
        if fast is not None and fast.paused and self.upstream is not None:
            fast.paused = False
            self.upstream.resume_reading()
            self._fast_pump()

    def _fast_finish(self) -> None:
        fast = self.fast
        assert fast is not None and self.upstream is not None
        self._flush_client()
        self.upstream.protocol.divert = None  # what follows is read by the relay task, as usual
        self.fast = None
        if not fast.done.done():
            fast.done.set_result(None)

    def _fast_audit_failed(self, error: BaseException | None) -> None:
        log.error("audit write failed in wire session %s; closing it: %s", self.context.session_id, error)
        self._fast_abort(
            error_response("FATAL", "58000", "the audit record could not be written; the result is withheld"), error
        )

    def _fast_abort(self, reply: BackendMessage, error: BaseException | None) -> None:
        """No safe way on: say why and end the session (the client loop sees the connection close)."""
        if isinstance(error, ProtocolError):
            log.warning("wire session %s: %s", self.context.session_id, error)
        self._flush_client()
        if not self.writer.is_closing():
            self.writer.write(reply.encode())
            self.writer.close()
        if self.upstream is not None:
            self.upstream.protocol.divert = None
            self.upstream.close()
        fast, self.fast = self.fast, None
        if fast is not None and not fast.done.done():
            fast.done.set_result(None)

    # ------------------------------------------------------------------------------------------------ relay

    async def _relay(self) -> None:
        while True:
            self.relay_idle = self.queue.empty()
            item = await self.queue.get()
            self.relay_idle = False
            if item is None:
                self._flush_client()
                return
            if isinstance(item, Outgoing):
                if item.in_batch and self.upstream_failed_batch:
                    continue
                messages = list(item.messages)
                if item.ready_for_query:
                    messages.append(ReadyForQuery(self.transaction.status))
                self.out.extend(message.encode() for message in messages)
            elif self.upstream_failed_batch and item.kind not in ("sync", "query"):
                continue  # upstream skips everything until Sync after an error, so these get no response
            else:
                await self._relay_responses(item)
            if self.queue.empty():
                self._flush_client()
                await self.writer.drain()

    def _flush_client(self) -> None:
        """Everything relayed so far leaves in one write: one syscall per round trip, not per message. Then the
        results that write completed are recorded: their records are deferred (nobody waits for them), so
        building them after the write keeps that work off the client's round trip."""
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
        if self.results_sent:
            self._record_results()

    def _record_results(self) -> None:
        results, self.results_sent = self.results_sent, []
        for item, meter in results:
            self._finish_audit(item, meter)

    async def _relay_responses(self, item: Expected) -> None:
        """Relay the upstream's responses to one forwarded message (see ``_relay_frame``)."""
        assert self.upstream is not None
        next_frame = self.upstream.next_frame
        relay = RelayState(item)
        while True:
            code, frame = await next_frame(before_wait=self._flush_client)
            step = self._relay_frame(relay, code, frame)
            if step is Step.NEEDS_GATE:
                await self._await_gate(item)
                relay.released = True
                step = self._relay_frame(relay, code, frame)
            if step is Step.DONE:
                return
            if step is Step.FLUSHED and self._client_backlogged():
                await self.writer.drain()

    def _relay_frame(self, relay: RelayState, code: int, frame: bytes) -> Step:
        """One upstream frame of the responses to ``relay.item``: sans-IO, so the relay task and the fast path
        (``FastQuery``) share it.

        Frames go to the client byte for byte unless they must change (a masked row, a rewritten description,
        a scrubbed error) or be dropped; only those, and the few that carry state, are decoded. Returns
        NEEDS_GATE, without consuming the frame, when it would release a result before its audit record is
        durable: the caller waits for the record and offers the same frame again.
        """
        item, out = relay.item, self.out
        if code == _DATA_ROW:
            if not relay.released:
                return Step.NEEDS_GATE
            meter = relay.meter
            if meter is None:
                if relay.plan is None and item.portal is not None:
                    relay.plan, relay.fields = self._portal_plan(item.portal)
                    relay.masked = relay.plan is not None and not relay.plan.is_identity
                plan, fields = relay.plan, relay.fields
                meter = relay.meter = ResultMeter(
                    masking=plan.describe([f.name for f in fields]) if plan else {},
                    columns=[f.name for f in fields],
                )
            if relay.masked:
                assert relay.plan is not None
                row = _mask_row(DataRow.decode_body(frame[5:]), relay.plan, relay.fields)
                frame = row.encode()
                meter.keep_preview(row, relay.fields)
            elif len(meter.preview) < PREVIEW_ROWS:
                meter.keep_preview(DataRow.decode_body(frame[5:]), relay.fields)
            meter.rows += 1
            meter.digest.update(frame)
            out.append(frame)
            if len(out) >= 512:
                self._flush_client()
                return Step.FLUSHED
            return Step.MORE
        show = not item.swallow
        if code == _ROW_DESCRIPTION:
            shape = self._describe_result(frame, item)
            relay.plan, relay.fields = shape.plan, shape.fields
            relay.masked = shape.plan is not None and not shape.plan.is_identity
            if item.kind == "query":
                relay.meter = ResultMeter(masking=shape.masking, columns=shape.columns, masking_json=shape.masking_json)
            if show:
                out.append(shape.description)
            return Step.DONE if item.kind in ("describe_statement", "describe_portal") else Step.MORE
        if code in _RESULT_ENDS:
            if not relay.released:
                return Step.NEEDS_GATE
            if code == _COMMAND_COMPLETE:
                self.transaction.observe(CommandComplete.decode_body(frame[5:]))
            if show:
                out.append(frame)
            if item.decision is not None and item.gate is not None:
                meter = relay.meter or ResultMeter()
                meter.finished = time.monotonic()
                self.results_sent.append((item, meter))  # recorded once the bytes leave
                relay.meter = None
            return Step.DONE if item.kind == "execute" else Step.MORE
        if code == _READY_FOR_QUERY:
            self.transaction.observe(ReadyForQuery.decode_body(frame[5:]))
            self.upstream_failed_batch = False
            if show:
                out.append(frame)
            return Step.DONE
        if code in _ACKNOWLEDGEMENTS:
            if show:
                out.append(frame)
            if code == _NO_DATA and item.kind == "describe_portal" and item.portal is not None:
                item.portal.row_description = RowDescription(())
            if item.kind in ("parse", "bind", "close") or (
                code == _NO_DATA and item.kind in ("describe_statement", "describe_portal")
            ):
                return Step.DONE
            return Step.MORE
        message = decode_backend_body(code, frame[5:])
        self.transaction.observe(message)
        if isinstance(message, NoticeResponse | ParameterStatus | NotificationResponse):
            if not (isinstance(message, ParameterStatus) and message.name not in FORWARDED_PARAMETERS):
                self._write(message, item)
            return Step.MORE
        if isinstance(message, ErrorResponse):
            self._write(self._scrub(message, item), item)
            if item.kind in ("sync", "query"):
                return Step.MORE
            self.upstream_failed_batch = True
            return Step.DONE
        raise ProtocolError("08P01", f"unexpected {type(message).__name__} from the target database")

    def _write(self, message: BackendMessage, item: Expected) -> None:
        if not item.swallow:
            self.out.append(message.encode())

    async def _await_gate(self, item: Expected) -> None:
        assert item.gate is not None
        if not item.gate.done():
            self._flush_client()  # what is already allowed out need not wait for this statement's record
        try:
            await item.gate
        except Exception:
            # No audit record, no result: end the session rather than release anything.
            log.exception("audit write failed in wire session %s; closing it", self.context.session_id)
            self._flush_client()
            self.writer.write(
                error_response(
                    "FATAL", "58000", "the audit record could not be written; the result is withheld"
                ).encode()
            )
            await self.writer.drain()
            raise SessionClosed() from None

    def _describe_result(self, frame: bytes, item: Expected) -> ResultShape:
        shape = _result_shape(frame, item.statement_decision, self._identity_kind)
        if item.kind == "describe_statement" and item.statement is not None:
            item.statement.row_description = shape.source
        if item.kind == "describe_portal" and item.portal is not None:
            item.portal.row_description = shape.source
        return shape

    @property
    def _cache_scope(self) -> str:
        """Decisions depend on the data source and on who looks (masks and the inference guard differ)."""
        return f"{self.datasource}\x00{self._identity_kind}"

    @property
    def _identity_kind(self) -> str:
        return self.principal.identity_kind if self.principal is not None else "agent"

    def _portal_plan(self, portal: PortalState) -> tuple[MaskingPlan | None, tuple[FieldDescription, ...]]:
        description = portal.row_description or portal.statement.row_description
        if description is None:
            return None, ()
        shape = _result_shape(description.encode(), portal.statement.decision, self._identity_kind)
        return shape.plan, description.fields

    def _scrub(self, message: ErrorResponse, item: Expected) -> ErrorResponse:
        decision = item.statement_decision
        known = decision is not None and decision.classification is not None and decision.catalog is not None
        if known and not touches_phi(decision.classification, decision.catalog):  # type: ignore[union-attr,arg-type]
            return message
        fields = message.fields
        sqlstate = fields.get("C", "XX000")
        scrubbed = {key: value for key, value in fields.items() if key in {"S", "V", "C", "P", "s", "t", "c", "d", "n"}}
        scrubbed["M"] = scrub_error(sqlstate, fields.get("M", ""), touches_phi=True)
        return ErrorResponse(scrubbed)

    def _finish_audit(self, item: Expected, meter: ResultMeter) -> None:
        """The result's record (rows, masks, digest of the bytes sent): queued, not waited for."""
        assert item.decision is not None
        masking = meter.masking_json or _masking_text(meter.masking)
        preview = json_text({"columns": meter.columns, "rows": meter.preview})
        details = (
            f'{{"statement_id":"{item.statement_id}","rowcount":{meter.rows},"truncated":false,{masking},'
            f'"result_sha256":"{meter.digest.hexdigest()}",'
            f'"duration_ms":{round((meter.finished - meter.started) * 1000, 2)},"preview":{preview}}}'
        )
        line = self._lines_for(item.decision).line(EventKind.QUERY_EXECUTED, "", f"{meter.rows} rows returned", details)
        self.audit.submit_line(line, urgent=False)


# ------------------------------------------------------------------------------------------------- helpers


def _peer_address(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


def _held_error(decision: Decision) -> ErrorResponse:
    assert decision.ticket is not None
    ticket = decision.ticket
    fields = {
        "S": "ERROR",
        "V": "ERROR",
        "C": APPROVAL_REQUIRED,
        "M": f"approval required: ticket {ticket.pk}",
        "D": "; ".join(decision.reasons),
        "H": f"Review at {ticket.url}. Poll GET /api/v1/tickets/{ticket.pk}/wait, or reconnect with "
        "PGOPTIONS='-c gateway.approval=wait' to wait for the result on this connection.",
    }
    return ErrorResponse(fields)


def _ticket_outcome(ticket_id: int, state: bridge.TicketState, *, in_batch: bool) -> list[BackendMessage]:
    if state.status == "executed":
        result = state.result or {}
        columns = list(result.get("columns") or [])
        messages: list[BackendMessage] = []
        if columns and not in_batch:
            messages.append(
                RowDescription(tuple(FieldDescription(name, 0, 0, TEXT_OID, -1, -1, 0) for name in columns))
            )
        if columns:
            for row in result.get("rows") or []:
                messages.append(DataRow(tuple(None if value is None else str(value).encode() for value in row)))
        tag = str(result.get("command_tag") or f"EXECUTED {state.rowcount or 0}")
        messages.append(CommandComplete(tag))
        return messages
    if state.status == "rejected":
        who = f" by {state.last_reviewer}" if state.last_reviewer else ""
        comment = f": {state.last_comment}" if state.last_comment else ""
        return [error_response("ERROR", APPROVAL_REJECTED, f"ticket {ticket_id} was rejected{who}{comment}")]
    if state.status == "expired":
        return [error_response("ERROR", APPROVAL_EXPIRED, f"ticket {ticket_id} expired without enough approvals")]
    if state.status == "cancelled":
        return [error_response("ERROR", APPROVAL_CANCELLED, f"ticket {ticket_id} was cancelled")]
    return [error_response("ERROR", APPROVED_BUT_FAILED, f"ticket {ticket_id} failed: {state.error}")]


@dataclass(frozen=True)
class ResultShape:
    """A result description under one decision: worked out once, reused while the decision is cached."""

    source: RowDescription  # as the upstream sent it
    plan: MaskingPlan | None
    description: bytes  # the RowDescription the client is sent (masked columns announced as text), encoded
    fields: tuple[FieldDescription, ...]  # as the upstream described them (formats and types of the values)
    masking: dict[str, dict[str, str]]  # for the audit record
    columns: list[str]
    masking_json: str  # the audit details' masking fields, serialized (without the braces)


def _masking_text(masking: dict[str, dict[str, str]]) -> str:
    """A result's masking as the fields of its audit details (audit.recorder.masking_details), braces left off."""
    return json_text(masking_details(masking))[1:-1]


def _result_shape(frame: bytes, decision: Decision | None, identity_kind: str) -> ResultShape:
    """The shape of a RowDescription frame (keyed by its exact bytes, so a repeat is not even decoded)."""
    key = ("result", identity_kind, frame)
    memo = decision.wire_memo if decision is not None else {}
    shape = memo.get(key)
    if shape is None:
        description = RowDescription.decode_body(frame[5:])
        plan = _plan_for(description, decision, identity_kind)
        names = [f.name for f in description.fields]
        masking = plan.describe(names) if plan else {}
        shape = ResultShape(
            source=description,
            plan=plan,
            description=_rewrite_description(description, plan).encode(),
            fields=description.fields,
            masking=masking,
            columns=names,
            masking_json=_masking_text(masking),
        )
        if len(memo) < 64:
            memo[key] = shape
    return shape


def _plan_for(description: RowDescription, decision: Decision | None, identity_kind: str) -> MaskingPlan | None:
    if not description.fields:
        return None
    if decision is None or decision.classification is None or decision.catalog is None:
        # Unknown provenance: fail closed, every column redacted.
        return MaskingPlan(
            tuple(ColumnMask("redact", "unknown", "statement unknown to the gateway") for _ in description.fields)
        )
    origins = [(field.table_oid, field.column_attnum) for field in description.fields]
    return plan_for_result(origins, decision.classification, decision.lineage, decision.catalog, identity_kind)


def _rewrite_description(description: RowDescription, plan: MaskingPlan | None) -> RowDescription:
    """Masked columns are announced as text: a mask's output (``***1234``, a pseudonym) is text, in either format."""
    if plan is None or plan.is_identity:
        return description
    fields = tuple(
        field if spec is None else FieldDescription(field.name, 0, 0, TEXT_OID, -1, -1, field.format)
        for field, spec in zip(description.fields, plan.columns, strict=True)
    )
    return RowDescription(fields)


_KEY: bytes | None = None


def _pseudonym_key() -> bytes:
    global _KEY
    if _KEY is None:
        from policy.masking import require_pseudonym_key

        _KEY = require_pseudonym_key()
    return _KEY


def _mask_row(row: DataRow, plan: MaskingPlan, fields: tuple[FieldDescription, ...]) -> DataRow:
    key = _pseudonym_key()
    values: list[bytes | None] = []
    for index, (value, spec) in enumerate(zip(row.values, plan.columns, strict=True)):
        if spec is None or value is None:
            values.append(value)
            continue
        field = fields[index] if index < len(fields) else None
        if field is not None and field.format == 1:
            text = binary_to_text(field.type_oid, value)
            masked = mask_value(text, spec.mask, spec.phi_type, key) if text is not None else "[redacted]"
        else:
            masked = mask_value(value.decode("utf-8", "replace"), spec.mask, spec.phi_type, key)
        values.append(None if masked is None else masked.encode("utf-8"))
    return DataRow(tuple(values))
