"""One client connection to the wire gateway: start-up, SCRAM sign-in, then every statement through the policy.

Two coroutines per session:

* the **client loop** reads the client's messages, decides each statement (``gateway.pipeline.decide``, in a
  worker thread), forwards what may run to the session's own read-only upstream connection, and queues replies;
* the **relay** is the only writer to the client. It works through one ordered queue whose items are either
  "the upstream's responses to a message we forwarded" or "a reply the gateway makes itself" (a refusal, a
  ticket, a notice). Keeping both in one queue keeps replies in protocol order under pipelining.

Rows of an allowed statement are released only once its audit record is durable (``gate``): the statement runs
meanwhile, which is harmless on the read-only role, so auditing overlaps execution instead of adding to it.

The common case, one statement at a time whose ALLOWED decision is cached, skips both coroutines: the client
socket's callback takes it (``try_fast_path``: a simple Query, or an extended-protocol batch ``[Parse] Bind
[Describe] Execute Sync``) and the upstream socket's callback relays the answer, through the same per-message
steps (``_forward_parse`` ..., ``_relay_frame``) the two coroutines use. Waking a coroutine costs more than that
work.
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from approvals.params import StatementParams
from audit import events
from audit.events import Context, SessionLines, StatementError, json_members, json_prefix, patient_details
from audit.preview import PREVIEW_ROWS, wire_value
from audit.sinks import WireAuditSink, open_wire_audit_sink
from gateway import control_plane
from gateway.decision_cache import CACHEABLE_TYPES, DecisionCache
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
from gateway.pgwire.states import ServerConnection, State
from gateway.pgwire.transaction import TransactionTracker
from gateway.pipeline import (
    DatasourceRuntime,
    Decision,
    decide,
    preview,
    touches_phi,
)
from gateway.wire import bridge, sign_in
from gateway.wire.book import (
    UNNAMED,
    Book,
    Declare,
    ExecuteSql,
    Fetch,
    NoEffect,
    Op,
    Portal,
    Prepared,
    PrepareSql,
    SetApplicationName,
    statement_effects,
)
from gateway.wire.group import Membership, new_process_id
from gateway.wire.results import (
    PatientReads,
    ResultShape,
    mask_frame,
    masking_text,
    result_patients,
    result_shape,
    row_masker,
)
from gateway.wire.sign_in import (
    CONTROL_PLANE_MESSAGE,
    CONTROL_PLANE_UNAVAILABLE,
    FORWARDED_PARAMETERS,
    ControlPlaneUnavailable,
)
from gateway.wire.stats import WireStats
from gateway.wire.upstream import Upstream, UpstreamError
from identity.principal import Principal
from policy import session_settings
from policy.errors import scrub_error
from policy.masking import MaskingPlan

log = logging.getLogger(__name__)
_R = TypeVar("_R")

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
_ERROR_RESPONSE = ord("E")
_READY_FOR_QUERY = ord("Z")
_NO_DATA = ord("n")
_RESULT_ENDS = frozenset({_COMMAND_COMPLETE, ord("I"), ord("s")})  # CommandComplete, EmptyQuery, PortalSuspended
_ACKNOWLEDGEMENTS = frozenset({ord("1"), ord("2"), ord("3"), _NO_DATA, ord("t")})  # Parse/Bind/Close, NoData, params
_CONFIRMATIONS = frozenset({ord("1"), ord("2")})  # ParseComplete, BindComplete: a name the server now holds
_EMPTY_QUERY = ord("I")
_NO_EFFECTS = (NoEffect(),)
_FAST_QUERY = Query("")  # stands for the fast path's Query in the state table, which looks at types only
_SYNC = Sync()
_BATCH_STARTS = frozenset({ord("P"), ord("B")})  # what an extended-protocol batch the fast path takes starts with
_BATCH_MESSAGES: dict[int, Any] = {kind.type_code[0]: kind for kind in (Parse, Bind, Describe, Execute, Sync)}
FLUSH_BYTES = 64 * 1024  # relayed output past this goes to the socket (and the client's backpressure is checked)
# SQLSTATEs of the approval flow (class HA is ours: "held for approval").
APPROVAL_REQUIRED = "HA001"
APPROVAL_REJECTED = "HA002"
APPROVAL_EXPIRED = "HA003"
APPROVED_BUT_FAILED = "HA004"
APPROVAL_CANCELLED = "HA005"


class SessionClosed(Exception):
    """The client went away or the session must end (the reason has been sent when possible)."""


@dataclass
class Outgoing:
    """A reply made by the gateway itself, written when the relay reaches it."""

    messages: list[BackendMessage]
    ready_for_query: bool = False  # append ReadyForQuery with the upstream's current transaction status
    in_batch: bool = False  # part of an extended-protocol batch: dropped if upstream already failed the batch
    done: asyncio.Future[None] | None = None  # resolved once written (or dropped)


@dataclass
class Expected:
    """The upstream's responses to one forwarded message (``kind`` says which)."""

    kind: str  # parse | bind | describe_statement | describe_portal | execute | close | sync | query | refusal
    statement: Prepared | None = None
    portal: Portal | None = None
    decision: Decision | None = None
    gate: asyncio.Future[None] | None = None  # resolves once the statement's audit record is durable
    swallow: bool = False  # the gateway asked for it for itself: do not show it to the client
    sql: str = ""
    statement_id: str = ""  # links the statement's audit record to its outcome record (audit.events.LINK)
    op: Op | None = None  # what the upstream's answer confirms in the session's book of names
    rows_decision: Decision | None = None  # governs rows, notices and errors when not the statement's own (FETCH)
    replacement: BackendMessage | None = None  # "refusal": written instead of the upstream's ErrorResponse
    done: asyncio.Future[None] | None = None  # resolved once the relay has handled these responses

    @property
    def statement_decision(self) -> Decision | None:
        """The decision that governs these responses: a cursor's for its fetches, else the statement's own."""
        if self.rows_decision is not None:
            return self.rows_decision
        if self.decision is not None:
            return self.decision
        if self.statement is not None:
            return self.statement.decision  # type: ignore[no-any-return]
        return self.portal.statement.decision if self.portal is not None else None  # type: ignore[no-any-return]


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
    patients: PatientReads | None = None  # the patient keys sent, when a result has a key column (results.py)

    def next_result(self, masking: dict[str, dict[str, str]], shape: ResultShape | None = None) -> None:
        """A further result of the same simple Query (``SELECT 1; SELECT 2``): one statement, one outcome record,
        so its rows, masks and patient keys add to this meter (the preview keeps the first rows sent)."""
        self.masking = {**self.masking, **masking}
        self.masking_json = ""
        if shape is not None:
            if self.patients is None:
                self.patients = PatientReads.of(shape.plan, shape.fields)
            else:
                self.patients.start(shape.plan, shape.fields)

    def keep_preview(self, row: DataRow, fields: tuple[FieldDescription, ...]) -> None:
        """The first rows as sent (already masked), for session replay."""
        if len(self.preview) < PREVIEW_ROWS:
            formats = [f.format for f in fields] if len(fields) == len(row.values) else [0] * len(row.values)
            self.preview.append([wire_value(value, fmt == 1) for value, fmt in zip(row.values, formats, strict=True)])


