"""The session's book of names (gateway/wire/book.py) against a model of PostgreSQL's own bookkeeping.

``PG`` below is a small, sequential model of what a PostgreSQL 15 backend keeps under a name: prepared statements
(Parse, DEALLOCATE, DISCARD ALL) and portals (Bind, DECLARE, CLOSE, transaction ends), with the error rules that
decide whether a message changes anything (42P05, 26000, 42P03, 34000, 25P01, 25P02, 25001 "within a pipeline",
55000 for a utility portal run twice, skipping until Sync after an error, COMMIT of a failed block answered
ROLLBACK...). ``Harness`` drives a ``Book`` exactly as gateway/wire/session.py does: it calls the book when a
message is forwarded, lets the gateway refuse a name the book does not know (a Bind to a statement no client can
have goes upstream instead, failing the batch like PostgreSQL), and feeds the model's answers (ParseComplete,
BindComplete, CommandComplete with its tag, ErrorResponse, skipped, ReadyForQuery) back to the book in order. The
relay may catch up at any point of a batch (hypothesis chooses): an error the client has seen makes the session
discard the rest of the batch, as PostgreSQL does.

Invariants, after every batch (the session reads the next batch only after ReadyForQuery):

(a) every name the book knows, the model has too, with the same text (the book is a subset: fail closed);
(b) when a message that refers to a name is forwarded, the entry the book returns is the one PostgreSQL uses if it
    processes that message (checked when the model processes it);
(c) on a path without errors the book equals the model, except for what the book's docstring says it removes
    early (ROLLBACK TO SAVEPOINT drops every portal of the transaction; a portal that runs CLOSE ALL or DISCARD
    ALL survives it upstream, being active).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gateway.wire.book import UNNAMED, Book, Fetch, Op, Portal, Prepared, statement_effects

# ------------------------------------------------------------------------------------------- SQL texts

SELECT = "SELECT 1"
FAILS = "SELECT 1/0"  # parses, fails when it runs (22012)
UNPARSABLE = "SELEC 1"  # the gateway refuses it (42601) before PostgreSQL sees it
BEGIN = "BEGIN"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"
SAVEPOINT = "SAVEPOINT sp"
ROLLBACK_TO = "ROLLBACK TO SAVEPOINT sp"
DECLARE_C1 = "DECLARE c1 CURSOR FOR SELECT 1"
DECLARE_C1_HOLD = "DECLARE c1 CURSOR WITH HOLD FOR SELECT 1"
DECLARE_C2_HOLD = "DECLARE c2 CURSOR WITH HOLD FOR SELECT 2"
CLOSE_C1 = "CLOSE c1"
CLOSE_P1 = "CLOSE p1"
CLOSE_ALL = "CLOSE ALL"
DEALLOCATE_S1 = "DEALLOCATE s1"
DEALLOCATE_ALL = "DEALLOCATE ALL"
DISCARD_ALL = "DISCARD ALL"
FETCH_C1 = "FETCH 1 FROM c1"
FETCH_C2 = "FETCH 1 FROM c2"

# What each text does, for the model (PostgreSQL's view): kind, argument.
KIND: dict[str, tuple[str, Any]] = {
    SELECT: ("select", None),
    FAILS: ("fails", None),
    BEGIN: ("begin", None),
    COMMIT: ("commit", None),
    ROLLBACK: ("rollback", None),
    SAVEPOINT: ("savepoint", None),
    ROLLBACK_TO: ("rollback_to", None),
    DECLARE_C1: ("declare", ("c1", False)),
    DECLARE_C1_HOLD: ("declare", ("c1", True)),
    DECLARE_C2_HOLD: ("declare", ("c2", True)),
    CLOSE_C1: ("close", "c1"),
    CLOSE_P1: ("close", "p1"),
    CLOSE_ALL: ("close", None),
    DEALLOCATE_S1: ("deallocate", "s1"),
    DEALLOCATE_ALL: ("deallocate", None),
    DISCARD_ALL: ("discard", None),
    FETCH_C1: ("fetch", "c1"),
    FETCH_C2: ("fetch", "c2"),
}
TEXTS = [UNPARSABLE, *KIND]
EXITS = frozenset({"commit", "rollback", "rollback_to"})  # IsTransactionExitStmt: allowed in an aborted block
XACT = frozenset({"begin", "commit", "rollback", "savepoint", "rollback_to"})  # finish_xact_command at once
ROWS = frozenset({"select", "fails", "fetch"})  # portals that can be run again / fetched from
TAGS = {
    "select": "SELECT 1",
    "begin": "BEGIN",
    "savepoint": "SAVEPOINT",
    "rollback_to": "ROLLBACK",
    "rollback": "ROLLBACK",
    "declare": "DECLARE CURSOR",
    "deallocate": "DEALLOCATE",
    "discard": "DISCARD ALL",
    "fetch": "FETCH 1",
}


# ------------------------------------------------------------------------------------------- the model


class PGError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@dataclass
class MPortal:
    sql: str
    cursor: bool  # opened by DECLARE (else bound by Bind)
    seq: int  # creation order (ROLLBACK TO SAVEPOINT drops what was created after the savepoint)
    holdable: bool = False
    held: bool = False  # WITH HOLD and its transaction committed: outlives transactions
    failed: bool = False  # created in a transaction (or subtransaction) that failed
    done: bool = False  # a utility portal that ran: running it again is 55000


@dataclass
class PG:
    """PostgreSQL's per-session names, message by message (sequential: the backend has no pipelining)."""

    statements: dict[str, str] = field(default_factory=dict)
    portals: dict[str, MPortal] = field(default_factory=dict)
    xact: str = "none"  # none (idle or implicit) | block | failed
    savepoints: list[int] = field(default_factory=list)
    skipping: bool = False  # an error in this batch: everything until Sync is skipped
    pipelined: bool = False  # XACT_FLAGS_PIPELINING: an Execute completed in this implicit transaction
    seq: int = 0

    # --- transactions

    def _commit(self) -> None:
        for name, portal in list(self.portals.items()):
            if portal.held:
                continue
            if portal.holdable and not portal.failed:
                portal.held = True
            else:
                del self.portals[name]
        self._new_transaction()

    def _abort(self) -> None:
        for name, portal in list(self.portals.items()):
            if not portal.held:
                del self.portals[name]
        self._new_transaction()

    def _new_transaction(self) -> None:
        self.xact = "none"
        self.savepoints.clear()
        self.pipelined = False

    def _fail(self) -> None:
        """An error: an implicit transaction rolls back, a block is aborted (its portals failed) until it ends."""
        if self.xact == "none":
            self._abort()
        elif self.xact == "block":
            since = self.savepoints[-1] if self.savepoints else -1
            for portal in self.portals.values():
                if not portal.held and portal.seq > since:
                    portal.failed = True
            self.xact = "failed"

    def _new_portal(self, name: str, portal: MPortal) -> None:
        self.seq += 1
        portal.seq = self.seq
        self.portals[name] = portal

    # --- statements

    def run(self, sql: str, *, extended: bool, executing: str | None = None) -> str:
        """Run one statement (a simple Query's, or an Execute's); its command tag, or PGError."""
        kind, arg = KIND[sql]
        if self.xact == "failed" and kind not in EXITS:
            raise PGError("25P02")
        if kind == "select":
            return TAGS[kind]
        if kind == "fails":
            raise PGError("22012")
        if kind == "begin":
            if self.xact == "none":
                self.xact = "block"
            return "BEGIN"
        if kind == "commit":
            failed = self.xact == "failed"
            if failed:
                self._abort()
                return "ROLLBACK"
            self._commit()
            return "COMMIT"
        if kind == "rollback":
            self._abort()
            return "ROLLBACK"
        if kind == "savepoint":
            if self.xact != "block":
                raise PGError("25P01")
            self.savepoints.append(self.seq)
            return "SAVEPOINT"
        if kind == "rollback_to":
            if self.xact == "none":
                raise PGError("25P01")
            if not self.savepoints:
                raise PGError("3B001")
            since = self.savepoints[-1]
            for name, portal in list(self.portals.items()):
                if not portal.held and portal.seq > since:
                    del self.portals[name]
            self.xact = "block"
            return "ROLLBACK"
        if kind == "declare":
            name, hold = arg
            if not hold and self.xact != "block":
                raise PGError("25P01")  # DECLARE CURSOR can only be used in transaction blocks
            if name in self.portals:
                raise PGError("42P03")
            self._new_portal(name, MPortal(sql, cursor=True, seq=0, holdable=hold))
            return "DECLARE CURSOR"
        if kind == "close":
            if arg is None:
                for name in list(self.portals):
                    if name != executing:  # the active portal survives PortalHashTableDeleteAll
                        del self.portals[name]
                return "CLOSE CURSOR ALL"
            if arg not in self.portals:
                raise PGError("34000")
            if arg == executing:
                raise PGError("55000")  # cannot drop an active portal
            del self.portals[arg]
            return "CLOSE CURSOR"
        if kind == "deallocate":
            if arg is None:
                for name in [n for n in self.statements if n != UNNAMED]:
                    del self.statements[name]
                return "DEALLOCATE ALL"
            if arg not in self.statements:
                raise PGError("26000")
            del self.statements[arg]
            return "DEALLOCATE"
        if kind == "discard":
            if self.xact != "none" or (extended and self.pipelined):
                raise PGError("25001")  # cannot run inside a transaction block / within a pipeline
            # DropAllPreparedStatements: the named ones (the unnamed statement is not among them).
            for name in [n for n in self.statements if n != UNNAMED]:
                del self.statements[name]
            for name in list(self.portals):
                if name != executing:
                    del self.portals[name]
            return "DISCARD ALL"
        if kind == "fetch":
            portal = self.portals.get(arg)
            if portal is None:
                raise PGError("34000")
            if portal.failed or portal.done:
                raise PGError("55000")
            source = "select" if portal.cursor else KIND[portal.sql][0]
            if source == "fails":
                raise PGError("22012")
            if source not in ("select", "fetch"):
                raise PGError("XX000")  # a utility portal cannot be fetched from
            return "FETCH 1"
        raise AssertionError(sql)

    # --- messages

    def parse(self, name: str, sql: str) -> str | None:
        """None: ParseComplete; else the SQLSTATE of the error."""
        if name == UNNAMED:
            self.statements.pop(UNNAMED, None)  # drop_unnamed_stmt, before anything can fail
        if self.xact == "failed" and KIND[sql][0] not in EXITS:
            return self._error("25P02")
        if name != UNNAMED and name in self.statements:
            return self._error("42P05")
        self.statements[name] = sql
        return None

    def bind(self, portal: str, statement: str) -> str | None:
        sql = self.statements.get(statement)
        if sql is None:
            return self._error("26000")
        if self.xact == "failed" and KIND[sql][0] not in EXITS:
            return self._error("25P02")
        if portal != UNNAMED and portal in self.portals:
            return self._error("42P03")
        self._new_portal(portal, MPortal(sql, cursor=False, seq=0))
        return None

    def execute(self, name: str) -> list[str] | str:
        """The command tags of what ran, or the SQLSTATE of the error."""
        portal = self.portals.get(name)
        if portal is None:
            return self._error("34000")
        kind = "select" if portal.cursor else KIND[portal.sql][0]
        if self.xact == "failed" and kind not in EXITS:
            return self._error("25P02")
        if portal.failed or portal.done:
            return self._error("55000")  # portal cannot be run
        if portal.cursor:
            return ["SELECT 1"]  # Execute of a cursor fetches from it
        try:
            tag = self.run(portal.sql, extended=True, executing=name)
        except PGError as error:
            return self._error(error.sqlstate)
        if kind not in ROWS:
            portal.done = True  # PORTAL_MULTI_QUERY: MarkPortalDone
        if kind == "discard":
            self._commit()  # XACT_FLAGS_NEEDIMMEDIATECOMMIT
        elif kind not in XACT:
            self.pipelined = True
        return [tag]

    def close_statement(self, name: str) -> None:
        self.statements.pop(name, None)

    def close_portal(self, name: str) -> None:
        self.portals.pop(name, None)

    def sync(self) -> str:
        self.skipping = False
        if self.xact == "none":
            self._commit()
        return {"none": "I", "block": "T", "failed": "E"}[self.xact]

    def query(self, sql: str) -> tuple[list[str] | str, str]:
        """A simple Query of one statement: (tags or SQLSTATE, ReadyForQuery status)."""
        self.statements.pop(UNNAMED, None)
        if not (self.xact == "failed" and KIND[sql][0] not in EXITS):
            self.portals.pop(UNNAMED, None)  # CreatePortal("", dup_ok): after the aborted-block check
        try:
            tags: list[str] | str = [self.run(sql, extended=False)]
        except PGError as error:
            tags = error.sqlstate
            self._fail()
        if self.xact == "none":
            self._commit()
        return tags, {"none": "I", "block": "T", "failed": "E"}[self.xact]

    def _error(self, sqlstate: str) -> str:
        self._fail()
        self.skipping = True
        return sqlstate


