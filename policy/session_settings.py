"""The session settings an agent may choose, one allowlist for every way of choosing them.

A wire client sets a setting in three ways: in its start-up packet (a parameter such as ``DateStyle``, pgJDBC's
``search_path`` for ``currentSchema``, or ``options=-c name=value``), with ``SET``/``RESET``, or with
``set_config(name, value, is_local)``. All three are judged here (``refusal``): the start-up by
``gateway.wire.sign_in``, the other two by ``policy.classifier``. A setting not on the list is refused, never
silently dropped, so a client never runs under settings it believes it has but does not.

What is on the list: presentation and safety limits only, none of which widens what the session can read or do
(``SETTABLE``). Three of them are bounded:

* ``client_encoding`` may only be UTF-8: values are masked as UTF-8 text, and a conversion that fails on a value's
  characters would be an error oracle;
* ``statement_timeout`` and ``idle_in_transaction_session_timeout`` are limits the gateway sets on every upstream
  connection (per data source: ``DATASOURCE_<NAME>_STATEMENT_TIMEOUT`` and
  ``DATASOURCE_<NAME>_IDLE_IN_TRANSACTION_TIMEOUT``, PostgreSQL duration syntax, a bare number in
  milliseconds; defaults 5 min and 10 min). A client may lower them, never raise or disable them (0). The limits
  are start-up parameters of the upstream connection, so they are also what ``RESET``, ``SET ... TO DEFAULT``,
  ``RESET ALL`` and ``DISCARD ALL`` return to.

``search_path`` is the exception, and is handled differently at start-up and afterwards. The PHI policy resolves
unqualified names on the catalog snapshot's search path (``TargetCatalog.search_path``, pg_catalog then public):
a session resolving them elsewhere would read another relation than lineage judged. So ``SET search_path`` stays
refused (only RESET is allowed; ``policy.classifier``). At start-up, clients such as pgJDBC (``currentSchema``)
send a search_path on every connection; refusing those clients would refuse a request that may change nothing.
So a start-up search_path is accepted when it names exactly the policy's path (``public``, or
``pg_catalog, public``), and is then passed to the upstream, which pins PostgreSQL's resolution to the policy's
even when a DBA gave the read role another default; any other start-up search_path is refused.

Which data source's limits apply to a SET is known only to the wire session that runs it: the session binds a
``SessionScope`` (``bind_scope``) in its task before sign-in, sign-in fills in the data source's limits, and the
classifier, run by ``asyncio.to_thread`` from that task (which copies the task's context), reads them with
``current_limits``. Decisions are cached per data source, the unit the limits are configured in. Without a scope
(the HTTP front, which refuses SET anyway, or a thread that did not inherit the context) the strictest limits of
every data source the process serves apply.
"""

from __future__ import annotations

import contextvars
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from django.core.exceptions import ImproperlyConfigured
from pglast import ast, enums

from phigate import envconfig
from policy.credentials import Access, configured_datasources
from policy.parse_depth import parse_statements

#: Settings an agent may change (lower-case names, as PostgreSQL compares them).
SETTABLE = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "extra_float_digits",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "bytea_output",
        "client_min_messages",
        "standard_conforming_strings",
        "jit",  # asyncpg switches JIT off for its type introspection; it changes how a plan runs, not what it reads
        "synchronize_seqscans",  # pg_dump: where a sequential scan starts, not what it reads
        "quote_all_identifiers",  # pg_dump: how names are written out
        "row_security",  # pg_dump: off makes a query on a table with row security fail instead of filter
        "restrict_nonsystem_relation_kind",  # pg_dump: only narrows which relation kinds a query may touch
    }
)
#: Settable settings with no bound and no value that is refused: a value the client binds as a parameter
#: (``set_config('TimeZone', $1, false)``) is as good as a constant.
ANY_VALUE = SETTABLE - {"client_encoding", "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout"}
#: Settings that may only be reset mid-session (see the module docstring for search_path at start-up).
RESET_ONLY: Mapping[str, str] = {
    "search_path": "names are resolved on the policy's search path; write schema-qualified names instead",
}
UTF8_NAMES = frozenset({"utf8", "unicode"})  # as encoding_key leaves them
STATEMENT_TIMEOUT = "statement_timeout"
IDLE_IN_TRANSACTION_TIMEOUT = "idle_in_transaction_session_timeout"
DEFAULT_STATEMENT_TIMEOUT_MS = 5 * 60 * 1000
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 10 * 60 * 1000
DEFAULT_SEARCH_PATH = ("pg_catalog", "public")
#: The start-up option that is the gateway's own, not PostgreSQL's (``-c gateway.approval=wait``).
GATEWAY_APPROVAL = "gateway.approval"

