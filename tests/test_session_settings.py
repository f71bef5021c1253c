"""Session settings: one allowlist for start-up parameters, ``-c`` options, SET and set_config, and the limits the
gateway sets on every upstream connection (policy/session_settings.py). Real gateway, real clients; what the
upstream runs under is read back from PostgreSQL itself (SHOW through the gateway, pg_stat_activity as owner)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from urllib.parse import quote

import asyncpg
import psycopg
import pytest
from psycopg import errors

from audit.models import AuditEvent, EventKind
from identity.roles import Role
from policy import session_settings
from policy.classifier import Verdict, classify
from policy.session_settings import SessionLimits, StartupRefused, judge_startup
from tests import environment
from tests import services as svc
from tests.factories import make_agent, make_user
from tests.test_classifier import CATALOG

# ------------------------------------------------------------------------------------------ the policy module


def test_options_are_split_like_postgresql() -> None:
    assert session_settings.split_options(r"-c search_path=a\ b  --DateStyle=ISO") == [
        "-c",
        "search_path=a b",
        "--DateStyle=ISO",
    ]
    assert session_settings.option_settings(r"-c statement_timeout=1s -cTimeZone=UTC --extra-float-digits=2") == [
        ("statement_timeout", "1s"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "2"),
    ]
    with pytest.raises(StartupRefused, match="unsupported start-up option"):
        session_settings.option_settings("-B 100")  # a server switch PostgreSQL would apply: refused, not dropped


def test_startup_settings_are_judged_and_the_limits_always_go_upstream() -> None:
    limits = SessionLimits("clinic", 300_000, 600_000)
    chosen = judge_startup(
        {
            "user": "a",
            "database": "clinic",
            "options": "-c statement_timeout=9s -c gateway.approval=wait",
            "DateStyle": "ISO, DMY",
            "client_encoding": "'utf-8'",
            "application_name": "tool",
            "search_path": "public",
        },
        limits,
    )
    assert chosen.approval == "wait" and chosen.application_name == "tool"
    assert chosen.upstream == {
        "statement_timeout": "9s",
        "idle_in_transaction_session_timeout": "600000",
        "datestyle": "ISO, DMY",
        "search_path": "public",
    }
    assert judge_startup({"user": "a"}, limits).upstream == limits.upstream_parameters()


@pytest.mark.parametrize(
    ("parameters", "sqlstate", "words"),
    [
        ({"options": "-c search_path=evil,public"}, "42501", "search_path"),
        ({"search_path": '"$user", public'}, "42501", "search_path"),
        ({"options": "-c work_mem=1GB"}, "42501", "work_mem"),
        ({"options": "-c statement_timeout=0"}, "42501", "cannot be disabled"),
        ({"statement_timeout": "6min"}, "42501", "is 5min"),
        ({"options": "-c idle_in_transaction_session_timeout=0"}, "42501", "cannot be disabled"),
        ({"options": "-c statement_timeout=0x10"}, "22023", "invalid value"),
        ({"client_encoding": "LATIN1"}, "42501", "UTF8"),
        ({"options": "-c role=postgres"}, "42501", "role"),
        ({"replication": "database"}, "42501", "replication"),
        ({"options": "-c gateway.approval=maybe"}, "22023", "gateway.approval"),
    ],
)
def test_startup_settings_refused(parameters: dict[str, str], sqlstate: str, words: str) -> None:
    with pytest.raises(StartupRefused) as refused:
        judge_startup({"user": "a", **parameters}, SessionLimits("clinic"))
    assert refused.value.sqlstate == sqlstate and words in refused.value.message


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        ("1s", "allowed"),
        ("1000", "allowed"),
        ("5min", "allowed"),
        ("300000", "allowed"),
        ("1.5", "allowed"),
        ("0", "capped"),
        ("0.4", "capped"),  # PostgreSQL rounds it to 0: disabled
        ("100us", "capped"),
        ("300001", "capped"),
        ("1h", "capped"),
        ("-1", "refused"),  # not a duration PostgreSQL takes for it
        ("5min 1s", "refused"),
        ("0x10", "refused"),  # hex, which PostgreSQL reads: refused rather than guessed
    ],
)
def test_set_and_set_config_follow_one_allowlist(value: str, outcome: str) -> None:
    """Within the limit: allowed. Raised or disabled: SET runs as ``SET ... TO DEFAULT`` (the limit), so tools
    that switch timeouts off for their own run (pg_dump) work under the limit; set_config cannot be rewritten
    and is refused. A value PostgreSQL would read some other way is refused."""
    settings = ["statement_timeout"] + (["idle_in_transaction_session_timeout"] if value != "300001" else [])
    for setting in settings:  # 300001 ms is within the idle-in-transaction limit (10min)
        sql = f"SET {setting} = '{value}'"
        expected = Verdict.DENIED if outcome == "refused" else Verdict.ALLOWED
        assert classify(sql, CATALOG).verdict is expected, sql
        capped = f"SET {setting} TO DEFAULT" if outcome == "capped" else None
        assert session_settings.capped_statement(sql) == capped, sql
    expected = Verdict.ALLOWED if outcome == "allowed" else Verdict.DENIED
    assert classify(f"SELECT set_config('statement_timeout', '{value}', false)", CATALOG).verdict is expected


@pytest.mark.parametrize(
    ("setting", "value", "allowed"),
    [
        ("DateStyle", "ISO, DMY", True),
        ("TimeZone", "UTC", True),
        ("client_encoding", "utf-8", True),
        ("client_encoding", "LATIN1", False),
        ("search_path", "evil", False),
        ("work_mem", "1GB", False),
        ("default_transaction_read_only", "off", False),
        ("role", "postgres", False),
    ],
)
def test_set_config_is_judged_like_set(setting: str, value: str, allowed: bool) -> None:
    expected = Verdict.ALLOWED if allowed else Verdict.DENIED
    assert classify(f"SET {setting} = '{value}'", CATALOG).verdict is expected
    assert classify(f"SELECT set_config('{setting}', '{value}', true)", CATALOG).verdict is expected


def test_set_config_needs_constants() -> None:
    for sql in (
        "SELECT set_config('statement_timeout', '1' || 's', false)",
        "SELECT set_config(name, '1s', false) FROM pg_settings",
        "SELECT set_config('statement_timeout', '1s')",
    ):
        assert classify(sql, CATALOG).verdict is Verdict.DENIED, sql


def test_limits_are_configured_per_data_source() -> None:
    env = {"DATASOURCE_CLINIC_STATEMENT_TIMEOUT": "30s", "DATASOURCE_CLINIC_IDLE_IN_TRANSACTION_TIMEOUT": "90000"}
    limits = SessionLimits.for_datasource("clinic", env)
    assert (limits.statement_timeout_ms, limits.idle_in_transaction_timeout_ms) == (30_000, 90_000)
    assert SessionLimits.for_datasource("other", env) == SessionLimits("other")
    with pytest.raises(Exception, match="DATASOURCE_CLINIC_STATEMENT_TIMEOUT"):
        SessionLimits.for_datasource("clinic", {"DATASOURCE_CLINIC_STATEMENT_TIMEOUT": "0"})


def test_without_a_session_scope_the_strictest_served_limits_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    """A classification that lost its session's scope can only be stricter than the session's data source."""
    monkeypatch.setenv("DATASOURCE_FASTLANE_READ_URL", "postgresql://nobody@127.0.0.1/nothing")
    monkeypatch.setenv("DATASOURCE_FASTLANE_STATEMENT_TIMEOUT", "2s")
    assert session_settings.current_scope() is None
    assert session_settings.capped_statement("SET statement_timeout = '3s'") == "SET statement_timeout TO DEFAULT"
    assert session_settings.capped_statement("SET statement_timeout = '2s'") is None


def test_upstream_application_name_keeps_the_agent_within_63_bytes() -> None:
    name = session_settings.upstream_application_name("agent-7", "é" * 40)
    assert name.startswith("phigate-wire/agent-7/") and len(name.encode()) <= 63
    assert session_settings.upstream_application_name("agent-7", "") == "phigate-wire/agent-7"


# ------------------------------------------------------------------------------------------ over the wire


@pytest.fixture
def agent(services):  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    return {"agent": agent, "token": token, "dsn": dsn, "port": services.gateway_port}


def _with_options(dsn: str, options: str, **extra: str) -> str:
    query = "&".join([f"options={quote(options)}", *(f"{k}={quote(v)}" for k, v in extra.items())])
    return f"{dsn}?{query}"


def _show(conn: psycopg.Connection, name: str) -> str:  # type: ignore[type-arg]
    row = conn.execute(f"SHOW {name}").fetchone()
    assert row is not None
    return str(row[0])


def _upstream_application_names(services, agent_name: str) -> list[str]:  # type: ignore[no-untyped-def]
    with psycopg.connect(services.target.owner_url) as owner:
        rows = owner.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
            " AND (application_name = %s OR application_name LIKE %s)",
            (f"phigate-wire/{agent_name}", f"phigate-wire/{agent_name}/%"),
        ).fetchall()
    return [row[0] for row in rows]


def test_startup_options_reach_the_upstream(services, agent) -> None:  # type: ignore[no-untyped-def]
    options = r"-c statement_timeout=7s -c DateStyle=SQL,\ DMY -c TimeZone=Asia/Tokyo -c IntervalStyle=sql_standard"
    dsn = _with_options(agent["dsn"], options, application_name="report-tool")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _show(conn, "statement_timeout") == "7s"
        assert _show(conn, "DateStyle") == "SQL, DMY"
        assert _show(conn, "TimeZone") == "Asia/Tokyo"
        assert _show(conn, "IntervalStyle") == "sql_standard"
        assert _show(conn, "idle_in_transaction_session_timeout") == "10min"
        # The client sees its own application name and settings; PostgreSQL's view names the agent.
        assert conn.info.parameter_status("application_name") == "report-tool"
        assert conn.info.parameter_status("DateStyle") == "SQL, DMY"
        assert conn.info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert _upstream_application_names(services, agent["agent"].name) == [
            f"phigate-wire/{agent['agent'].name}/report-tool"
        ]


def test_jdbc_style_startup_parameters_reach_the_upstream(agent) -> None:  # type: ignore[no-untyped-def]
    async def run() -> tuple[str, ...]:
        conn = await asyncpg.connect(
            agent["dsn"],
            server_settings={"search_path": "public", "extra_float_digits": "3", "TimeZone": "UTC"},
        )
        try:
            return (
                await conn.fetchval("SHOW search_path"),
                await conn.fetchval("SHOW extra_float_digits"),
                await conn.fetchval("SHOW TimeZone"),
            )
        finally:
            await conn.close()

    assert asyncio.run(run()) == ("public", "3", "UTC")


def test_default_limits_are_set_on_every_upstream(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        assert _show(conn, "statement_timeout") == "5min"
        assert _show(conn, "idle_in_transaction_session_timeout") == "10min"
        conn.execute("SET statement_timeout = '1s'")  # lowering is allowed
        assert _show(conn, "statement_timeout") == "1s"
        conn.execute("RESET statement_timeout")  # and the default it returns to is the limit
        assert _show(conn, "statement_timeout") == "5min"
        conn.execute("SELECT set_config('statement_timeout', '2s', false)")
        assert _show(conn, "statement_timeout") == "2s"
        conn.execute("RESET ALL")
        assert _show(conn, "statement_timeout") == "5min"


@pytest.mark.parametrize(
    "sql",
    ["SET statement_timeout = 0", "SET statement_timeout = '1h'", "SET idle_in_transaction_session_timeout = 0"],
)
def test_limits_cannot_be_raised_or_disabled(agent, sql: str) -> None:  # type: ignore[no-untyped-def]
    """pg_dump sends ``SET statement_timeout = 0``: it runs, and the session keeps the data source's limit."""
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        conn.execute("SET statement_timeout = '2s'")
        conn.execute("SET idle_in_transaction_session_timeout = '2s'")
        conn.execute(sql)
        assert _show(conn, "statement_timeout") == ("5min" if "statement_timeout =" in sql else "2s")
        expected_idle = "10min" if "idle_in_transaction" in sql else "2s"
        assert _show(conn, "idle_in_transaction_session_timeout") == expected_idle


