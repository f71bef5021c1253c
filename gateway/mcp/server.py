"""The MCP server: five tools over the plain functions of ``gateway.mcp.tools``, for both transports.

Async only here, at the edge. Each call runs its business code in a worker thread (ORM, Redis and the long poll
are blocking), with Django's per-request connection hygiene around it. Who is calling comes from a resolver the
transport supplies: the HTTP front reads the principal it authenticated from the request's ASGI scope; stdio
re-checks its token on every call, so a revoked agent stops at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from django.db import close_old_connections
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from gateway.mcp import tools
from gateway.mcp.tools import Caller, ToolRefused
from phigate import faults, outages

# Where a tool call marks, in the HTTP request's ASGI scope, the dependency whose outage failed it.
OUTAGE_KEY = "phigate.outage"

# The transport's request object (a Starlette Request over HTTP, None on stdio) -> the caller. Runs in a worker
# thread, so it may use the ORM; raises ToolRefused when the caller may no longer use MCP.
CallerResolver = Callable[[Any], Caller]

_T = TypeVar("_T")

INSTRUCTIONS = """\
phigate runs your SQL against PostgreSQL databases that hold protected health information (PHI).
- list_tables shows the tables, and which columns hold PHI and how they are masked for you.
- query runs one statement. Safe reads come back at once with PHI masked. Anything risky (writes, DDL, filtering
  on PHI) comes back as status "pending_approval" with a ticket: a human reviewer must approve it. Then call
  wait_for_ticket until the status is executed, rejected, expired, cancelled or failed; an executed ticket
  carries its (masked) result.
- explain shows the plan and the estimated row count of a statement without running it.
Every call is recorded in an audit trail under your owner's name."""

Datasource = Annotated[str, Field(description="data source name, e.g. clinic", min_length=1, max_length=63)]
Sql = Annotated[str, Field(description="one SQL statement", min_length=1, max_length=1_000_000)]
Reason = Annotated[str, Field(description="why you need this; reviewers read it", max_length=2000)]
TicketId = Annotated[int, Field(description="ticket id from a pending_approval answer", ge=1)]


def _in_thread(
    resolve: CallerResolver, request: Any, tool: str, audit: dict[str, Any], work: Callable[[Caller], _T]
) -> _T:
    """Resolve the caller, audit the call, do the work; one unit of database work, like a request."""
    close_old_connections()
    try:
        caller = resolve(request)
        tools.audit_call(caller, tool, **audit)
        return work(caller)
    finally:
        close_old_connections()


# Long polls hold a thread for up to WAIT_TIMEOUT_MAX_SECONDS: they get threads of their own, so waiting agents
# cannot use up the default pool that every other call (and the HTTP front's token check) runs in.
WAIT_THREADS = 100
_LONG_POLLS = frozenset({"wait_for_ticket"})


def build_server(resolve: CallerResolver) -> MCPServer:
    server: MCPServer = MCPServer(name="phigate", instructions=INSTRUCTIONS)
    limiters: dict[str, anyio.CapacityLimiter] = {}  # created on first use, inside the serving event loop

    async def call(ctx: Context, tool: str, audit: dict[str, Any], work: Callable[[Caller], _T]) -> _T:
        request = ctx.request_context.request
        limiter = None
        if tool in _LONG_POLLS:
            if "waits" not in limiters:
                limiters["waits"] = anyio.CapacityLimiter(WAIT_THREADS)
            limiter = limiters["waits"]
        try:
            return await anyio.to_thread.run_sync(
                functools.partial(_in_thread, resolve, request, tool, audit, work), limiter=limiter
            )
        except ToolRefused as exc:
            raise ToolError(str(exc)) from exc
        except Exception as exc:
            # Redis or the control plane unreachable: over HTTP the answer becomes a 503 with Retry-After
            # (gateway.mcp.http reads the mark); on stdio it is a tool error saying so. Anything else is a bug.
            dependency = outages.outage_of(exc)
            if dependency is None:
                raise
            faults.dependency(dependency).down(exc)
            if request is not None:
                request.scope[OUTAGE_KEY] = dependency
            raise ToolError(outages.json_body(dependency)["error"]) from exc

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False))
    async def query(datasource: Datasource, sql: Sql, ctx: Context, reason: Reason = "") -> dict[str, Any]:
        """Run one SQL statement through phigate's policy.

        Returns status "executed" with columns, column_types and rows (PHI masked), "pending_approval" with a
        ticket (a reviewer must approve; then call wait_for_ticket), "denied" with reasons, or "invalid"/"failed"
        with an error. Values are JSON by column type: integers and floats are numbers, booleans true/false, NULL
        null, json parsed, arrays lists; numeric, dates, timestamps and every masked value are strings.
        Give a reason for anything that may need approval: reviewers read it.
        """
        return await call(ctx, "query", {"datasource": datasource}, lambda c: tools.query(c, datasource, sql, reason))

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def ticket_status(ticket_id: TicketId, ctx: Context) -> dict[str, Any]:
        """A ticket you opened: status, reviews, and once executed its (masked) result."""
        return await call(ctx, "ticket_status", {"ticket_id": ticket_id}, lambda c: tools.ticket_status(c, ticket_id))

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def wait_for_ticket(ticket_id: TicketId, ctx: Context, timeout_seconds: float = 30) -> dict[str, Any]:
        """Wait until a ticket you opened changes status (or the timeout passes, at most 60 s), then return it
        like ticket_status. Call again while the status is pending or approved."""
        return await call(
            ctx,
            "wait_for_ticket",
            {"ticket_id": ticket_id},
            lambda c: tools.wait_for_ticket(c, ticket_id, timeout_seconds),
        )

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def list_tables(datasource: Datasource, ctx: Context) -> dict[str, Any]:
        """Tables and columns you can query, with each PHI column's type, the mask you will see, and whether
        filtering on it needs approval."""
        return await call(ctx, "list_tables", {"datasource": datasource}, lambda c: tools.list_tables(c, datasource))

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def explain(datasource: Datasource, sql: Sql, ctx: Context) -> dict[str, Any]:
        """The query plan and estimated row count of one statement, without running it (never EXPLAIN ANALYZE).
        Send the statement itself, not EXPLAIN ...; a write is planned as the rows it would touch."""
        return await call(ctx, "explain", {"datasource": datasource}, lambda c: tools.explain(c, datasource, sql))

    return server
