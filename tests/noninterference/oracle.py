"""Run one statement as an agent on base and twins, over HTTP and the wire, and compare the answers.

Same answer means: same status, same SQLSTATE and (normalized) message when it failed, same column names (and
wire type OIDs), same row count, same notices, and the same rows up to a consistent renaming of pseudonyms: a
base pseudonym maps to exactly one twin pseudonym and back, across the whole answer of one statement. Masked
values (``***1234``, years, ``[redacted]``) must be equal as they are.

What is normalized, and why it carries no PHI:

* the data source and database names (they differ by construction) inside messages and values;
* ticket numbers in HA001 answers (``approval required: ticket 123``): the counter is shared by all statements;
* row order when the statement has no top-level ORDER BY (SQL leaves it unspecified; a hash aggregate returns
  groups in hash order). With an ORDER BY (or for EXPLAIN and VALUES) the order is compared;
* nothing else. A statement that hits the statement timeout (57014) on any side is *inconclusive*: it is counted,
  not compared (timing is not something a test can compare; the grammar keeps statements small). So is one the
  gateway could not decide because its own database did not answer (08006, "control plane unavailable": an
  outage of the machine, e.g. a busy cluster out of connections, not a function of any table's data). The tests
  bound how many may be inconclusive, so an outage that is really an answer cannot hide there.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from gateway.wire.sign_in import CONTROL_PLANE_MESSAGE, CONTROL_PLANE_UNAVAILABLE
from policy.models import PhiType

PSEUDONYM = re.compile(r"^(" + "|".join(sorted(t.value for t in PhiType)) + r")_[0-9a-f]{16}$")
TIMEOUT_STATES = frozenset({"57014"})
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="noninterference")
WIRE_TIMEOUT_SECONDS = 8.0


@dataclass(frozen=True)
class Answer:
    status: str  # executed | held | denied | invalid | failed | error | lost
    sqlstate: str = ""
    message: str = ""
    columns: tuple[str, ...] = ()
    types: tuple[int | str, ...] = ()  # wire: type OIDs; HTTP: column_types entries
    rows: tuple[tuple[Any, ...], ...] = ()
    rowcount: int | None = None
    truncated: bool = False
    notices: tuple[str, ...] = ()
    tag: str = ""  # the wire's command tag (SELECT n, EXPLAIN ...)

    @property
    def inconclusive(self) -> bool:
        if self.sqlstate in TIMEOUT_STATES:
            return True
        return self.sqlstate == CONTROL_PLANE_UNAVAILABLE and self.message == CONTROL_PLANE_MESSAGE

    def short(self) -> str:
        if self.status == "executed":
            return f"executed {self.rowcount} rows {list(self.columns)}"
        return f"{self.status} {self.sqlstate} {self.message[:160]}".strip()


# EXPLAIN ANALYZE measures time and cache hits: legitimately different on every run, and never a function of data.
_PLAN_TIMINGS = (
    (re.compile(r"actual time=[0-9.]+\.\.[0-9.]+"), "actual time=T"),
    (re.compile(r"(Planning|Execution) Time: [0-9.]+ ms"), r"\1 Time: T ms"),
    (re.compile(r'"(Actual Startup Time|Actual Total Time|Planning Time|Execution Time)": [0-9.]+'), r'"\1": T'),
    (re.compile(r"Buffers: [a-z =0-9]+"), "Buffers: B"),
)


class Normalizer:
    """Replace the names that differ by construction (data source, database) with placeholders."""

    def __init__(self, names: Sequence[str]) -> None:
        ordered = sorted(set(names), key=len, reverse=True)
        self.pattern = re.compile("|".join(re.escape(n) for n in ordered)) if ordered else None

    def text(self, value: str) -> str:
        return self.pattern.sub("<ds>", value) if self.pattern else value

    def message(self, sqlstate: str, value: str) -> str:
        value = self.text(value)
        if sqlstate == "HA001" or value.startswith("approval required"):
            value = re.sub(r"\d+", "N", value)
        return value

    def value(self, value: Any) -> Any:
        if isinstance(value, dict | list):  # json/jsonb loaded by psycopg (EXPLAIN (FORMAT json), json_agg ...)
            value = json.dumps(value, sort_keys=True, default=repr)
        if not isinstance(value, str):
            return value
        for pattern, replacement in _PLAN_TIMINGS:
            value = pattern.sub(replacement, value)
        return self.text(value)


# --------------------------------------------------------------------------------------------------------------
# Fronts
# --------------------------------------------------------------------------------------------------------------


class HttpFront:
    """POST /api/v1/queries through Django's test client (the web process's code in this process)."""

    name = "http"

    def __init__(self, client: Any, normalizer: Normalizer) -> None:
        self.client, self.norm = client, normalizer

    def run(self, datasource: str, sql: str, fresh: bool = False) -> Answer:
        response = self.client.post(
            "/api/v1/queries", {"datasource": datasource, "sql": sql, "reason": "noninterference"}, format="json"
        )
        body = response.json()
        status = str(body.get("status"))
        if status == "executed":
            return Answer(
                status=status,
                columns=tuple(body["columns"]),
                # Each column's type name, OID, JSON kind and mask: a function of the statement, never of PHI.
                types=tuple(json.dumps(column, sort_keys=True) for column in body["column_types"]),
                rows=tuple(tuple(self.norm.value(v) for v in row) for row in body["rows"]),
                rowcount=body["rowcount"],
                truncated=bool(body["truncated"]),
            )
        if status == "pending":
            return Answer(status="held", message=self.norm.text("; ".join(body.get("reasons") or [])))
        if status == "denied":
            return Answer(status="denied", message=self.norm.text("; ".join(body.get("reasons") or [])))
        error = str(body.get("error") or body.get("detail") or body)
        sqlstate = error.split(":", 1)[0] if re.match(r"^[0-9A-Z]{5}:", error) else ""
        return Answer(status=status, sqlstate=sqlstate, message=self.norm.message(sqlstate, error))

    def close(self) -> None:
        pass


class WireFront:
    """psycopg 3 to the gateway's port. ``mode``: text (extended protocol), binary, or simple (ClientCursor)."""

    def __init__(self, port: int, user: str, token: str, mode: str, normalizer: Normalizer) -> None:
        from urllib.parse import quote

        assert mode in {"text", "binary", "simple"}
        self.mode, self.norm, self.name = mode, normalizer, f"wire-{mode}"
        self.dsn = f"postgresql://{quote(user, safe='')}:{quote(token, safe='')}@127.0.0.1:{port}/"
        self.conns: dict[str, psycopg.Connection] = {}
        self.notices: dict[int, list[str]] = {}

    def _connect(self, datasource: str) -> psycopg.Connection:
        conn = psycopg.connect(self.dsn + datasource, autocommit=True, connect_timeout=20)
        if self.mode == "simple":
            conn.cursor_factory = psycopg.ClientCursor
        notices: list[str] = []
        conn.add_notice_handler(lambda diag: notices.append(f"{diag.sqlstate}: {diag.message_primary}"))
        self.notices[id(conn)] = notices
        return conn

    def connection(self, datasource: str) -> psycopg.Connection:
        conn = self.conns.get(datasource)
        if conn is None or conn.closed:
            conn = self.conns[datasource] = self._connect(datasource)
        return conn

    def run(self, datasource: str, sql: str, fresh: bool = False) -> Answer:
        conn = self._connect(datasource) if fresh else self.connection(datasource)
        notices = self.notices[id(conn)]
        notices.clear()
        timer = threading.Timer(WIRE_TIMEOUT_SECONDS, conn.cancel_safe)
        timer.start()
        try:
            with conn.cursor(binary=True) if self.mode == "binary" else conn.cursor() as cur:
                cur.execute(sql)  # type: ignore[call-overload]
                description = cur.description or []
                rows = cur.fetchall() if description else []
                answer = Answer(
                    status="executed",
                    tag=self.norm.text(cur.statusmessage or ""),
                    columns=tuple(d.name for d in description),
                    types=tuple(d.type_code for d in description),
                    rows=tuple(tuple(self.norm.value(v) for v in row) for row in rows),
                    rowcount=cur.rowcount,
                    notices=tuple(self.norm.text(n) for n in notices),
                )
        except psycopg.Error as exc:
            sqlstate = exc.sqlstate or ""
            diag = exc.diag
            message = (diag.message_primary or str(exc)).strip()
            if diag.message_detail:
                message += " | " + diag.message_detail
            status = "error"
            if conn.closed or conn.broken:
                status = "lost"
                message = message.splitlines()[0] if message else "connection lost"
            answer = Answer(
                status=status,
                sqlstate=sqlstate,
                message=self.norm.message(sqlstate, message),
                notices=tuple(self.norm.text(n) for n in notices),
            )
        finally:
            timer.cancel()
        if fresh:
            self.notices.pop(id(conn), None)
            conn.close()
        elif not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                conn.close()
        return answer

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


