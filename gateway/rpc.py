"""How the web process asks the gateway to run a statement: a signed request over a Redis list.

The web process holds no target credential, so API statements are handed to the gateway, which runs the policy
pipeline. Requests are signed with the deployment's secret key (a writer to Redis alone cannot forge one) and
carry a deadline: a request picked up after its caller gave up is dropped, never executed.

Besides statements, the queue carries a few named operations that need the target's catalog but run no user
statement (``OPERATIONS``: EXPLAIN, the table listing). Their reply is ``{"result": ...}`` or ``{"refused": why}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio as aioredis
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import close_old_connections

from audit.recorder import Context
from gateway.explain import ExplainRefused, explain_statement
from gateway.mcp.tables import TablesRefused, list_tables
from gateway.pipeline import DatasourceRuntime, StatementOutcome, handle_statement
from gateway.ticket_lookups import LookupRefused, compute_lookups
from identity.models import Agent
from identity.principal import Principal

log = logging.getLogger(__name__)

REQUEST_QUEUE = "phigate:gateway:requests"
REPLY_PREFIX = "phigate:gateway:reply:"
_SALT = "phigate.gateway.rpc"


class GatewayUnavailable(Exception):
    """No gateway answered in time (503)."""


def _reply_key(request_id: str) -> str:
    return REPLY_PREFIX + request_id


def _send(client: redis.Redis, payload: dict[str, Any], timeout_seconds: float) -> dict[str, Any]:
    """Queue one signed request and wait for its reply (a JSON object)."""
    client.lpush(REQUEST_QUEUE, signing.dumps(payload, salt=_SALT, compress=True))
    reply = client.brpop([_reply_key(payload["id"])], timeout=max(1, int(timeout_seconds + 0.999)))
    if reply is None:
        raise GatewayUnavailable("the gateway did not answer in time")
    answer: dict[str, Any] = json.loads(reply[1])
    return answer


def _payload(principal: Principal, datasource: str, context: Context, timeout_seconds: float) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "deadline": time.time() + timeout_seconds,
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
    payload = _payload(principal, datasource, context, timeout_seconds) | {"sql": sql, "reason": reason}
    return StatementOutcome(**_send(client, payload, timeout_seconds))


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
    reply = _send(client, payload, timeout_seconds)
    if "result" not in reply:
        raise OperationRefused(str(reply.get("refused") or "the gateway refused the operation"))
    result: dict[str, Any] = reply["result"]
    return result


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


def _principal(payload: dict[str, Any]) -> Principal | None:
    if payload["agent_id"] is not None:
        agent = Agent.objects.active().select_related("owner").filter(pk=payload["agent_id"]).first()
        if agent is None or agent.owner_id != payload["user_id"]:
            return None
        return Principal.for_agent(agent)
    user = get_user_model().objects.filter(pk=payload["user_id"], is_active=True).first()
    return Principal(human=user) if user else None


def handle_request(raw: bytes, runtime: DatasourceRuntime) -> tuple[str, dict[str, Any]] | None:
    """Verify, run and answer one request. Returns (request id, reply), or None for a request to drop."""
    try:
        payload = signing.loads(raw.decode(), salt=_SALT, max_age=3600)
    except signing.BadSignature:
        log.warning("dropped a gateway request with a bad signature")
        return None
    if time.time() > payload["deadline"]:
        log.warning("dropped gateway request %s: its caller has given up", payload["id"])
        return None
    close_old_connections()
    if "op" in payload:
        return payload["id"], _run_operation(payload, runtime)
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
    except Exception:
        # Includes a failed audit write: the statement did not run, and the caller is told so at once.
        log.exception("gateway request %s failed", payload["id"])
        outcome = StatementOutcome(status="failed", error="internal error in the gateway; the statement was not run")
    return payload["id"], outcome.as_dict()


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
    except Exception:
        log.exception("gateway operation %s (%s) failed", payload["id"], payload["op"])
        return {"refused": "internal error in the gateway"}


async def serve(redis_url: str, runtime: DatasourceRuntime, stop: asyncio.Event, concurrency: int = 8) -> None:
    """Consume requests until ``stop`` is set; each runs in a worker thread (the pipeline is sync code)."""
    client = aioredis.Redis.from_url(redis_url)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="gateway-rpc")
    slots = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def answer(raw: bytes) -> None:
        try:
            result = await loop.run_in_executor(pool, handle_request, raw, runtime)
        except Exception:  # one bad request must not stop the gateway
            log.exception("gateway request failed")
            result = None
        finally:
            slots.release()
        if result is not None:
            request_id, reply = result
            key = _reply_key(request_id)
            await client.lpush(key, json.dumps(reply))
            await client.expire(key, 60)

    try:
        while not stop.is_set():
            await slots.acquire()
            item = await client.brpop([REQUEST_QUEUE], timeout=1)
            if item is None:
                slots.release()
                continue
            raw = item[1]
            task = asyncio.create_task(answer(raw if isinstance(raw, bytes) else raw.encode()))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=30)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        await client.aclose()