# ------------------------------------------------------------------------------------------- the session


@dataclass
class Sent:
    """A message forwarded upstream and not answered yet."""

    kind: str  # parse | bind | execute | close_s | close_p | refusal | sync
    name: str = ""
    arg: str = ""
    op: Op | None = None
    expect: str | None = None  # invariant (b): the text the book says this message's name means
    expect_cursor: tuple[str, str] | None = None  # invariant (b) for FETCH: (cursor name, DECLARE text)


class Harness:
    """Drives a Book as gateway/wire/session.py does, against the PG model."""

    def __init__(self) -> None:
        self.book = Book()
        self.pg = PG()
        self.inflight: list[Sent] = []
        self.ignoring = False  # the client saw an error in this batch: the session discards until Sync
        self.errors = 0  # errors on the path so far (invariant (c) holds on paths without any)
        self.partial = False  # a ROLLBACK TO SAVEPOINT ran (its early removal of portals is by design)
        # An empty Query is answered by the gateway itself: it forgets the unnamed statement and portal as
        # PostgreSQL would, while its upstream, never asked, keeps them (fail closed, by design).
        self.unnamed_forgotten = False
        self.log: list[str] = []
        self.answers: list[Any] = []  # what the client saw, for the example-based tests

    # --- what the client loop does with each message

    def batch(self, messages: list[tuple[Any, ...]], catch_up: list[bool] | None = None) -> str:
        """An extended batch (Sync appended); returns the ReadyForQuery status."""
        self.log.append(f"batch {messages}")
        for index, message in enumerate(messages):
            if catch_up and index < len(catch_up) and catch_up[index]:
                self.deliver()
            if self.ignoring:
                continue
            getattr(self, "_" + message[0])(*message[1:])
        self.book.sync()
        self.inflight.append(Sent("sync"))
        status = self.deliver()
        assert status is not None
        self.ignoring = False
        return status

    def _parse(self, name: str, sql: str) -> None:
        if statement_effects(sql) is None:
            self._refuse()  # the gateway's own 42601
            return
        existing = self.book.statement(name)
        op = self.book.parse(name, Prepared(sql, None))
        if name != UNNAMED and existing is not None:
            op.voided = True
        self.inflight.append(Sent("parse", name, sql, op))

    def _bind(self, portal: str, statement: str) -> None:
        prepared = self.book.statement(statement)
        if prepared is None:
            self._refuse()  # 26000
            return
        existing = self.book.portal(portal)
        op = self.book.bind(Portal(portal, prepared))
        if portal != UNNAMED and existing is not None:
            op.voided = True
        self.inflight.append(Sent("bind", portal, statement, op, expect=prepared.sql))

    def _execute(self, name: str) -> None:
        portal = self.book.portal(name)
        if portal is None:
            self._refuse()  # 34000
            return
        if portal.cursor:
            self.inflight.append(Sent("execute", name, expect=portal.statement.sql))
            return
        effects = statement_effects(portal.statement.sql) or ()
        expect_cursor = None
        if effects and isinstance(effects[0], Fetch):
            cursor = self.book.portal(effects[0].name)
            if cursor is None:
                self._refuse()
                return
            expect_cursor = (effects[0].name, cursor.statement.sql)
        op = self.book.sql(portal.statement.sql, None, simple_query=False)
        self.inflight.append(Sent("execute", name, op=op, expect=portal.statement.sql, expect_cursor=expect_cursor))

    def _close_s(self, name: str) -> None:
        self.book.close_statement(name)
        self.inflight.append(Sent("close_s", name))

    def _close_p(self, name: str) -> None:
        self.book.close_portal(name)
        self.inflight.append(Sent("close_p", name))

    def _refuse(self) -> None:
        """The gateway's refusal: a failing Bind upstream; the relay writes the gateway's error in its place."""
        self.inflight.append(Sent("refusal"))
        self.deliver()  # the client loop waits until the relay has handled it

    def query(self, sql: str) -> str:
        """A simple Query; returns the ReadyForQuery status."""
        self.log.append(f"query {sql!r}")
        effects = statement_effects(sql)
        if effects == ():
            self.book.close_statement(UNNAMED)
            self.book.close_portal(UNNAMED)
            self.unnamed_forgotten = True
            self.answers.append("EmptyQueryResponse")
            return {"none": "I", "block": "T", "failed": "E"}[self.pg.xact]  # the upstream is not asked
        expect_cursor = None
        refused = effects is None
        if effects and isinstance(effects[0], Fetch):
            cursor = self.book.portal(effects[0].name)
            refused = cursor is None
            expect_cursor = (effects[0].name, cursor.statement.sql) if cursor is not None else None
        if refused:
            self.inflight.append(Sent("refusal"))
            self.book.sync()
            self.inflight.append(Sent("sync"))
            status = self.deliver()
            assert status is not None
            return status
        op = self.book.sql(sql, None, simple_query=True)
        self.book.sync()
        self._check_cursor(expect_cursor)  # the model runs the query at once: what the FETCH reads is there now
        tags, status = self.pg.query(sql)
        if isinstance(tags, str):
            self.errors += 1
            self.answers.append(tags)
            self.book.failed(op)
        else:
            for tag in tags:
                self.answers.append(tag)
                self.book.statement_completed(op, tag)
                self.partial |= KIND[sql][0] == "rollback_to"
        self.book.ready_for_query(status)
        return status

    # --- what the relay does with the upstream's answers

    def deliver(self) -> str | None:
        """The model processes everything forwarded so far; the book gets the answers in order."""
        status = None
        while self.inflight:
            sent = self.inflight.pop(0)
            if sent.kind == "sync":
                status = self.pg.sync()
                self.book.ready_for_query(status)
                continue
            if self.pg.skipping:
                if sent.op is not None:
                    self.book.skipped(sent.op)
                continue
            error = self._process(sent)
            if error is not None:
                self.errors += 1
                self.answers.append(error)
                self.ignoring = True  # the client has seen the error: the session discards until Sync
                if sent.op is not None:
                    self.book.failed(sent.op)
                else:
                    self.book.error()
        return status

    def _process(self, sent: Sent) -> str | None:
        pg, book = self.pg, self.book
        if sent.kind == "refusal":
            return pg._error("26000")
        if sent.kind == "close_s":
            pg.close_statement(sent.name)
            self.answers.append("CloseComplete")
            return None
        if sent.kind == "close_p":
            pg.close_portal(sent.name)
            self.answers.append("CloseComplete")
            return None
        if sent.kind == "parse":
            error = pg.parse(sent.name, sent.arg)
            if error is None:
                assert sent.op is not None
                self.answers.append("ParseComplete")
                book.confirmed(sent.op)
            return error
        if sent.kind == "bind":
            held = pg.statements.get(sent.arg)
            assert held is None or held == sent.expect, (
                f"invariant (b): Bind {sent.name!r} to {sent.arg!r}: the book said {sent.expect!r}, "
                f"PostgreSQL binds {held!r}\n" + "\n".join(self.log)
            )
            error = pg.bind(sent.name, sent.arg)
            if error is None:
                assert sent.op is not None
                self.answers.append("BindComplete")
                book.confirmed(sent.op)
            return error
        assert sent.kind == "execute"
        portal = pg.portals.get(sent.name)
        assert portal is None or portal.sql == sent.expect, (
            f"invariant (b): Execute {sent.name!r}: the book said {sent.expect!r}, PostgreSQL runs {portal.sql!r}\n"
            + "\n".join(self.log)
        )
        self._check_cursor(sent.expect_cursor)
        result = pg.execute(sent.name)
        if isinstance(result, str):
            return result
        for tag in result:
            self.answers.append(tag)
            if sent.op is not None:
                book.statement_completed(sent.op, tag)
        if portal is not None and not portal.cursor and KIND[portal.sql][0] == "rollback_to":
            self.partial = True
        return None

    def _check_cursor(self, expect: tuple[str, str] | None) -> None:
        if expect is None:
            return
        name, text = expect
        cursor = self.pg.portals.get(name)
        assert cursor is None or cursor.sql == text, (
            f"invariant (b): FETCH from {name!r}: the book said {text!r}, PostgreSQL reads {cursor.sql!r}\n"
            + "\n".join(self.log)
        )

    # --- invariants

    def check(self) -> None:
        book, pg = self.book, self.pg
        trail = "\n".join(self.log)
        assert not book.unsettled() and not book.syncs, f"the book has unsettled operations after a batch\n{trail}"
        for name, prepared in book.statements.items():
            assert pg.statements.get(name) == prepared.sql, (
                f"invariant (a): the book has statement {name!r} = {prepared.sql!r}, PostgreSQL "
                f"{pg.statements.get(name)!r}\n{trail}"
            )
        for name, portal in book.portals.items():
            held = pg.portals.get(name)
            assert held is not None and held.sql == portal.statement.sql, (
                f"invariant (a): the book has portal {name!r} = {portal.statement.sql!r}, PostgreSQL "
                f"{held and held.sql!r}\n{trail}"
            )
            assert held.cursor == portal.cursor and held.holdable == portal.holdable, f"{name}: {held} {portal}"
        if self.errors:
            return
        statements = {name: prepared.sql for name, prepared in book.statements.items()}
        expected_statements = dict(pg.statements)
        if self.unnamed_forgotten:
            expected_statements.pop(UNNAMED, None)
            statements.pop(UNNAMED, None)
        assert statements == expected_statements, (
            f"invariant (c): statements {statements} != {expected_statements}\n{trail}"
        )
        if self.partial:
            return
        portals = {name: portal.statement.sql for name, portal in book.portals.items()}
        expected = {
            name: portal.sql
            for name, portal in pg.portals.items()
            if not (portal.done and KIND[portal.sql] in (("close", None), ("discard", None)))
            and not (name == UNNAMED and self.unnamed_forgotten)
        }
        portals.pop(UNNAMED, None) if self.unnamed_forgotten else None
        assert portals == expected, f"invariant (c): portals {portals} != {expected}\n{trail}"