# --------------------------------------------------------------------------------------------------------------
# Comparison up to renaming of pseudonyms
# --------------------------------------------------------------------------------------------------------------


def _is_pseudonym(value: Any) -> bool:
    return isinstance(value, str) and PSEUDONYM.match(value) is not None


def _cell(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"[{i}] base {x!r} != twin {y!r}"
    return f"length base {len(a)} != twin {len(b)}"


def sequence_difference(base: Sequence[Sequence[Any]], twin: Sequence[Sequence[Any]]) -> str | None:
    """None if the twin's rows are the base's rows, in order, after one consistent renaming of pseudonyms."""
    forward: dict[str, str] = {}
    backward: dict[str, str] = {}
    for index, (b_row, t_row) in enumerate(zip(base, twin, strict=True)):
        if len(b_row) != len(t_row):
            return f"row {index}: {len(b_row)} != {len(t_row)} values"
        for column, (b, t) in enumerate(zip(b_row, t_row, strict=True)):
            if _is_pseudonym(b) and _is_pseudonym(t) and b.split("_", 1)[0] == t.split("_", 1)[0]:
                if forward.setdefault(b, t) != t or backward.setdefault(t, b) != b:
                    where = f"row {index} column {column}"
                    return f"{where}: pseudonym {b} already renamed to {forward[b]}, twin has {t} (renaming broken)"
            elif _cell(b) != _cell(t):
                return f"row {index} column {column}: base {_cell(b)!r} != twin {_cell(t)!r}"
    return None


def _colors(rows: Sequence[Sequence[Any]], rounds: int = 3) -> dict[str, str]:
    """Renaming-invariant colours of pseudonyms (colour refinement over the rows they occur in)."""
    color = {v: v.split("_", 1)[0] for row in rows for v in row if _is_pseudonym(v)}
    for _ in range(rounds):
        signatures: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            for column, value in enumerate(row):
                if value in color:
                    shape = tuple("*" if w == value else color[w] if w in color else _cell(w) for w in row)
                    signatures[value].append(repr((column, shape)))
        color = {v: hashlib.sha1(repr((c, sorted(signatures[v]))).encode()).hexdigest()[:16] for v, c in color.items()}
    return color


def canonical_multiset(rows: Sequence[Sequence[Any]]) -> list[tuple[str, ...]]:
    color = _colors(rows)
    return sorted(tuple("#" + color[v] if v in color else _cell(v) for v in row) for row in rows)


def multiset_difference(base: Sequence[Sequence[Any]], twin: Sequence[Sequence[Any]]) -> str | None:
    """None if some renaming of pseudonyms makes the row multisets equal (decided by renaming-invariant colours:
    different canonical forms prove that no renaming exists, so a reported difference is never a false alarm)."""
    if sequence_difference(base, twin) is None:
        return None
    a, b = canonical_multiset(base), canonical_multiset(twin)
    if a == b:
        return None
    only_base = Counter(a) - Counter(b)
    only_twin = Counter(b) - Counter(a)
    first_b = next(iter(only_base), None)
    first_t = next(iter(only_twin), None)
    return (
        f"{sum(only_base.values())} row(s) only in base, {sum(only_twin.values())} only in twin; "
        f"e.g. base {first_b} / twin {first_t}"
    )


@dataclass(frozen=True)
class Difference:
    kind: str  # status | error | columns | rowcount | rows | order | notices
    detail: str


def compare(base: Answer, twin: Answer, ordered: bool) -> Difference | None:
    if base.status != twin.status:
        return Difference("status", f"base {base.short()} / twin {twin.short()}")
    if (base.sqlstate, base.message) != (twin.sqlstate, twin.message):
        kind = "error" if base.status in {"error", "failed", "lost"} else "status"
        return Difference(
            kind, f"base {base.sqlstate} {base.message[:200]!r} / twin {twin.sqlstate} {twin.message[:200]!r}"
        )
    if base.notices != twin.notices:
        return Difference("notices", f"base {list(base.notices)[:3]} / twin {list(twin.notices)[:3]}")
    if (base.columns, base.types) != (twin.columns, twin.types):
        return Difference("columns", f"base {base.columns} {base.types} / twin {twin.columns} {twin.types}")
    if (base.rowcount, base.truncated, len(base.rows), base.tag) != (
        twin.rowcount,
        twin.truncated,
        len(twin.rows),
        twin.tag,
    ):
        return Difference(
            "rowcount",
            f"base {base.rowcount} rows (truncated {base.truncated}, {base.tag!r}) / "
            f"twin {twin.rowcount} (truncated {twin.truncated}, {twin.tag!r})",
        )
    if ordered:
        detail = sequence_difference(base.rows, twin.rows)
        if detail is None:
            return None
        if multiset_difference(base.rows, twin.rows) is None:
            return Difference("order", detail)
        return Difference("rows", detail)
    detail = multiset_difference(base.rows, twin.rows)
    return Difference("rows", detail) if detail else None


@dataclass
class Violation:
    sql: str
    front: str
    twin: str
    difference: Difference
    features: tuple[str, ...] = ()
    base: str = ""
    other: str = ""

    def describe(self) -> str:
        return (
            f"[{self.front} vs {self.twin}] {self.difference.kind}: {self.difference.detail}\n"
            f"    query: {self.sql}\n    base:  {self.base}\n    twin:  {self.other}"
        )


@dataclass
class Tally:
    """Figures of one run (for the test's assertion and docs/benchmarks.md)."""

    queries: int = 0
    runs: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    inconclusive: int = 0
    violations: list[Violation] = field(default_factory=list)
    violating_queries: set[str] = field(default_factory=set)
    harness_errors: list[str] = field(default_factory=list)  # the harness itself failed on a statement


def check(
    sql: str,
    *,
    ordered: bool,
    fronts: Sequence[HttpFront | WireFront],
    base: str,
    twins: Sequence[str],
    tally: Tally,
    features: Sequence[str] = (),
    fresh: bool = False,
) -> list[Violation]:
    """Run ``sql`` on base and twins over every front; return (and tally) the violations."""
    found: list[Violation] = []
    tally.queries += 1
    for front in fronts:
        names = (base, *twins)
        if isinstance(front, WireFront):  # one connection per data source: base and twins run side by side
            runs = [_POOL.submit(front.run, name, sql, fresh=fresh) for name in names]
            answers = {name: run.result() for name, run in zip(names, runs, strict=True)}
        else:
            answers = {name: front.run(name, sql, fresh=fresh) for name in names}
        tally.runs += len(answers)
        tally.by_status[f"{front.name}:{answers[base].status}"] += 1
        if any(a.inconclusive for a in answers.values()):
            tally.inconclusive += 1
            continue
        for name in twins:
            difference = compare(answers[base], answers[name], ordered)
            if difference is not None:
                found.append(
                    Violation(
                        sql=sql,
                        front=front.name,
                        twin=name,
                        difference=difference,
                        features=tuple(features),
                        base=answers[base].short(),
                        other=answers[name].short(),
                    )
                )
    if found:
        tally.violations.extend(found)
        tally.violating_queries.add(sql)
    return found


def is_ordered(sql: str) -> bool:
    """Whether row order is specified: a top-level ORDER BY, or EXPLAIN (plan lines), or a bare VALUES list."""
    import pglast

    try:
        statements = pglast.parse_sql(sql)
    except Exception:
        return True  # not even parsed: nothing comes back, order is moot
    if len(statements) != 1:
        return True
    stmt = statements[0].stmt
    kind = type(stmt).__name__
    if kind == "ExplainStmt":
        return True
    if kind == "SelectStmt":
        return bool(stmt.sortClause) or bool(stmt.valuesLists)
    return True
