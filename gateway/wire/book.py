"""The gateway's mirror of what PostgreSQL keeps under a name in one session: prepared statements and portals.

PostgreSQL keeps prepared statements (Parse, or SQL PREPARE) and portals (Bind, or SQL DECLARE: protocol portals
and cursors share one namespace) for the life of a session or a transaction. The gateway decides a statement
when it first sees its text, then lets the client refer to it by name; so the gateway must know, for every name,
exactly which text the server holds. If it ever believed a name meant one text while the server ran another, it
would mask the rows of one statement with the plan of the other (invariants 1 and 4).

The rules that keep the two in step, whatever the client sends and however messages are pipelined:

* **Additions wait for the server.** A statement or portal enters the book only when the upstream confirms it:
  ParseComplete, BindComplete, the CommandComplete of a DECLARE or of an SQL PREPARE (which shares the protocol's
  namespace of prepared statements: PostgreSQL lets Bind use a PREPAREd name, and EXECUTE a Parsed one). A Parse
  that PostgreSQL refuses (42P05, "already exists") changes nothing here either.
* **Removals happen at once.** Close, CLOSE, DEALLOCATE, DISCARD, the unnamed statement or portal being replaced,
  a transaction ending: the entry leaves the book when the message is sent, before the server confirms. If the
  server then skips or refuses the removal, the gateway merely refuses a name the server still has: fail closed.
* **So the book is always a subset of the server**, each name with the text the server holds. A name the book
  does not know is refused with the SQLSTATE PostgreSQL would use (26000 statement, 34000 portal or cursor).
* **Pipelining.** A message is judged when it is forwarded, before the answers to earlier messages arrive. Within
  one batch (up to Sync) it may rely on earlier unconfirmed additions of the same batch: if one of those fails,
  PostgreSQL skips everything up to Sync, so what was judged never runs. Across batches it may not (an earlier
  batch may have failed, and a name mean something else now); the session therefore reads the next batch only
  after the previous one's ReadyForQuery, as PostgreSQL itself does, and every lookup then sees settled names
  or additions of the current batch.

Sans-IO: the session reports what it sends and what the upstream answers; the book never touches a socket.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pglast import ast, enums, parser

from policy.parse_depth import parse_statements

UNNAMED: Final = ""
CURSOR_OPT_HOLD: Final = 0x0020  # PostgreSQL's parsenodes.h: DECLARE ... WITH HOLD


@dataclass
class Prepared:
    """A prepared statement as the server holds it, with the gateway's decision on its text."""

    sql: str
    decision: Any
    param_types: tuple[int, ...] = ()
    row_description: Any = None  # the upstream's RowDescription, once described


@dataclass
class Portal:
    """A portal: bound from a prepared statement, or a cursor opened by DECLARE (then ``statement`` is the
    DECLARE text and its decision, which govern every row fetched from it)."""

    name: str
    statement: Prepared
    params: Any = None
    cursor: bool = False
    holdable: bool = False
    committed: bool = False  # a WITH HOLD cursor whose transaction committed: it outlives transactions
    row_description: Any = None
    declared_by: str = ""  # the audit statement id of the DECLARE, for the records of its fetches
    describing: bool = False  # the client asked to describe it: the answer will give ``row_description``


# ------------------------------------------------------------------------------------------ SQL effects


@dataclass(frozen=True)
class Declare:
    name: str
    holdable: bool


@dataclass(frozen=True)
class CloseCursor:
    name: str | None  # None: CLOSE ALL


@dataclass(frozen=True)
class Deallocate:
    name: str | None  # None: DEALLOCATE ALL


@dataclass(frozen=True)
class DiscardAll:
    pass


@dataclass(frozen=True)
class Fetch:
    name: str
    move: bool


@dataclass(frozen=True)
class TransactionEnd:
    """COMMIT/END (``commit``), ROLLBACK/ABORT, or ROLLBACK TO SAVEPOINT (``partial``)."""

    commit: bool
    partial: bool = False


@dataclass(frozen=True)
class SetApplicationName:
    """``SET [LOCAL] application_name = '<value>'``: the session runs it with the agent's name kept in front."""

    value: str
    local: bool


@dataclass(frozen=True)
class PrepareSql:
    """SQL ``PREPARE name [(types)] AS query``: ``query`` is the text after AS, what a later EXECUTE runs;
    ``head`` the text up to and including AS (to prepare the policy's text of the query instead)."""

    name: str
    query: str
    head: str


@dataclass(frozen=True)
class ExecuteSql:
    """SQL ``EXECUTE name [(arguments)]``; ``constant_arguments``: every argument is a literal (or a cast of one),
    so the arguments can reveal nothing the prepared statement's decision has not judged."""

    name: str
    constant_arguments: bool