# PostgreSQL's time units (guc.c), case-sensitive, in milliseconds.
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
# Decimal only: PostgreSQL also reads 0x... (refused here, fail closed) and a leading 0 as octal, whose value is
# never above the decimal reading of the same digits, so the decimal reading is a safe upper bound.
_DURATION = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class SessionLimits:
    """The limits one data source's upstream connections run under, in milliseconds."""

    datasource: str = ""
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS
    idle_in_transaction_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS

    @classmethod
    def for_datasource(cls, datasource: str, env: Mapping[str, str] | None = None) -> SessionLimits:
        prefix = f"DATASOURCE_{datasource.upper()}"
        return cls(
            datasource=datasource,
            statement_timeout_ms=_configured_ms(f"{prefix}_STATEMENT_TIMEOUT", DEFAULT_STATEMENT_TIMEOUT_MS, env),
            idle_in_transaction_timeout_ms=_configured_ms(
                f"{prefix}_IDLE_IN_TRANSACTION_TIMEOUT", DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS, env
            ),
        )

    def limit_ms(self, name: str) -> int | None:
        if name == STATEMENT_TIMEOUT:
            return self.statement_timeout_ms
        if name == IDLE_IN_TRANSACTION_TIMEOUT:
            return self.idle_in_transaction_timeout_ms
        return None

    def upstream_parameters(self) -> dict[str, str]:
        """What every upstream connection starts with (a client's lower value replaces it)."""
        return {
            STATEMENT_TIMEOUT: str(self.statement_timeout_ms),
            IDLE_IN_TRANSACTION_TIMEOUT: str(self.idle_in_transaction_timeout_ms),
        }


def _configured_ms(variable: str, default: int, env: Mapping[str, str] | None) -> int:
    raw = envconfig.get_str(variable, env=env)
    if raw is None or not raw.strip():
        return default
    value = duration_ms(raw)
    if value is None or value < 1 or value > 2**31 - 1:
        raise ImproperlyConfigured(f"{variable}={raw!r} is not a positive duration (e.g. 300000, 30s or 5min)")
    return round(value)


def duration_ms(text: str, default_unit: str = "ms") -> float | None:
    """A PostgreSQL time setting's value in milliseconds, or None when it cannot be read with certainty."""
    match = _DURATION.match(text)
    if match is None:
        return None
    number, unit = match.group(1), match.group(2) or default_unit
    factor = _TIME_UNITS_MS.get(unit)
    if factor is None:
        return None
    value = float(number) * factor
    return value if math.isfinite(value) else None


def encoding_key(name: str) -> str:
    """An encoding name as PostgreSQL compares them (clean_encoding_name): letters and digits, lower case, so
    ``UTF8``, ``utf-8`` and asyncpg's quoted ``'utf-8'`` are one name."""
    return "".join(char for char in name.lower() if char.isascii() and char.isalnum())


def describe_ms(value: int) -> str:
    """A limit as a person reads it: 300000 -> 5min, 1500 -> 1500ms."""
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return f"{value}ms"


# ------------------------------------------------------------------------------------------------ the scope


@dataclass
class SessionScope:
    """What the wire session running a statement knows about itself (filled in at sign-in)."""

    limits: SessionLimits | None = None


_SCOPE: contextvars.ContextVar[SessionScope | None] = contextvars.ContextVar("phigate_session_scope", default=None)


def bind_scope() -> SessionScope:
    """A new scope for the calling task (and the tasks and threads it starts from now on)."""
    scope = SessionScope()
    _SCOPE.set(scope)
    return scope


def current_scope() -> SessionScope | None:
    return _SCOPE.get()


def current_limits() -> SessionLimits:
    """The calling session's limits; without a bound scope, the strictest of every data source this process
    serves (fail closed: a caller that lost the scope, say a thread started without the task's context, can
    only be stricter than the session's own data source)."""
    scope = _SCOPE.get()
    if scope is not None and scope.limits is not None:
        return scope.limits
    return strictest_limits()


def strictest_limits() -> SessionLimits:
    served = [SessionLimits.for_datasource(name) for name in configured_datasources(Access.READ)]
    if not served:
        return SessionLimits()
    return SessionLimits(
        datasource="",
        statement_timeout_ms=min(limits.statement_timeout_ms for limits in served),
        idle_in_transaction_timeout_ms=min(limits.idle_in_transaction_timeout_ms for limits in served),
    )


# ------------------------------------------------------------------------------------------------ judging


@dataclass(frozen=True)
class Refusal:
    """Why a setting is refused: ``sqlstate`` 42501 (not allowed) or 22023 (a value that cannot be read)."""

    message: str
    sqlstate: str = "42501"
    capped: bool = False  # a bounded setting raised or disabled: SET runs it as the limit instead (capped_statement)


