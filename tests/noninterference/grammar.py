"""A hypothesis grammar of read statements: positions x functions over the clinic's PHI and non-PHI columns.

Positions: select list (direct column, computed expression, set-returning function, window function, scalar
subquery), WHERE, JOIN ON, GROUP BY, HAVING, aggregate FILTER, ORDER BY, DISTINCT / DISTINCT ON, LIMIT / OFFSET
expressions, window PARTITION BY / ORDER BY, set-returning functions in FROM (LATERAL), derived tables, CTEs
(also RECURSIVE), set operations, EXPLAIN with option lists, VALUES and TABLE.

Functions: the string, date and arithmetic functions an agent would use to pick a value apart (ascii, substr,
length, position, md5, regexp_*, split_part, to_char, extract, date arithmetic, ||, LIKE, comparisons ...),
conditionals (CASE, nullif, coalesce, greatest, least), expressions that may raise (division, casts), and
aggregates. Literals include real values of the base (names, MRNs, SSN fragments), so equality tests and
pseudonym guesses can hit. Statements may be nonsense or invalid: the oracle only asks that base and twins agree.

Nothing here is non-deterministic by design: no random(), now(), clock or backend functions, no OIDs, no ctid
(the twins keep the physical layout, but reading it is not what the harness is about).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypothesis import strategies as st

from demo.clinic import DEFAULT_SEED, generate_patients
from tests.noninterference.serving import PATIENTS


@dataclass(frozen=True)
class Col:
    sql: str
    type: str  # int | text | date | ts | bool
    phi: str | None = None


TABLE_COLUMNS: dict[str, list[tuple[str, str, str | None]]] = {
    "patients": [
        ("id", "int", None),
        ("mrn", "text", "mrn"),
        ("full_name", "text", "name"),
        ("date_of_birth", "date", "birth_date"),
        ("ssn", "text", "ssn"),
        ("phone", "text", "phone"),
        ("email", "text", "email"),
        ("address", "text", "address"),
        ("zip", "text", "zip"),
    ],
    "encounters": [
        ("id", "int", None),
        ("patient_id", "int", None),
        ("admitted_at", "ts", "service_date"),
        ("diagnosis_code", "text", None),
        ("notes", "text", "clinical_notes"),
    ],
    "prescriptions": [
        ("id", "int", None),
        ("encounter_id", "int", None),
        ("drug", "text", None),
        ("dose", "text", None),
    ],
    "diagnosis_codes": [("code", "text", None), ("description", "text", None)],
}

# Real values of the base (demo.clinic is seeded: the same generator the base was loaded with).
_PEOPLE = generate_patients(random.Random(DEFAULT_SEED), PATIENTS)
BASE_NAMES = [p.full_name for p in _PEOPLE]
BASE_FIRST = sorted({p.full_name.split(" ")[0] for p in _PEOPLE})
BASE_MRNS = [p.mrn for p in _PEOPLE]
BASE_SSNS = [p.ssn for p in _PEOPLE]
TEXT_LITERALS = (
    ["9", "1", "0", "5", "-", "a", "e", "J", "M", " ", "MRN", "555", "Pt", "DOB", "example.com", "I10", "E11.9"]
    + BASE_NAMES[:8]
    + BASE_FIRST[:6]
    + BASE_MRNS[:4]
    + BASE_SSNS[:4]
    + [s[:3] for s in BASE_SSNS[:4]]
)
PATTERNS = ["9%", "%a%", "J%", "%-%", "___-%", "%1", "MRN%", "%e", "9__-%", "%example%", "A%", "%Doe%"]
REGEXES = ["[0-9]", "9", "^9", "[aeiou]", "-", " ", "[A-Z]", "[5-9]$", "^[0-9]{3}"]
DATES = ["1950-01-01", "1980-06-15", "2000-01-01", "2010-12-31"]


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class Generated:
    sql: str
    features: tuple[str, ...]


@dataclass
class Scope:
    cols: list[Col] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # unique row keys usable as ORDER BY tie-breakers
    first_id: str | None = None


class Gen:
    """One statement's generator; every choice is a hypothesis draw, so runs are reproducible from the seed."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.features: set[str] = set()
        self.aliases = 0
        self.ctes: list[tuple[str, list[Col]]] = []
        self.phi_rate = 70  # percent of column references that pick a PHI column when one fits

    @contextmanager
    def phi(self, rate: int) -> Iterator[None]:
        saved, self.phi_rate = self.phi_rate, rate
        try:
            yield
        finally:
            self.phi_rate = saved

    # -- choices -----------------------------------------------------------------------------------------------

    def pick(self, options: list | tuple):  # type: ignore[no-untyped-def,type-arg]
        return options[self.draw(st.integers(0, len(options) - 1))]

    def chance(self, percent: int) -> bool:
        return self.draw(st.integers(0, 99)) < percent

    def num(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def alias(self, prefix: str) -> str:
        self.aliases += 1
        return f"{prefix}{self.aliases}"

    def feat(self, name: str) -> None:
        self.features.add(name)

    # -- leaves ------------------------------------------------------------------------------------------------

    def column(self, scope: Scope, typ: str) -> str | None:
        cols = [c for c in scope.cols if c.type == typ]
        if not cols:
            return None
        phi = [c for c in cols if c.phi]
        plain = [c for c in cols if not c.phi]
        if phi and self.chance(self.phi_rate):
            chosen = self.pick(phi)
        elif plain:
            chosen = self.pick(plain)
        elif self.phi_rate == 0:
            return None
        else:
            chosen = self.pick(cols)
        if chosen.phi:
            self.feat(f"phi:{chosen.phi}")
        return chosen.sql

    def literal(self, typ: str) -> str:
        if typ == "int":
            return str(self.pick([0, 1, 2, 3, 5, 9, 48, 50, 52, 57, 65, 100]))
        if typ == "text":
            return _q(self.pick(TEXT_LITERALS))
        if typ == "date":
            return f"date {_q(self.pick(DATES))}"
        if typ == "ts":
            return f"timestamptz {_q(self.pick(DATES) + ' 12:00:00+00')}"
        return self.pick(["true", "false"])

    def leaf(self, scope: Scope, typ: str) -> str:
        if self.chance(80):
            col = self.column(scope, typ)
            if col is not None:
                return col
        return self.literal(typ)

    # -- expressions -------------------------------------------------------------------------------------------

    def expr(self, scope: Scope, typ: str, depth: int = 2) -> str:
        if depth <= 0 or self.chance(25):
            return self.leaf(scope, typ) if typ != "bool" else self.boolean(scope, 0)
        return {"int": self.int_expr, "text": self.text_expr, "date": self.date_expr, "ts": self.ts_expr}.get(
            typ, self.boolean
        )(scope, depth - 1)

    def anytype(self, scope: Scope, depth: int = 2) -> tuple[str, str]:
        typ = self.pick(["text", "text", "int", "date"])
        return self.expr(scope, typ, depth), typ

    def int_expr(self, scope: Scope, d: int) -> str:
        t = lambda: self.expr(scope, "text", d)  # noqa: E731
        i = lambda: self.expr(scope, "int", d)  # noqa: E731
        dt = lambda: self.expr(scope, self.pick(["date", "ts"]), d)  # noqa: E731
        kind = self.num(0, 27)
        if kind <= 2:
            self.feat("fn:ascii")
            return f"ascii({t()})"
        if kind == 3:
            self.feat("fn:length")
            return f"{self.pick(['length', 'octet_length', 'char_length'])}({t()})"
        if kind == 4:
            self.feat("fn:position")
            return f"position({self.literal('text')} in {t()})"
        if kind == 5:
            return f"strpos({t()}, {self.literal('text')})"
        if kind == 6:
            self.feat("fn:extract")
            field_ = self.pick(["month", "day", "year", "dow", "doy", "hour"])
            return f"extract({field_} from {dt()})::int"
        if kind == 7:
            self.feat("fn:date_arith")
            return f"({self.expr(scope, 'date', d)} - date '2000-01-01')"
        if kind in (8, 9):
            return f"({i()} {self.pick(['+', '-', '*', '%'])} {i()})"
        if kind == 10:
            self.feat("raise:division")
            return f"1 / ({i()} - {self.literal('int')})"
        if kind == 11:
            self.feat("raise:cast")
            return f"substr({t()}, {self.num(1, 6)}, 1)::int"
        if kind == 12:
            self.feat("raise:cast")
            return f"{t()}::int"
        if kind == 13:
            self.feat("cond:case")
            return f"CASE WHEN {self.boolean(scope, d)} THEN {i()} ELSE {i()} END"
        if kind == 14:
            self.feat("cond:nullif")
            return f"nullif({i()}, {i()})"
        if kind == 15:
            self.feat("cond:coalesce")
            return f"coalesce({i()}, {i()})"
        if kind == 16:
            self.feat("cond:greatest")
            return f"{self.pick(['greatest', 'least'])}({i()}, {i()})"
        if kind == 17:
            self.feat("srf:regexp_matches_count")
            return f"(SELECT count(*) FROM regexp_matches({t()}, {_q(self.pick(REGEXES))}, 'g'))"
        if kind == 18:
            self.feat("srf:unnest_count")
            return f"(SELECT count(*) FROM unnest(string_to_array({t()}, {self.literal('text')})))"
        if kind == 19:
            self.feat("subquery:scalar")
            q = self.alias("q")
            inner = self.table_scope("patients", q)
            merged = Scope(cols=inner.cols + scope.cols)
            agg = self.pick(
                ["count(*)", f"max(ascii({self.expr(merged, 'text', 1)}))", f"sum({self.expr(merged, 'int', 1)})"]
            )
            return f"(SELECT {agg} FROM patients {q} WHERE {self.boolean(merged, 1)})"
        if kind == 20:
            return f"abs({i()})"
        if kind == 21:
            return f"array_length(string_to_array({t()}, {self.literal('text')}), 1)"
        if kind == 22:
            return f"({self.boolean(scope, d)})::int"
        if kind == 23:
            self.feat("fn:date_part")
            return f"date_part({_q(self.pick(['day', 'month', 'minute', 'second']))}, {dt()})::int"
        if kind == 24:
            self.feat("raise:cast")
            return f"to_char({dt()}, 'DD')::int / ({i()} - {self.literal('int')})"
        if kind == 25:
            return f"length({t()}) % {self.num(2, 9)}"
        return self.leaf(scope, "int")

    def text_expr(self, scope: Scope, d: int) -> str:
        t = lambda: self.expr(scope, "text", d)  # noqa: E731
        i = lambda: self.expr(scope, "int", d)  # noqa: E731
        kind = self.num(0, 27)
        if kind <= 2:
            self.feat("fn:substr")
            return f"substr({t()}, {self.num(1, 9)}, {self.num(1, 4)})"
        if kind == 3:
            self.feat("fn:case_change")
            return f"{self.pick(['upper', 'lower', 'initcap', 'btrim'])}({t()})"
        if kind == 4:
            self.feat("fn:reverse")
            return f"reverse({t()})"
        if kind == 5:
            self.feat("fn:md5")
            return f"md5({t()})"
        if kind == 6:
            self.feat("fn:left_right")
            return f"{self.pick(['left', 'right'])}({t()}, {self.num(1, 5)})"
        if kind == 7:
            self.feat("fn:replace")
            return f"replace({t()}, {self.literal('text')}, {self.literal('text')})"
        if kind == 8:
            self.feat("fn:regexp_replace")
            return f"regexp_replace({t()}, {_q(self.pick(REGEXES))}, '#', 'g')"
        if kind == 9:
            self.feat("fn:split_part")
            return f"split_part({t()}, {_q(self.pick(['-', ' ', '@', '.']))}, {self.num(1, 3)})"
        if kind in (10, 11):
            self.feat("fn:concat")
            return f"({t()} || {t()})"
        if kind == 12:
            self.feat("fn:to_char")
            moment = self.expr(scope, self.pick(["date", "ts"]), d)
            return f"to_char({moment}, {_q(self.pick(['MM', 'YYYY', 'DD', 'Mon', 'YYYY-MM', 'HH24']))})"
        if kind == 13:
            self.feat("fn:cast_text")
            return f"({self.expr(scope, self.pick(['date', 'ts', 'int']), d)})::text"
        if kind == 14:
            self.feat("cond:case")
            return f"CASE WHEN {self.boolean(scope, d)} THEN {t()} ELSE {t()} END"
        if kind == 15:
            self.feat("cond:nullif")
            return f"nullif({t()}, {self.literal('text')})"
        if kind == 16:
            self.feat("cond:coalesce")
            return f"coalesce({t()}, {t()})"
        if kind == 17:
            self.feat("cond:greatest")
            return f"{self.pick(['greatest', 'least'])}({t()}, {t()})"
        if kind == 18:
            self.feat("fn:translate")
            return f"translate({t()}, '0123456789', 'abcdefghij')"
        if kind == 19:
            return f"lpad({t()}, {self.num(3, 14)}, '*')"
        if kind == 20:
            self.feat("subquery:scalar")
            q = self.alias("q")
            col = self.pick(["full_name", "ssn", "mrn", "zip", "phone"])
            self.feat(f"phi:{col}")
            return f"(SELECT {q}.{col} FROM patients {q} WHERE {q}.id = {i()})"
        if kind == 21:
            return f"concat({t()}, {i()})"
        if kind == 22:
            return f"({i()})::text"
        if kind == 23:
            self.feat("fn:concat")
            return f"concat_ws('/', {t()}, {t()})"
        return self.leaf(scope, "text")

    def date_expr(self, scope: Scope, d: int) -> str:
        kind = self.num(0, 5)
        if kind == 0:
            self.feat("fn:date_arith")
            return f"({self.expr(scope, 'date', d)} + {self.num(1, 400)})"
        if kind == 1:
            return f"({self.expr(scope, 'ts', d)})::date"
        if kind == 2:
            self.feat("fn:date_trunc")
            return f"date_trunc('month', {self.expr(scope, 'date', d)})::date"
        if kind == 3:
            self.feat("cond:greatest")
            return f"greatest({self.expr(scope, 'date', d)}, {self.literal('date')})"
        return self.leaf(scope, "date")

    def ts_expr(self, scope: Scope, d: int) -> str:
        if self.chance(40):
            self.feat("fn:date_arith")
            return f"({self.expr(scope, 'ts', d)} + interval '{self.num(1, 30)} days')"
        return self.leaf(scope, "ts")

    def boolean(self, scope: Scope, d: int) -> str:
        kind = self.num(0, 19)
        t = lambda: self.expr(scope, "text", d)  # noqa: E731
        i = lambda: self.expr(scope, "int", d)  # noqa: E731
        if kind <= 3:
            return f"{i()} {self.pick(['<', '<=', '=', '<>', '>', '>='])} {i()}"
        if kind == 4:
            return f"{t()} {self.pick(['=', '<', '>', '<>'])} {self.literal('text') if self.chance(60) else t()}"
        if kind == 5:
            self.feat("op:like")
            return f"{t()} {self.pick(['LIKE', 'NOT LIKE', 'ILIKE'])} {_q(self.pick(PATTERNS))}"
        if kind == 6:
            self.feat("op:regex")
            return f"{t()} ~ {_q(self.pick(REGEXES))}"
        if kind == 7:
            self.feat("op:between")
            return f"{t()} BETWEEN {self.literal('text')} AND {self.literal('text')}"
        if kind == 8:
            self.feat("op:is_null")
            return f"{t()} IS {self.pick(['NULL', 'NOT NULL'])}"
        if kind == 9:
            typ = self.pick(["date", "ts"])
            return f"{self.expr(scope, typ, d)} {self.pick(['<', '>', '='])} {self.literal(typ)}"
        if kind == 10 and d > 0:
            return f"NOT ({self.boolean(scope, d - 1)})"
        if kind in (11, 12) and d > 0:
            return f"({self.boolean(scope, d - 1)} {self.pick(['AND', 'OR'])} {self.boolean(scope, d - 1)})"
        if kind == 13 and scope.first_id:
            self.feat("subquery:exists")
            q = self.alias("q")
            inner = self.table_scope("patients", q)
            merged = Scope(cols=inner.cols + scope.cols)
            condition = self.boolean(merged, max(d - 1, 0))
            return f"EXISTS (SELECT 1 FROM patients {q} WHERE {q}.id = {scope.first_id} AND {condition})"
        if kind == 14:
            self.feat("subquery:in")
            q = self.alias("q")
            inner = self.table_scope("patients", q)
            return f"{i()} IN (SELECT {self.expr(inner, 'int', 1)} FROM patients {q} WHERE {q}.id <= {self.num(1, 5)})"
        if kind == 15:
            self.feat("op:in_list")
            return f"{t()} IN ({self.literal('text')}, {self.literal('text')})"
        if kind == 16:
            return f"starts_with({t()}, {self.literal('text')})"
        if kind == 17:
            return f"{i()} IS DISTINCT FROM {i()}"
        return f"{i()} {self.pick(['<', '>', '='])} {self.literal('int')}"

    # -- FROM --------------------------------------------------------------------------------------------------

    def table_scope(self, table: str, alias: str) -> Scope:
        cols = [Col(f"{alias}.{name}", typ, phi) for name, typ, phi in TABLE_COLUMNS[table]]
        key = "code" if table == "diagnosis_codes" else "id"
        return Scope(cols=cols, ids=[f"{alias}.{key}"], first_id=f"{alias}.id" if key == "id" else None)

    def from_clause(self) -> tuple[str, Scope]:
        shape = self.num(0, 11)
        if shape <= 3:
            table = self.pick(["patients", "patients", "encounters", "prescriptions", "diagnosis_codes"])
            a = self.alias(table[0])
            scope = self.table_scope(table, a)
            text = f"{table} {a}"
        elif shape <= 6:
            p, e = self.alias("p"), self.alias("e")
            sp, se = self.table_scope("patients", p), self.table_scope("encounters", e)
            join = self.pick(["JOIN", "LEFT JOIN"])
            if self.chance(75):
                text = f"patients {p} {join} encounters {e} ON {e}.patient_id = {p}.id"
            else:
                self.feat("pos:join_on")
                both = Scope(cols=sp.cols + se.cols)
                text = f"patients {p} {join} encounters {e} ON {e}.patient_id = {p}.id AND {self.boolean(both, 1)}"
            scope = Scope(cols=sp.cols + se.cols, ids=sp.ids + se.ids, first_id=sp.first_id)
        elif shape == 7:
            p, q = self.alias("p"), self.alias("p")
            sp, sq = self.table_scope("patients", p), self.table_scope("patients", q)
            self.feat("pos:join_on")
            both = Scope(cols=sp.cols + sq.cols)
            bound = self.num(2, 8)
            text = (
                f"patients {p} JOIN patients {q} ON {p}.id < {q}.id AND {q}.id <= {bound} AND {self.boolean(both, 1)}"
            )
            scope = Scope(cols=sp.cols + sq.cols, ids=sp.ids + sq.ids, first_id=sp.first_id)
        elif shape == 8:
            e, r = self.alias("e"), self.alias("r")
            se, sr = self.table_scope("encounters", e), self.table_scope("prescriptions", r)
            text = f"encounters {e} JOIN prescriptions {r} ON {r}.encounter_id = {e}.id"
            scope = Scope(cols=se.cols + sr.cols, ids=se.ids + sr.ids, first_id=se.first_id)
        elif shape == 9 and self.ctes:
            name, cols = self.pick(self.ctes)
            a = self.alias("c")
            self.feat("cte")
            scope = Scope(cols=[Col(f"{a}.{c.sql}", c.type, c.phi) for c in cols])
            text = f"{name} {a}"
        elif shape == 10:
            self.feat("from:derived")
            inner_from, inner = self.from_clause()
            items = [self.expr(inner, typ, 1) for typ in ("int", "text")]
            a = self.alias("s")
            where = f" WHERE {self.boolean(inner, 1)}" if self.chance(40) else ""
            text = f"(SELECT {items[0]} AS k, {items[1]} AS v FROM {inner_from}{where}) {a}"
            scope = Scope(cols=[Col(f"{a}.k", "int", "derived"), Col(f"{a}.v", "text", "derived")])
        else:
            self.feat("from:values")
            a = self.alias("v")
            rows = ", ".join(f"({n}, {_q(self.pick(TEXT_LITERALS))})" for n in range(1, self.num(2, 4)))
            text = f"(VALUES {rows}) {a}(n, t)"
            scope = Scope(cols=[Col(f"{a}.n", "int"), Col(f"{a}.t", "text")])
        if self.chance(30):
            text, scope = self.with_srf(text, scope)
        return text, scope

    def small_int(self, scope: Scope) -> str:
        """A bounded argument for generate_series (a decoder needs no more than a character's code)."""
        t = self.expr(scope, "text", 1)
        return self.pick(
            [
                f"ascii({t})",
                f"length({t})",
                f"position({self.literal('text')} in {t})",
                f"least({self.expr(scope, 'int', 2)}, 60)",
                f"extract(month from {self.expr(scope, 'date', 1)})::int",
                str(self.num(1, 5)),
            ]
        )

    def with_srf(self, text: str, scope: Scope) -> tuple[str, Scope]:
        kind = self.num(0, 4)
        a = self.alias("g")
        if kind == 0:
            self.feat("srf:from_generate_series")
            return f"{text} CROSS JOIN LATERAL generate_series(1, {self.small_int(scope)}) {a}(n)", Scope(
                cols=[*scope.cols, Col(f"{a}.n", "int")], ids=scope.ids, first_id=scope.first_id
            )
        if kind == 1:
            self.feat("srf:from_unnest")
            src = f"unnest(string_to_array({self.expr(scope, 'text', 1)}, {self.literal('text')}))"
        elif kind == 2:
            self.feat("srf:from_regexp_split")
            src = f"regexp_split_to_table({self.expr(scope, 'text', 1)}, {_q(self.pick(REGEXES))})"
        elif kind == 3:
            self.feat("srf:from_regexp_matches")
            src = f"regexp_matches({self.expr(scope, 'text', 1)}, {_q(self.pick(REGEXES))}, 'g')"
            return f"{text} CROSS JOIN LATERAL {src} {a}(x)", Scope(
                cols=[*scope.cols, Col(f"{a}.x[1]", "text", "srf")], ids=scope.ids, first_id=scope.first_id
            )
        else:
            self.feat("srf:from_generate_series")
            return f"{text} CROSS JOIN generate_series(1, {self.num(2, 40)}) {a}(n)", Scope(
                cols=[*scope.cols, Col(f"{a}.n", "int")], ids=scope.ids, first_id=scope.first_id
            )
        return f"{text} CROSS JOIN LATERAL {src} {a}(x)", Scope(
            cols=[*scope.cols, Col(f"{a}.x", "text", "srf")], ids=scope.ids, first_id=scope.first_id
        )

    # -- SELECT ------------------------------------------------------------------------------------------------

    def aggregate(self, scope: Scope) -> str:
        kind = self.num(0, 11)
        if kind == 0:
            return "count(*)"
        if kind == 1:
            self.feat("agg:count_expr")
            return f"count({self.anytype(scope)[0]})"
        if kind == 2:
            self.feat("agg:count_distinct")
            return f"count(DISTINCT {self.anytype(scope)[0]})"
        if kind in (3, 4):
            self.feat("agg:min_max")
            return f"{self.pick(['min', 'max'])}({self.anytype(scope)[0]})"
        if kind == 5:
            self.feat("agg:sum")
            return f"{self.pick(['sum', 'avg'])}({self.expr(scope, 'int', 2)})"
        if kind == 6:
            self.feat("agg:string_agg")
            return f"string_agg({self.expr(scope, 'text', 1)}, ',')"
        if kind == 7:
            self.feat("agg:filter")
            return f"count(*) FILTER (WHERE {self.boolean(scope, 1)})"
        if kind == 8:
            self.feat("agg:bool")
            return f"{self.pick(['bool_or', 'bool_and'])}({self.boolean(scope, 1)})"
        if kind == 9:
            self.feat("agg:count_nullif")
            return f"count(nullif({self.boolean(scope, 1)}, false))"
        if kind == 10:
            self.feat("agg:array_agg")
            return f"array_agg({self.anytype(scope)[0]})"
        return "count(*)"

    def window(self, scope: Scope) -> str:
        self.feat("window")
        parts = []
        if self.chance(60):
            self.feat("window:partition")
            parts.append(f"PARTITION BY {self.anytype(scope, 1)[0]}")
        if self.chance(70):
            self.feat("window:order")
            order = [self.anytype(scope, 1)[0], *scope.ids]
            parts.append("ORDER BY " + ", ".join(order))
        over = f"OVER ({' '.join(parts)})"
        fn = self.pick(
            [
                "row_number()",
                "rank()",
                "dense_rank()",
                "count(*)",
                f"lag({self.anytype(scope, 1)[0]})",
                f"first_value({self.anytype(scope, 1)[0]})",
                f"sum({self.expr(scope, 'int', 1)})",
                "ntile(3)",
            ]
        )
        return f"{fn} {over}"

    def select_item(self, scope: Scope) -> str:
        kind = self.num(0, 9)
        if kind <= 2:
            self.feat("sel:direct")
            col = self.pick(scope.cols)
            if col.phi:
                self.feat(f"phi:{col.phi}")
            return col.sql
        if kind <= 5:
            self.feat("sel:computed")
            return self.anytype(scope)[0]
        if kind == 6:
            self.feat("sel:srf")
            return self.pick(
                [
                    f"generate_series(1, {self.small_int(scope)})",
                    f"unnest(string_to_array({self.expr(scope, 'text', 1)}, {self.literal('text')}))",
                    f"regexp_matches({self.expr(scope, 'text', 1)}, {_q(self.pick(REGEXES))}, 'g')",
                    f"regexp_split_to_table({self.expr(scope, 'text', 1)}, {_q(self.pick(REGEXES))})",
                ]
            )
        if kind == 7:
            return self.window(scope)
        if kind == 8:
            self.feat("sel:pseudonym_guess")
            col = self.pick([c for c in scope.cols if c.type == "text"] or scope.cols)
            return (
                f"CASE WHEN {scope.first_id or '1'} < 0 THEN {col.sql} ELSE {_q(self.pick(BASE_NAMES + BASE_MRNS))} END"
            )
        return self.expr(scope, "int", 2)

    def select(self, top: bool) -> str:
        from_text, scope = self.from_clause()
        where: list[str] = []
        if scope.first_id and self.chance(60):
            where.append(f"{scope.first_id} <= {self.num(1, 8)}")
        if self.chance(50):
            self.feat("pos:where")
            where.append(self.boolean(scope, 2))
        where_sql = f" WHERE {' AND '.join(where)}" if where else ""
        mode = self.num(0, 9)
        order: list[str] = []
        if mode <= 4:  # plain
            items = [self.select_item(scope) for _ in range(self.num(1, 3))]
            head = "SELECT "
            if top and self.chance(45):
                self.feat("pos:order_by")
                order = [self.anytype(scope, 1)[0] + self.pick(["", " DESC"]) for _ in range(self.num(0, 2))]
                order += scope.ids
            tail = ""
        elif mode <= 6:  # grouped
            keys = [self.anytype(scope, 1)[0] for _ in range(self.num(1, 2))]
            self.feat("pos:group_by")
            items = keys + [self.aggregate(scope) for _ in range(self.num(1, 2))]
            head = "SELECT "
            tail = f" GROUP BY {', '.join(keys)}"
            if self.chance(40):
                self.feat("pos:having")
                tail += f" HAVING {self.aggregate(scope)} {self.pick(['>', '<', '='])} {self.num(0, 3)}"
            if top and self.chance(50):
                self.feat("pos:order_by")
                order = [self.pick(items[len(keys) :]), *keys]
        elif mode == 7:  # global aggregate
            items = [self.aggregate(scope) for _ in range(self.num(1, 3))]
            head, tail = "SELECT ", ""
        elif mode == 8:
            self.feat("distinct")
            items = [self.select_item(scope) for _ in range(self.num(1, 2))]
            head, tail = "SELECT DISTINCT ", ""
        else:
            self.feat("distinct_on")
            key = self.anytype(scope, 1)[0]
            items = [self.select_item(scope) for _ in range(self.num(1, 2))]
            head, tail = f"SELECT DISTINCT ON ({key}) ", ""
            order = [key, *scope.ids]
        sql = head + ", ".join(items) + f" FROM {from_text}{where_sql}{tail}"
        if order:
            sql += " ORDER BY " + ", ".join(order)
        if self.chance(25):
            sql += self.limit(scope)
        return sql

    def limit(self, scope: Scope) -> str:
        if self.chance(50):
            return f" LIMIT {self.num(1, 5)}"
        self.feat("pos:limit")
        q = self.alias("q")
        inner = self.table_scope("patients", q)
        value = f"(SELECT {self.expr(inner, 'int', 2)} FROM patients {q} WHERE {q}.id = {self.num(1, 5)})"
        return self.pick([f" LIMIT least({value}, 50)", f" OFFSET {value}", f" LIMIT 3 OFFSET least({value}, 50)"])

    def with_clause(self) -> str:
        self.feat("cte")
        name = self.alias("w")
        from_text, scope = self.from_clause()
        items = [(self.expr(scope, typ, 2), typ) for typ in self.pick([["int"], ["text"], ["int", "text"]])]
        where = f" WHERE {scope.first_id} <= {self.num(1, 6)}" if scope.first_id else ""
        cols = [Col(f"c{n}", typ, "cte") for n, (_, typ) in enumerate(items)]
        self.ctes.append((name, cols))
        select_list = ", ".join(f"{e} AS c{n}" for n, (e, _) in enumerate(items))
        return f"{name} AS (SELECT {select_list} FROM {from_text}{where})"

    def recursive(self) -> str:
        self.feat("cte:recursive")
        p = self.alias("p")
        scope = self.table_scope("patients", p)
        start = self.expr(scope, "text", 1)
        cond = self.pick(
            [
                "length(s) > 0",
                f"ascii(s) > {self.pick([48, 52, 57, 65])}",
                f"s LIKE {_q(self.pick(PATTERNS))}",
                f"position({self.literal('text')} in s) > 0",
            ]
        )
        final = self.pick(["SELECT count(*) FROM r", "SELECT n, id FROM r ORDER BY id, n", "SELECT max(n) FROM r"])
        return (
            f"WITH RECURSIVE r(id, n, s) AS (SELECT {p}.id, 1, {start} FROM patients {p} "
            f"WHERE {p}.id <= {self.num(1, 4)} "
            f"UNION ALL SELECT id, n + 1, substr(s, 2) FROM r WHERE n < 30 AND {cond}) {final}"
        )

    def setop(self) -> str:
        op = self.pick(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"])
        self.feat(f"setop:{op.split()[0].lower()}")
        types = self.pick([["text"], ["int"], ["int", "text"]])
        sides = []
        for _ in range(2):
            from_text, scope = self.from_clause()
            items = ", ".join(
                self.expr(scope, typ, 2) if self.chance(60) else (self.column(scope, typ) or self.literal(typ))
                for typ in types
            )
            where = f" WHERE {scope.first_id} <= {self.num(1, 8)}" if scope.first_id and self.chance(70) else ""
            sides.append(f"SELECT {items} FROM {from_text}{where}")
        return f" {op} ".join(sides)

    def explain(self) -> str:
        self.feat("explain")
        options = []
        for _ in range(self.num(0, 4)):
            options.append(
                self.pick(
                    [
                        "ANALYZE",
                        "ANALYZE true",
                        "ANALYZE false",
                        "COSTS off",
                        "COSTS on",
                        "FORMAT json",
                        "FORMAT text",
                        "TIMING off",
                        "SUMMARY off",
                        "VERBOSE",
                    ]
                )
            )
        if any(o.startswith("ANALYZE") and o != "ANALYZE false" for o in options):
            self.feat("explain:analyze")
            if "TIMING off" not in options:
                options.append("TIMING off")
            if "SUMMARY off" not in options:
                options.append("SUMMARY off")
        prefix = f"EXPLAIN ({', '.join(options)}) " if options else "EXPLAIN "
        return prefix + self.select(top=False)

    def values(self) -> str:
        self.feat("values")
        p = self.alias("q")
        inner = self.table_scope("patients", p)
        rows = []
        for n in range(self.num(1, 3)):
            value = f"(SELECT {self.expr(inner, 'int', 2)} FROM patients {p} WHERE {p}.id = {n + 1})"
            rows.append(f"({n}, {value if self.chance(60) else self.literal('int')})")
        return "VALUES " + ", ".join(rows)

    # -- probes: one PHI expression in one position, everything else over non-PHI columns ------------------------

    PROBE_POSITIONS = (
        "select",
        "select_int",
        "where",
        "join_on",
        "srf_from",
        "srf_select",
        "count_expr",
        "aggregate",
        "group_by",
        "having",
        "order_by",
        "distinct",
        "distinct_on",
        "limit",
        "window_partition",
        "window_order",
        "window_arg",
        "scalar_subquery",
        "exists",
        "setop",
        "explain",
        "explain_analyze",
        "cte",
        "recursive",
        "values",
        "pseudonym_guess",
    )

    def probe(self) -> str:
        position = self.pick(self.PROBE_POSITIONS)
        self.feat(f"probe:{position}")
        if position == "recursive":
            return self.recursive()
        table = self.pick(["patients", "patients", "encounters", "both"])
        if table == "both":
            p, e = self.alias("p"), self.alias("e")
            sp, se = self.table_scope("patients", p), self.table_scope("encounters", e)
            scope = Scope(cols=sp.cols + se.cols, ids=sp.ids + se.ids, first_id=sp.first_id)
            from_text = f"patients {p} JOIN encounters {e} ON {e}.patient_id = {p}.id"
        else:
            a = self.alias(table[0])
            scope = self.table_scope(table, a)
            from_text = f"{table} {a}"
        first_id = scope.first_id or "1"
        keys = ", ".join(scope.ids)
        bound = f"{first_id} <= {self.num(1, 10)}"

        def phi_expr(typ: str, depth: int = 2) -> str:
            with self.phi(100):
                return self.expr(scope, typ, depth)

        def phi_any(depth: int = 2) -> str:
            with self.phi(100):
                return self.anytype(scope, depth)[0]

        def plain(sql_from: str = from_text, where: str = bound, select: str = keys, tail: str = "") -> str:
            return f"SELECT {select} FROM {sql_from} WHERE {where}{tail}"

        order = f" ORDER BY {keys}"
        if position == "select":
            return plain(select=f"{keys}, {phi_any()}", tail=order)
        if position == "select_int":
            return plain(select=f"{keys}, {phi_expr('int')}", tail=order)
        if position == "where":
            return plain(where=f"{bound} AND {phi_expr('bool')}", tail=order)
        if position == "join_on":
            q = self.alias("q")
            inner = self.table_scope("patients", q)
            with self.phi(100):
                condition = self.boolean(Scope(cols=scope.cols + inner.cols), 2)
            joined = f"{from_text} LEFT JOIN patients {q} ON {q}.id <= 3 AND {condition}"
            return plain(sql_from=joined, select=f"{keys}, {q}.id", tail=f"{order}, {q}.id")
        if position == "srf_from":
            with self.phi(100):
                sized = self.small_int(scope)
            g = self.alias("g")
            return plain(sql_from=f"{from_text} CROSS JOIN LATERAL generate_series(1, {sized}) {g}(n)", tail=order)
        if position == "srf_select":
            with self.phi(100):
                item = self.pick(
                    [
                        f"generate_series(1, {self.small_int(scope)})",
                        f"unnest(string_to_array({self.expr(scope, 'text', 1)}, {self.literal('text')}))",
                        f"regexp_matches({self.expr(scope, 'text', 1)}, {_q(self.pick(REGEXES))}, 'g')",
                        f"regexp_split_to_table({self.expr(scope, 'text', 1)}, {_q(self.pick(REGEXES))})",
                    ]
                )
            return plain(select=f"{keys}, {item}", tail=order)
        if position == "count_expr":
            counted = self.pick(
                [f"count({phi_any()})", f"count(nullif({phi_expr('bool')}, false))", f"count(DISTINCT {phi_any()})"]
            )
            return plain(select=f"count(*), {counted}")
        if position == "aggregate":
            with self.phi(100):
                agg = self.aggregate(scope)
            head = scope.ids[0]
            return plain(select=f"{head}, {agg}", tail=f" GROUP BY {head} ORDER BY {head}")
        if position == "group_by":
            key = phi_any(1)
            return plain(select="count(*)", tail=f" GROUP BY {key}")
        if position == "having":
            head = scope.ids[0]
            condition = (
                f"{self.pick(['min', 'max', 'count'])}({phi_any()}) {self.pick(['<', '>', '='])} {self.literal('text')}"
            )
            return plain(select=head, tail=f" GROUP BY {head} HAVING {condition} ORDER BY {head}")
        if position == "order_by":
            return plain(tail=f" ORDER BY {phi_any()}{self.pick(['', ' DESC'])}, {keys}")
        if position == "distinct":
            return plain(select=f"DISTINCT {phi_any()}", tail="")
        if position == "distinct_on":
            key = phi_any(1)
            return plain(select=f"DISTINCT ON ({key}) {keys}", tail=f" ORDER BY {key}, {keys}")
        if position == "limit":
            q = self.alias("q")
            inner = self.table_scope("patients", q)
            with self.phi(100):
                value = self.expr(inner, "int", 2)
            sub = f"(SELECT {value} FROM patients {q} WHERE {q}.id = {self.num(1, 5)})"
            return plain(where=f"{first_id} <= 40", tail=f"{order} LIMIT least({sub}, 40)")
        if position in ("window_partition", "window_order", "window_arg"):
            expr = phi_any(1)
            fn = self.pick(["row_number()", "rank()", "count(*)", f"lag({scope.ids[0]})"])
            if position == "window_partition":
                over = f"PARTITION BY {expr} ORDER BY {keys}"
            elif position == "window_order":
                over = f"ORDER BY {expr}, {keys}"
            else:
                fn, over = self.pick([f"count({expr})", f"first_value({expr})", f"lag({expr})"]), f"ORDER BY {keys}"
            self.feat("window")
            return plain(select=f"{keys}, {fn} OVER ({over})", tail=order)
        if position == "scalar_subquery":
            q = self.alias("q")
            inner = self.table_scope("patients", q)
            with self.phi(100):
                condition = self.boolean(Scope(cols=inner.cols + scope.cols), 2)
            return plain(select=f"{keys}, (SELECT count(*) FROM patients {q} WHERE {condition})", tail=order)
        if position == "exists":
            q = self.alias("q")
            inner = self.table_scope("patients", q)
            with self.phi(100):
                condition = self.boolean(Scope(cols=inner.cols + scope.cols), 2)
            return plain(where=f"{bound} AND EXISTS (SELECT 1 FROM patients {q} WHERE {condition})", tail=order)
        if position == "setop":
            op = self.pick(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"])
            self.feat(f"setop:{op.split()[0].lower()}")
            typ = self.pick(["text", "int"])
            other = self.literal(typ) if self.chance(50) else phi_expr(typ)
            return f"{plain(select=phi_expr(typ))} {op} SELECT {other}"
        if position in ("explain", "explain_analyze"):
            options = "ANALYZE, COSTS off, TIMING off, SUMMARY off" if position == "explain_analyze" else "COSTS off"
            self.feat("explain")
            return f"EXPLAIN ({options}) " + plain(where=f"{bound} AND {phi_expr('bool')}")
        if position == "cte":
            self.feat("cte")
            value = phi_expr(self.pick(["int", "text"]))
            return f"WITH w AS ({plain(select=f'{keys}, {value} AS v')}) SELECT * FROM w"
        if position == "values":
            return self.values()
        self.feat("sel:pseudonym_guess")
        guess = _q(self.pick(BASE_NAMES + BASE_MRNS))
        direct = self.pick([c for c in scope.cols if c.phi in ("name", "mrn")] or [c for c in scope.cols if c.phi])
        return plain(
            select=f"{keys}, {direct.sql}, CASE WHEN {first_id} < 0 THEN {direct.sql} ELSE {guess} END", tail=order
        )

    def statement(self) -> Generated:
        self.phi_rate = self.pick([15, 40, 70])
        if self.chance(40):
            return Generated(sql=self.probe(), features=tuple(sorted(self.features)))
        kind = self.num(0, 19)
        if kind <= 10:
            sql = self.select(top=True)
            if self.chance(15):
                ctes = self.with_clause()
                sql = f"WITH {ctes} " + self.select(top=True)
        elif kind <= 12:
            sql = self.setop()
        elif kind <= 14:
            sql = self.explain()
        elif kind == 15:
            sql = self.values()
        elif kind == 16:
            self.feat("table")
            sql = f"TABLE {self.pick(['patients', 'encounters', 'diagnosis_codes', 'prescriptions'])}"
        else:
            sql = self.recursive()
        return Generated(sql=sql, features=tuple(sorted(self.features)))


@st.composite
def statements(draw: st.DrawFn) -> Generated:
    return Gen(draw).statement()
