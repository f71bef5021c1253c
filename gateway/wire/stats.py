"""Counts the wire front keeps about itself, for operators (``GET /stats`` on the health port, gateway.health).

Why: the fast paths (``WireSession.try_fast_path``) are an optimisation nobody sees from outside, except as
latency. Operators need to know what share of statements takes them (a workload that never does, pays the
client loop's cost on every statement), and tests need to know that a batch was answered by the path they mean
to exercise. Plain integers bumped on the event loop: no lock, no cost worth measuring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class WireStats:
    statements: int = 0  # statements given an audit record (every statement that ran, on any path)
    fast_queries: int = 0  # simple Queries answered from the socket callbacks
    fast_batches: int = 0  # extended-protocol batches answered from the socket callbacks
    sessions_opened: int = 0

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)
