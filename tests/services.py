"""Starting and stopping the real processes (gateway, Celery worker) the integration tests talk to."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from tests import environment

REPO = Path(__file__).resolve().parent.parent


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_the_test_run() -> None:
    """``preexec_fn`` of every long-running child: the kernel sends it SIGTERM when the test process that started
    it dies, however it dies. A run killed by a timeout or kill -9 skips every teardown; its gateway and worker
    used to live on and take the next run's requests from the same Redis database ("the gateway did not answer")."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the test process died before the call took effect
        os._exit(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """A child process in its own session (so it and its children can be killed together), logging to a file."""

    def __init__(self, name: str, argv: list[str], extra_env: Mapping[str, str], log_dir: Path) -> None:
        self.name, self.argv = name, argv
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DATASOURCE_")}
        # Temporary files (multiprocessing's pymp-* directories, even those of a worker a test kills) stay under
        # the run's log directory, which pytest removes with its basetemp, never in /tmp.
        self.tmp_dir = log_dir / f"{name}-tmp"
        self.env["TMPDIR"] = str(self.tmp_dir)
        self.env.update(extra_env)
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.tmp_dir.mkdir(exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_the_test_run,
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: what a crash or an OOM kill looks like."""
        if self.process is not None and self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def gateway(
    read_url: str, log_dir: Path, name: str = "gateway", extra_env: Mapping[str, str] | None = None
) -> tuple[Service, int]:
    port = free_port()
    service = Service(
        name,
        [sys.executable, "manage.py", "gateway", "--host", "127.0.0.1", "--port", str(port)],
        {
            f"DATASOURCE_{environment.DATASOURCE.upper()}_READ_URL": read_url,
            # The product's fast audit path (a local journal, shipped to the event table); "" tests the other.
            "AUDIT_JOURNAL_DIR": str(log_dir / f"{name}-journal"),
            **(extra_env or {}),
        },
        log_dir,
    ).start()
    wait_until(lambda: port_open(port) or not service.alive(), 30, what="gateway to listen")
    assert service.alive(), service.log_tail()
    return service, port


def worker(write_url: str, log_dir: Path, name: str = "worker") -> Service:
    service = Service(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "phigate",
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
            "-n",
            f"{name}-{environment.RUN_ID}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        {f"DATASOURCE_{environment.DATASOURCE.upper()}_WRITE_URL": write_url},
        log_dir,
    ).start()
    from phigate.celery import app

    def answered() -> bool:
        if not service.alive():
            raise AssertionError(service.log_tail())
        replies = app.control.ping(timeout=0.5)
        return any(f"{name}-{environment.RUN_ID}@" in host for reply in replies for host in reply)

    wait_until(answered, 60, interval=0.2, what=f"celery {name} to answer ping")
    return service


def web(
    log_dir: Path, name: str = "web", extra_env: Mapping[str, str] | None = None, port: int | None = None
) -> tuple[Service, int]:
    """The ASGI web process, as the README starts it: no target credential in its environment."""
    port = port or free_port()
    service = Service(
        name,
        [sys.executable, "-m", "uvicorn", "phigate.asgi:application", "--host", "127.0.0.1", "--port", str(port)],
        dict(extra_env or {}),
        log_dir,
    ).start()
    wait_until(lambda: port_open(port) or not service.alive(), 30, what="web to listen")
    assert service.alive(), service.log_tail()
    return service, port


def oidc_provider(log_dir: Path, users_file: Path, client_id: str, client_secret: str) -> tuple[Service, int]:
    """The loopback OpenID provider (tests/oidc_provider.py) in its own process."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.oidc_provider", "--port", str(port), f"--client-id={client_id}"]
    # ``--name=value``: a random secret may start with "-", which argparse would take for an option.
    argv += [f"--client-secret={client_secret}", "--users", str(users_file)]
    service = Service("oidc-provider", argv, {}, log_dir).start()
    wait_until(lambda: port_open(port) or not service.alive(), 30, what="OpenID provider to listen")
    assert service.alive(), service.log_tail()
    return service, port


class CuttableProxy:
    """A TCP relay to PostgreSQL that can be cut (``cut``) and restored (``up = True``), or stalled (``stall``:
    connections are accepted and bytes taken, nothing passes either way, until ``resume``): a process's network
    path to its control plane, for fault tests."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self.flowing.wait()  # stalled: the connection is accepted and then hears nothing
        try:
            server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:  # the server is down (restarting): refuse this one, like the server would, keep serving
            client.close()
            return
        server.settimeout(None)
        with self.lock:
            self.sockets += [client, server]
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def close(self) -> None:
        self.cut()
        self.resume()  # threads waiting for the flow see their sockets closed and end
        self.listener.close()
