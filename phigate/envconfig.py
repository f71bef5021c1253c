"""Reading configuration from the environment, strictly.

Every value is either absent (and then a documented default applies) or valid; a malformed value stops the
process at start-up with a message naming the variable, instead of surfacing later as odd behaviour.
Secrets may be given directly (``NAME``) or as a path to a file (``NAME_FILE``), as container platforms
mount them; giving both is an error because it is ambiguous which one wins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def get_str(name: str, default: str | None = None, *, env: Mapping[str, str] | None = None) -> str | None:
    """A plain or secret value; ``NAME_FILE`` is read when set (trailing newline stripped)."""
    environ = _environ(env)
    direct = environ.get(name)
    path = environ.get(f"{name}_FILE")
    if direct is not None and path is not None:
        raise ImproperlyConfigured(f"set either {name} or {name}_FILE, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read().rstrip("\r\n")
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from exc
    if direct is not None:
        return direct
    return default


def require_str(name: str, *, env: Mapping[str, str] | None = None) -> str:
    value = get_str(name, env=env)
    if not value:
        raise ImproperlyConfigured(f"{name} (or {name}_FILE) must be set")
    return value


def get_bool(name: str, default: bool, *, env: Mapping[str, str] | None = None) -> bool:
    raw = _environ(env).get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true or false)")


def get_int(
    name: str, default: int, *, minimum: int = 0, maximum: int | None = None, env: Mapping[str, str] | None = None
) -> int:
    raw = _environ(env).get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ImproperlyConfigured(f"{name}={value} must be {bounds}")
    return value


def get_list(name: str, default: list[str], *, env: Mapping[str, str] | None = None) -> list[str]:
    raw = _environ(env).get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


@dataclass(frozen=True)
class PostgresUrl:
    """The parts of a ``postgresql://`` URL that Django's database settings need."""

    user: str
    password: str
    host: str
    port: str
    dbname: str
    options: dict[str, str]

    def django_database(self) -> dict[str, object]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": self.dbname,
            "USER": self.user,
            "PASSWORD": self.password,
            "HOST": self.host,
            "PORT": self.port,
            "OPTIONS": dict(self.options),
        }


def parse_postgres_url(name: str, url: str) -> PostgresUrl:
    """Parse ``postgresql://user:pass@host:port/db`` (``?host=/socket/dir`` for unix sockets)."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"{name} must be a postgresql:// URL")
    dbname = unquote(parts.path.lstrip("/"))
    if not dbname:
        raise ImproperlyConfigured(f"{name} must name a database")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    host = query.pop("host", None) or (parts.hostname or "")
    try:
        port = str(parts.port or query.pop("port", "") or "")
    except ValueError:
        raise ImproperlyConfigured(f"{name} has an invalid port") from None
    return PostgresUrl(
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        host=host,
        port=port,
        dbname=dbname,
        options=query,
    )