def refusal(
    name: str,
    values: Sequence[str],
    *,
    limits: SessionLimits | None = None,
    search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    at_start_up: bool = False,
) -> Refusal | None:
    """Why setting ``name`` to ``values`` (the words of a SET, or one start-up value) is refused, or None.

    ``name`` as written (compared in lower case); ``values`` as PostgreSQL receives them, one item per
    comma-separated element of a SET (only search_path takes several).
    """
    lowered = name.lower()
    if lowered in RESET_ONLY:
        if lowered == "search_path" and _policy_path_prefix(values, search_path, whole=at_start_up):
            return None
        return Refusal(f"setting {lowered} cannot be changed through the gateway: {RESET_ONLY[lowered]}")
    if lowered not in SETTABLE:
        return Refusal(f"setting {lowered} cannot be changed through the gateway")
    if lowered == "client_encoding":
        if len(values) == 1 and encoding_key(values[0]) in UTF8_NAMES:
            return None
        return Refusal("client_encoding other than UTF8 is not allowed: converting a value can fail on its characters")
    limit = (limits or current_limits()).limit_ms(lowered)
    if limit is None:
        return None
    return _bounded(lowered, values, limit, (limits or current_limits()).datasource)


def _bounded(name: str, values: Sequence[str], limit: int, datasource: str) -> Refusal | None:
    where = f' on data source "{datasource}"' if datasource else ""
    bound = f"the limit{where} is {describe_ms(limit)} ({limit} ms); a session may lower it, not raise or disable it"
    if len(values) != 1:
        return Refusal(f"{name} takes one value", "22023")
    value = duration_ms(values[0])
    if value is None and not values[0].lstrip()[:1].isalpha():
        return Refusal(f'invalid value for parameter "{name}": "{values[0]}"; {bound}', "22023")
    if value is None:
        # Not a number at all (it starts with a letter): PostgreSQL's parse_int reads no digit and refuses it
        # (22023) without changing the setting, so the statement may go to PostgreSQL for its own error.
        return None
    if value < 1:
        return Refusal(f"{name} cannot be disabled (set to {values[0]!r}): {bound}", capped=True)
    if value > limit:
        return Refusal(f"{name} cannot be raised to {values[0]!r}: {bound}", capped=True)
    return None


def _policy_path_prefix(values: Sequence[str], policy_path: Sequence[str], *, whole: bool) -> bool:
    """Whether a search_path resolves every name it can resolve where the policy does: the policy's own path, or
    (``whole`` False: mid-session) a prefix of it, down to none at all (pg_dump sets ``''`` so that it writes
    qualified names). PostgreSQL searches pg_catalog first either way; a prefix can make a name unresolvable
    (an error, before any row), never resolve it to another relation than the policy's. Skipping a schema in
    the middle could (a later schema's table of the same name), so only prefixes are accepted."""
    words = [word for value in values for word in split_list(value)]
    policy = [schema for schema in policy_path if schema != "pg_catalog"]
    if words[:1] == ["pg_catalog"]:
        words = words[1:]
    if words == [""] and not whole:
        words = []  # SET search_path = '' / set_config('search_path', '', ...): nothing but pg_catalog
    if whole:
        return bool(words) and words == policy
    return words == policy[: len(words)]


def split_list(value: str) -> list[str]:
    """A list setting's elements as PostgreSQL reads them (SplitIdentifierString): unquoted names fold to lower
    case, double-quoted ones are kept as written. An element that cannot be read becomes "" (matches nothing)."""
    items: list[str] = []
    index, text = 0, value
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index < len(text) and text[index] == '"':
            end, word = index + 1, ""
            while True:
                close = text.find('"', end)
                if close < 0:
                    return [*items, ""]
                word += text[end:close]
                if text[close + 1 : close + 2] == '"':
                    word += '"'
                    end = close + 2
                    continue
                index = close + 1
                break
        else:
            start = index
            while index < len(text) and text[index] != "," and not text[index].isspace():
                index += 1
            word = text[start:index].lower()
        items.append(word)
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return items
        if text[index] != ",":
            return [*items, ""]
        index += 1


# ------------------------------------------------------------------------------------------------ start-up

# Start-up parameters that are not settings.
_PROTOCOL_PARAMETERS = frozenset({"user", "database", "options"})


@dataclass(frozen=True)
class StartupSettings:
    """A start-up packet's settings, judged: what goes upstream, and the gateway's own options."""

    upstream: dict[str, str] = field(default_factory=dict)  # lower-case setting name -> value
    application_name: str = ""
    approval: str = "error"


class StartupRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.sqlstate = refusal.sqlstate
        self.message = refusal.message


