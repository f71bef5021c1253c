"""Throughput of the sans-IO BackendParser on a result stream.

Parses 100k five-column DataRows (plus RowDescription, CommandComplete, ReadyForQuery) fed in 8 KiB chunks,
the way a socket would deliver them, and prints messages per second. Not a test: numbers depend on the
machine; it exists to catch accidental quadratic buffering or per-message overhead regressions.

Run: .venv/bin/python bench/pgwire_parse.py [rows]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.pgwire import (
    BackendParser,
    CommandComplete,
    DataRow,
    FieldDescription,
    ReadyForQuery,
    RowDescription,
    encode,
)

CHUNK = 8 * 1024


def build_stream(rows: int) -> bytes:
    header = RowDescription(tuple(FieldDescription(f"col{i}", 16384, i + 1, 25, -1, -1, 0) for i in range(5)))
    row_frames = [
        encode(DataRow((str(n).encode(), b"Jane Doe", None, b"1970-01-01", b"x" * (n % 40)))) for n in range(1000)
    ]
    body = b"".join(row_frames[n % 1000] for n in range(rows))
    return encode(header) + body + encode(CommandComplete(f"SELECT {rows}")) + encode(ReadyForQuery("I"))


def run(stream: bytes) -> tuple[int, float]:
    parser = BackendParser()
    count = 0
    started = time.perf_counter()
    for start in range(0, len(stream), CHUNK):
        parser.feed(stream[start : start + CHUNK])
        while parser.next_message() is not None:
            count += 1
    elapsed = time.perf_counter() - started
    assert parser.buffered == 0
    return count, elapsed


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    stream = build_stream(rows)
    best = min((run(stream) for _ in range(3)), key=lambda result: result[1])
    count, elapsed = best
    print(f"{count} messages, {len(stream) / 1e6:.1f} MB in {elapsed:.3f} s (best of 3)")
    print(f"{count / elapsed:,.0f} messages/s, {len(stream) / elapsed / 1e6:.1f} MB/s")


if __name__ == "__main__":
    main()