@dataclass
class FastQuery:
    """A simple Query, or an extended-protocol batch, answered on the fast path (``WireSession.try_fast_path``)."""

    relay: RelayState
    done: asyncio.Future[None]  # the client loop waits for it before handling anything sent after the query
    rest: deque[Expected] = field(default_factory=deque)  # a batch's further answers, in the upstream's order
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
            if session.try_fast_path(data):
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
        stats: WireStats | None = None,
        membership: Membership | None = None,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.stats = stats or WireStats()
        self.membership = membership or Membership()
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
        self.book = Book()  # the server's prepared statements and portals, as far as it has confirmed them
        self.connection = ServerConnection(State.READY)  # the protocol's state table, driven by both loops
        self.upstream_failed_batch = False
        self.transaction = TransactionTracker()
        # The process id names this gateway process in its group (gateway.wire.group), the secret is random.
        self.cancel_key = CancelKey(new_process_id(self.membership.index), secrets.token_bytes(4))
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
        self.relay_task: asyncio.Task[None] | None = None
        self.ending = False  # terminate() was called: a wait for approval stops
        self.out_size = 0  # bytes in ``out``: past FLUSH_BYTES they go to the socket, and backpressure is checked
        # Outcomes of statements whose last bytes were relayed, recorded once those bytes leave (``_flush_client``).
        self.results_sent: list[tuple[Expected, ResultMeter | StatementError, ResultMeter | None]] = []
        # Statements with a submitted record and no outcome record yet: each gets exactly one (``_settle``).
        self.unsettled: dict[str, Decision] = {}
        self.batch_error: StatementError | None = None  # why the upstream skips the rest of the batch
        # While the fast path takes an extended-protocol batch: the answers its messages expect, in order.
        self.fast_batch: list[Expected] | None = None
        self.fast_frames: dict[int, bytes] | None = None  # the batch's frames as the client sent them, by message id

    # ----------------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        try:
            if not await asyncio.wait_for(self._start_up(), timeout=AUTHENTICATION_TIMEOUT_SECONDS):
                return
            self.registry[self.cancel_key] = self
            self.stats.sessions_opened += 1
            relay = self.relay_task = asyncio.create_task(self._relay(), name=f"relay-{self.context.session_id}")
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
            self.terminate(error.sqlstate, f"target database: {error}")
        except ControlPlaneUnavailable:
            self.terminate(CONTROL_PLANE_UNAVAILABLE, CONTROL_PLANE_MESSAGE)
        except Exception:
            log.exception("wire session %s failed", self.context.session_id)
            self.terminate("XX000", "internal error in the gateway; the session is closed")
        finally:
            self._record_results()  # results relayed but not flushed (the session ended abruptly) are recorded too
            self._settle_abandoned()
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

    async def _control_plane(self, call: Callable[..., _R], *args: Any, **kwargs: Any) -> _R:
        """A business call (decision, audit, ticket state) in a worker thread. If the control plane cannot answer,
        nothing can be decided or audited: the session ends with 08006, like a lost connection, which clients and
        pools treat as transient (``run``)."""
        try:
            # In a worker thread, bounded; a dead connection is replaced first (gateway.control_plane).
            return await control_plane.call(call, *args, **kwargs)
        except Exception as exc:
            log.exception("wire session %s: control plane call failed", self.context.session_id)
            raise ControlPlaneUnavailable() from exc

    def cancel_target(self, process_id: int, secret: bytes) -> WireSession | None:
        """The session a CancelRequest with this key is for, if it is open."""
        return self.registry.get(CancelKey(process_id, secret))

    def forward_cancel(self, process_id: int, secret: bytes) -> bool:
        """A CancelRequest for a session of another process of the group goes to that process."""
        return self.membership.forward_cancel(process_id, secret)

    def backend_key(self) -> tuple[int, bytes]:
        return self.cancel_key.process_id, self.cancel_key.secret

    @property
    def busy(self) -> bool:
        """A statement is in flight (shutdown gives it a grace period). A wait for approval is not: it may last
        hours, and its ticket outlives the session."""
        if not self.serving or self.waiting_ticket is not None:
            return False
        idle = self.client_parked and self.relay_idle and self.fast is None and self.queue.empty()
        return not idle

    def client_gone(self) -> bool:
        """The client closed its end (a FIN leaves the transport half-open, so the reader is the one that knows)."""
        return self.writer.transport.is_closing() or self.reader.at_eof() or bool(getattr(self.reader, "_eof", False))

    def release_abandoned_wait(self) -> None:
        """The client of a wait for approval has gone: free the upstream connection now and end the wait (its loop
        cancels the ticket, as for a CancelRequest: nobody awaits it any more)."""
        if self.upstream is not None:
            self.upstream.close()
        self.cancelled_wait.set()

    def terminate(self, sqlstate: str, message: str) -> None:
        """End the session now, from the event loop (revocation, shutdown, a lost upstream): what was relayed
        goes out, then a FATAL ErrorResponse with ``sqlstate`` (57P01 like PostgreSQL's administrator
        command, 08006...), then both sockets close. The client loop then sees the connection end."""
        if self.waiting_ticket is not None:
            self.ending = True  # the wait loop stops; the ticket stays for its reviewers
            self.cancelled_wait.set()
        self._flush_client()
        if not self.writer.is_closing():
            if self.connection.state is not State.CLOSED:  # a FATAL already sent says why
                self.connection.state = State.CLOSED
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
        """Reads the client's messages in protocol order, through the state table (``self.connection``).

        Like PostgreSQL, nothing after a Sync or a simple Query is read before its ReadyForQuery has been sent:
        each batch is judged against the names the server has confirmed, never against a guess about how an
        earlier batch ended. Within a batch, messages are forwarded before the answers to earlier ones arrive.
        """
        assert self.upstream is not None
        self.serving = True
        while True:
            message = await self._read_client()
            if self.fast is not None:
                await self.fast.done  # the fast path's answer goes out before anything that came after it
            if isinstance(message, Query | FunctionCall) and self.connection.state is State.EXTENDED:
                await self._caught_up()  # PostgreSQL answers the batch so far before it takes the Query
            self.connection.receive(message)  # ProtocolError: the protocol does not allow this message now
            if isinstance(message, Terminate):
                return
            if self.connection.ignored:
                continue  # after an error until Sync, or COPY data nobody asked for: discarded, like PostgreSQL
            if isinstance(message, Query):
                await self._simple_query(message.sql)
            elif isinstance(message, Parse):
                await self._parse(message)
            elif isinstance(message, Bind):
                await self._bind(message)
            elif isinstance(message, Describe):
                await self._describe(message)
            elif isinstance(message, Execute):
                await self._execute(message)
            elif isinstance(message, Close):
                self._close(message)
            elif isinstance(message, Sync):
                await self._sync()
            elif isinstance(message, Flush):
                self.upstream.send(message.encode())
            elif isinstance(message, FunctionCall):
                refusal = error_response("ERROR", "0A000", "the function call protocol is not supported")
                await self._refuse(refusal, simple=True)
            else:
                raise ProtocolError("08P01", f"unexpected {type(message).__name__} message")
            if not self.parser.buffered:
                await self._flush_upstream()

    async def _sync(self) -> None:
        item = self._forward_sync()
        await self._flush_upstream()
        await self._relayed(item)

    def _forward_sync(self) -> Expected:
        item = Expected("sync", done=None if self.fast_batch is not None else self._future())
        self._forward(Sync(), item)
        self.book.sync()
        return item

    async def _caught_up(self) -> None:
        """Wait until the relay has handled everything forwarded so far."""
        marker = Outgoing([], done=self._future())
        self.queue.put_nowait(marker)
        await self._flush_upstream()
        await self._relayed(marker)

    def _future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _relayed(self, item: Expected | Outgoing) -> None:
        """Wait until the relay has handled ``item``; if the relay ends first, so does the session."""
        done = item.done
        assert done is not None
        if done.done():
            return
        if self.connection.state is State.EXTENDED and self.upstream is not None:
            # Mid-batch, PostgreSQL holds its answers until Sync or Flush: ask for them, or the relay would
            # wait for answers the client will only unlock with a message we have not read yet.
            self.upstream.send(Flush().encode())
            await self._flush_upstream()
        relay = self.relay_task
        if relay is None:
            await done
            return
        await asyncio.wait({done, relay}, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            raise SessionClosed()

    async def _flush_upstream(self) -> None:
        assert self.upstream is not None
        await self.upstream.drain()

    def _forward(self, message: Any, expected: Expected | None) -> None:
        """Send ``message`` upstream (at the next flush) and tell the relay what answers it: through the relay's
        queue, or, while the fast path takes a batch (``fast_batch``), to that batch's own list."""
        assert self.upstream is not None
        # The client's own frame when the fast path has it (a message forwarded unchanged), else encoded.
        frame = self.fast_frames.get(id(message)) if self.fast_frames is not None else None
        self.upstream.send(frame if frame is not None else message.encode())
        if expected is not None:
            if self.fast_batch is not None:
                self.fast_batch.append(expected)
            else:
                self.queue.put_nowait(expected)

    def _reply(self, *messages: BackendMessage, ready: bool = False, in_batch: bool = False) -> None:
        self.queue.put_nowait(Outgoing(list(messages), ready_for_query=ready, in_batch=in_batch))

    def _cached(self, sql: str) -> tuple[Decision | None, Any]:
        """A cached ALLOWED decision for this statement shape under the current catalog snapshot, if any."""
        return self.decisions.lookup(self._cache_scope, sql, self.runtime.catalogs.peek(self.datasource))

    def _outdated(self, decision: Decision) -> bool:
        """A prepared statement's decision made under another catalog snapshot than the current one: tags,
        classification or rules may have changed since its Parse, so it is judged again before it runs."""
        return decision.catalog is not self.runtime.catalogs.peek(self.datasource)

    async def _decide(self, sql: str, params: StatementParams | None = None) -> Decision:
        assert self.principal is not None and self.upstream is not None
        cached, shape = self._cached(sql)
        if cached is not None:
            return cached
        self.upstream.flush()  # what was forwarded before this statement must not wait for its decision
        decision = await self._control_plane(
            decide,
            principal=self.principal,
            datasource_name=self.datasource,
            sql=sql,
            reason=IN_TRANSACTION_REASON if self.transaction.status != "I" else "",
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

    def _start_audit(
        self, decision: Decision, sql: str, more: dict[str, Any] | None = None
    ) -> tuple[asyncio.Future[None], str]:
        """Queue the statement's audit record for the next flush. Returns the future its rows wait for, and the
        statement id that links this record to the result's. ``more``: details of this execution (its bound
        parameters) after the decision's own, which it must not repeat."""
        statement_id = self._next_statement_id()
        self.stats.statements += 1
        prefix = decision.wire_memo.get("submitted_json")
        if prefix is None:  # the decision's details serialized once, the statement id appended per statement
            prefix = decision.wire_memo["submitted_json"] = json_prefix(decision.submitted)
        if more:
            prefix = f"{prefix}{json_members(more)},"
        gate = self.audit.submit_line(self._lines_for(decision).submitted(sql, prefix, statement_id))
        assert gate is not None
        self.unsettled[statement_id] = decision
        return gate, statement_id

    async def _simple_query(self, sql: str) -> None:
        effects = statement_effects(sql)
        if effects == ():
            # Nothing but blanks and comments: PostgreSQL answers EmptyQueryResponse (JDBC's isValid() sends "").
            self.book.close_statement(UNNAMED)
            self.book.close_portal(UNNAMED)
            reply = Outgoing([EmptyQueryResponse()], ready_for_query=True, done=self._future())
            self.queue.put_nowait(reply)
            await self._relayed(reply)
            return
        if effects and any(isinstance(effect, PrepareSql | ExecuteSql) for effect in effects):
            await self._prepared_sql(sql, effects)
            return
        decision = await self._decide(sql)
        if decision.verdict != "allowed":
            await self._refuse_decision(decision, simple=True, drop_unnamed=("S", "P"))
            return
        if effects and len(effects) > 1 and any(isinstance(effect, Declare | Fetch) for effect in effects):
            await self._refuse(CURSOR_ALONE, simple=True, drop_unnamed=("S", "P"))
            return
        rows_decision: Decision | None = None
        if effects and isinstance(effects[0], Fetch):
            cursor = self.book.portal(effects[0].name)
            if cursor is None:
                await self._refuse_unknown(_no_cursor(effects[0].name), "Query", sql, simple=True)
                return
            rows_decision = cursor.statement.decision
            decision = _fetching(decision, cursor)
        await self._run_simple(sql, decision, effects, rows_decision)

    async def _run_simple(
        self,
        sql: str,
        decision: Decision,
        effects: tuple[Any, ...] | None,
        rows_decision: Decision | None = None,
        *,
        run: str | None = None,
    ) -> None:
        """Run an allowed simple Query: its record queued, the book told, the text sent (``run``, or the text the
        decision says), the answer relayed."""
        gate, statement_id = self._start_audit(decision, sql)
        op = self.book.sql(sql, decision, simple_query=True, statement_id=statement_id, effects=effects)
        self.book.sync()
        item = Expected(
            "query",
            decision=decision,
            gate=gate,
            sql=sql,
            statement_id=statement_id,
            op=op,
            rows_decision=rows_decision,
            done=self._future(),
        )
        query = Query(run if run is not None else self._text_to_run(sql, decision, effects))
        if not (self.relay_idle and self.queue.empty() and not self.parser.buffered):
            self._forward(query, item)
            await self._flush_upstream()
            await self._relayed(item)
            return
        # Nothing else is in flight or waiting: relay this result right here. The common case (one statement
        # at a time) then skips the hand-over to the relay task, which costs more than the relaying itself.
        assert self.upstream is not None
        self.upstream.send(query.encode())
        await self._flush_upstream()
        await self._relay_responses(item)
        self._flush_client()
        await self.writer.drain()

    async def _prepared_sql(self, sql: str, effects: tuple[Any, ...]) -> None:
        """SQL PREPARE and EXECUTE, as pg_dump uses them for its catalog queries: the prepared query is judged
        when it is prepared, and an EXECUTE runs under that judgement, as a Bind and Execute of a Parsed statement
        would. Only statements that may run without approval, prepared as written, are taken; EXECUTE's arguments
        must be literals. Anything else is refused, never guessed at."""
        if len(effects) > 1:
            await self._refuse(PREPARED_ALONE, simple=True, drop_unnamed=("S", "P"))
            return
        effect = effects[0]
        if isinstance(effect, PrepareSql):
            decision = await self._decide_at_parse(effect.query)
            if decision.verdict in ("invalid", "denied"):
                await self._refuse_decision(decision, simple=True, drop_unnamed=("S", "P"))
                return
            if decision.verdict != "allowed":
                await self._refuse(PREPARE_NEEDS_PLAIN_READ, simple=True, drop_unnamed=("S", "P"))
                return
            # The server prepares the policy's text of the query (computed PHI withheld), as a Parse would.
            run = sql if decision.run_sql is None else f"{effect.head} {decision.run_sql}"
            await self._run_simple(sql, decision, effects, run=run)
            return
        prepared = self.book.statement(effect.name)
        if prepared is None:
            await self._refuse_unknown(_no_statement(effect.name), "Query", sql, simple=True)
            return
        if not effect.constant_arguments:
            await self._refuse(EXECUTE_NEEDS_LITERALS, simple=True, drop_unnamed=("S", "P"))
            return
        decision = prepared.decision
        if decision is not EMPTY_STATEMENT and self._outdated(decision):
            current = await self._decide_at_parse(prepared.sql)  # the policy may have changed since the PREPARE
            if current.verdict == "allowed" and current.run_sql != decision.run_sql:
                current = dataclasses.replace(current, verdict="held")  # what the server holds is no longer it
            prepared.decision = decision = current
        if decision.verdict in ("invalid", "denied"):
            await self._refuse_decision(decision, simple=True, drop_unnamed=("S", "P"))
            return
        if decision.verdict != "allowed" or decision is EMPTY_STATEMENT:
            await self._refuse(EXECUTE_NEEDS_PLAIN_READ, simple=True, drop_unnamed=("S", "P"))
            return
        executing = dataclasses.replace(
            decision,
            run_sql=None,  # the server runs its prepared statement (already the policy's text) for this EXECUTE
            submitted={**decision.submitted, "prepared_statement": effect.name, "prepared_sql": prepared.sql},
            wire_memo={},
        )
        await self._run_simple(sql, executing, effects)

    def _text_to_run(self, sql: str, decision: Decision, effects: tuple[Any, ...] | None) -> str:
        """What the upstream runs for an allowed statement: the policy's text when it has one (computed PHI
        withheld, a timeout capped), and ``SET application_name`` with the agent's name kept in front, so that
        PostgreSQL's logs and pg_stat_activity still name the agent (``policy.session_settings``)."""
        if decision.run_sql is not None:
            return decision.run_sql
        if effects and len(effects) == 1 and isinstance(effects[0], SetApplicationName):
            named = session_settings.upstream_application_name(self._agent_name, effects[0].value)
            quoted = "'" + named.replace("'", "''") + "'"
            return f"SET {'LOCAL ' if effects[0].local else ''}application_name = {quoted}"
        return sql

    async def _refuse_decision(self, decision: Decision, *, simple: bool, drop_unnamed: tuple[str, ...] = ()) -> None:
        """Answer a statement that will not run now: invalid, denied, or held for approval."""
        if decision.verdict == "invalid":
            error = error_response("ERROR", decision.sqlstate, decision.error)
            if decision.error_position:  # from PostgreSQL's own analysis of a statement it refused
                error = ErrorResponse({**error.fields, "P": decision.error_position})
            await self._refuse(error, simple=simple, drop_unnamed=drop_unnamed)
        elif decision.verdict == "denied":
            message = "denied by policy: " + "; ".join(decision.reasons)
            await self._refuse(error_response("ERROR", "42501", message), simple=simple, drop_unnamed=drop_unnamed)
        else:
            assert decision.ticket is not None
            if not self.wait_for_approval:
                await self._refuse(_held_error(decision), simple=simple, drop_unnamed=drop_unnamed)
                return
            ticket_id = decision.ticket.pk
            state = await self._wait_for_ticket(ticket_id, decision.ticket.url)
            if self.cancelled_wait.is_set() and state.status == "cancelled":
                cancelled = f"canceling statement due to user request (ticket {ticket_id} cancelled)"
                await self._refuse(error_response("ERROR", "57014", cancelled), simple=simple)
                return
            outcome = _ticket_outcome(ticket_id, state, in_batch=not simple)
            if len(outcome) == 1 and isinstance(outcome[0], ErrorResponse):
                await self._refuse(outcome[0], simple=simple)
                return
            reply = Outgoing(outcome, ready_for_query=simple, in_batch=not simple, done=self._future())
            self.queue.put_nowait(reply)
            await self._relayed(reply)

    async def _refuse_unknown(self, error: ErrorResponse, message: str, sql: str = "", *, simple: bool = False) -> None:
        """A message that names a statement, portal or cursor the server does not have (as far as the book knows):
        refused with PostgreSQL's SQLSTATE (fail closed), and recorded as a denial, since a client that guesses
        names is worth a reviewer's look. No row was read: the record is deferred, not waited for."""
        assert self.principal is not None
        denial = events.refused(
            self.principal,
            self.context,
            datasource=self.datasource,
            statement=sql,
            summary=f"refused: {error.fields.get('M', '')} ({message})",
            details={"sqlstate": error.fields.get("C", ""), "protocol_message": message, "refusal": "unknown name"},
        )
        self.audit.submit_line(denial.line(), urgent=False)
        await self._refuse(error, simple=simple, drop_unnamed=("S", "P") if simple else ())

    async def _refuse(self, error: ErrorResponse, *, simple: bool, drop_unnamed: tuple[str, ...] = ()) -> None:
        """Fail the statement the way PostgreSQL fails one, upstream included.

        The upstream is sent a Bind to a statement no client can have (``REFUSAL_STATEMENT``): it fails at once
        and changes nothing, but it fails the upstream's batch and transaction exactly as the client now sees
        theirs failed. A transaction block is aborted (25P02 until ROLLBACK), an implicit transaction rolls back,
        and the rest of an extended batch is skipped until Sync. The relay writes ``error`` in place of the
        upstream's answer, so the order of replies stays the protocol's. ``drop_unnamed`` ("S", "P"): unnamed
        objects PostgreSQL would have dropped before failing (a simple Query drops both, a Parse its statement),
        closed on both sides first.
        """
        assert self.upstream is not None
        for kind in drop_unnamed:  # what PostgreSQL drops before it even looks at the refused message
            if kind == "S":
                self.book.close_statement(UNNAMED)
            else:
                self.book.close_portal(UNNAMED)
            self._forward(Close("S" if kind == "S" else "P", UNNAMED), Expected("close", swallow=True))
        item = Expected("refusal", replacement=error, swallow=True, done=self._future())
        self._forward(Bind("", REFUSAL_STATEMENT, (), (), ()), item)
        if simple:
            sync = Expected("sync", done=self._future())
            self._forward(Sync(), sync)
            self.book.sync()
            await self._flush_upstream()
            await self._relayed(sync)
        else:
            await self._relayed(item)  # with a Flush upstream: the client may wait for the error without a Sync

    # ------------------------------------------------------------------------------------ extended protocol

    async def _parse(self, message: Parse) -> None:
        if message.statement == REFUSAL_STATEMENT:
            await self._refuse(error_response("ERROR", "42602", "this statement name is reserved"), simple=False)
            return
        if statement_effects(message.query) == ():
            decision = EMPTY_STATEMENT  # PostgreSQL prepares it; its Execute answers EmptyQueryResponse
        else:
            decision = await self._decide_at_parse(message.query)
        if decision.verdict in ("invalid", "denied"):
            unnamed = ("S",) if message.statement == UNNAMED else ()  # PostgreSQL drops it before parsing
            await self._refuse_decision(decision, simple=False, drop_unnamed=unnamed)
            return
        self._forward_parse(message, decision)

    def _forward_parse(self, message: Parse, decision: Decision) -> None:
        """A Parse whose statement may be prepared (allowed or held): entered in the book, sent."""
        existing = self.book.statement(message.statement)
        prepared = Prepared(message.query, decision, message.param_types)
        op = self.book.parse(message.statement, prepared)
        if message.statement != UNNAMED and existing is not None:
            op.voided = True  # PostgreSQL answers 42P05 and keeps the statement it has
        # Parsing a held statement upstream is harmless (nothing runs before Execute) and gives the client the
        # real parameter and row descriptions; its Execute is what becomes a ticket. An allowed statement is
        # parsed as the text that runs (computed PHI withheld); the ticket of a held one keeps the agent's text.
        if decision.verdict == "allowed":
            run = self._text_to_run(message.query, decision, statement_effects(message.query))
            if run != message.query:
                message = dataclasses.replace(message, query=run)
        self._forward(message, Expected("parse", statement=prepared, op=op))

    async def _decide_at_parse(self, sql: str) -> Decision:
        """Classify without opening a ticket: a held statement's ticket needs its Bind parameters."""
        assert self.principal is not None and self.upstream is not None
        cached, shape = self._cached(sql)
        if cached is not None:
            return cached
        self.upstream.flush()
        decision = await self._control_plane(
            preview,
            principal=self.principal,
            datasource_name=self.datasource,
            sql=sql,
            context=self.context,
            runtime=self.runtime,
        )
        self.decisions.store(self._cache_scope, shape, decision)
        return decision

    async def _bind(self, message: Bind) -> None:
        statement = self.book.statement(message.statement)
        if statement is None:
            await self._refuse_unknown(_no_statement(message.statement), "Bind")
            return
        self._forward_bind(message, statement)

    def _forward_bind(self, message: Bind, statement: Prepared) -> Portal:
        existing = self.book.portal(message.portal)
        portal = Portal(
            message.portal,
            statement,
            params=StatementParams.from_bind(message.params, message.param_formats, statement.param_types),
        )
        op = self.book.bind(portal)
        if message.portal != UNNAMED and existing is not None:
            op.voided = True  # PostgreSQL answers 42P03 and keeps the portal it has
        self._forward(message, Expected("bind", portal=portal, op=op))
        return portal

    async def _describe(self, message: Describe) -> None:
        if message.kind == "S":
            statement = self.book.statement(message.name)
            if statement is None:
                await self._refuse_unknown(_no_statement(message.name), "Describe")
                return
            self._forward(message, Expected("describe_statement", statement=statement))
            return
        portal = self.book.portal(message.name)
        if portal is None:
            await self._refuse_unknown(_no_portal(message.name), "Describe")
            return
        self._forward_describe_portal(message, portal)

    def _forward_describe_portal(self, message: Describe, portal: Portal) -> None:
        portal.describing = True  # its Execute need not ask again: this answer is relayed first
        self._forward(message, Expected("describe_portal", portal=portal, rows_decision=self._fetched_from(portal)))

    def _fetched_from(self, portal: Portal) -> Decision | None:
        """For a portal that runs FETCH or MOVE: the decision of the cursor it reads, which governs its rows
        (None when that cursor is unknown: then every column is redacted, see ``_plan_for``)."""
        effects = statement_effects(portal.statement.sql) if not portal.cursor else None
        if effects and isinstance(effects[0], Fetch):
            cursor = self.book.portal(effects[0].name)
            return cursor.statement.decision if cursor is not None else NO_DECISION
        return None

    async def _execute(self, message: Execute) -> None:
        portal = self.book.portal(message.portal)
        if portal is None:
            await self._refuse_unknown(_no_portal(message.portal), "Execute")
            return
        if portal.cursor:
            await self._execute_cursor(message, portal)
            return
        decision = portal.statement.decision
        if decision is EMPTY_STATEMENT:
            self._forward(message, Expected("execute", portal=portal))  # EmptyQueryResponse: nothing is read
            return
        if self._outdated(decision):
            # Decided under an older snapshot: tags, classification or rules may have changed since Parse (a
            # prepared statement lives as long as the session), so the statement is judged again.
            current = await self._decide_at_parse(portal.statement.sql)
            if current.verdict in ("invalid", "denied"):
                await self._refuse_decision(current, simple=False)
                return
            if current.verdict == "allowed" and current.run_sql != decision.run_sql:
                # What PostgreSQL prepared is no longer the text the policy would run.
                changed = "the PHI policy changed since this statement was prepared; prepare it again"
                await self._refuse(error_response("ERROR", "0A000", changed), simple=False)
                return
            portal.statement.decision = decision = current
        if decision.verdict == "held":
            held = await self._decide(portal.statement.sql, portal.params)
            await self._refuse_decision(held, simple=False)
            return
        effects = statement_effects(portal.statement.sql) or ()
        cursor: Portal | None = None
        if effects and isinstance(effects[0], Fetch):
            cursor = self.book.portal(effects[0].name)
            if cursor is None:
                await self._refuse_unknown(_no_cursor(effects[0].name), "Execute", portal.statement.sql)
                return
        self._forward_execute(message, portal, decision, cursor)

    def _forward_execute(self, message: Execute, portal: Portal, decision: Decision, cursor: Portal | None) -> None:
        """An Execute of an allowed statement's portal (``cursor``: the cursor a FETCH in it reads): its record
        queued with the bound parameters, the book told, the portal described for masking if nobody asked."""
        rows_decision: Decision | None = None
        params = {"params": portal.params.for_audit()}
        executing = decision  # its memos (the record's details, result shapes) serve every Execute of the statement
        if cursor is not None or "params" in decision.submitted:
            executing = dataclasses.replace(decision, submitted={**decision.submitted, **params}, wire_memo={})
            params = {}
        if cursor is not None:
            rows_decision = cursor.statement.decision
            executing = _fetching(executing, cursor)
        gate, statement_id = self._start_audit(executing, portal.statement.sql, params)
        op = self.book.sql(portal.statement.sql, decision, simple_query=False, statement_id=statement_id)
        if portal.row_description is None and not portal.describing:
            # Masking needs the column origins and formats of this portal: ask for them, for ourselves.
            self._forward(
                Describe("P", message.portal),
                Expected("describe_portal", portal=portal, swallow=True, rows_decision=rows_decision),
            )
        self._forward(
            message,
            Expected(
                "execute",
                portal=portal,
                decision=executing,
                gate=gate,
                sql=portal.statement.sql,
                statement_id=statement_id,
                op=op,
                rows_decision=rows_decision,
            ),
        )

    async def _execute_cursor(self, message: Execute, portal: Portal) -> None:
        """The protocol's Execute on a cursor opened by DECLARE fetches from it: its rows, notices and errors are
        governed by the DECLARE's decision, and its record names that statement and the cursor."""
        decision = _fetching(portal.statement.decision, portal)
        gate, statement_id = self._start_audit(decision, portal.statement.sql)
        if portal.row_description is None and not portal.describing:
            self._forward(Describe("P", message.portal), Expected("describe_portal", portal=portal, swallow=True))
        self._forward(
            message,
            Expected(
                "execute",
                portal=portal,
                decision=decision,
                gate=gate,
                sql=portal.statement.sql,
                statement_id=statement_id,
                rows_decision=portal.statement.decision,
            ),
        )

    def _close(self, message: Close) -> None:
        if message.kind == "S":
            self.book.close_statement(message.name)
        else:
            self.book.close_portal(message.name)
        self._forward(message, Expected("close"))

    # --------------------------------------------------------------------------------------- waiting mode

    async def _wait_for_ticket(self, ticket_id: int, url: str) -> bridge.TicketState:
        """``-c gateway.approval=wait``: hold the statement open, with a NOTICE every ~10 s, until it is decided.
        A cancel request cancels the ticket; the returned state then says so."""
        assert self.principal is not None and self.upstream is not None
        self.upstream.flush()
        self.waiting_ticket = ticket_id
        self.cancelled_wait.clear()
        self._reply(notice_response("NOTICE", "00000", f"approval required: ticket {ticket_id}; waiting ({url})"))
        last_notice = time.monotonic()
        try:
            while True:
                state = await self._control_plane(bridge.ticket_state, ticket_id)
                if state.final:
                    return state
                if self.ending:
                    raise SessionClosed()  # terminated (revoked, shut down): the ticket is left to its reviewers
                if self.cancelled_wait.is_set():
                    await self._control_plane(bridge.cancel_waiting_ticket, ticket_id, self.principal, self.context)
                    return await self._control_plane(bridge.ticket_state, ticket_id)
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

    # -------------------------------------------------------------------------------------------- fast path

    def try_fast_path(self, data: bytes) -> bool:
        """Take what the client sent straight from the socket callback and relay the answer from the upstream's
        socket callback, waking no coroutine: the common case of one statement at a time, where task hand-overs
        cost more than the work. A lone simple Query (``_fast_query``) or one extended-protocol batch
        (``_fast_batch``), only when nothing else is buffered or in flight, for a statement whose ALLOWED
        decision is cached; anything else returns False and takes the client loop, unchanged."""
        upstream = self.upstream
        if not (
            self.serving
            and self.client_parked
            and self.fast is None
            and self.relay_idle
            and upstream is not None
            and not upstream.pending
            and self.connection.state is State.READY
            and _quiet(upstream.reader)
            and not self.parser.buffered
            and self.queue.empty()
            and 5 < len(data) <= FAST_QUERY_MAX_BYTES
        ):
            return False
        if data[0] == _QUERY:
            return int.from_bytes(data[1:5], "big") + 1 == len(data) and self._fast_query(data, upstream)
        if data[0] in _BATCH_STARTS:
            return self._fast_batch(data, upstream)
        return False

    def _fast_query(self, data: bytes, upstream: Upstream) -> bool:
        try:
            sql = Query.decode_body(data[5:]).sql
        except ProtocolError:
            return False  # the client loop reports it
        if not sql.strip():
            return False
        decision, _ = self._cached(sql)
        if decision is None or decision.verdict != "allowed" or decision.run_sql is not None:
            return False  # the fast path relays the client's own frame
        effects = effects_of_cached_decision(decision, sql)
        if effects != _NO_EFFECTS:
            return False  # cursors, transaction ends, several statements: the client loop keeps the book
        # The statement leaves first and its audit record is built while it runs: nothing it returns can be
        # read before this callback ends, and the rows then wait for the record's fsync (the gate).
        upstream.writer.write(data)  # the client's own frame
        upstream.protocol.divert = self._fast_received
        self.connection.receive(_FAST_QUERY)
        gate, statement_id = self._start_audit(decision, sql)
        op = self.book.sql(sql, decision, simple_query=True, statement_id=statement_id, effects=effects)
        self.book.sync()
        item = Expected("query", decision=decision, gate=gate, sql=sql, statement_id=statement_id, op=op)
        self.fast = FastQuery(RelayState(item), asyncio.get_running_loop().create_future())
        self.stats.fast_queries += 1
        return True

    def _fast_batch(self, data: bytes, upstream: Upstream) -> bool:
        """One extended-protocol batch, ``[Parse] Bind [Describe portal] Execute Sync`` on the unnamed portal, as
        ORMs, drivers and JDBC send each statement: judged, booked and forwarded by the same steps as the client
        loop's (``_forward_parse`` ...), only when every step is known in advance to need no wait: the Parse's
        decision is cached and ALLOWED, or the prepared statement's decision is ALLOWED and current. Nothing is
        changed before that is known; otherwise False, and the client loop takes the batch as usual."""
        frames: dict[int, bytes] = {}
        batch = _batch_messages(data, frames)
        if batch is None:
            return False
        parse, bind, describe, execute = batch
        if parse is not None:
            if parse.statement == REFUSAL_STATEMENT or bind.statement != parse.statement:
                return False
            if parse.statement != UNNAMED and self.book.statement(parse.statement) is not None:
                return False  # PostgreSQL refuses the name (42P05): the client loop books that
            decision, _ = self._cached(parse.query)
            sql = parse.query
        else:
            statement = self.book.statement(bind.statement)
            if statement is None:
                return False
            decision, sql = statement.decision, statement.sql
            if decision is EMPTY_STATEMENT or self._outdated(decision):
                return False
        if (
            decision is None
            or decision.verdict != "allowed"
            or effects_of_cached_decision(decision, sql) != _NO_EFFECTS
        ):
            return False
        formats = len(bind.param_formats)
        if formats > 1 and formats != len(bind.params):
            return False  # malformed: the client loop has PostgreSQL's answer for it
        expected: list[Expected] = []
        self.fast_batch, self.fast_frames = expected, frames
        try:
            if parse is not None:
                self.connection.receive(parse)
                self._forward_parse(parse, decision)
                statement = self.book.statement(parse.statement)
            assert statement is not None
            self.connection.receive(bind)
            portal = self._forward_bind(bind, statement)
            if describe is not None:
                self.connection.receive(describe)
                self._forward_describe_portal(describe, portal)
            self.connection.receive(execute)
            self._forward_execute(execute, portal, decision, None)
            self.connection.receive(_SYNC)
            self._forward_sync()
        finally:
            self.fast_batch, self.fast_frames = None, None
        upstream.flush()
        upstream.protocol.divert = self._fast_received
        first = expected[0]
        self.fast = FastQuery(RelayState(first), asyncio.get_running_loop().create_future(), deque(expected[1:]))
        self.stats.fast_batches += 1
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
                    if not self._fast_next(fast):
                        self._fast_finish()
                        return
                    relay = fast.relay
                elif step is Step.FLUSHED and self._client_backlogged():
                    fast.paused = True  # the client reads slowly: stop reading the upstream until it catches up
                    upstream.pause_reading()
                    return
        except ProtocolError as error:
            self._fast_abort(protocol_error_response(error), error)
            return
        except UpstreamError as error:
            self._fast_abort(error_response("FATAL", "08006", f"the target database ended the session: {error}"), error)
            return
        self._flush_client()
        if self._client_backlogged():
            fast.paused = True
            upstream.pause_reading()

    def _fast_next(self, fast: FastQuery) -> bool:
        """Move a batch's relay to its next expected answer (False: the batch is answered). After an error the
        upstream skips everything until Sync: those messages get no answer (``_skipped``)."""
        while fast.rest:
            item = fast.rest.popleft()
            if self.upstream_failed_batch and item.kind not in ("sync", "query"):
                self._skipped(item)
                continue
            fast.relay = RelayState(item)
            return True
        return False

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
            if self.connection.state is not State.CLOSED:
                self.connection.state = State.CLOSED
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
        """The only writer to the client after sign-in. A failure here ends the session with the error the
        client would get from PostgreSQL (never silence): the upstream lost (08006, or the FATAL it sent), a
        message the protocol does not allow (08P01), an audit record that cannot be written (58000)."""
        try:
            await self._relay_items()
        except SessionClosed:
            self.terminate("58000", "the audit record could not be written; the result is withheld")
        except UpstreamError as error:
            self.terminate("08006", f"the connection to the target database was lost: {error}")
        except ProtocolError as error:
            log.warning("wire session %s: %s", self.context.session_id, error)
            self.terminate(error.sqlstate, str(error))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("wire session %s relay failed", self.context.session_id)
            self.terminate("XX000", "internal error in the gateway; the session is closed")

    async def _relay_items(self) -> None:
        while True:
            self.relay_idle = self.queue.empty()
            item = await self.queue.get()
            self.relay_idle = False
            if item is None:
                self._flush_client()
                return
            if isinstance(item, Outgoing):
                if not (item.in_batch and self.upstream_failed_batch):
                    messages = list(item.messages)
                    if item.ready_for_query:
                        messages.append(ReadyForQuery(self.transaction.status))
                    for message in messages:
                        self._send_own(message)
            elif self.upstream_failed_batch and item.kind not in ("sync", "query"):
                self._skipped(item)
            else:
                await self._relay_responses(item)
            if item.done is not None and not item.done.done():
                item.done.set_result(None)
            if self.queue.empty():
                self._flush_client()
                await self.writer.drain()

    def _skipped(self, item: Expected) -> None:
        """The upstream skips everything until Sync after an error: ``item`` gets no response."""
        if item.op is not None:
            self.book.skipped(item.op)
        if item.statement_id:  # a statement that never ran: it ends with the batch's error
            self._outcome(item, self.batch_error or BATCH_FAILED)

    def _send_own(self, message: BackendMessage) -> None:
        """A message the gateway writes itself, through the state table like every relayed one."""
        self.connection.send(message)
        self.out.append(message.encode())

    def _flush_client(self) -> None:
        """Everything relayed so far leaves in one write: one syscall per round trip, not per message. Then the
        results that write completed are recorded: their records are deferred (nobody waits for them), so
        building them after the write keeps that work off the client's round trip."""
        if self.out:
            self.writer.write(b"".join(self.out))
            self.out.clear()
            self.out_size = 0
        if self.results_sent:
            self._record_results()

    def _record_results(self) -> None:
        results, self.results_sent = self.results_sent, []
        for item, outcome, sent in results:
            self._finish_audit(item, outcome, sent)

    def _outcome(self, item: Expected, outcome: ResultMeter | StatementError, sent: ResultMeter | None = None) -> None:
        """The statement's outcome, recorded once its last bytes leave. Only the first counts: a statement that
        failed after some of its results (``SELECT 1; SELECT 1/0``) has failed, and has one outcome record.
        ``sent``: for a failure, what had gone out before it (its rows still disclosed their patients)."""
        if self.unsettled.pop(item.statement_id, None) is not None:
            self.results_sent.append((item, outcome, sent))

    def _settle_abandoned(self) -> None:
        """The session ended with statements in flight (the client or the upstream went away, a fault): each
        still gets its outcome record, so that no statement is left with a submitted record alone."""
        abandoned, self.unsettled = self.unsettled, {}
        for statement_id, decision in abandoned.items():
            with contextlib.suppress(Exception):  # the sink may be what failed; then nothing more can be written
                self.audit.submit_line(self._lines_for(decision).failed(statement_id, SESSION_ENDED), urgent=False)

    async def _relay_responses(self, item: Expected) -> None:
        """Relay the upstream's responses to one forwarded message (see ``_relay_frame``)."""
        assert self.upstream is not None
        upstream = self.upstream
        next_frame, buffered = upstream.next_frame, upstream.parser.next_frame
        relay = RelayState(item)
        while True:
            framed = buffered()  # rows already read need no await: one per socket read, not one per row
            code, frame = framed if framed is not None else await next_frame(before_wait=self._flush_client)
            step = self._relay_frame(relay, code, frame)
            if step is Step.NEEDS_GATE:
                await self._await_gate(item)
                relay.released = True
                step = self._relay_frame(relay, code, frame)
            if step is Step.DONE:
                return
            if step is Step.FLUSHED and self._client_backlogged():
                await self.writer.drain()

    def _relay_buffered_rows(self, relay: RelayState, meter: ResultMeter) -> None:
        """The DataRows already read after the one ``_relay_frame`` just relayed, relayed in one go (issue 13):
        the same masking, count, digest and state table as one by one, without a trip through the callers' loop,
        ``_relay_frame`` and a copy per row. Stops at the first frame of another type, at the end of what has
        arrived, or at about FLUSH_BYTES (the caller then flushes and checks the client's backpressure)."""
        upstream = self.upstream
        if upstream is None:
            return
        take_run = upstream.parser.take_run
        masker = row_masker(relay.plan, relay.fields) if relay.masked and relay.plan is not None else None
        while self.out_size < FLUSH_BYTES:
            run, ends = take_run(_DATA_ROW, FLUSH_BYTES - self.out_size)
            if not ends:
                return
            if meter.patients is not None:
                meter.patients.add_run(run, ends)  # the keys as the upstream sent them (before masking)
            if masker is not None:
                run = masker.mask_run(run, ends)  # a malformed row raises: the session ends, none of the run sent
            self.connection.send_frames(_DATA_ROW, len(ends))
            meter.rows += len(ends)
            meter.digest.update(run)  # the digest of the rows' bytes in order, as with one update a row
            self.out.append(run)
            self.out_size += len(run)

    def _relay_frame(self, relay: RelayState, code: int, frame: bytes) -> Step:
        """One upstream frame of the responses to ``relay.item``: sans-IO, so the relay task and the fast path
        (``FastQuery``) share it.

        Frames go to the client byte for byte unless they must change (a masked row, a rewritten description,
        a scrubbed error or notice) or be dropped; only those, and the few that carry state, are decoded. Every
        frame the client sees passes the state table (``self.connection``); answers that confirm a name update
        the book (``self.book``). Returns NEEDS_GATE, without consuming the frame, when it would release a
        result before its audit record is durable: the caller waits for the record and offers it again.
        """
        item, out = relay.item, self.out
        show = not item.swallow
        if code == _DATA_ROW:
            if not relay.released:
                return Step.NEEDS_GATE
            meter = relay.meter
            if meter is None:
                if relay.plan is None and item.portal is not None:
                    relay.plan, relay.fields = self._portal_plan(item.portal, item.statement_decision)
                    relay.masked = relay.plan is not None and not relay.plan.is_identity
                plan, fields = relay.plan, relay.fields
                meter = relay.meter = ResultMeter(
                    masking=plan.describe([f.name for f in fields]) if plan else {},
                    columns=[f.name for f in fields],
                    patients=PatientReads.of(plan, fields),
                )
            if meter.patients is not None:
                meter.patients.add_frame(frame)
            if relay.masked:
                assert relay.plan is not None
                frame = mask_frame(frame, relay.plan, relay.fields)
                if len(meter.preview) < PREVIEW_ROWS:
                    meter.keep_preview(DataRow.decode_body(frame[5:]), relay.fields)
            elif len(meter.preview) < PREVIEW_ROWS:
                meter.keep_preview(DataRow.decode_body(frame[5:]), relay.fields)
            meter.rows += 1
            meter.digest.update(frame)
            self.connection.send_frame(code)
            out.append(frame)
            self.out_size += len(frame)
            if len(meter.preview) >= PREVIEW_ROWS:
                self._relay_buffered_rows(relay, meter)
            if self.out_size >= FLUSH_BYTES:
                self._flush_client()
                return Step.FLUSHED
            return Step.MORE
        if code == _ROW_DESCRIPTION:
            shape = self._describe_result(frame, item)
            relay.plan, relay.fields = shape.plan, shape.fields
            relay.masked = shape.plan is not None and not shape.plan.is_identity
            if item.kind == "query":
                if relay.meter is None:
                    relay.meter = ResultMeter(
                        masking=shape.masking,
                        columns=shape.columns,
                        masking_json=shape.masking_json,
                        patients=PatientReads.of(shape.plan, shape.fields),
                    )
                else:
                    relay.meter.next_result(shape.masking, shape)
            if show:
                self.connection.send_frame(code)
                out.append(shape.description)
            return Step.DONE if item.kind in ("describe_statement", "describe_portal") else Step.MORE
        if code in _RESULT_ENDS:
            if not relay.released:
                return Step.NEEDS_GATE
            if code == _COMMAND_COMPLETE:
                complete = CommandComplete.decode_body(frame[5:])
                self.transaction.observe(complete)
                if item.op is not None:
                    self.book.statement_completed(item.op, complete.tag)
            elif code == _EMPTY_QUERY and item.op is not None:
                self.book.statement_completed(item.op)
            if show:
                self.connection.send_frame(code)
                out.append(frame)
            if item.decision is not None and item.gate is not None:
                meter = relay.meter or ResultMeter()
                meter.finished = time.monotonic()
                if item.kind == "query":
                    relay.meter = meter  # a Query may hold several statements: its outcome waits for ReadyForQuery
                else:
                    self._outcome(item, meter)
                    relay.meter = None
            return Step.DONE if item.kind == "execute" else Step.MORE
        if code == _READY_FOR_QUERY:
            ready = ReadyForQuery.decode_body(frame[5:])
            self.transaction.observe(ready)
            self.book.ready_for_query(ready.status)
            self.upstream_failed_batch = False
            self.batch_error = None
            if show:
                self.connection.send_frame(code)
                out.append(frame)
            if item.kind == "query" and item.statement_id:
                self._outcome(item, relay.meter or ResultMeter(finished=time.monotonic()))
            return Step.DONE
        if code in _ACKNOWLEDGEMENTS:
            if item.kind == "refusal":
                raise ProtocolError("08P01", "the target database accepted a statement name that cannot exist")
            if show:
                self.connection.send_frame(code)
                out.append(frame)
            if item.op is not None and code in _CONFIRMATIONS:
                self.book.confirmed(item.op)
            if code == _NO_DATA and item.kind == "describe_portal" and item.portal is not None:
                item.portal.row_description = RowDescription(())
            if item.kind in ("parse", "bind", "close") or (
                code == _NO_DATA and item.kind in ("describe_statement", "describe_portal")
            ):
                return Step.DONE
            return Step.MORE
        if code == _ERROR_RESPONSE and not relay.released:
            return Step.NEEDS_GATE  # a statement's error leaves after its record, like its rows
        message = decode_backend_body(code, frame[5:])
        self.transaction.observe(message)
        if isinstance(message, NoticeResponse | ParameterStatus | NotificationResponse):
            if isinstance(message, NoticeResponse):
                self._write(self._scrub(message, item), item)
            elif isinstance(message, ParameterStatus) and message.name == "application_name":
                self._write(ParameterStatus(message.name, self._client_application_name(message.value)), item)
            elif not (isinstance(message, ParameterStatus) and message.name not in FORWARDED_PARAMETERS):
                self._write(message, item)
            return Step.MORE
        if isinstance(message, ErrorResponse):
            if item.op is not None:
                self.book.failed(item.op)
            else:
                self.book.error()
            error = self._statement_error(item.replacement if item.kind == "refusal" else message, item)
            self.batch_error = error
            if item.statement_id:
                self._outcome(item, error, relay.meter)  # PostgreSQL's error, mid-statement or at once: it failed
            if message.is_fatal:
                self._write(self._scrub(message, item), item, always=True)
                raise UpstreamError(message.fields.get("M", "the target database ended the session"))
            if item.kind == "refusal":
                assert item.replacement is not None
                self._send_own(item.replacement)  # the gateway's refusal, in place of the upstream's error
            else:
                # The gateway's own Describe of a portal before its Execute: its error (25P02 in a failed block)
                # is the one the client's Execute would have had, and the upstream now skips that Execute.
                on_behalf = item.swallow and item.kind == "describe_portal"
                self._write(self._scrub(message, item), item, always=on_behalf)
            if item.kind in ("sync", "query"):
                return Step.MORE
            self.upstream_failed_batch = True
            return Step.DONE
        raise ProtocolError("08P01", f"unexpected {type(message).__name__} from the target database")

    @property
    def _agent_name(self) -> str:
        agent = self.principal.agent if self.principal is not None else None
        return agent.name if agent is not None else ""

    def _client_application_name(self, upstream_value: str) -> str:
        """The application name as the client set it: the upstream's, without the agent's name in front."""
        prefix = session_settings.upstream_application_name(self._agent_name, "")
        if upstream_value == prefix:
            return ""
        return upstream_value.removeprefix(prefix + "/")

    def _write(self, message: BackendMessage, item: Expected, *, always: bool = False) -> None:
        if always or not item.swallow:
            self.connection.send(message)
            self.out.append(message.encode())

    async def _await_gate(self, item: Expected) -> None:
        assert item.gate is not None
        if not item.gate.done():
            self._flush_client()  # what is already allowed out need not wait for this statement's record
        try:
            await item.gate
        except Exception:
            # No audit record, no result: end the session rather than release anything (``_relay`` says why).
            log.exception("audit write failed in wire session %s; closing it", self.context.session_id)
            self.terminate("58000", "the audit record could not be written; the result is withheld")
            raise SessionClosed() from None

    def _describe_result(self, frame: bytes, item: Expected) -> ResultShape:
        shape = result_shape(frame, item.statement_decision, self._identity_kind)
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

    def _portal_plan(
        self, portal: Portal, decision: Decision | None
    ) -> tuple[MaskingPlan | None, tuple[FieldDescription, ...]]:
        description = portal.row_description or portal.statement.row_description
        if description is None:
            return None, ()
        shape = result_shape(description.encode(), decision, self._identity_kind)
        return shape.plan, description.fields

    def _scrub(self, message: ErrorResponse | NoticeResponse, item: Expected) -> ErrorResponse | NoticeResponse:
        """An error or notice keeps its text only when the statement behind it touches no PHI: a value in a
        message ("invalid input syntax for type integer: ...") is a result value that no mask covered."""
        if not self._touches_phi(item):
            return message
        fields = message.fields
        sqlstate = fields.get("C", "XX000")
        scrubbed = {key: value for key, value in fields.items() if key in {"S", "V", "C", "P", "s", "t", "c", "d", "n"}}
        scrubbed["M"] = scrub_error(sqlstate, fields.get("M", ""), touches_phi=True)
        return type(message)(scrubbed)

    def _statement_error(self, message: BackendMessage | None, item: Expected) -> StatementError:
        """An error as a statement's failure record holds it: its SQLSTATE and the message as the client was
        shown it (``_scrub``: the text only when the statement touches no PHI)."""
        if not isinstance(message, ErrorResponse):
            return BATCH_FAILED
        fields = message.fields
        if item.kind == "refusal":  # the gateway's own words
            return StatementError.scrubbed(fields.get("C"), fields.get("M"), touches_phi=False)
        return StatementError.scrubbed(fields.get("C"), fields.get("M"), touches_phi=self._touches_phi(item))

    def _touches_phi(self, item: Expected) -> bool:
        """Whether the statement behind these responses may touch PHI (unknown counts as yes)."""
        decision = item.statement_decision
        if decision is None or decision.classification is None or decision.catalog is None:
            return True
        return touches_phi(decision.classification, decision.catalog)

    def _finish_audit(
        self, item: Expected, outcome: ResultMeter | StatementError, sent: ResultMeter | None = None
    ) -> None:
        """The statement's outcome record: what was sent (rows, masks, digest of the bytes) or why it failed;
        a failure after rows went out says whose records those rows were (the accounting of disclosures).
        Queued, not waited for."""
        assert item.decision is not None
        lines = self._lines_for(item.decision)
        if isinstance(outcome, StatementError):
            disclosed = None
            if sent is not None and sent.rows:
                disclosed = result_patients(item.statement_decision, sent.patients, sent.rows, self.datasource)
            self.audit.submit_line(lines.failed(item.statement_id, outcome, patient_details(disclosed)), urgent=False)
            return
        meter = outcome
        line = lines.executed(
            item.statement_id,
            rowcount=meter.rows,
            masking_json=meter.masking_json or masking_text(meter.masking),
            result_sha256=meter.digest.hexdigest(),
            duration_ms=round(((meter.finished or time.monotonic()) - meter.started) * 1000, 2),
            preview={"columns": meter.columns, "rows": meter.preview},
            patients=result_patients(item.statement_decision, meter.patients, meter.rows, self.datasource),
        )
        self.audit.submit_line(line, urgent=False)


# ------------------------------------------------------------------------------------------------- helpers


def _quiet(reader: asyncio.StreamReader) -> bool:
    """Nothing arrived from the upstream since its last answer: no FATAL of a backend that was terminated while
    idle, no end of stream. The fast path reads only what arrives after it sends; anything already here is the
    client loop's to relay (asyncio's StreamReader has no public view of its buffer)."""
    return not getattr(reader, "_buffer", b"") and not reader.at_eof()


def _peer_address(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None


IN_TRANSACTION_REASON = (
    "sent inside a transaction block on the wire: that transaction was aborted, and once approved this statement "
    "runs on its own, in a transaction of its own"
)
# Outcomes of statements that PostgreSQL never answered: skipped after an earlier error in their batch, or in
# flight when the session ended.
BATCH_FAILED = StatementError("25P02", "25P02: not run: an earlier message of the batch failed")
SESSION_ENDED = StatementError("08006", "08006: the session ended before the statement completed")
REFUSAL_STATEMENT = "phigate: refused"  # a statement name no client may create (see WireSession._refuse)
EMPTY_STATEMENT = Decision(verdict="allowed", reasons=["an empty statement reads nothing"])
NO_DECISION = Decision(verdict="allowed", reasons=["no statement the gateway knows: every column redacted"])
CURSOR_ALONE = error_response(
    "ERROR", "0A000", "DECLARE and FETCH must be sent as statements of their own, not in a multi-statement query"
)
PREPARED_ALONE = error_response(
    "ERROR", "0A000", "PREPARE and EXECUTE must be sent as statements of their own, not in a multi-statement query"
)
PREPARE_NEEDS_PLAIN_READ = error_response(
    "ERROR",
    "0A000",
    "PREPARE is accepted only for a statement that may run without approval; send the statement itself (or "
    "Parse and Bind it) to have it reviewed",
)
EXECUTE_NEEDS_PLAIN_READ = error_response(
    "ERROR",
    "0A000",
    "EXECUTE runs only a prepared statement that may run without approval; send it with Bind and Execute, or "
    "as plain SQL, to have it reviewed",
)
EXECUTE_NEEDS_LITERALS = error_response(
    "ERROR", "0A000", "EXECUTE's arguments must be literals (a value or a cast of one), not expressions"
)


def effects_of_cached_decision(decision: Decision, sql: str) -> tuple[Any, ...] | None:
    """``statement_effects(sql)`` for a statement answered from the decision cache, worked out once per decision.

    Why: parsing the text into Python objects costs about 100 µs, most of a cached read's time in the gateway.
    The cache holds only plain SELECTs (``CACHEABLE_TYPES``), and every text it maps to one decision has the
    same normalized form: the same statements and names, differing in constants only. A statement's effect on
    the session's names depends on constants only for ``SET application_name``, which is never a SELECT, so one
    answer serves every text of the decision. Anything else is parsed each time."""
    classification = decision.classification
    if classification is None or not set(classification.statement_types) <= CACHEABLE_TYPES:
        return statement_effects(sql)
    memo = decision.wire_memo.get("effects")
    if memo is None:
        memo = decision.wire_memo["effects"] = statement_effects(sql)
    return memo


def _batch_messages(
    data: bytes, frames: dict[int, bytes]
) -> tuple[Parse | None, Bind, Describe | None, Execute] | None:
    """``data`` as exactly one ``[Parse] Bind [Describe portal] Execute Sync`` batch on the unnamed portal,
    decoded; None for anything else (the client loop reads it, and reports what is malformed). ``frames`` gets
    each message's frame as the client sent it, by the message's id (``WireSession._forward`` sends it as is)."""
    messages: list[Any] = []
    position, end = 0, len(data)
    while position < end:
        if end - position < 5 or len(messages) == 5:
            return None
        kind = _BATCH_MESSAGES.get(data[position])
        length = int.from_bytes(data[position + 1 : position + 5], "big")
        stop = position + 1 + length
        if kind is None or length < 4 or stop > end:
            return None
        try:
            message = kind.decode_body(data[position + 5 : stop])
        except ProtocolError:
            return None
        messages.append(message)
        frames[id(message)] = data[position:stop]
        position = stop
    parse = messages.pop(0) if messages and isinstance(messages[0], Parse) else None
    describe = messages.pop(1) if len(messages) == 4 and isinstance(messages[1], Describe) else None
    if len(messages) != 3:
        return None
    bind, execute, sync = messages
    if not (isinstance(bind, Bind) and isinstance(execute, Execute) and isinstance(sync, Sync)):
        return None
    if bind.portal != UNNAMED or execute.portal != UNNAMED:
        return None
    if describe is not None and (describe.kind != "P" or describe.name != UNNAMED):
        return None
    return parse, bind, describe, execute


def _no_statement(name: str) -> ErrorResponse:
    if name == UNNAMED:  # PostgreSQL's own wording
        return error_response("ERROR", "26000", "unnamed prepared statement does not exist")
    return error_response("ERROR", "26000", f'prepared statement "{name}" does not exist')


def _no_portal(name: str) -> ErrorResponse:
    return error_response("ERROR", "34000", f'portal "{name}" does not exist')


def _no_cursor(name: str) -> ErrorResponse:
    return error_response("ERROR", "34000", f'cursor "{name}" does not exist')


def _fetching(decision: Decision, cursor: Portal) -> Decision:
    """The decision to record for a fetch from ``cursor``: it names the cursor and the record of its DECLARE."""
    details = {**decision.submitted, "cursor": cursor.name, "declared_by": cursor.declared_by}
    return dataclasses.replace(decision, submitted=details, wire_memo={})


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