def test_set_config_cannot_raise_or_disable_a_limit(agent) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute("SELECT set_config('statement_timeout', '0', false)")
        assert 'the limit on data source "clinic" is' in str(refused.value)
        assert _show(conn, "statement_timeout") == "5min"


@pytest.mark.parametrize(
    ("options", "sqlstate", "words"),
    [
        ("-c search_path=evil,public", "42501", "search_path"),
        ("-c work_mem=1GB", "42501", "work_mem"),
        ("-c statement_timeout=0", "42501", 'limit on data source "clinic" is 5min'),
        ("-B 100", "22023", "unsupported start-up option"),
    ],
)
def test_refused_startup_settings_get_a_fatal_error(agent, options: str, sqlstate: str, words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(psycopg.OperationalError, match=words):
        psycopg.connect(_with_options(agent["dsn"], options), connect_timeout=10)

    async def with_asyncpg() -> None:
        await asyncpg.connect(agent["dsn"], server_settings={"options": options})

    with pytest.raises(asyncpg.PostgresError) as raised:
        asyncio.run(with_asyncpg())
    assert raised.value.sqlstate == sqlstate
    refusals = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, agent_id=agent["agent"].pk)
    assert refusals.count() == 2 and all(words.split(" is ")[0] in event.summary for event in refusals)