@dataclass(frozen=True)
class NoEffect:
    pass


Effect = (
    Declare
    | CloseCursor
    | Deallocate
    | DiscardAll
    | Fetch
    | TransactionEnd
    | SetApplicationName
    | PrepareSql
    | ExecuteSql
    | NoEffect
)

_COMMITS: Final = frozenset({enums.TransactionStmtKind.TRANS_STMT_COMMIT})
_ROLLBACKS: Final = frozenset({enums.TransactionStmtKind.TRANS_STMT_ROLLBACK})
_PARTIAL_ROLLBACKS: Final = frozenset({enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_TO})


@functools.lru_cache(maxsize=1024)
def statement_effects(sql: str) -> tuple[Effect, ...] | None:
    """What each statement of ``sql`` does to the session's names, in order; None when the text does not parse
    (then it never runs: the decision refuses it)."""
    try:
        statements = parse_statements(sql)
    except Exception:
        return None
    effects: list[Effect] = []
    for raw in statements:
        if isinstance(raw.stmt, ast.PrepareStmt):
            parts = _prepared_text(sql, raw.stmt_location or 0, raw.stmt_len or len(sql))
            if parts is None:
                return None
            effects.append(PrepareSql(raw.stmt.name or "", query=parts[1], head=parts[0]))
        else:
            effects.append(_effect(raw.stmt))
    return tuple(effects)


def _prepared_text(sql: str, location: int, length: int) -> tuple[str, str] | None:
    """``PREPARE name [(types)] AS query`` split after its first AS keyword (a type name cannot be the bare
    keyword AS): the head and the query. Located with PostgreSQL's own scanner, whose offsets are characters."""
    end = location + length
    for token in parser.scan(sql):
        if token.start >= location and token.name == "AS":
            return sql[location : token.end + 1], sql[token.end + 1 : end].strip()
        if token.start >= end:
            break
    return None


def _constant(node: Any) -> bool:
    """A literal, possibly cast (``'x'::text``, ``-2``): what EXECUTE may pass without being judged itself."""
    while isinstance(node, ast.TypeCast):
        node = node.arg
    return isinstance(node, ast.A_Const)


def _effect(node: Any) -> Effect:
    if isinstance(node, ast.ExecuteStmt):
        return ExecuteSql(node.name or "", all(_constant(argument) for argument in node.params or ()))
    if isinstance(node, ast.DeclareCursorStmt):
        return Declare(node.portalname or "", bool((node.options or 0) & CURSOR_OPT_HOLD))
    if isinstance(node, ast.ClosePortalStmt):
        return CloseCursor(node.portalname)
    if isinstance(node, ast.DeallocateStmt):
        return Deallocate(node.name)
    if isinstance(node, ast.DiscardStmt) and node.target == enums.DiscardMode.DISCARD_ALL:
        return DiscardAll()
    if isinstance(node, ast.FetchStmt):
        return Fetch(node.portalname or "", bool(node.ismove))
    if isinstance(node, ast.VariableSetStmt) and (node.name or "").lower() == "application_name":
        arguments = node.args or ()
        constant = arguments[0].val if len(arguments) == 1 and isinstance(arguments[0], ast.A_Const) else None
        if node.kind == enums.VariableSetKind.VAR_SET_VALUE and isinstance(constant, ast.String):
            return SetApplicationName(constant.sval or "", bool(node.is_local))
    if isinstance(node, ast.TransactionStmt):
        if node.kind in _COMMITS:
            return TransactionEnd(commit=True)
        if node.kind in _ROLLBACKS:
            return TransactionEnd(commit=False)
        if node.kind in _PARTIAL_ROLLBACKS:
            return TransactionEnd(commit=False, partial=True)
    return NoEffect()


# --------------------------------------------------------------------------------------------- the book

OpKind = Literal["parse", "bind", "sql"]


@dataclass(eq=False)
class Op:
    """One forwarded message whose confirmation adds to the book (Parse, Bind) or whose statements have
    effects (an Execute or a simple Query), in the order the upstream will answer them."""

    kind: OpKind
    batch: int
    name: str = ""
    entry: Prepared | Portal | None = None
    effects: tuple[Effect, ...] = ()
    decision: Any = None  # the decision of the text an "sql" op runs (a DECLARE's cursor inherits it)
    sql: str = ""
    statement_id: str = ""
    settled: bool = False
    voided: bool = False  # a removal sent after it (Close, DISCARD...) cancels the addition in advance
    completed: int = 0  # statements of an "sql" op the upstream has completed so far


