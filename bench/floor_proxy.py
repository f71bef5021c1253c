"""The least any Python gateway on this machine can cost: a byte-copying proxy, optionally with durable records.

Run by ``bench/wire_pgbench.py`` as two reference paths in the same run as the real gateway:

* ``--journal none``: a bare uvloop proxy. Client bytes go to the upstream and back, nothing is parsed. No
  gateway written in Python can be cheaper than this per statement (same sockets, same event loop).
* ``--journal DIR``: the same proxy, plus what non-negotiable 6 requires of every statement: a record appended
  to a pre-zeroed file for each chunk the client sends, and the upstream's answer held until an ``fdatasync``
  covering that record has returned. One fsync at the end of a loop turn covers every record of that turn, as in
  ``audit.journal``. No parsing, no policy, no masking, no shipping: a floor, not a gateway.

``--flush thread`` moves the fdatasync to a thread, for comparison: slower here at 1 and 8 clients (the thread
must take the interpreter lock back to report each flush).

If this floor already misses a target, the target cannot be met by any design that keeps the gateway in Python
and a durable record per statement on this machine's disk.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
from pathlib import Path
from typing import cast

RECORD = b"r" * 450  # about the size of one wire statement's submitted record
SEGMENT_BYTES = 64 << 20


class Journal:
    """Appends fixed records to a pre-zeroed file; one fdatasync per loop turn releases what waits for it."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(directory / "floor-segment", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(self.fd, b"\0" * SEGMENT_BYTES)
        os.fsync(self.fd)
        self.offset = 0
        self.written = 0  # records appended
        self.synced = 0  # records covered by a completed fdatasync
        self.scheduled = False
        self.waiting: list[Pipe] = []

    def write_record(self) -> None:
        if self.offset + len(RECORD) > SEGMENT_BYTES:
            self.offset = 0
        os.pwrite(self.fd, RECORD, self.offset)
        self.offset += len(RECORD)

    def append(self) -> int:
        self.write_record()
        self.written += 1
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)
        return self.written

    def flush(self) -> None:
        self.scheduled = False
        covered = self.written
        os.fdatasync(self.fd)
        self.covered(covered)

    def covered(self, count: int) -> None:
        self.synced = max(self.synced, count)
        still: list[Pipe] = []
        for pipe in self.waiting:
            if pipe.needed <= self.synced:
                pipe.release()
            else:
                still.append(pipe)
        self.waiting = still


class ThreadedJournal(Journal):
    """The fsync in a thread, so the loop goes on forwarding while the disk works; one fsync in flight at a
    time, each covering every record appended before it started."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.wakeup = threading.Condition()
        self.loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self.sync_forever, daemon=True).start()

    def append(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.write_record()
        with self.wakeup:
            self.written += 1
            self.wakeup.notify()
        return self.written

    def sync_forever(self) -> None:
        done = 0
        while True:
            with self.wakeup:
                while self.written == done:
                    self.wakeup.wait()
                target = self.written
            os.fdatasync(self.fd)
            done = target
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.covered, target)


class Pipe(asyncio.Protocol):
    """One direction of a proxied connection; the upstream-to-client direction waits for the journal."""

    def __init__(self, journal: Journal | None, to_client: bool) -> None:
        self.journal = journal
        self.to_client = to_client
        self.peer: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.other: Pipe | None = None
        self.needed = 0  # (client side) the record the last request's answer waits for
        self.held: list[bytes] = []
        self.early: list[bytes] = []  # bytes that arrived before the other side connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.early.append(data)
            return
        journal = self.journal
        if journal is None:
            self.peer.write(data)
        elif not self.to_client:  # client -> upstream: forward, then record
            self.peer.write(data)
            assert self.other is not None
            self.other.needed = journal.append()
        elif journal.synced >= self.needed:
            self.peer.write(data)
        else:
            if not self.held:
                journal.waiting.append(self)
            self.held.append(data)

    def release(self) -> None:
        if self.held and self.peer is not None:
            self.peer.write(b"".join(self.held))
            self.held.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


async def serve(port: int, upstream_host: str, upstream_port: int, journal: Journal | None) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()  # referenced until done, so the loop does not drop them

    def accept() -> Pipe:
        client_side = Pipe(journal, to_client=False)

        async def connect() -> None:
            upstream_side = Pipe(journal, to_client=True)
            transport, _ = await loop.create_connection(lambda: upstream_side, upstream_host, upstream_port)
            assert client_side.transport is not None
            client_side.peer, upstream_side.peer = cast(asyncio.Transport, transport), client_side.transport
            client_side.other = upstream_side
            for chunk in client_side.early:
                client_side.data_received(chunk)
            client_side.early.clear()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client_side

    server = await loop.create_server(accept, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, default=5432)
    parser.add_argument("--journal", default="none", help="a directory for the record file, or 'none'")
    parser.add_argument("--flush", choices=("loop", "thread"), default="loop", help="where the fdatasync runs")
    args = parser.parse_args()
    kind = ThreadedJournal if args.flush == "thread" else Journal
    journal = None if args.journal == "none" else kind(Path(args.journal))
    import uvloop

    uvloop.run(serve(args.port, "127.0.0.1", args.upstream_port, journal))


if __name__ == "__main__":
    main()
