"""How the web process asks the gateway to run a statement: a signed request over a Redis list.

The web process holds no target credential, so API statements are handed to the gateway, which runs the policy
pipeline. Requests are signed with the deployment's secret key (a writer to Redis alone cannot forge one).

Besides statements, the queue carries a few named operations that need the target's catalog but run no user
statement (``OPERATIONS``: EXPLAIN, the table listing). Their reply is ``{"result": ...}`` or ``{"refused": why}``.

**One deadline, end to end** (issue 15). The caller writes its deadline into the request and waits for the reply
until then, in one-second slices (never one long blocking read that a socket timeout cuts short: redis-py's
default of 5 s used to turn every read longer than that into an HTML 500). While it waits it keeps a presence key
alive (``phigate:gateway:caller:<id>``, refreshed every slice, expiring ``PRESENCE_TTL_SECONDS`` after the last);
when it stops waiting for any other reason than a reply, it marks the key ``gone``. The gateway:

* drops a request whose deadline has passed, whose caller is gone, or that it has already taken (a retried push);
* bounds the read's statement timeout by the time left (``gateway.caller``);
* cancels the statement when the caller is gone while it runs (the key says ``gone``, or has been missing for
  ``CALLER_MISSING_GRACE_SECONDS``: a web process that died stops refreshing it), and sends no reply.

So no request is executed for a caller who stopped waiting, and no API read is cut short by a socket timeout.

**Redis going away.** The gateway's consumer never lets a Redis error out of its loop: it reconnects with
jittered exponential back-off (``BACKOFF_BASE_SECONDS`` to ``BACKOFF_CAP_SECONDS``), logs one structured line when
Redis goes down and one when it is back (``phigate.faults``), and keeps a reply it could not send until its
caller's deadline. Wire sessions do not use Redis at all and keep serving. The web side lets a Redis error reach
the API's exception handler (a JSON 503 naming Redis, ``phigate.outages``); once a request is queued, it keeps
waiting through a Redis restart until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import close_old_connections
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from audit.recorder import Context
from gateway import caller, control_plane
from gateway.explain import ExplainRefused, explain_statement
from gateway.mcp.tables import TablesRefused, list_tables
from gateway.pipeline import DatasourceRuntime, StatementOutcome, handle_statement
from gateway.ticket_lookups import LookupRefused, compute_lookups
from identity.models import Agent
from identity.principal import Principal
from phigate import faults, outages
from phigate.health import GATEWAY_ALIVE_KEY

log = logging.getLogger(__name__)

REQUEST_QUEUE = "phigate:gateway:requests"
REPLY_PREFIX = "phigate:gateway:reply:"
CALLER_PREFIX = "phigate:gateway:caller:"
CLAIM_PREFIX = "phigate:gateway:claimed:"
_SALT = "phigate.gateway.rpc"

WAITING, GONE = b"waiting", b"gone"
UNAVAILABLE = "unavailable"  # a reply that is only {"unavailable": <dependency>}: the gateway's own outage
WAIT_SLICE_SECONDS = 1  # each blocking read of the reply; far below any socket timeout
PRESENCE_TTL_SECONDS = 5
REPLY_GRACE_SECONDS = 0.5  # the caller waits this much past its deadline for a reply already on its way
REPLY_TTL_SECONDS = 60
CALLER_CHECK_SECONDS = 0.5
CALLER_MISSING_GRACE_SECONDS = 3.0  # covers a Redis restart, after which the caller sets its key again
SOCKET_TIMEOUT_SECONDS = 5.0  # the consumer's blocking pop waits 1 s; a Redis that hangs is noticed after this
CONNECT_TIMEOUT_SECONDS = 2.0
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0
ALIVE_TTL_SECONDS = 5
ALIVE_REFRESH_SECONDS = 2.0


class GatewayUnavailable(Exception):
    """No gateway answered in time (503)."""


def _reply_key(request_id: str) -> str:
    return REPLY_PREFIX + request_id


def _caller_key(request_id: str) -> str:
    return CALLER_PREFIX + request_id


# ------------------------------------------------------------------------------------------------ web side


def _send(client: redis.Redis, payload: dict[str, Any], timeout_seconds: float) -> dict[str, Any]:
    """Queue one signed request and wait for its reply (a JSON object) until the request's deadline.

    A Redis error before the request is queued propagates (the API answers 503, ``phigate.outages``)."""
    request_id = payload["id"]
    presence = _caller_key(request_id)
    queue = client.pipeline(transaction=True)
    queue.set(presence, WAITING, ex=PRESENCE_TTL_SECONDS)
    queue.lpush(REQUEST_QUEUE, signing.dumps(payload, salt=_SALT, compress=True))
    queue.execute()
    answered = False
    try:
        answer = _wait_for_reply(client, request_id, float(payload["deadline"]))
        answered = True
        faults.dependency(faults.REDIS).up()
        return answer
    finally:
        if not answered:  # the deadline, an error, this thread interrupted: the gateway must not work for us
            with contextlib.suppress(redis.RedisError):
                client.set(presence, GONE, ex=REPLY_TTL_SECONDS)


def _wait_for_reply(client: redis.Redis, request_id: str, deadline: float) -> dict[str, Any]:
    presence, reply_key = _caller_key(request_id), _reply_key(request_id)
    failure: redis.RedisError | None = None
    while True:
        left = deadline + REPLY_GRACE_SECONDS - time.time()
        if left <= 0:
            if failure is not None:
                raise failure
            raise GatewayUnavailable("the gateway did not answer in time")
        try:
            step = client.pipeline(transaction=False)
            step.set(presence, WAITING, ex=PRESENCE_TTL_SECONDS)
            step.brpop([reply_key], timeout=WAIT_SLICE_SECONDS)
            _, reply = step.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Redis went away while the statement runs: keep trying until the deadline. The gateway keeps the
            # reply until then too, and sends it once Redis is back.
            failure = exc
            faults.dependency(faults.REDIS).down(exc)
            time.sleep(min(0.5, max(left, 0.0)))
            continue
        failure = None
        if reply is not None:
            answer: dict[str, Any] = json.loads(reply[1])
            return answer


def _payload(principal: Principal, datasource: str, context: Context, timeout_seconds: float) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "deadline": time.time() + timeout_seconds,
        "watched": True,  # the caller keeps its presence key alive while it waits
        "user_id": principal.human.pk,
        "agent_id": principal.agent.pk if principal.agent else None,
        "datasource": datasource,
        "context": {"front": context.front, "source_address": context.source_address, "session_id": context.session_id},
    }


def call_gateway(
    client: redis.Redis,
    *,
    principal: Principal,
    datasource: str,
    sql: str,
    reason: str,
    context: Context,
    timeout_seconds: float,
) -> StatementOutcome:
    """Run one statement through the gateway's pipeline; ``timeout_seconds`` is how long the caller waits, and
    the longest the gateway may work on it. Raises GatewayUnavailable, or a Redis error when Redis is down."""
    payload = _payload(principal, datasource, context, timeout_seconds) | {"sql": sql, "reason": reason}
    return StatementOutcome(**_answer_of(_send(client, payload, timeout_seconds)))


def _answer_of(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply, unless the gateway said it could not reach a dependency of its own (then the caller's answer is
    the 503 of that outage, ``phigate.outages``)."""
    if UNAVAILABLE in reply:
        dependency = str(reply[UNAVAILABLE])
        raise outages.Unavailable(dependency, f"the gateway cannot reach its {dependency}")
    return reply