@dataclass
class Book:
    statements: dict[str, Prepared] = field(default_factory=dict)
    portals: dict[str, Portal] = field(default_factory=dict)
    pending: deque[Op] = field(default_factory=deque)
    batch: int = 0
    transaction_failed: bool = False  # an error (or a ROLLBACK) since the transaction began
    syncs: deque[int] = field(default_factory=deque)  # batches whose ReadyForQuery is still due

    # ---------------------------------------------------------------------------------------- lookups

    def statement(self, name: str) -> Prepared | None:
        """The statement ``name`` means for a message sent now (None: the server has no such statement)."""
        for op in reversed(self.pending):
            if op.voided or op.settled:
                continue
            if op.kind == "parse" and op.name == name:
                assert isinstance(op.entry, Prepared)
                return op.entry
            if op.kind == "sql":
                for effect in op.effects[op.completed :]:
                    if isinstance(effect, PrepareSql) and effect.name == name:
                        return Prepared(effect.query, op.decision)
        return self.statements.get(name)

    def portal(self, name: str) -> Portal | None:
        """The portal or cursor ``name`` means for a message sent now."""
        for op in reversed(self.pending):
            if op.voided or op.settled:
                continue
            if op.kind == "bind" and op.name == name:
                assert isinstance(op.entry, Portal)
                return op.entry
            if op.kind == "sql":
                for effect in op.effects[op.completed :]:
                    if isinstance(effect, Declare) and effect.name == name:
                        return Portal(name, Prepared(op.sql, op.decision), cursor=True, holdable=effect.holdable)
        return self.portals.get(name)

    def unsettled(self) -> bool:
        return any(not op.settled for op in self.pending)

    # ------------------------------------------------------------------------------- messages sent

    def parse(self, name: str, prepared: Prepared) -> Op:
        if name == UNNAMED:
            self._remove_statement(UNNAMED)  # PostgreSQL drops it first, whether or not the new one parses
        return self._push(Op("parse", self.batch, name, prepared))

    def bind(self, portal: Portal) -> Op:
        if portal.name == UNNAMED:
            self._remove_portal(UNNAMED)
        return self._push(Op("bind", self.batch, portal.name, portal))

    def close_statement(self, name: str) -> None:
        self._remove_statement(name)

    def close_portal(self, name: str) -> None:
        self._remove_portal(name)

    def sql(
        self,
        sql: str,
        decision: Any,
        *,
        simple_query: bool,
        statement_id: str = "",
        effects: tuple[Effect, ...] | None = None,
    ) -> Op:
        """An Execute of a portal, or a simple Query: removals its statements make happen now, additions (a
        DECLARE) when the upstream completes that statement. ``effects``: ``statement_effects(sql)`` when the
        caller has it already (parsing again costs ~100 µs a statement)."""
        if simple_query:  # a simple Query destroys the unnamed statement and portal (protocol documentation)
            self._remove_statement(UNNAMED)
            self._remove_portal(UNNAMED)
        if effects is None:
            effects = statement_effects(sql) or ()
        for effect in effects:
            if isinstance(effect, CloseCursor):
                self._remove_portal(effect.name)
            elif isinstance(effect, Deallocate):
                self._remove_statement(effect.name, keep_unnamed=True)
            elif isinstance(effect, DiscardAll):
                self._remove_statement(None, keep_unnamed=True)
                self._remove_portal(None)
            elif isinstance(effect, TransactionEnd):
                self._end_transaction(commit=effect.commit and not effect.partial)
        op = Op("sql", self.batch, effects=effects, decision=decision, sql=sql, statement_id=statement_id)
        return self._push(op)

    def sync(self) -> None:
        """A Sync (or a simple Query) ends the batch: later messages can no longer count on its outcome. Its
        ReadyForQuery will close it (``ready_for_query``)."""
        self.syncs.append(self.batch)
        self.batch += 1

    def _push(self, op: Op) -> Op:
        self.pending.append(op)
        return op

    def _remove_statement(self, name: str | None, *, keep_unnamed: bool = False) -> None:
        """``name`` None: every statement. ``keep_unnamed``: DEALLOCATE ALL and DISCARD ALL drop the named
        statements only (PostgreSQL's DropAllPreparedStatements); the unnamed one stays until replaced or a
        simple Query (found by tests/test_wire_book.py: the book forgot a statement the server still ran)."""
        if name is None:
            for key in [key for key in self.statements if not (keep_unnamed and key == UNNAMED)]:
                del self.statements[key]
        else:
            self.statements.pop(name, None)
        for op in self.pending:
            parsed = op.kind == "parse" and (
                op.name == name or (name is None and not (keep_unnamed and op.name == UNNAMED))
            )
            prepared = op.kind == "sql" and any(
                isinstance(e, PrepareSql) and (name is None or e.name == name) for e in op.effects[op.completed :]
            )
            if parsed or prepared:
                op.voided = True

    def _remove_portal(self, name: str | None) -> None:
        if name is None:
            self.portals.clear()
        else:
            self.portals.pop(name, None)
        self._void("bind", name)
        for op in self.pending:
            if op.kind == "sql" and any(
                isinstance(e, Declare) and (name is None or e.name == name) for e in op.effects[op.completed :]
            ):
                op.voided = True

    def _void(self, kind: OpKind, name: str | None) -> None:
        for op in self.pending:
            if op.kind == kind and (name is None or op.name == name):
                op.voided = True

    def _end_transaction(self, *, commit: bool, closing_batch: int | None = None) -> None:
        """A transaction ends: its portals die. WITH HOLD cursors survive a commit, which only the server can
        confirm (a COMMIT of a failed transaction rolls back), so they stay until ``_settle_holdable``.
        ``closing_batch``: only unconfirmed additions up to that batch belong to the ending transaction."""
        for name, portal in list(self.portals.items()):
            if not portal.committed and not (commit and portal.holdable):
                del self.portals[name]
        for op in self.pending:
            if closing_batch is not None and op.batch > closing_batch:
                continue
            if op.kind == "bind" or (
                op.kind == "sql"
                and any(isinstance(e, Declare) and not (commit and e.holdable) for e in op.effects[op.completed :])
            ):
                op.voided = True

    def _settle_holdable(self, *, committed: bool) -> None:
        for name, portal in list(self.portals.items()):
            if portal.committed:
                continue
            if committed and portal.holdable:
                portal.committed = True
            else:
                del self.portals[name]

    # ---------------------------------------------------------------------------- upstream answers

    def confirmed(self, op: Op) -> None:
        """ParseComplete / BindComplete for ``op``."""
        self._settle(op)
        if op.voided:
            return
        if op.kind == "parse":
            assert isinstance(op.entry, Prepared)
            self.statements[op.name] = op.entry
        elif op.kind == "bind":
            assert isinstance(op.entry, Portal)
            self.portals[op.name] = op.entry

    def statement_completed(self, op: Op, tag: str = "") -> None:
        """A CommandComplete (command tag ``tag``) for the next statement of an "sql" op."""
        index = op.completed
        op.completed += 1
        if op.completed >= max(len(op.effects), 1):
            self._settle(op)
        effect = op.effects[index] if index < len(op.effects) else NoEffect()
        if isinstance(effect, PrepareSql) and not op.voided:
            self.statements[effect.name] = Prepared(effect.query, op.decision)
        elif isinstance(effect, Declare) and not op.voided:
            self.portals[effect.name] = Portal(
                effect.name,
                Prepared(op.sql, op.decision),
                cursor=True,
                holdable=effect.holdable,
                declared_by=op.statement_id,
            )
        elif isinstance(effect, TransactionEnd) and not effect.partial:
            # COMMIT of a failed transaction answers ROLLBACK: only a real commit keeps WITH HOLD cursors.
            self._settle_holdable(committed=tag == "COMMIT")
            self.transaction_failed = False  # the next transaction starts clean

    def failed(self, op: Op) -> None:
        """An ErrorResponse answered ``op``: nothing is added, and the transaction is failed."""
        self._settle(op)
        self.error()

    def skipped(self, op: Op) -> None:
        """The upstream skipped ``op`` (an earlier error in its batch): it changed nothing."""
        self._settle(op)

    def error(self) -> None:
        """A (non-fatal) error: an implicit transaction rolls back, an explicit one is failed until it ends."""
        self.transaction_failed = True

    def ready_for_query(self, status: str) -> None:
        """ReadyForQuery closes the oldest open batch: what of it is unanswered was skipped. With status I no
        transaction is open any more, so its portals are gone (held cursors kept if it committed)."""
        closing = self.syncs.popleft() if self.syncs else self.batch
        for op in self.pending:
            if op.batch <= closing:
                op.settled = True
        while self.pending and self.pending[0].settled:
            self.pending.popleft()
        if status == "I":
            self._end_transaction(commit=not self.transaction_failed, closing_batch=closing)
            self._settle_holdable(committed=not self.transaction_failed)
            self.transaction_failed = False

    def _settle(self, op: Op) -> None:
        op.settled = True
        while self.pending and self.pending[0].settled:
            self.pending.popleft()
