"""The life of wire sessions as a whole, in one gateway process: how many an agent may hold, when one must end.

* **Seats.** Every accepted connection gets a ``Seat`` (``SessionLifecycle.admit``), bound to the connection's
  task as a context variable so that sign-in (``gateway.wire.sign_in``) finds it without the session having to
  carry it. A signed-in agent *claims* its seat before any upstream connection is made; the claim fails past
  ``GATEWAY_MAX_SESSIONS_PER_AGENT`` open sessions of that agent in this process, and sign-in then answers FATAL
  53300 ``too many connections for role``, as PostgreSQL does for a role's connection limit. The default, 25,
  is above what one well-behaved client opens: SQLAlchemy's default pool tops out at 15 (5 + 10 overflow), and
  the noninterference harness holds three protocol modes on five data sources (15) plus a few fresh sessions.
* **Watcher.** Every ``WATCH_INTERVAL_SECONDS`` one query by primary key asks the control plane which agents with
  open sessions were revoked, expired, deleted or lost their owner (``bridge.ended_agents``); their sessions get
  FATAL 57P01 and close, and each ending is audited. The same pass releases a session waiting for approval
  (``-c gateway.approval=wait``) whose client has gone: its upstream connection closes at once and its wait is
  cancelled, which cancels the ticket (the session's own CancelRequest path): nobody awaits it any more.
* **Shutdown.** ``shutdown`` gives statements in flight a short grace, then ends every session with FATAL
  57P01 ``terminating connection due to administrator command``: a client always learns why it was cut.

The session's own code (gateway.wire.session) is used through a few attributes only (``principal``,
``datasource``, ``context``, ``upstream``, ``waiting_ticket``, ``cancelled_wait``, ``terminate``), read
defensively, so this module keeps working while that one changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gateway import control_plane
from gateway.wire import bridge
from gateway.wire.group import SeatClaims
from identity.principal import Principal
from phigate import envconfig, faults, outages

log = logging.getLogger(__name__)

WATCH_INTERVAL_SECONDS = 0.5
DEFAULT_MAX_SESSIONS_PER_AGENT = 25
SHUTDOWN_MESSAGE = "terminating connection due to administrator command"
ADMIN_SHUTDOWN = "57P01"
TOO_MANY_CONNECTIONS = "53300"


def max_sessions_per_agent() -> int:
    return envconfig.get_int("GATEWAY_MAX_SESSIONS_PER_AGENT", DEFAULT_MAX_SESSIONS_PER_AGENT, minimum=1)


@dataclass(eq=False)
class Seat:
    """One accepted connection, from accept to close."""

    session: Any
    agent_id: int | None = None
    agent_name: str = ""
    principal: Principal | None = None
    datasource: str = ""
    ended: str = ""  # why the gateway ended it, once it has
    opened: float = field(default_factory=time.monotonic)
    lifecycle: SessionLifecycle | None = None
    task: asyncio.Task[Any] | None = None  # the connection's task

    token: str = field(default_factory=lambda: secrets.token_hex(8))  # names the seat in the group's registry

    async def claim(self, principal: Principal, datasource: str) -> bool:
        """Count this session against its agent's limit (sign-in, before the upstream connection)."""
        return self.lifecycle is None or await self.lifecycle.claim(self, principal, datasource)


_CURRENT: contextvars.ContextVar[Seat | None] = contextvars.ContextVar("phigate_wire_seat", default=None)


def current_seat() -> Seat | None:
    """The seat of the connection the calling task serves (None outside a WireServer)."""
    return _CURRENT.get()


