"""Redis for the demo: use the operator's if it answers, otherwise run a throwaway redis-server.

The demo's Redis holds only queues and channel-layer messages, so the private one is started without
persistence (``--save "" --appendonly no``): nothing of it survives the demo, and nothing needs to.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis

from demo.config import DemoError
from demo.postgres import free_port
from demo.supervisor import Child, stop_all

INSTALL_HINT = (
    "Redis is needed and none answers at REDIS_URL, and redis-server is not on PATH: "
    "install it (e.g. `sudo apt-get install redis-server` or `brew install redis`) or set REDIS_URL to a running Redis"
)


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when PING succeeds; any failure (refused, auth, bad URL) means "not usable"."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def start_private_redis(state_dir: Path, log_dir: Path) -> tuple[Child, str]:
    """Start redis-server on a free loopback port; returns the child and its URL once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise DemoError(INSTALL_HINT)
    data_dir = state_dir / "redis"
    data_dir.mkdir(mode=0o700, exist_ok=True)
    port = free_port()
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
    ]
    child = Child("redis", command, env={"PATH": "/usr/bin:/bin"}, cwd=data_dir, log_dir=log_dir)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if redis_answers(url, timeout=0.5):
            return child, url
        if child.exit_code() is not None:
            break
        time.sleep(0.1)
    code = child.exit_code()
    stop_all([child], grace=5)
    raise DemoError(f"redis-server did not start (exit code {code}); see {child.log_path}")