class OperationRefused(Exception):
    """The gateway refused an operation; the message says why and is safe to show to the caller."""


def call_operation(
    client: redis.Redis,
    operation: str,
    *,
    principal: Principal,
    datasource: str,
    context: Context,
    timeout_seconds: float,
    arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one of ``OPERATIONS`` in the gateway. Raises OperationRefused or GatewayUnavailable."""
    payload = _payload(principal, datasource, context, timeout_seconds)
    payload.update(op=operation, arguments=arguments or {})
    reply = _answer_of(_send(client, payload, timeout_seconds))
    if "result" not in reply:
        raise OperationRefused(str(reply.get("refused") or "the gateway refused the operation"))
    result: dict[str, Any] = reply["result"]
    return result


# --------------------------------------------------------------------------------------------- gateway side

# An operation: (principal, data source, arguments, context, runtime) -> result; raises a refusal listed below.
Operation = Callable[[Principal, str, dict[str, Any], Context, DatasourceRuntime], dict[str, Any]]


def _explain(
    principal: Principal, datasource: str, arguments: dict[str, Any], context: Context, runtime: DatasourceRuntime
) -> dict[str, Any]:
    return explain_statement(principal, datasource, str(arguments["sql"]), runtime, context=context)


def _list_tables(
    principal: Principal, datasource: str, arguments: dict[str, Any], context: Context, runtime: DatasourceRuntime
) -> dict[str, Any]:
    return list_tables(principal, datasource, runtime)


OPERATIONS: dict[str, Operation] = {"explain": _explain, "list_tables": _list_tables, "ticket_lookups": compute_lookups}
_REFUSALS = (ExplainRefused, TablesRefused, LookupRefused)


@dataclass(frozen=True)
class Request:
    """A request whose signature was verified."""

    payload: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.payload["id"])

    @property
    def deadline(self) -> float:
        return float(self.payload["deadline"])

    @property
    def watched(self) -> bool:
        """The caller keeps a presence key while it waits (callers older than issue 15 do not)."""
        return bool(self.payload.get("watched"))


def open_request(raw: bytes) -> Request | None:
    try:
        payload = signing.loads(raw.decode(), salt=_SALT, max_age=3600)
    except signing.BadSignature:
        log.warning("dropped a gateway request with a bad signature")
        return None
    return Request(payload)


def _principal(payload: dict[str, Any]) -> Principal | None:
    if payload["agent_id"] is not None:
        agent = Agent.objects.active().select_related("owner").filter(pk=payload["agent_id"]).first()
        if agent is None or agent.owner_id != payload["user_id"]:
            return None
        return Principal.for_agent(agent)
    user = get_user_model().objects.filter(pk=payload["user_id"], is_active=True).first()
    return Principal(human=user) if user else None


def run_request(
    payload: dict[str, Any], runtime: DatasourceRuntime, scope: caller.CallerScope | None
) -> dict[str, Any]:
    """Run one verified request in this (worker) thread, bound by its caller's scope; returns the reply."""
    close_old_connections()
    control_plane.replace_dead_connection()
    with caller.serving(scope):
        if "op" in payload:
            return _run_operation(payload, runtime)
        try:
            principal = _principal(payload)
            if principal is None:
                outcome = StatementOutcome(status="denied", reasons=["the requesting identity is no longer active"])
            else:
                outcome = handle_statement(
                    principal=principal,
                    datasource_name=payload["datasource"],
                    sql=payload["sql"],
                    reason=payload["reason"],
                    context=Context(**payload["context"]),
                    runtime=runtime,
                )
        except Exception as exc:
            # Includes a failed audit write: no rows are released, and the caller is told so at once.
            if _control_plane_fault(exc):
                return {UNAVAILABLE: faults.CONTROL_PLANE}
            log.exception("gateway request %s failed", payload["id"])
            outcome = StatementOutcome(
                status="failed", error="internal error in the gateway; the statement was not run"
            )
        return outcome.as_dict()


def _control_plane_fault(exc: BaseException) -> bool:
    """A lost control plane: logged once per outage (not a traceback per request), its connection dropped."""
    if outages.outage_of(exc) != faults.CONTROL_PLANE:
        return False
    faults.dependency(faults.CONTROL_PLANE).down(exc)
    close_old_connections()
    return True


def _run_operation(payload: dict[str, Any], runtime: DatasourceRuntime) -> dict[str, Any]:
    operation = OPERATIONS.get(payload["op"])
    if operation is None:
        return {"refused": f"unknown gateway operation {payload['op']!r}"}
    try:
        principal = _principal(payload)
        if principal is None:
            return {"refused": "the requesting identity is no longer active"}
        context = Context(**payload["context"])
        return {"result": operation(principal, payload["datasource"], payload["arguments"], context, runtime)}
    except _REFUSALS as exc:
        return {"refused": str(exc)}
    except Exception as exc:
        if _control_plane_fault(exc):
            return {UNAVAILABLE: faults.CONTROL_PLANE}
        log.exception("gateway operation %s (%s) failed", payload["id"], payload["op"])
        return {"refused": "internal error in the gateway"}


# Errors of talking to Redis. Anything else escaping a Redis call is a bug, but must not stop the gateway either.
_REDIS_ERRORS = (redis.RedisError, OSError)


class Backoff:
    """Exponential back-off with jitter: base, 2x base... up to the cap, each delay a random 50-100% of it."""

    def __init__(self, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * 2**self.failures)
        self.failures = min(self.failures + 1, 32)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when the gateway is told to stop."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class RequestConsumer:
    """Takes requests off the Redis queue and answers them; survives Redis going away (module docstring)."""

    def __init__(self, redis_url: str, runtime: DatasourceRuntime, concurrency: int = 8) -> None:
        self.runtime = runtime
        self.client = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            retry=AsyncRetry(NoBackoff(), 0),  # our loop retries, with back-off and one log line per outage
        )
        self.concurrency = concurrency
        self.slots = asyncio.Semaphore(concurrency)
        self.redis = faults.dependency(faults.REDIS)
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        self.pool: ThreadPoolExecutor | None = None

    async def run(self, stop: asyncio.Event) -> None:
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="gateway-rpc")
        pending: set[asyncio.Task[None]] = set()
        backoff = Backoff()
        next_alive = 0.0
        try:
            while not stop.is_set():
                await self.slots.acquire()
                try:
                    if time.monotonic() >= next_alive:
                        await self.client.set(GATEWAY_ALIVE_KEY, self.instance, ex=ALIVE_TTL_SECONDS)
                        next_alive = time.monotonic() + ALIVE_REFRESH_SECONDS
                    item = await self.client.brpop([REQUEST_QUEUE], timeout=1)
                except Exception as exc:
                    self.slots.release()
                    if isinstance(exc, _REDIS_ERRORS):
                        self.redis.down(exc)
                    else:
                        log.exception("gateway request queue: unexpected error; retrying")
                    await _pause(stop, backoff.next())
                    continue
                self.redis.up()
                backoff.reset()
                if item is None:
                    self.slots.release()
                    continue
                raw = item[1]
                task = asyncio.create_task(self._answer(raw if isinstance(raw, bytes) else raw.encode()))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=30)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                await self.client.aclose()

    async def _answer(self, raw: bytes) -> None:
        try:
            request = open_request(raw)
            if request is None or not await self._still_wanted(request):
                return
            scope = caller.CallerScope(request.id, request.deadline)
            watcher = asyncio.create_task(self._watch(request, scope)) if request.watched else None
            try:
                loop = asyncio.get_running_loop()
                reply = await loop.run_in_executor(self.pool, run_request, request.payload, self.runtime, scope)
            finally:
                if watcher is not None:
                    watcher.cancel()
            if scope.gone.is_set():
                log.info("gateway request %s: its caller is gone; no reply sent", request.id)
                return
            await self._reply(request, reply)
        except Exception:  # one bad request must not stop the gateway
            log.exception("gateway request failed")
        finally:
            self.slots.release()

    async def _still_wanted(self, request: Request) -> bool:
        """False for a request nobody waits for any more, or one already taken (a push that was retried)."""
        if request.deadline - time.time() <= caller.REPLY_MARGIN_SECONDS:
            log.warning("dropped gateway request %s: its caller's deadline has passed", request.id)
            return False
        if not request.watched:
            return True
        try:
            check = self.client.pipeline(transaction=False)
            check.get(_caller_key(request.id))
            check.set(CLAIM_PREFIX + request.id, b"1", nx=True, ex=REPLY_TTL_SECONDS * 2)
            presence, claimed = await check.execute()
        except _REDIS_ERRORS as exc:  # cannot tell: run it; its deadline still bounds it
            self.redis.down(exc)
            return True
        if not claimed:
            log.warning("dropped gateway request %s: it was already taken", request.id)
            return False
        if presence != WAITING:
            log.warning("dropped gateway request %s: its caller is gone", request.id)
            return False
        return True

    async def _watch(self, request: Request, scope: caller.CallerScope) -> None:
        """While the request runs: abandon it (cancelling its statement) once its caller is gone."""
        presence = _caller_key(request.id)
        missing_since: float | None = None
        while True:
            await asyncio.sleep(CALLER_CHECK_SECONDS)
            now = time.monotonic()
            if time.time() > request.deadline:
                await asyncio.to_thread(scope.abandon, "its caller's deadline passed")
                return
            try:
                state = await self.client.get(presence)
            except _REDIS_ERRORS:
                missing_since = None  # Redis cannot say: the caller is not presumed gone
                continue
            if state == GONE:
                await asyncio.to_thread(scope.abandon, "its caller gave up")
                return
            if state is None:
                missing_since = missing_since or now
                if now - missing_since >= CALLER_MISSING_GRACE_SECONDS:
                    await asyncio.to_thread(scope.abandon, "its caller stopped waiting")
                    return
            else:
                missing_since = None

    async def _reply(self, request: Request, reply: dict[str, Any]) -> None:
        """Send the reply; while Redis is away, keep trying until the caller's deadline."""
        key, body = _reply_key(request.id), json.dumps(reply)
        backoff = Backoff()
        while True:
            try:
                send = self.client.pipeline(transaction=True)
                send.lpush(key, body)
                send.expire(key, REPLY_TTL_SECONDS)
                await send.execute()
            except _REDIS_ERRORS as exc:
                self.redis.down(exc)
                if time.time() > request.deadline + REPLY_GRACE_SECONDS:
                    log.warning("gateway request %s: no reply sent, Redis was away until its deadline", request.id)
                    return
                await asyncio.sleep(backoff.next())
                continue
            self.redis.up()
            return


async def serve(redis_url: str, runtime: DatasourceRuntime, stop: asyncio.Event, concurrency: int = 8) -> None:
    """Consume requests until ``stop`` is set; each runs in a worker thread (the pipeline is sync code)."""
    await RequestConsumer(redis_url, runtime, concurrency).run(stop)