# ------------------------------------------------------------------------------ per data source, for real


@pytest.fixture(scope="module")
def strict_gateway(services) -> Iterator[int]:  # type: ignore[no-untyped-def]
    process, port = svc.gateway(
        services.target.read_url,
        services.log_dir,
        name="gateway-strict-limits",
        extra_env={
            f"DATASOURCE_{environment.DATASOURCE.upper()}_STATEMENT_TIMEOUT": "1s",
            f"DATASOURCE_{environment.DATASOURCE.upper()}_IDLE_IN_TRANSACTION_TIMEOUT": "1500ms",
            "AUDIT_JOURNAL_DIR": "",
        },
    )
    yield port
    process.stop()


def test_per_data_source_limits_apply_upstream(strict_gateway: int) -> None:
    agent, token = make_agent(make_user(Role.ENGINEER))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{strict_gateway}/clinic"
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert _show(conn, "statement_timeout") == "1s"
        assert _show(conn, "idle_in_transaction_session_timeout") == "1500ms"
        conn.execute("SET statement_timeout = '2s'")  # above the limit: runs as the limit
        assert _show(conn, "statement_timeout") == "1s"
        conn.execute("SET statement_timeout = '500ms'")
        with pytest.raises(errors.QueryCanceled):  # the limit is PostgreSQL's own statement timeout
            conn.execute("SELECT count(*) FROM generate_series(1, 2000000000)")
    with pytest.raises(psycopg.OperationalError, match="cannot be raised"):
        psycopg.connect(_with_options(dsn, "-c statement_timeout=5s"), connect_timeout=10)
    with psycopg.connect(dsn) as conn:  # a transaction left idle is ended by the upstream, and the client told
        conn.execute("SELECT 1")
        time.sleep(2.5)
        with pytest.raises(errors.IdleInTransactionSessionTimeout):
            conn.execute("SELECT 1")


def test_set_application_name_keeps_the_agent_in_postgresqls_view(services, agent) -> None:  # type: ignore[no-untyped-def]
    """Mid-session, SET application_name runs with the agent's name in front (pg_stat_activity and PostgreSQL's
    logs still name the agent) and the client is told its own name; set_config cannot drop the prefix."""
    name = agent["agent"].name
    with psycopg.connect(agent["dsn"], autocommit=True) as conn:
        conn.execute("SET application_name = 'nightly-report'")
        assert _upstream_application_names(services, name) == [f"phigate-wire/{name}/nightly-report"]
        assert conn.info.parameter_status("application_name") == "nightly-report"
        conn.execute("SET application_name = 'it''s'")  # quoting survives the rewrite
        assert _upstream_application_names(services, name) == [f"phigate-wire/{name}/it's"]
        with pytest.raises(errors.InsufficientPrivilege, match="keeps the agent's name"):
            conn.execute("SELECT set_config('application_name', 'anonymous', false)")
        conn.execute("RESET application_name")
        assert _upstream_application_names(services, name) == [f"phigate-wire/{name}"]
        assert conn.info.parameter_status("application_name") == ""