# ------------------------------------------------------------------------------------------- hypothesis

STATEMENT_NAMES = ["", "s1", "s2"]
PORTAL_NAMES = ["", "p1", "c1"]
messages = st.one_of(
    st.tuples(st.just("parse"), st.sampled_from(STATEMENT_NAMES), st.sampled_from(TEXTS)),
    st.tuples(st.just("bind"), st.sampled_from(PORTAL_NAMES), st.sampled_from([*STATEMENT_NAMES, "s3"])),
    st.tuples(st.just("execute"), st.sampled_from([*PORTAL_NAMES, "c2"])),
    st.tuples(st.just("execute"), st.sampled_from([*PORTAL_NAMES, "c2"])),
    st.tuples(st.just("close_s"), st.sampled_from(STATEMENT_NAMES)),
    st.tuples(st.just("close_p"), st.sampled_from([*PORTAL_NAMES, "c2"])),
)
SIMPLE = [*TEXTS, ""]


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.harness = Harness()

    @rule(batch=st.lists(messages, min_size=1, max_size=6), catch_up=st.lists(st.booleans(), max_size=6))
    def extended(self, batch: list[tuple[Any, ...]], catch_up: list[bool]) -> None:
        self.harness.batch(batch, catch_up)

    @rule(sql=st.sampled_from(SIMPLE))
    def simple(self, sql: str) -> None:
        self.harness.query(sql)

    # Extended batches that prepare and run one text: the common driver pattern, and the way to reach
    # the transaction and cursor states quickly.
    @rule(name=st.sampled_from(STATEMENT_NAMES), portal=st.sampled_from(PORTAL_NAMES), sql=st.sampled_from(TEXTS))
    def prepare_and_run(self, name: str, portal: str, sql: str) -> None:
        self.harness.batch([("parse", name, sql), ("bind", portal, name), ("execute", portal)])

    @precondition(lambda self: self.harness.pg.xact != "none")
    @rule(sql=st.sampled_from([COMMIT, ROLLBACK]))
    def end(self, sql: str) -> None:
        self.harness.query(sql)

    @invariant()
    def book_follows_postgresql(self) -> None:
        self.harness.check()


