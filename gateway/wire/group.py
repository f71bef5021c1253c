"""Several gateway processes on one port: a supervisor and its members (issue 13).

Why: one gateway process is one event loop on one core; past a few clients it is saturated while the machine has
cores to spare. ``manage.py gateway --processes N`` (or ``GATEWAY_PROCESSES``) runs a **supervisor** that starts
N **members** (``--member K``). Each member is a whole gateway (wire listener, API consumer, revocation watcher,
its own audit journal slot) and binds the wire port with ``SO_REUSEPORT``: the kernel spreads connections over
them. Only member 0 binds the health port. What one process used to know alone is shared as follows:

* **Cancel keys.** A CancelRequest arrives on a new connection, which the kernel may give to any member. The
  member's index is in the key's process id (``process_id >> MEMBER_SHIFT``); a request for another member is
  forwarded to it as one datagram (the 12 bytes of the key) on that member's abstract Unix socket. The secret
  is checked by the owner, as before: forwarding grants nothing a CancelRequest over TCP does not.
* **Seats.** An agent's session cap (``GATEWAY_MAX_SESSIONS_PER_AGENT``) counts across members: a member claims
  each seat from the supervisor's registry over one stream connection (abstract Unix socket, peers checked to be
  this user's processes). A member that dies frees its seats with its connection. If the registry cannot be
  reached, the claim fails and the sign-in is refused (fail closed).
* **Supervision.** A member that exits unexpectedly is started again (with back-off); its clients saw their
  connections drop, like a PostgreSQL backend crash. SIGTERM or SIGINT to the supervisor is passed to every
  member, whose own shutdown ends sessions with 57P01; members die with the supervisor (``PR_SET_PDEATHSIG``).

With one process (the default) none of this runs: member 0 of a group of one, no sockets, no supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MEMBER_SHIFT = 24  # a process id is (member index << 24) | 24 random bits: 127 members at most, ids stay positive
MAX_MEMBERS = (1 << (31 - MEMBER_SHIFT)) - 1
GROUP_ENV = "PHIGATE_GATEWAY_GROUP"  # set by the supervisor for its members: the names of the group's sockets
MEMBERS_ENV = "PHIGATE_GATEWAY_MEMBERS"  # how many members the group has (cancel keys name one of them)
SUPERVISOR_ENV = "PHIGATE_GATEWAY_SUPERVISOR"  # the supervisor's pid, for a member to notice it is orphaned
RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
STABLE_SECONDS = 30.0  # a member that ran this long before exiting is restarted without back-off
STOP_WAIT_SECONDS = 40.0  # members' own shutdown (grace, then 57P01 to every session) fits well within this
_CANCEL = struct.Struct("!i4s")
_PR_SET_PDEATHSIG = 1
_PEERCRED = struct.Struct("3i")


def new_process_id(member: int) -> int:
    """A BackendKeyData process id that names its member (``member_of``) and is otherwise random."""
    return (member << MEMBER_SHIFT) | (secrets.randbelow((1 << MEMBER_SHIFT) - 1) + 1)


def member_of(process_id: int) -> int:
    return process_id >> MEMBER_SHIFT


def _address(group: str, what: str) -> str:
    return f"\0phigate-gateway-{group}-{what}"  # Linux's abstract namespace: no file to create or clean up


# --------------------------------------------------------------------------------------------------- members


@dataclass
class Membership:
    """This process's place in its group (``index`` of ``count``; ``group`` empty when it is alone)."""

    index: int = 0
    count: int = 1
    group: str = ""
    claims: SeatClaims | None = field(default=None, repr=False)

    @property
    def grouped(self) -> bool:
        return bool(self.group)

    @classmethod
    def from_environment(cls, index: int | None) -> Membership:
        group = os.environ.get(GROUP_ENV, "")
        if index is None or not group:
            return cls()
        count = int(os.environ.get(MEMBERS_ENV, "1"))
        return cls(index=index, count=count, group=group, claims=SeatClaims(_address(group, "seats")))

    def forward_cancel(self, process_id: int, secret: bytes) -> bool:
        """Pass a CancelRequest for another member's session to that member (False: not ours to pass on)."""
        owner = member_of(process_id)
        if not self.grouped or owner == self.index or owner >= self.count:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(_CANCEL.pack(process_id, secret), _address(self.group, f"cancel-{owner}"))
            except OSError as exc:  # the owner is restarting: its sessions are gone anyway
                log.warning("cancel request for gateway member %s not delivered: %s", owner, exc)
                return False
        log.info("cancel request forwarded to gateway member %s", owner)
        return True

    def listen_for_cancels(self, deliver: Callable[[int, bytes], None]) -> socket.socket | None:
        """Receive the cancel requests other members forward to this one; ``deliver`` runs on the event loop."""
        if not self.grouped:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(_address(self.group, f"cancel-{self.index}"))
        sock.setblocking(False)

        def readable() -> None:
            while True:
                try:
                    data = sock.recv(64)
                except (BlockingIOError, InterruptedError):
                    return
                if len(data) == _CANCEL.size:
                    deliver(*_CANCEL.unpack(data))

        asyncio.get_running_loop().add_reader(sock.fileno(), readable)
        return sock


