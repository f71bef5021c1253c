"""Liveness and readiness of each process, and the dependency checks behind them (issue 15).

* **Liveness** (``/healthz``): the process answers. It says nothing about dependencies, so an orchestrator never
  restarts a process because Redis is down: every process reconnects by itself.
* **Readiness** (``/readyz``): each dependency the process needs is checked now, in parallel, within
  ``CHECK_TIMEOUT_SECONDS``; the answer is 200 when all required ones are up, else 503, and always names them::

      {"status": "unavailable", "process": "web", "down": ["redis"],
       "dependencies": {"control_plane": "up", "redis": "down", "gateway": "up"}}

  Only names and states: the error itself (which may name hosts and roles) goes to the process's log, one
  structured line per change of state (``phigate.faults``).

Which process checks what: the web process here (``readyz``); the gateway in ``gateway.health`` (its own HTTP
listener, ``GATEWAY_HEALTH_PORT``); the Celery worker with ``manage.py worker_health``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from redis.backoff import NoBackoff
from redis.retry import Retry

from phigate import faults
from policy.credentials import Access, target_url

CHECK_TIMEOUT_SECONDS = 2.0
# The key the gateway's API consumer refreshes while it takes requests from Redis (gateway.rpc).
GATEWAY_ALIVE_KEY = "phigate:gateway:alive"


class DependencyDown(Exception):
    """A check found its dependency unusable, for a reason of its own (not an exception from a client)."""


@dataclass(frozen=True)
class Check:
    """One dependency: ``probe`` raises when it cannot be used. ``required``: readiness depends on it."""

    name: str
    probe: Callable[[], None]
    required: bool = True


def control_plane_probe() -> None:
    """A fresh connection to the control-plane database (not a pooled one that might hide an outage)."""
    params: dict[str, Any] = connections[DEFAULT_DB_ALIAS].get_connection_params()
    for driver_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(driver_only, None)
    params["connect_timeout"] = int(CHECK_TIMEOUT_SECONDS) or 1  # the probe's own bound, not the settings'
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("SELECT 1")


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


def redis_probe(url: str | None = None) -> Callable[[], None]:
    def probe() -> None:
        client = _redis(url or settings.REDIS_URL)
        try:
            client.ping()
        finally:
            client.close()

    return probe


def gateway_probe(url: str | None = None) -> Callable[[], None]:
    """Some gateway took API statements from the queue within the last few seconds (it refreshes a key)."""

    def probe() -> None:
        client = _redis(url or settings.REDIS_URL)
        try:
            if not client.exists(GATEWAY_ALIVE_KEY):
                raise DependencyDown("no gateway is taking API statements from Redis")
        finally:
            client.close()

    return probe


def target_probe(datasource: str, access: Access) -> Callable[[], None]:
    """A fresh connection to one data source's target database with this process's own credential."""

    def probe() -> None:
        timeout = int(CHECK_TIMEOUT_SECONDS) or 1
        with psycopg.connect(target_url(datasource, access), connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")

    return probe


# Checks run in daemon threads of their own with a time limit: a dependency that hangs makes its check time out,
# not the probe, and never keeps the process from exiting. A check still running from an earlier probe is waited
# for again rather than started twice, and one that succeeded less than ``REUSE_SECONDS`` ago is reused, so a
# probe endpoint hit in a loop opens at most one connection per dependency per second (a failure is never reused:
# a dependency that is back is reported at once).
REUSE_SECONDS = 1.0
_in_flight: dict[str, tuple[float, Future[None]]] = {}
_in_flight_lock = threading.Lock()


def _start(check: Check) -> Future[None]:
    future: Future[None] = Future()

    def work() -> None:
        future.set_running_or_notify_cancel()
        try:
            check.probe()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    threading.Thread(target=work, name=f"health-{check.name}", daemon=True).start()
    return future


def run_checks(checks: Iterable[Check], timeout: float = CHECK_TIMEOUT_SECONDS + 0.5) -> dict[str, str]:
    """Each check's state, ``"up"`` or ``"down"``; every change of state is logged once (``phigate.faults``)."""
    checks = list(checks)
    futures: dict[str, Future[None]] = {}
    with _in_flight_lock:
        for check in checks:
            started, previous = _in_flight.get(check.name, (0.0, None))
            recent_success = (
                previous is not None
                and previous.done()
                and previous.exception() is None
                and time.monotonic() - started < REUSE_SECONDS
            )
            if previous is not None and (not previous.done() or recent_success):
                futures[check.name] = previous
            else:
                futures[check.name] = _start(check)
                _in_flight[check.name] = (time.monotonic(), futures[check.name])
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    for check in checks:
        error: BaseException | str | None = None
        try:
            futures[check.name].result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            error = f"no answer within {timeout:.1f} s"
        except Exception as exc:
            error = exc
        faults.report(check.name, error)
        states[check.name] = "up" if error is None else "down"
    return states


def readiness(
    process: str, checks: Iterable[Check], timeout: float = CHECK_TIMEOUT_SECONDS + 0.5
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of a readiness answer."""
    checks = list(checks)
    states = run_checks(checks, timeout)
    down = sorted(check.name for check in checks if check.required and states[check.name] == "down")
    body = {
        "status": "unavailable" if down else "ready",
        "process": process,
        "down": down,
        "dependencies": states,
    }
    return (503 if down else 200), body


# ------------------------------------------------------------------------------------------ the web process


def web_checks() -> list[Check]:
    """The web process needs its control plane and Redis; a gateway only for statements (not for reviewing)."""
    return [
        Check(faults.CONTROL_PLANE, control_plane_probe),
        Check(faults.REDIS, redis_probe()),
        Check(faults.GATEWAY, gateway_probe(), required=False),
    ]


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers (no dependency is touched)."""
    return JsonResponse({"ok": True, "status": "ok", "process": "web"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    status, body = readiness("web", web_checks())
    return JsonResponse(body, status=status)