TestBookMachine = BookMachine.TestCase
TestBookMachine.settings = settings(
    max_examples=int(os.environ.get("BOOK_EXAMPLES", "300")),
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------------------------------- example-based


def run_(harness: Harness, *steps: Any) -> None:
    for step in steps:
        if isinstance(step, str):
            harness.query(step)
        else:
            harness.batch(list(step))
        harness.check()


def statements(harness: Harness) -> dict[str, str]:
    return {name: prepared.sql for name, prepared in harness.book.statements.items()}


def portals(harness: Harness) -> dict[str, str]:
    return {name: portal.statement.sql for name, portal in harness.book.portals.items()}


def test_an_addition_waits_for_the_server() -> None:
    """Parse and Bind enter the book on ParseComplete/BindComplete; within the batch they are visible to lookups."""
    book = Book()
    prepared = Prepared(SELECT, None)
    op = book.parse("s1", prepared)
    assert "s1" not in book.statements and book.statement("s1") is prepared  # in-batch lookups see it
    book.sync()
    book.failed(op)  # PostgreSQL refused it
    book.ready_for_query("I")
    assert book.statement("s1") is None and not book.statements


def test_a_named_statement_that_exists_is_kept_42p05() -> None:
    harness = Harness()
    run_(harness, [("parse", "s1", SELECT)], [("parse", "s1", FAILS)])
    assert harness.answers[-1] == "42P05"
    assert statements(harness) == {"s1": SELECT}
    run_(harness, [("bind", "", "s1"), ("execute", "")])
    assert harness.answers[-1] == "SELECT 1"


def test_a_named_statement_parsed_twice_in_one_batch() -> None:
    """The second Parse of a name in the same batch fails (42P05) whatever its outcome is not yet known."""
    harness = Harness()
    run_(harness, [("parse", "s1", SELECT), ("parse", "s1", FAILS), ("bind", "", "s1")])
    assert harness.answers == ["ParseComplete", "42P05"]
    assert statements(harness) == {"s1": SELECT}


def test_the_unnamed_statement_is_replaced_by_parse() -> None:
    harness = Harness()
    run_(harness, [("parse", "", SELECT)], [("parse", "", FAILS)])
    assert statements(harness) == {"": FAILS}


def test_a_simple_query_destroys_the_unnamed_statement_and_portal() -> None:
    harness = Harness()
    run_(harness, BEGIN, [("parse", "", SELECT), ("bind", "", "")])
    assert statements(harness) == {"": SELECT} and portals(harness) == {"": SELECT}
    run_(harness, SELECT)
    assert statements(harness) == {} and portals(harness) == {}


def test_an_empty_query_destroys_the_unnamed_statement() -> None:
    harness = Harness()
    run_(harness, [("parse", "", SELECT)], "")
    assert statements(harness) == {}


def test_bind_to_a_missing_statement_is_refused_26000() -> None:
    harness = Harness()
    run_(harness, [("bind", "p1", "s3"), ("execute", "p1")])
    assert harness.answers == ["26000"]
    assert harness.pg.statements == {} and portals(harness) == {}


def test_a_named_portal_that_exists_is_kept_42p03() -> None:
    harness = Harness()
    run_(
        harness,
        BEGIN,
        [("parse", "s1", SELECT), ("parse", "s2", FAILS), ("bind", "p1", "s1")],
        [("bind", "p1", "s2"), ("execute", "p1")],
    )
    assert harness.answers[-1] == "42P03"
    assert portals(harness) == {"p1": SELECT}  # the aborted block keeps it upstream; the book too (a subset)


def test_an_error_skips_the_rest_of_the_batch() -> None:
    harness = Harness()
    run_(harness, [("parse", "", FAILS), ("bind", "", ""), ("execute", ""), ("parse", "s2", SELECT)])
    assert harness.answers == ["ParseComplete", "BindComplete", "22012"]
    assert statements(harness) == {"": FAILS}  # Parse is not transactional; s2 never ran


def test_an_error_skips_the_rest_of_the_batch_even_when_already_forwarded() -> None:
    """The relay did not catch up before the later messages were forwarded: they are skipped upstream."""
    harness = Harness()
    harness.batch([("parse", "", FAILS), ("bind", "", ""), ("execute", ""), ("close_s", ""), ("parse", "s2", SELECT)])
    harness.check()
    assert statements(harness) == {} and harness.pg.statements == {"": FAILS}  # Close sent, skipped: fail closed


def test_a_removal_cancels_an_addition_pending_in_the_same_batch() -> None:
    harness = Harness()
    run_(harness, [("parse", "s1", SELECT), ("close_s", "s1"), ("parse", "s1", FAILS)])
    assert statements(harness) == {"s1": FAILS}


def test_commit_keeps_with_hold_cursors_rollback_drops_them() -> None:
    harness = Harness()
    run_(harness, BEGIN, DECLARE_C1, DECLARE_C2_HOLD)
    assert set(portals(harness)) == {"c1", "c2"}
    run_(harness, COMMIT)
    assert portals(harness) == {"c2": DECLARE_C2_HOLD}
    run_(harness, BEGIN, DECLARE_C1, ROLLBACK)
    assert portals(harness) == {"c2": DECLARE_C2_HOLD}  # held over from a committed transaction: kept
    run_(harness, BEGIN, CLOSE_C1)
    assert harness.answers[-1] == "34000"


def test_commit_of_a_failed_block_is_a_rollback() -> None:
    harness = Harness()
    run_(harness, BEGIN, DECLARE_C2_HOLD, FAILS, COMMIT)
    assert harness.answers[-1] == "ROLLBACK"
    assert portals(harness) == {} and harness.pg.portals == {}


def test_a_with_hold_cursor_of_an_implicit_transaction() -> None:
    """Committed at Sync it survives; an error later in the same batch rolls it back."""
    harness = Harness()
    run_(harness, [("parse", "", DECLARE_C2_HOLD), ("bind", "", ""), ("execute", "")])
    assert portals(harness) == {"c2": DECLARE_C2_HOLD}
    run_(harness, CLOSE_ALL)
    harness.batch(
        [
            *[("parse", "", DECLARE_C2_HOLD), ("bind", "", ""), ("execute", "")],
            *[("parse", "x", FAILS), ("bind", "p1", "x"), ("execute", "p1")],
        ]
    )
    assert harness.answers[-1] == "22012" and portals(harness) == {} and harness.pg.portals == {}
    harness.batch([("parse", "", DECLARE_C2_HOLD), ("bind", "", ""), ("execute", ""), ("execute", "")])  # 55000
    harness.check()
    assert harness.answers[-1] == "55000" and portals(harness) == {} and harness.pg.portals == {}


def test_an_error_in_an_aborted_block_is_25p02_until_rollback() -> None:
    harness = Harness()
    run_(harness, BEGIN, FAILS, SELECT, [("parse", "s1", SELECT)], [("parse", "s1", ROLLBACK)])
    assert harness.answers[-3:] == ["25P02", "25P02", "ParseComplete"]  # ROLLBACK may be prepared in it
    run_(harness, [("bind", "", "s1"), ("execute", "")])
    assert harness.answers[-1] == "ROLLBACK" and harness.pg.xact == "none"


def test_rollback_to_savepoint_recovers_the_block() -> None:
    harness = Harness()
    run_(harness, BEGIN, DECLARE_C1, SAVEPOINT, DECLARE_C2_HOLD, FAILS, ROLLBACK_TO, SELECT)
    assert harness.answers[-1] == "SELECT 1"
    assert set(harness.pg.portals) == {"c1"}
    assert portals(harness) == {}  # the book drops every portal of the transaction: fail closed


def test_close_deallocate_and_discard() -> None:
    harness = Harness()
    run_(
        harness,
        [("parse", "s1", SELECT), ("parse", "s2", SELECT), ("parse", "", SELECT)],
        BEGIN,
        DECLARE_C1,
        CLOSE_C1,
        DEALLOCATE_S1,
    )
    assert statements(harness) == {"s2": SELECT} and portals(harness) == {}
    run_(harness, COMMIT, [("parse", "", DISCARD_ALL), ("bind", "", ""), ("execute", "")])
    assert harness.answers[-1] == "DISCARD ALL"
    assert statements(harness) == harness.pg.statements == {"": DISCARD_ALL}  # the unnamed statement stays


def test_discard_all_is_refused_within_a_pipeline() -> None:
    harness = Harness()
    run_(harness, [("parse", "s1", SELECT), ("bind", "", "s1"), ("execute", ""), ("parse", "", DISCARD_ALL)])
    run_(harness, [("bind", "", "s1"), ("execute", ""), ("bind", "p1", ""), ("execute", "p1")])
    assert harness.answers[-1] == "25001"
    assert harness.pg.statements == {"s1": SELECT, "": DISCARD_ALL}
    assert statements(harness) == {"": DISCARD_ALL}  # removed when DISCARD ALL was sent: fail closed


def test_fetch_reads_the_cursor_the_book_names() -> None:
    harness = Harness()
    run_(harness, BEGIN, DECLARE_C1, FETCH_C1, CLOSE_C1, FETCH_C1)
    assert harness.answers[-2:] == ["CLOSE CURSOR", "26000"]  # refused by the gateway (34000 in its place)


def test_declare_then_execute_in_one_batch() -> None:
    harness = Harness()
    run_(harness, BEGIN, [("parse", "", DECLARE_C1), ("bind", "", ""), ("execute", ""), ("execute", "c1")])
    assert harness.answers[-2:] == ["DECLARE CURSOR", "SELECT 1"]
    assert portals(harness) == {"": DECLARE_C1, "c1": DECLARE_C1}


@pytest.mark.parametrize("sql", [COMMIT, ROLLBACK])
def test_a_transaction_end_in_a_batch_drops_the_portals_bound_before_it(sql: str) -> None:
    harness = Harness()
    run_(
        harness,
        BEGIN,
        [("parse", "s1", SELECT), ("bind", "p1", "s1"), ("parse", "", sql), ("bind", "", ""), ("execute", "")],
        [("execute", "p1")],
    )
    assert harness.answers[-1] == "26000"  # the gateway refuses p1 (34000 to the client), as PostgreSQL would