def die_with_supervisor() -> None:
    """In a member: the kernel sends SIGTERM when the supervisor dies, however it dies (no orphan gateways that
    would serve without the group's seat registry)."""
    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0") or 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if supervisor and os.getppid() != supervisor:  # it died before the call took effect
        sys.exit(1)


class SeatClaims:
    """A member's side of the seat registry: one connection, one request at a time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.lock = asyncio.Lock()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def claim(self, token: str, agent_id: int, limit: int) -> bool:
        """True when the group holds fewer than ``limit`` seats of this agent (and now one more, ``token``).
        False past the limit, or when the registry cannot be reached (fail closed)."""
        async with self.lock:
            try:
                if self.writer is None or self.writer.is_closing():
                    self.reader, self.writer = await _connect(self.address)
                assert self.reader is not None
                self.writer.write(f"claim {token} {agent_id} {limit}\n".encode())
                answer = await asyncio.wait_for(self.reader.readline(), timeout=5.0)
            except (OSError, TimeoutError) as exc:
                log.error("the gateway group's seat registry is unreachable; refusing the session: %s", exc)
                self._drop()
                return False
            if not answer:
                self._drop()
                return False
            return answer == b"1\n"

    def release(self, token: str) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(f"release {token}\n".encode())

    def _drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``open_unix_connection`` to an abstract address (uvloop refuses the name itself, not a connected socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_unix_connection(sock=sock)


# ------------------------------------------------------------------------------------------------ supervisor


class SeatRegistry:
    """The supervisor's count of seats per agent across the group. A member's seats live as long as its
    connection: a member that dies (kill -9 included) frees them."""

    def __init__(self) -> None:
        self.held: dict[int, set[str]] = defaultdict(set)

    def claim(self, token: str, agent_id: int, limit: int) -> bool:
        seats = self.held[agent_id]
        if token not in seats and len(seats) >= limit:
            return False
        seats.add(token)
        return True

    def release(self, token: str, agent_id: int) -> None:
        seats = self.held.get(agent_id)
        if seats is not None:
            seats.discard(token)
            if not seats:
                del self.held[agent_id]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            if uid != os.getuid():
                writer.close()
                return
        mine: dict[str, int] = {}
        try:
            while line := await reader.readline():
                verb, token, *rest = line.decode("ascii", "replace").split()
                if verb == "claim" and len(rest) == 2:
                    agent_id, limit = int(rest[0]), int(rest[1])
                    granted = self.claim(token, agent_id, limit)
                    if granted:
                        mine[token] = agent_id
                    writer.write(b"1\n" if granted else b"0\n")
                elif verb == "release" and token in mine:
                    self.release(token, mine.pop(token))
        except (ConnectionError, ValueError):
            pass
        finally:
            for token, agent_id in mine.items():
                self.release(token, agent_id)
            writer.close()


@dataclass
class _Member:
    index: int
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    failures: int = 0


class Supervisor:
    """Starts ``count`` members (``member_argv(index)``), keeps them running, stops them on SIGTERM/SIGINT."""

    def __init__(self, count: int, member_argv: Callable[[int], Sequence[str]]) -> None:
        if not 1 < count <= MAX_MEMBERS:
            raise ValueError(f"a gateway group has 2 to {MAX_MEMBERS} processes, not {count}")
        self.count = count
        self.member_argv = member_argv
        self.group = secrets.token_hex(8)
        self.registry = SeatRegistry()
        self.stopping = asyncio.Event()
        self.members = [_Member(index) for index in range(count)]

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        server = await asyncio.start_unix_server(self.registry.serve, path=_address(self.group, "seats"))
        try:
            keepers = [asyncio.create_task(self._keep(member)) for member in self.members]
            await self.stopping.wait()
            log.info("gateway group stopping: %s members", self.count)
            await self._stop_members()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        finally:
            server.close()
        return 0

    async def _keep(self, member: _Member) -> None:
        while not self.stopping.is_set():
            await self._start(member)
            assert member.process is not None
            code = await member.process.wait()
            if self.stopping.is_set():
                return
            ran = time.monotonic() - member.started
            member.failures = 0 if ran >= STABLE_SECONDS else member.failures + 1
            delay = RESTART_BACKOFF_SECONDS[min(member.failures, len(RESTART_BACKOFF_SECONDS) - 1)]
            log.error(
                "gateway member %s exited (%s) after %.1f s; restarting in %.1f s", member.index, code, ran, delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)

    async def _start(self, member: _Member) -> None:
        env = {
            **os.environ,
            GROUP_ENV: self.group,
            MEMBERS_ENV: str(self.count),
            SUPERVISOR_ENV: str(os.getpid()),
        }
        member.process = await asyncio.create_subprocess_exec(*self.member_argv(member.index), env=env)
        member.started = time.monotonic()
        log.info("gateway member %s started (pid %s)", member.index, member.process.pid)

    async def _stop_members(self) -> None:
        running = [m.process for m in self.members if m.process is not None and m.process.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(process.wait()) for process in running]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=STOP_WAIT_SECONDS)
        for process in running:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if late:
            await asyncio.wait(late, timeout=5.0)