def split_options(options: str) -> list[str]:
    """The ``options`` start-up parameter split into words as PostgreSQL does (pg_split_opts): whitespace
    separates, a backslash takes the next character literally."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    escaped = False
    for char in options:
        if escaped:
            current.append(char)
            escaped, in_word = False, True
        elif char == "\\":
            escaped, in_word = True, True
        elif char.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
        else:
            current.append(char)
            in_word = True
    if in_word:
        words.append("".join(current))
    return words


def option_settings(options: str) -> list[tuple[str, str]]:
    """``-c name=value`` and ``--name=value`` settings from ``options``; any other switch is refused, since
    PostgreSQL would apply it and the gateway does not know it."""
    words = split_options(options)
    settings: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c":
            if index + 1 >= len(words):
                raise StartupRefused(Refusal('invalid start-up option: "-c" needs a name=value', "22023"))
            setting = words[index + 1]
            index += 2
        elif word.startswith(("-c", "--")):
            setting, index = word[2:], index + 1
        else:
            raise StartupRefused(
                Refusal(f'unsupported start-up option "{word}": only -c name=value settings are accepted', "22023")
            )
        name, equals, value = setting.partition("=")
        if not equals or not name:
            raise StartupRefused(Refusal(f"--{setting} requires a value", "22023"))
        settings.append((name.replace("-", "_"), value))
    return settings


def judge_startup(
    parameters: Mapping[str, str], limits: SessionLimits, search_path: Sequence[str] = DEFAULT_SEARCH_PATH
) -> StartupSettings:
    """Every setting a start-up packet asks for, judged; raises StartupRefused for the first one refused.

    As in PostgreSQL, ``options`` is applied first and explicit parameters after it (they win).
    """
    if "replication" in {name.lower() for name in parameters}:
        raise StartupRefused(Refusal("replication connections are not served by the gateway"))
    requested: list[tuple[str, str]] = option_settings(parameters.get("options", ""))
    requested += [(name, value) for name, value in parameters.items() if name not in _PROTOCOL_PARAMETERS]
    chosen: dict[str, str] = {}
    approval = "error"
    for name, value in requested:
        lowered = name.lower()
        if lowered.startswith("_pq_."):
            continue  # protocol extensions, answered with NegotiateProtocolVersion
        if lowered == GATEWAY_APPROVAL:
            if value not in ("wait", "error"):
                raise StartupRefused(Refusal(f'invalid value for parameter "{GATEWAY_APPROVAL}": "{value}"', "22023"))
            approval = value
            continue
        refused = refusal(lowered, [value], limits=limits, search_path=search_path, at_start_up=True)
        if refused is not None:
            raise StartupRefused(refused)
        chosen[lowered] = value
    application_name = chosen.pop("application_name", "")
    chosen.pop("client_encoding", None)  # the upstream always speaks UTF8 (the only value accepted)
    upstream = {**limits.upstream_parameters(), **chosen}
    return StartupSettings(upstream=upstream, application_name=application_name, approval=approval)


def upstream_application_name(agent: str, client_application: str) -> str:
    """``phigate-wire/<agent>/<client's name>``, within PostgreSQL's 63 bytes (NAMEDATALEN - 1), so the agent
    stays in what PostgreSQL logs and shows in pg_stat_activity whatever the client calls itself."""
    name = f"phigate-wire/{agent}"
    if client_application:
        name += f"/{client_application}"
    encoded = name.encode("utf-8")[:63]
    return encoded.decode("utf-8", "ignore")


def set_values(arguments: Sequence[object] | None) -> list[str] | None:
    """SET's values as PostgreSQL receives them, or None if one is not a plain constant."""
    values: list[str] = []
    for argument in arguments or ():
        constant = argument.val if isinstance(argument, ast.A_Const) and not argument.isnull else None
        if isinstance(constant, ast.String):
            values.append(constant.sval or "")
        elif isinstance(constant, ast.Integer):
            values.append(str(constant.ival))
        elif isinstance(constant, ast.Float):
            values.append(str(constant.fval))
        else:
            return None
    return values


def capped_statement(sql: str) -> str | None:
    """The text to run for a ``SET`` that raises or disables a bounded setting: ``SET name TO DEFAULT``, which is
    the data source's limit (the session's start-up value), so tools that switch timeouts off for their own run
    (pg_dump's ``SET statement_timeout = 0``) work, under the limit. None for any other statement."""
    try:
        statements = parse_statements(sql)
    except Exception:
        return None
    if len(statements) != 1 or not isinstance(node := statements[0].stmt, ast.VariableSetStmt):
        return None
    if node.kind != enums.VariableSetKind.VAR_SET_VALUE or not node.name:
        return None
    values = set_values(node.args)
    refused = refusal(node.name, values) if values is not None else None
    if refused is None or not refused.capped:
        return None
    return f"SET {'LOCAL ' if node.is_local else ''}{node.name.lower()} TO DEFAULT"