class SessionLifecycle:
    def __init__(
        self,
        max_per_agent: int | None = None,
        interval: float = WATCH_INTERVAL_SECONDS,
        group_claims: SeatClaims | None = None,
    ) -> None:
        self.max_per_agent = max_per_agent if max_per_agent is not None else max_sessions_per_agent()
        # With several gateway processes: the limit counts the group's seats (gateway.wire.group), not ours alone.
        self.group_claims = group_claims
        self.interval = interval
        self.seats: set[Seat] = set()
        self.by_agent: dict[int, set[Seat]] = defaultdict(set)
        self.watcher: asyncio.Task[None] | None = None

    # --------------------------------------------------------------------------------------------- seats

    def admit(self, session: Any) -> Seat:
        """Called in the connection's task before the session runs."""
        seat = Seat(session, lifecycle=self, task=asyncio.current_task())
        self.seats.add(seat)
        _CURRENT.set(seat)
        return seat

    async def claim(self, seat: Seat, principal: Principal, datasource: str) -> bool:
        """Count the seat against its agent's limit, in this process and, in a group, across it; False (and
        nothing counted) past the limit."""
        agent = principal.agent
        seat.principal, seat.datasource = principal, datasource
        if agent is None:
            return True
        held = self.by_agent[agent.pk]
        if seat not in held and len(held) >= self.max_per_agent:
            if not held:
                del self.by_agent[agent.pk]
            return False
        if self.group_claims is not None and not await self.group_claims.claim(
            seat.token, agent.pk, self.max_per_agent
        ):
            if not held:
                del self.by_agent[agent.pk]
            return False
        seat.agent_id, seat.agent_name = agent.pk, agent.name
        held.add(seat)
        return True

    def open_sessions(self, agent_id: int) -> int:
        return len(self.by_agent.get(agent_id, ()))

    def release(self, seat: Seat) -> None:
        self.seats.discard(seat)
        if seat.agent_id is not None and self.group_claims is not None:
            self.group_claims.release(seat.token)
        if seat.agent_id is not None:
            held = self.by_agent.get(seat.agent_id)
            if held is not None:
                held.discard(seat)
                if not held:
                    del self.by_agent[seat.agent_id]

    # ------------------------------------------------------------------------------------------- watcher

    def start(self) -> None:
        if self.watcher is None:
            self.watcher = asyncio.create_task(self._watch(), name="wire-session-watcher")

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
            await asyncio.gather(self.watcher, return_exceptions=True)
            self.watcher = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception as exc:  # a control-plane hiccup must not stop the watch; the next pass retries
                # A control plane that does not answer within its bound (gateway.control_plane.call) is down too.
                if isinstance(exc, TimeoutError) or outages.outage_of(exc) == faults.CONTROL_PLANE:
                    faults.dependency(faults.CONTROL_PLANE).down(exc)  # one line per outage, not one per pass
                else:
                    log.warning("wire session watcher: check failed", exc_info=True)

    async def check(self) -> None:
        """One pass: end the sessions of agents that may no longer sign in, release abandoned waits."""
        for seat in list(self.seats):
            if not seat.ended and _waits_for_a_gone_client(seat.session):
                _release_abandoned_wait(seat)
        agents = [agent_id for agent_id, held in self.by_agent.items() if held]
        if not agents:
            return
        ended = await control_plane.call(bridge.ended_agents, agents)
        for agent_id, reason in ended.items():
            for seat in list(self.by_agent.get(agent_id, ())):
                if seat.ended:
                    continue
                seat.ended = reason
                message = f'terminating connection: agent "{seat.agent_name}" {reason}'
                _end(seat, ADMIN_SHUTDOWN, message)
                log.info("wire session %s ended: agent %s %s", _session_id(seat.session), seat.agent_name, reason)
                try:
                    await control_plane.call(
                        bridge.record_session_ended, seat.principal, seat.datasource, seat.session.context, reason
                    )
                except Exception:
                    log.exception("could not audit the end of wire session %s", _session_id(seat.session))

    # ------------------------------------------------------------------------------------------ shutdown

    async def shutdown(self, grace_seconds: float) -> None:
        """Let statements in flight finish for up to ``grace_seconds``, then end every session with 57P01."""
        await self.stop()
        deadline = time.monotonic() + grace_seconds
        while any(_busy(seat.session) for seat in self.seats) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for seat in list(self.seats):
            if not seat.ended:
                seat.ended = "the gateway is shutting down"
                _end(seat, ADMIN_SHUTDOWN, SHUTDOWN_MESSAGE)


# ------------------------------------------------------------------------------------------ session access


def _session_id(session: Any) -> str:
    context = getattr(session, "context", None)
    return str(getattr(context, "session_id", ""))


def _end(seat: Seat, sqlstate: str, message: str) -> None:
    """Terminate the session (a wait for approval in it stops too, its ticket left to its reviewers)."""
    seat.session.terminate(sqlstate, message)


def _busy(session: Any) -> bool:
    return bool(session.busy)


def _waits_for_a_gone_client(session: Any) -> bool:
    return session.waiting_ticket is not None and bool(session.client_gone())


def _release_abandoned_wait(seat: Seat) -> None:
    """The client of a session waiting for approval has gone: free its upstream connection now and end the wait
    (``WireSession.release_abandoned_wait``)."""
    session = seat.session
    seat.ended = "its client disconnected while waiting for approval"
    log.info("wire session %s: client gone while waiting for ticket %s", _session_id(session), session.waiting_ticket)
    session.release_abandoned_wait()
