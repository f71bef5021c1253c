"""Target-database credentials, read from the environment of the one process entitled to each.

* ``DATASOURCE_<NAME>_READ_URL`` (or ``..._FILE``): the read-only role; only the gateway has it.
* ``DATASOURCE_<NAME>_WRITE_URL`` (or ``..._FILE``): the write role; only the executor (Celery worker) has it.

The web process has neither, and refuses to start if one is in its environment (phigate.asgi).
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping

from django.core.exceptions import ImproperlyConfigured

from phigate import envconfig

_VARIABLE = re.compile(r"^DATASOURCE_([A-Z][A-Z0-9_]*)_(READ|WRITE)_URL(_FILE)?$")


class Access(enum.StrEnum):
    READ = "READ"
    WRITE = "WRITE"


def variable_name(datasource: str, access: Access) -> str:
    return f"DATASOURCE_{datasource.upper()}_{access.value}_URL"


def target_url(datasource: str, access: Access, env: Mapping[str, str] | None = None) -> str:
    name = variable_name(datasource, access)
    url = envconfig.get_str(name, env=env)
    if not url:
        raise ImproperlyConfigured(f"{name} (or {name}_FILE) is not set in this process")
    return url


def credential_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """Names of all target-credential variables present (values are never returned)."""
    environ = os.environ if env is None else env
    return sorted(name for name in environ if _VARIABLE.match(name))


def configured_datasources(access: Access, env: Mapping[str, str] | None = None) -> list[str]:
    names = set()
    for variable in credential_variables(env):
        match = _VARIABLE.match(variable)
        if match and match.group(2) == access.value:
            names.add(match.group(1).lower())
    return sorted(names)
