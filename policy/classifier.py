"""Classify SQL sent by AI agents as ALLOWED, HELD for human approval, or DENIED.

The gateway fronts databases holding PHI, so the classifier fails closed: a
statement runs without approval only when PostgreSQL's own parser (through
pglast) shows it is a read that calls nothing with side effects.  Everything
the classifier cannot prove safe is HELD for a human; everything that no human
should approve through an agent gateway (server files, roles, privileges,
extensions, configuration) is DENIED outright.

The whole parse tree is walked, so nothing nested (subqueries, CTEs, FROM
functions, defaults, RETURNING, ...) escapes inspection.  SQL text is never
inspected with regular expressions.

Three rules keep what an agent sees within what its masks reveal:

* Catalog relations and functions that expose stored values, other sessions'
  statements or secrets (policy.exposure) are DENIED wherever they appear.
* Given a relation catalog, every view a statement reads is inspected through
  its definition (selecting a view runs its query), recursively.
* The sessions stay read-only: READ WRITE is DENIED in every spelling, and
  EXPLAIN's options are read as PostgreSQL reads them (the last ANALYZE wins).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from pglast import ast, enums
from pglast.parser import ParseError
from pglast.parser import fingerprint as _fingerprint

from policy import session_settings
from policy.exposure import exposing_function, exposing_relation, exposure_reason
from policy.lineage_types import RelationCatalog
from policy.parse_depth import TooDeep, parse_statements


class Verdict(enum.StrEnum):
    """What the gateway does with a request."""

    ALLOWED = "allowed"
    HELD = "held"
    DENIED = "denied"


class Risk(enum.StrEnum):
    """How much damage the request could do if it were run."""

    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"
    CRITICAL = "critical"


_VERDICT_RANK: Mapping[Verdict, int] = MappingProxyType({Verdict.ALLOWED: 0, Verdict.HELD: 1, Verdict.DENIED: 2})
_RISK_RANK: Mapping[Risk, int] = MappingProxyType({Risk.LOW: 0, Risk.MODERATE: 1, Risk.HIGH: 2, Risk.CRITICAL: 3})


class UnparsableStatement(ValueError):
    """The text is not SQL PostgreSQL would accept, or there is no statement.

    Nothing unparsable may run, and there is nothing a reviewer could approve,
    so callers reject the request.  The message is the parser's own message;
    ``position`` is the character offset it points at, when it gives one.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


class FunctionCatalog(Protocol):
    """Source of truth for function volatility (normally a pg_proc snapshot)."""

    def volatility(self, schema: str | None, name: str) -> str | None:
        """'i' immutable, 's' stable, 'v' volatile for the named function.

        The most volatile of its overloads, or None when no such function
        exists.  schema None means unqualified (resolved via pg_catalog and
        the search path).
        """
        ...


@runtime_checkable
class PhiColumns(Protocol):
    """PHI tags by relation. A relation catalog that also answers this (the gateway's TargetCatalog) lets the
    classifier rank writes to PHI columns above other writes; without it writes are ranked by their shape."""

    def phi_columns(self, schema: str, name: str) -> frozenset[str]:
        """Names of the relation's columns tagged as PHI (empty when none are)."""
        ...


@dataclass(frozen=True)
class Classification:
    """The classifier's answer for one request (one or more statements)."""

    verdict: Verdict
    risk: Risk
    reasons: tuple[str, ...]
    statement_types: tuple[str, ...]
    relations: tuple[str, ...]
    functions: tuple[str, ...]
    approvals_required: int
    is_transaction_control: bool
    fingerprint: str


# --------------------------------------------------------------------------
# Policy data
# --------------------------------------------------------------------------

# Server file and program access: reads, lists or writes files on the
# database host, bypassing every table-level permission.
_SERVER_FILE_FUNCTIONS = frozenset(
    {
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
        "pg_ls_archive_statusdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir",
        "pg_ls_replslotdir",
        "pg_stat_file",
        "lo_import",
        "lo_export",
        "pg_file_write",
        "pg_file_rename",
        "pg_file_unlink",
        "pg_file_sync",
        "pg_logdir_ls",
    }
)

# Backend and server control: stops other sessions or changes server state.
_SERVER_CONTROL_FUNCTIONS = frozenset(
    {
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_log_backend_memory_contexts",
        "pg_wal_replay_pause",
        "pg_wal_replay_resume",
    }
)

# Configuration: changes settings behind the SET allowlist's back.
_CONFIGURATION_FUNCTIONS = frozenset({"set_config"})

# Dynamic SQL: the SQL these run is a string argument (or a cursor, table or
# whole schema) that the classifier never sees as a parse tree.  Matched in
# any schema because extensions such as dblink install into arbitrary ones.
DYNAMIC_SQL_FUNCTIONS = frozenset(
    {
        "query_to_xml",
        "query_to_xml_and_xmlschema",
        "query_to_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xml_and_xmlschema",
        "table_to_xmlschema",
        "schema_to_xml",
        "schema_to_xml_and_xmlschema",
        "schema_to_xmlschema",
        "database_to_xml",
        "database_to_xml_and_xmlschema",
        "database_to_xmlschema",
        "ts_stat",
        "ts_rewrite",
        "dblink",
        "dblink_exec",
        "dblink_open",
        "dblink_fetch",
        "dblink_send_query",
    }
)

# Replication: emits WAL, or creates, drops, advances or drains slots and
# origins (draining a logical slot reveals every table's changes).
_REPLICATION_FUNCTIONS = frozenset(
    {
        "pg_logical_emit_message",
        "pg_create_logical_replication_slot",
        "pg_create_physical_replication_slot",
        "pg_drop_replication_slot",
        "pg_copy_logical_replication_slot",
        "pg_copy_physical_replication_slot",
        "pg_replication_slot_advance",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_binary_changes",
    }
)
_REPLICATION_PREFIXES = ("pg_replication_origin_",)

#: Every function name the gateway refuses outright (bare, lower-case names).
DENIED_FUNCTIONS = (
    _SERVER_FILE_FUNCTIONS
    | _SERVER_CONTROL_FUNCTIONS
    | _CONFIGURATION_FUNCTIONS
    | DYNAMIC_SQL_FUNCTIONS
    | _REPLICATION_FUNCTIONS
)

# Denylist groups that only apply to pg_catalog (or unqualified) names, with
# the explanation used in reasons.
_CATALOG_DENY_GROUPS: tuple[tuple[frozenset[str], str], ...] = (
    (_SERVER_FILE_FUNCTIONS, "accesses files or programs on the database server"),
    (_SERVER_CONTROL_FUNCTIONS, "controls server processes or server state"),
    (_CONFIGURATION_FUNCTIONS, "changes configuration settings"),
    (_REPLICATION_FUNCTIONS, "controls replication"),
)
_DYNAMIC_SQL_WHY = "runs SQL that cannot be inspected"
_REPLICATION_WHY = "controls replication"

# Settings an agent may change with SET/RESET or set_config: one allowlist with the start-up packet's
# (policy.session_settings), which also bounds the limits the gateway sets (statement_timeout...).
# SET TRANSACTION / SET SESSION CHARACTERISTICS arrive as these pseudo-names.
_TRANSACTION_SETTINGS = frozenset({"transaction", "session characteristics", "transaction snapshot"})
_IDENTITY_SETTINGS: Mapping[str, str] = MappingProxyType(
    {"role": "ROLE", "session_authorization": "SESSION AUTHORIZATION"}
)

_TransKind = enums.TransactionStmtKind
_TRANSACTION_TAGS: Mapping[int, str] = MappingProxyType(
    {
        _TransKind.TRANS_STMT_BEGIN: "BEGIN",
        _TransKind.TRANS_STMT_START: "START TRANSACTION",
        _TransKind.TRANS_STMT_COMMIT: "COMMIT",
        _TransKind.TRANS_STMT_ROLLBACK: "ROLLBACK",
        _TransKind.TRANS_STMT_SAVEPOINT: "SAVEPOINT",
        _TransKind.TRANS_STMT_RELEASE: "RELEASE",
        _TransKind.TRANS_STMT_ROLLBACK_TO: "ROLLBACK TO",
        _TransKind.TRANS_STMT_PREPARE: "PREPARE TRANSACTION",
        _TransKind.TRANS_STMT_COMMIT_PREPARED: "COMMIT PREPARED",
        _TransKind.TRANS_STMT_ROLLBACK_PREPARED: "ROLLBACK PREPARED",
    }
)
# Two-phase commit hands the transaction to whoever commits it later.
_TWO_PHASE_KINDS = frozenset(
    {
        _TransKind.TRANS_STMT_PREPARE,
        _TransKind.TRANS_STMT_COMMIT_PREPARED,
        _TransKind.TRANS_STMT_ROLLBACK_PREPARED,
    }
)

_Obj = enums.ObjectType
# Objects that live at server (cluster) level or install server code; any
# statement managing them is DENIED, whatever its verb.
_SERVER_LEVEL_OBJECTS = frozenset(
    {
        _Obj.OBJECT_DATABASE,
        _Obj.OBJECT_ROLE,
        _Obj.OBJECT_TABLESPACE,
        _Obj.OBJECT_EXTENSION,
        _Obj.OBJECT_LANGUAGE,
        _Obj.OBJECT_EVENT_TRIGGER,
        _Obj.OBJECT_FOREIGN_SERVER,
        _Obj.OBJECT_FDW,
        _Obj.OBJECT_USER_MAPPING,
        _Obj.OBJECT_PUBLICATION,
        _Obj.OBJECT_SUBSCRIPTION,
        _Obj.OBJECT_PARAMETER_ACL,
    }
)
# Object types that are relations, so DROP of them is listed in relations.
_RELATION_OBJECTS = frozenset(
    {
        _Obj.OBJECT_TABLE,
        _Obj.OBJECT_VIEW,
        _Obj.OBJECT_MATVIEW,
        _Obj.OBJECT_INDEX,
        _Obj.OBJECT_SEQUENCE,
        _Obj.OBJECT_FOREIGN_TABLE,
    }
)
_OBJECT_WORDS: Mapping[int, str] = MappingProxyType(
    {
        _Obj.OBJECT_MATVIEW: "MATERIALIZED VIEW",
        _Obj.OBJECT_FDW: "FOREIGN DATA WRAPPER",
        _Obj.OBJECT_FOREIGN_SERVER: "SERVER",
        _Obj.OBJECT_TSCONFIGURATION: "TEXT SEARCH CONFIGURATION",
        _Obj.OBJECT_TSDICTIONARY: "TEXT SEARCH DICTIONARY",
        _Obj.OBJECT_TSPARSER: "TEXT SEARCH PARSER",
        _Obj.OBJECT_TSTEMPLATE: "TEXT SEARCH TEMPLATE",
        _Obj.OBJECT_OPCLASS: "OPERATOR CLASS",
        _Obj.OBJECT_OPFAMILY: "OPERATOR FAMILY",
        _Obj.OBJECT_STATISTIC_EXT: "STATISTICS",
        _Obj.OBJECT_LARGEOBJECT: "LARGE OBJECT",
        _Obj.OBJECT_TABCONSTRAINT: "CONSTRAINT",
        _Obj.OBJECT_DOMCONSTRAINT: "DOMAIN CONSTRAINT",
        _Obj.OBJECT_PARAMETER_ACL: "PARAMETER",
    }
)

_ALLOWED_STATEMENT_SUMMARIES: Mapping[type[ast.Node], str] = MappingProxyType(
    {
        ast.VariableShowStmt: "SHOW only reads a setting",
        ast.DiscardStmt: "DISCARD only resets session state",
        ast.DeallocateStmt: "DEALLOCATE only forgets a prepared statement",
        ast.FetchStmt: "FETCH and MOVE only read from an open cursor",
        ast.ClosePortalStmt: "CLOSE only closes a cursor",
        ast.DeclareCursorStmt: "DECLARE CURSOR is classified by its query",
    }
)

# Statements that change the database schema: held for two approvers.
_DDL_STATEMENTS = frozenset(
    {
        ast.CreateStmt,
        ast.CreateForeignTableStmt,
        ast.AlterTableStmt,
        ast.AlterTableMoveAllStmt,
        ast.DropStmt,
        ast.IndexStmt,
        ast.ViewStmt,
        ast.CreateTableAsStmt,
        ast.RefreshMatViewStmt,
        ast.CreateSeqStmt,
        ast.AlterSeqStmt,
        ast.CreateFunctionStmt,
        ast.AlterFunctionStmt,
        ast.CreateTrigStmt,
        ast.CompositeTypeStmt,
        ast.CreateEnumStmt,
        ast.CreateRangeStmt,
        ast.AlterEnumStmt,
        ast.AlterTypeStmt,
        ast.CreateDomainStmt,
        ast.AlterDomainStmt,
        ast.CreateSchemaStmt,
        ast.CommentStmt,
        ast.RenameStmt,
        ast.AlterObjectSchemaStmt,
        ast.AlterObjectDependsStmt,
        ast.DefineStmt,
        ast.RuleStmt,
        ast.CreatePolicyStmt,
        ast.AlterPolicyStmt,
        ast.CreateStatsStmt,
        ast.AlterStatsStmt,
        ast.CreateCastStmt,
        ast.CreateConversionStmt,
        ast.CreateOpClassStmt,
        ast.CreateOpFamilyStmt,
        ast.AlterOpFamilyStmt,
        ast.AlterOperatorStmt,
        ast.AlterCollationStmt,
        ast.AlterTSConfigurationStmt,
        ast.AlterTSDictionaryStmt,
        ast.CreateTransformStmt,
        ast.CreateAmStmt,
    }
)

# Statements no agent may run through the gateway, with why.
_DENIED_STATEMENTS: Mapping[type[ast.Node], str] = MappingProxyType(
    {
        ast.CreatedbStmt: "manages databases",
        ast.DropdbStmt: "manages databases",
        ast.AlterDatabaseStmt: "manages databases",
        ast.AlterDatabaseSetStmt: "manages databases",
        ast.AlterDatabaseRefreshCollStmt: "manages databases",
        ast.AlterSystemStmt: "changes server configuration",
        ast.CreateRoleStmt: "manages roles",
        ast.AlterRoleStmt: "manages roles",
        ast.AlterRoleSetStmt: "manages roles",
        ast.DropRoleStmt: "manages roles",
        ast.GrantRoleStmt: "manages role membership",
        ast.ReassignOwnedStmt: "changes object ownership",
        ast.DropOwnedStmt: "manages roles' objects and privileges",
        ast.AlterOwnerStmt: "changes object ownership",
        ast.GrantStmt: "changes privileges",
        ast.AlterDefaultPrivilegesStmt: "changes privileges",
        ast.CreateExtensionStmt: "installs or changes server extensions",
        ast.AlterExtensionStmt: "installs or changes server extensions",
        ast.AlterExtensionContentsStmt: "installs or changes server extensions",
        ast.LoadStmt: "loads a shared library into the server",
        ast.CreateTableSpaceStmt: "manages tablespaces",
        ast.DropTableSpaceStmt: "manages tablespaces",
        ast.AlterTableSpaceOptionsStmt: "manages tablespaces",
        ast.CreatePLangStmt: "installs a procedural language",
        ast.CreateEventTrigStmt: "installs code that runs on every DDL",
        ast.AlterEventTrigStmt: "changes code that runs on every DDL",
        ast.CreateForeignServerStmt: "manages foreign servers",
        ast.AlterForeignServerStmt: "manages foreign servers",
        ast.CreateFdwStmt: "manages foreign data wrappers",
        ast.AlterFdwStmt: "manages foreign data wrappers",
        ast.CreateUserMappingStmt: "manages credentials for foreign servers",
        ast.AlterUserMappingStmt: "manages credentials for foreign servers",
        ast.DropUserMappingStmt: "manages credentials for foreign servers",
        ast.ImportForeignSchemaStmt: "manages foreign servers",
        ast.CreateSubscriptionStmt: "manages logical replication",
        ast.AlterSubscriptionStmt: "manages logical replication",
        ast.DropSubscriptionStmt: "manages logical replication",
        ast.CreatePublicationStmt: "manages logical replication",
        ast.AlterPublicationStmt: "manages logical replication",
        ast.SecLabelStmt: "changes security labels",
        ast.CheckPointStmt: "forces a server checkpoint",
        ast.PrepareStmt: "stores a statement whose later EXECUTE cannot be inspected",
        ast.ExecuteStmt: "runs a prepared statement that cannot be inspected",
    }
)

# Maintenance, locking and messaging: no data change, but not reads either.
_REVIEWED_STATEMENTS = frozenset(
    {
        ast.LockStmt,
        ast.VacuumStmt,
        ast.ClusterStmt,
        ast.ReindexStmt,
        ast.NotifyStmt,
        ast.ListenStmt,
        ast.UnlistenStmt,
    }
)

_DATA_MODIFYING = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)

_FIXED_TAGS: Mapping[type[ast.Node], str] = MappingProxyType(
    {
        ast.InsertStmt: "INSERT",
        ast.UpdateStmt: "UPDATE",
        ast.DeleteStmt: "DELETE",
        ast.MergeStmt: "MERGE",
        ast.TruncateStmt: "TRUNCATE",
        ast.CreateStmt: "CREATE TABLE",
        ast.CreateForeignTableStmt: "CREATE FOREIGN TABLE",
        ast.AlterTableMoveAllStmt: "ALTER TABLE ALL IN TABLESPACE",
        ast.IndexStmt: "CREATE INDEX",
        ast.ViewStmt: "CREATE VIEW",
        ast.RefreshMatViewStmt: "REFRESH MATERIALIZED VIEW",
        ast.CreateSeqStmt: "CREATE SEQUENCE",
        ast.AlterSeqStmt: "ALTER SEQUENCE",
        ast.CreateTrigStmt: "CREATE TRIGGER",
        ast.CompositeTypeStmt: "CREATE TYPE",
        ast.CreateEnumStmt: "CREATE TYPE",
        ast.CreateRangeStmt: "CREATE TYPE",
        ast.AlterEnumStmt: "ALTER TYPE",
        ast.AlterTypeStmt: "ALTER TYPE",
        ast.CreateDomainStmt: "CREATE DOMAIN",
        ast.AlterDomainStmt: "ALTER DOMAIN",
        ast.CreateSchemaStmt: "CREATE SCHEMA",
        ast.CommentStmt: "COMMENT",
        ast.AlterObjectDependsStmt: "ALTER ... DEPENDS ON EXTENSION",
        ast.RuleStmt: "CREATE RULE",
        ast.CreatePolicyStmt: "CREATE POLICY",
        ast.AlterPolicyStmt: "ALTER POLICY",
        ast.CreateStatsStmt: "CREATE STATISTICS",
        ast.AlterStatsStmt: "ALTER STATISTICS",
        ast.CreateCastStmt: "CREATE CAST",
        ast.CreateConversionStmt: "CREATE CONVERSION",
        ast.CreateOpClassStmt: "CREATE OPERATOR CLASS",
        ast.CreateOpFamilyStmt: "CREATE OPERATOR FAMILY",
        ast.AlterOpFamilyStmt: "ALTER OPERATOR FAMILY",
        ast.AlterOperatorStmt: "ALTER OPERATOR",
        ast.AlterCollationStmt: "ALTER COLLATION",
        ast.AlterTSConfigurationStmt: "ALTER TEXT SEARCH CONFIGURATION",
        ast.AlterTSDictionaryStmt: "ALTER TEXT SEARCH DICTIONARY",
        ast.CreateTransformStmt: "CREATE TRANSFORM",
        ast.CreateAmStmt: "CREATE ACCESS METHOD",
        ast.CreatedbStmt: "CREATE DATABASE",
        ast.DropdbStmt: "DROP DATABASE",
        ast.AlterDatabaseStmt: "ALTER DATABASE",
        ast.AlterDatabaseSetStmt: "ALTER DATABASE",
        ast.AlterDatabaseRefreshCollStmt: "ALTER DATABASE",
        ast.AlterSystemStmt: "ALTER SYSTEM",
        ast.AlterRoleStmt: "ALTER ROLE",
        ast.AlterRoleSetStmt: "ALTER ROLE",
        ast.DropRoleStmt: "DROP ROLE",
        ast.ReassignOwnedStmt: "REASSIGN OWNED",
        ast.DropOwnedStmt: "DROP OWNED",
        ast.AlterDefaultPrivilegesStmt: "ALTER DEFAULT PRIVILEGES",
        ast.CreateExtensionStmt: "CREATE EXTENSION",
        ast.AlterExtensionStmt: "ALTER EXTENSION",
        ast.AlterExtensionContentsStmt: "ALTER EXTENSION",
        ast.LoadStmt: "LOAD",
        ast.CreateTableSpaceStmt: "CREATE TABLESPACE",
        ast.DropTableSpaceStmt: "DROP TABLESPACE",
        ast.AlterTableSpaceOptionsStmt: "ALTER TABLESPACE",
        ast.CreatePLangStmt: "CREATE LANGUAGE",
        ast.CreateEventTrigStmt: "CREATE EVENT TRIGGER",
        ast.AlterEventTrigStmt: "ALTER EVENT TRIGGER",
        ast.CreateForeignServerStmt: "CREATE SERVER",
        ast.AlterForeignServerStmt: "ALTER SERVER",
        ast.CreateFdwStmt: "CREATE FOREIGN DATA WRAPPER",
        ast.AlterFdwStmt: "ALTER FOREIGN DATA WRAPPER",
        ast.CreateUserMappingStmt: "CREATE USER MAPPING",
        ast.AlterUserMappingStmt: "ALTER USER MAPPING",
        ast.DropUserMappingStmt: "DROP USER MAPPING",
        ast.ImportForeignSchemaStmt: "IMPORT FOREIGN SCHEMA",
        ast.CreateSubscriptionStmt: "CREATE SUBSCRIPTION",
        ast.AlterSubscriptionStmt: "ALTER SUBSCRIPTION",
        ast.DropSubscriptionStmt: "DROP SUBSCRIPTION",
        ast.CreatePublicationStmt: "CREATE PUBLICATION",
        ast.AlterPublicationStmt: "ALTER PUBLICATION",
        ast.SecLabelStmt: "SECURITY LABEL",
        ast.CheckPointStmt: "CHECKPOINT",
        ast.PrepareStmt: "PREPARE",
        ast.ExecuteStmt: "EXECUTE",
        ast.CopyStmt: "COPY",
        ast.DoStmt: "DO",
        ast.CallStmt: "CALL",
        ast.LockStmt: "LOCK TABLE",
        ast.ClusterStmt: "CLUSTER",
        ast.ReindexStmt: "REINDEX",
        ast.NotifyStmt: "NOTIFY",
        ast.ListenStmt: "LISTEN",
        ast.UnlistenStmt: "UNLISTEN",
        ast.ExplainStmt: "EXPLAIN",
        ast.VariableShowStmt: "SHOW",
        ast.DiscardStmt: "DISCARD",
        ast.DeallocateStmt: "DEALLOCATE",
        ast.ClosePortalStmt: "CLOSE",
        ast.DeclareCursorStmt: "DECLARE CURSOR",
        ast.ConstraintsSetStmt: "SET CONSTRAINTS",
    }
)

# The protobuf-to-Python conversion inside pglast.parse_sql recurses on the C
# stack without a depth check, so a pathologically nested statement (tens of
# thousands of levels) crashes the whole process.  The JSON rendering of the
# same tree is checked first and anything nested deeper than this is refused
# as unparsable.  Real queries stay far below it (a 500-way UNION is ~510).

_BATCH_REASON = "multiple statements in one request"
_BATCH_TRANSACTION_REASON = (
    "transaction control inside a statement batch is not allowed; each approved batch runs in one transaction"
)


# --------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Finding:
    """One observation about a statement and what it implies.

    ALLOWED findings are justifications, shown only when nothing worse was
    found.  ``survives_plain_explain`` marks findings that still matter when
    the statement is only planned (EXPLAIN without ANALYZE), not run.
    """

    verdict: Verdict
    reason: str
    risk: Risk = Risk.LOW
    approvals: int = 0
    survives_plain_explain: bool = False


def _allowed(reason: str) -> _Finding:
    """A justification for letting the statement run."""
    return _Finding(Verdict.ALLOWED, reason)


def _held(
    reason: str,
    risk: Risk = Risk.MODERATE,
    approvals: int = 1,
    *,
    survives_plain_explain: bool = False,
) -> _Finding:
    """Something a human must approve before the statement may run."""
    return _Finding(Verdict.HELD, reason, risk, approvals, survives_plain_explain)


def _denied(reason: str) -> _Finding:
    """Something no approval can make acceptable; survives any EXPLAIN form."""
    return _Finding(Verdict.DENIED, reason, Risk.CRITICAL, 0, True)


@dataclass(frozen=True)
class _Outcome:
    """The verdict for one statement (or a whole batch) with its evidence."""

    verdict: Verdict
    risk: Risk
    reasons: tuple[str, ...]
    approvals: int


def _outcome(findings: Sequence[_Finding]) -> _Outcome:
    """Fold findings into a verdict: the most severe finding wins."""
    verdict = max(
        (finding.verdict for finding in findings),
        key=_VERDICT_RANK.__getitem__,
        default=Verdict.ALLOWED,
    )
    if verdict is Verdict.ALLOWED:
        return _Outcome(verdict, Risk.LOW, _unique(f.reason for f in findings), 0)
    concerns = [finding for finding in findings if finding.verdict is not Verdict.ALLOWED]
    reasons = _unique(finding.reason for finding in concerns)
    if verdict is Verdict.DENIED:
        return _Outcome(verdict, Risk.CRITICAL, reasons, 0)
    risk = max((finding.risk for finding in concerns), key=_RISK_RANK.__getitem__)
    approvals = max([1, *(finding.approvals for finding in concerns)])
    return _Outcome(verdict, risk, reasons, approvals)


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    """Deduplicate while keeping first-seen order (reasons read in order found)."""
    return tuple(dict.fromkeys(items))


# --------------------------------------------------------------------------
# Statement naming
# --------------------------------------------------------------------------


def _object_words(object_type: int | None) -> str:
    """SQL words for an ObjectType, e.g. OBJECT_MATVIEW -> 'MATERIALIZED VIEW'."""
    if object_type is None or object_type not in set(_Obj):
        return "OBJECT"
    if object_type in _OBJECT_WORDS:
        return _OBJECT_WORDS[object_type]
    return _Obj(object_type).name.removeprefix("OBJECT_").replace("_", " ")


def _camel_case_words(class_name: str) -> str:
    """'CreateStatsStmt' -> 'CREATE STATS': a readable tag for unmapped nodes."""
    words: list[str] = []
    for char in class_name.removesuffix("Stmt"):
        if char.isupper() and words:
            words.append(" ")
        words.append(char)
    return "".join(words).upper()


def _variable_set_tag(node: ast.VariableSetStmt) -> str:
    """SET or RESET, as PostgreSQL tags them."""
    resets = {enums.VariableSetKind.VAR_RESET, enums.VariableSetKind.VAR_RESET_ALL}
    return "RESET" if node.kind in resets else "SET"


def _create_role_tag(node: ast.CreateRoleStmt) -> str:
    """CREATE ROLE, CREATE USER or CREATE GROUP."""
    kind = enums.RoleStmtType(node.stmt_type or 0).name.removeprefix("ROLESTMT_")
    return f"CREATE {kind}"


_TAG_BUILDERS: Mapping[type[ast.Node], Callable[[Any], str]] = MappingProxyType(
    {
        ast.SelectStmt: lambda n: "SELECT INTO" if n.intoClause else "SELECT",
        ast.TransactionStmt: lambda n: _TRANSACTION_TAGS.get(n.kind, "TRANSACTION"),
        ast.VariableSetStmt: _variable_set_tag,
        ast.CreateRoleStmt: _create_role_tag,
        ast.CreateTableAsStmt: lambda n: (
            "CREATE MATERIALIZED VIEW" if n.objtype == _Obj.OBJECT_MATVIEW else "CREATE TABLE AS"
        ),
        ast.CreateFunctionStmt: lambda n: "CREATE PROCEDURE" if n.is_procedure else "CREATE FUNCTION",
        ast.AlterFunctionStmt: lambda n: f"ALTER {_object_words(n.objtype)}",
        ast.AlterTableStmt: lambda n: f"ALTER {_object_words(n.objtype)}",
        ast.DropStmt: lambda n: f"DROP {_object_words(n.removeType)}",
        ast.RenameStmt: lambda n: f"ALTER {_object_words(n.renameType)} RENAME",
        ast.AlterObjectSchemaStmt: lambda n: f"ALTER {_object_words(n.objectType)} SET SCHEMA",
        ast.AlterOwnerStmt: lambda n: f"ALTER {_object_words(n.objectType)} OWNER TO",
        ast.DefineStmt: lambda n: f"CREATE {_object_words(n.kind)}",
        ast.GrantStmt: lambda n: "GRANT" if n.is_grant else "REVOKE",
        ast.GrantRoleStmt: lambda n: "GRANT ROLE" if n.is_grant else "REVOKE ROLE",
        ast.VacuumStmt: lambda n: "VACUUM" if n.is_vacuumcmd else "ANALYZE",
        ast.FetchStmt: lambda n: "MOVE" if n.ismove else "FETCH",
    }
)


def _statement_type(node: ast.Node) -> str:
    """PostgreSQL-style command tag for a statement node, e.g. 'CREATE TABLE'."""
    builder = _TAG_BUILDERS.get(type(node))
    if builder is not None:
        return builder(node)
    return _FIXED_TAGS.get(type(node)) or _camel_case_words(type(node).__name__)


# --------------------------------------------------------------------------
# Statement rules (the statement itself, not what is nested inside it)
# --------------------------------------------------------------------------


def _select_rules(node: ast.SelectStmt, top_level: bool) -> list[_Finding]:
    """SELECT is a read unless it creates a table or takes row locks."""
    findings: list[_Finding] = []
    if node.intoClause is not None:
        findings.append(_held("SELECT INTO creates a table (DDL)", Risk.HIGH, 2))
    for clause in node.lockingClause or ():
        findings.append(_held(f"SELECT ... FOR {_lock_words(clause)} takes row locks"))
    if top_level:
        findings.append(_allowed("SELECT only reads data"))
    return findings


def _lock_words(clause: ast.LockingClause) -> str:
    """'UPDATE', 'NO KEY UPDATE', 'SHARE' or 'KEY SHARE' for a locking clause."""
    words = {
        enums.LockClauseStrength.LCS_FORKEYSHARE: "KEY SHARE",
        enums.LockClauseStrength.LCS_FORSHARE: "SHARE",
        enums.LockClauseStrength.LCS_FORNOKEYUPDATE: "NO KEY UPDATE",
        enums.LockClauseStrength.LCS_FORUPDATE: "UPDATE",
    }
    return words.get(clause.strength, "UPDATE") if clause.strength is not None else "UPDATE"


def _data_modifying_rules(node: ast.Node) -> list[_Finding]:
    """INSERT/UPDATE/DELETE/MERGE: held; UPDATE/DELETE that may touch every row are critical, for two approvers.

    "Every row" is judged on the parse tree: no WHERE, or a WHERE that does not depend on the row being
    changed (``WHERE true``, ``WHERE 1 = 1``, ``WHERE NOT false OR id = 1``), which either matches every row
    or none. Writes to PHI columns are ranked by the inspector, which knows the PHI tags.
    """
    tag = _statement_type(node)
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
        if node.whereClause is None:
            return [_held(f"{tag} without WHERE affects every row", Risk.CRITICAL, 2)]
        if _may_match_every_row(node.whereClause):
            reason = f"{tag} with a WHERE that does not depend on the row (e.g. WHERE true) affects every row"
            return [_held(reason, Risk.CRITICAL, 2)]
    return [_held(f"{tag} modifies data")]


def _may_match_every_row(condition: object) -> bool:
    """Whether a WHERE condition may hold for every row: it, or an OR branch of it, reads no column.

    An expression with no column reference has one value for the whole statement (a constant, a parameter, an
    uncorrelated subquery without columns), so the statement changes every row or none. ``WHERE CURRENT OF``
    is one row. Conservative in one direction only: a condition that reads a column is taken as bounded.
    """
    if isinstance(condition, ast.CurrentOfExpr):
        return False
    if isinstance(condition, ast.BoolExpr):
        arguments = condition.args or ()
        if condition.boolop == enums.BoolExprType.AND_EXPR:
            return all(_may_match_every_row(argument) for argument in arguments)
        if condition.boolop == enums.BoolExprType.OR_EXPR:
            return any(_may_match_every_row(argument) for argument in arguments)
    return not _reads_a_column(condition)


def _reads_a_column(value: object) -> bool:
    """Whether any column reference appears in a parse (sub)tree (iterative: conditions may nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.ColumnRef):
            return True
        if isinstance(item, _SEQUENCES):
            stack.extend(item)
        elif isinstance(item, ast.Node):
            stack.extend(getattr(item, attribute) for attribute in item.__slots__)  # type: ignore[attr-defined]
    return False


def _ddl_rules(node: ast.Node) -> list[_Finding]:
    """Schema changes are held for two approvers, unless they touch server-level objects; ranked by harm."""
    tag = _statement_type(node)
    if _targets_server_level_object(node):
        return [_denied(f"{tag} is not allowed: it manages server-level objects")]
    if _changes_owner(node):
        return [_denied(f"{tag} is not allowed: ALTER ... OWNER TO changes object ownership")]
    risk, why = _ddl_risk(node)
    return [_held(f"{tag} changes the database schema (DDL){why}", risk, 2)]


# --------------------------------------------------------------------------
# How much a schema change can destroy (the risk a reviewer sorts by)
# --------------------------------------------------------------------------
#
# critical: data is gone or rewritten in every row (DROP TABLE, DROP ... CASCADE, DROP COLUMN, ALTER COLUMN TYPE
#           ... USING, TRUNCATE; and UPDATE/DELETE of every row, above)
# high:     the schema changes in a way that can break, rewrite or lock (ALTER COLUMN TYPE, constraints, renames,
#           drops of indexes and views, functions, triggers, CREATE TABLE AS); writes to PHI columns (inspector)
# moderate: additive changes that leave every existing row as it was (ADD COLUMN that is nullable with no
#           volatile default, CREATE INDEX, CREATE TABLE, CREATE VIEW, CREATE SEQUENCE, COMMENT); bounded writes

# Statements that only add an object next to the existing ones.
_ADDITIVE_DDL: Mapping[type[ast.Node], str] = MappingProxyType(
    {
        ast.IndexStmt: "additive, adds an index",
        ast.CreateStmt: "additive, adds a table",
        ast.CreateSeqStmt: "additive, adds a sequence",
        ast.CommentStmt: "changes only a comment",
        ast.CreateStatsStmt: "additive, adds planner statistics",
    }
)
# Column types that expand to NOT NULL DEFAULT nextval(...): adding one fills (rewrites) every row.
_SERIAL_TYPES = frozenset({"serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"})
# Column constraints that leave existing rows alone when a column is added (NULL, a constant DEFAULT).
_HARMLESS_NEW_COLUMN_CONSTRAINTS = frozenset({enums.ConstrType.CONSTR_NULL, enums.ConstrType.CONSTR_DEFAULT})


def _ddl_risk(node: ast.Node) -> tuple[Risk, str]:
    """(risk, reason suffix) of a schema change that is held."""
    additive = _ADDITIVE_DDL.get(type(node))
    if additive is not None and not (isinstance(node, ast.CreateStmt) and node.partbound is not None):
        return Risk.MODERATE, f": {additive}"
    if isinstance(node, ast.ViewStmt) and not node.replace:
        return Risk.MODERATE, ": additive, adds a view"
    if isinstance(node, ast.DropStmt):
        if node.behavior == enums.DropBehavior.DROP_CASCADE:
            return Risk.CRITICAL, ": CASCADE also drops every object that depends on it (columns and tables too)"
        if node.removeType == _Obj.OBJECT_TABLE:
            return Risk.CRITICAL, ": destroys the table and every row in it"
    if isinstance(node, ast.AlterTableStmt):
        return _alter_table_risk(node)
    return Risk.HIGH, ""


def _alter_table_risk(node: ast.AlterTableStmt) -> tuple[Risk, str]:
    """The worst of an ALTER TABLE's subcommands (the first of equals)."""
    assessed = [_alter_command_risk(command) for command in node.cmds or ()]
    return max(assessed, key=lambda found: _RISK_RANK[found[0]], default=(Risk.HIGH, ""))


def _alter_command_risk(command: object) -> tuple[Risk, str]:
    if not isinstance(command, ast.AlterTableCmd):
        return Risk.HIGH, ""
    subtype = command.subtype
    if subtype == enums.AlterTableType.AT_DropColumn:
        return Risk.CRITICAL, f": DROP COLUMN {command.name} destroys that column in every row"
    if subtype == enums.AlterTableType.AT_AlterColumnType:
        definition = command.def_
        if isinstance(definition, ast.ColumnDef) and definition.raw_default is not None:
            return Risk.CRITICAL, f": ALTER COLUMN {command.name} TYPE ... USING rewrites that column in every row"
        return Risk.HIGH, f": ALTER COLUMN {command.name} TYPE rewrites the table and may lose precision"
    if subtype == enums.AlterTableType.AT_AddColumn and _is_additive_column(command.def_):
        return Risk.MODERATE, ": additive, adds a nullable column"
    return Risk.HIGH, ""


def _is_additive_column(definition: object) -> bool:
    """ADD COLUMN that leaves existing rows as they are: nullable, not serial, identity or generated, and with
    no default or a constant one (PostgreSQL then stores the default once instead of rewriting the table)."""
    if not isinstance(definition, ast.ColumnDef) or definition.is_not_null:
        return False
    if definition.identity not in (None, "", "\x00") or definition.generated not in (None, "", "\x00"):
        return False
    type_name = definition.typeName
    names = [getattr(part, "sval", "") for part in (type_name.names or ())] if type_name is not None else []
    if names and names[-1].lower() in _SERIAL_TYPES:
        return False
    for constraint in definition.constraints or ():
        if not isinstance(constraint, ast.Constraint) or constraint.contype not in _HARMLESS_NEW_COLUMN_CONSTRAINTS:
            return False
        if constraint.contype == enums.ConstrType.CONSTR_DEFAULT and not _is_constant(constraint.raw_expr):
            return False
    return definition.raw_default is None or _is_constant(definition.raw_default)


def _is_constant(expression: object) -> bool:
    """A literal, possibly cast (``'x'::text``): the same value for every row, computed once."""
    while isinstance(expression, ast.TypeCast):
        expression = expression.arg
    return isinstance(expression, ast.A_Const)


def _targets_server_level_object(node: ast.Node) -> bool:
    """True for DROP/RENAME/SET SCHEMA of databases, roles, extensions and the like."""
    if isinstance(node, ast.DropStmt):
        return node.removeType in _SERVER_LEVEL_OBJECTS
    if isinstance(node, ast.RenameStmt):
        return node.renameType in _SERVER_LEVEL_OBJECTS
    if isinstance(node, ast.AlterObjectSchemaStmt):
        return node.objectType in _SERVER_LEVEL_OBJECTS
    return False


def _changes_owner(node: ast.Node) -> bool:
    """ALTER TABLE/VIEW/SEQUENCE ... OWNER TO hides inside AlterTableStmt commands."""
    if not isinstance(node, ast.AlterTableStmt):
        return False
    owner_change = enums.AlterTableType.AT_ChangeOwner
    return any(getattr(cmd, "subtype", None) == owner_change for cmd in node.cmds or ())


def _copy_rules(node: ast.CopyStmt) -> list[_Finding]:
    """COPY touching the server's programs or files is denied; client COPY is reviewed."""
    if node.is_program:
        return [_denied("COPY ... PROGRAM runs a program on the database server")]
    if node.filename is not None:
        return [_denied("COPY to or from a server file accesses the database server's files")]
    return [_held("COPY is held for review")]


def _transaction_rules(node: ast.TransactionStmt) -> list[_Finding]:
    """Ordinary transaction control is harmless; two-phase commit and READ WRITE are not."""
    tag = _statement_type(node)
    if node.kind in _TWO_PHASE_KINDS:
        return [_denied(f"{tag} is not allowed: it leaves a prepared transaction behind")]
    refused = _transaction_mode_findings(tag, node.options)
    return refused or [_allowed(f"{tag} is transaction control")]


# Transaction modes as PostgreSQL's grammar produces them (BEGIN/START TRANSACTION options, SET TRANSACTION and
# SET SESSION CHARACTERISTICS arguments): DefElems with these names and an integer or string constant.
_READ_ONLY_MODE = "transaction_read_only"
_HARMLESS_TRANSACTION_MODES = frozenset({"transaction_isolation", "transaction_deferrable"})
_READ_WRITE_REASON = "READ WRITE is not allowed: the gateway's sessions are read-only"


def _transaction_mode_findings(tag: str, modes: Sequence[object] | None) -> list[_Finding]:
    """READ WRITE is denied in every spelling; isolation levels, DEFERRABLE and READ ONLY are fine.

    The read role is kept read-only by its default_transaction_read_only setting, which SET SESSION
    CHARACTERISTICS AS TRANSACTION READ WRITE would override for the session and BEGIN READ WRITE for one
    transaction (and then the role may create temporary tables and large objects). PostgreSQL applies the last
    access mode of a list; READ WRITE is denied wherever it appears, even if a later READ ONLY would win, since
    nobody needs to write it. Anything that is not one of the grammar's known modes with a constant value
    cannot be judged, so it is denied as well (fail closed).
    """
    for mode in modes or ():
        if not isinstance(mode, ast.DefElem):
            return [_denied(f"{tag} with a transaction mode that cannot be inspected is not allowed")]
        name = mode.defname or ""
        if name == _READ_ONLY_MODE:
            if not _is_read_only(mode.arg):
                return [_denied(f"{tag} {_READ_WRITE_REASON}")]
        elif name not in _HARMLESS_TRANSACTION_MODES:
            return [_denied(f"{tag} with transaction mode {name!r} is not allowed: it cannot be inspected")]
    return []


def _is_read_only(value: object) -> bool:
    """Whether a transaction_read_only value is READ ONLY (the grammar gives the integer 1)."""
    constant = value.val if isinstance(value, ast.A_Const) and not value.isnull else None
    return isinstance(constant, ast.Integer) and constant.ival == 1


def _variable_set_rules(node: ast.VariableSetStmt) -> list[_Finding]:
    """SET/RESET: only presentation and safety settings; never identity."""
    if node.kind == enums.VariableSetKind.VAR_RESET_ALL:
        return [_allowed("RESET ALL restores session defaults")]
    name = (node.name or "").lower()
    tag = _statement_type(node)
    if name in _IDENTITY_SETTINGS:
        return [_denied(f"{tag} {_IDENTITY_SETTINGS[name]} changes the session's identity")]
    if node.kind == enums.VariableSetKind.VAR_SET_MULTI and name in _TRANSACTION_SETTINGS:
        if name == "transaction snapshot":
            return [_allowed("SET TRANSACTION SNAPSHOT only chooses which snapshot to read")]
        written = "SET TRANSACTION" if name == "transaction" else "SET SESSION CHARACTERISTICS AS TRANSACTION"
        refused = _transaction_mode_findings(written, node.args)
        return refused or [_allowed(f"{written} only sets transaction characteristics")]
    restores_default = node.kind in (enums.VariableSetKind.VAR_RESET, enums.VariableSetKind.VAR_SET_DEFAULT)
    if restores_default and (name in session_settings.SETTABLE or name in session_settings.RESET_ONLY):
        # The session's default is its start-up value, which was judged at sign-in (a limit, or lower).
        return [_allowed(f"{tag} {name} restores the default")]
    values = session_settings.set_values(node.args) if node.kind == enums.VariableSetKind.VAR_SET_VALUE else None
    if values is None and name in session_settings.SETTABLE and name not in _VALUE_JUDGED:
        return [_allowed(f"setting {name} may be changed")]
    refusal = session_settings.refusal(name, values or [])
    if refusal is not None and refusal.capped:
        return [_allowed(f"{refusal.message}; it runs as {tag} {name} TO DEFAULT, the limit")]
    if refusal is not None:
        return [_denied(refusal.message)]
    return [_allowed(f"setting {name} may be changed")]


# Settings whose value the allowlist judges; a SET of them whose value is not a constant is judged on no value.
_VALUE_JUDGED = frozenset(
    {"client_encoding", session_settings.STATEMENT_TIMEOUT, session_settings.IDLE_IN_TRANSACTION_TIMEOUT}
)


def _statement_rules(node: ast.Node, top_level: bool) -> list[_Finding]:
    """Findings about a statement node itself, wherever it sits in the tree.

    Nested statements (writable CTEs, CREATE SCHEMA elements, rule actions,
    COPY queries, SQL-standard function bodies) are judged like top-level
    ones.  Two exceptions: a SET nested in ALTER ROLE/DATABASE/FUNCTION is
    part of its parent's syntax, and the catch-all for unknown statement
    types only applies at top level.
    """
    kind = type(node)
    tag = _statement_type(node)
    if isinstance(node, ast.SelectStmt):
        return _select_rules(node, top_level)
    if isinstance(node, _DATA_MODIFYING):
        return _data_modifying_rules(node)
    if isinstance(node, ast.TruncateStmt):
        return [_held("TRUNCATE removes every row", Risk.CRITICAL, 2)]
    if kind in _DDL_STATEMENTS:
        return _ddl_rules(node)
    if kind in _DENIED_STATEMENTS:
        return [_denied(f"{tag} is not allowed: it {_DENIED_STATEMENTS[kind]}")]
    if isinstance(node, ast.CopyStmt):
        return _copy_rules(node)
    if isinstance(node, ast.DoStmt):
        return [_held("DO runs procedural code that cannot be inspected", Risk.HIGH, 2)]
    if isinstance(node, ast.CallStmt):
        return [_held("CALL runs a procedure that cannot be inspected", Risk.HIGH, 2)]
    if isinstance(node, ast.LockStmt) and node.mode == _ACCESS_SHARE_LOCK and not node.nowait:
        # pg_dump locks every table it dumps this way: the lock any SELECT takes, which blocks only DROP/ALTER.
        return [_allowed("LOCK ... IN ACCESS SHARE MODE takes the lock a SELECT takes")]
    if kind in _REVIEWED_STATEMENTS:
        return [_held(f"{tag} is held for review")]
    if isinstance(node, ast.TransactionStmt):
        return _transaction_rules(node)
    return _session_statement_rules(node, top_level)


_ACCESS_SHARE_LOCK = 1  # PostgreSQL's lockdefs.h AccessShareLock


def _session_statement_rules(node: ast.Node, top_level: bool) -> list[_Finding]:
    """Rules that only make sense for a statement the session runs directly."""
    if not top_level:
        return []
    if isinstance(node, ast.VariableSetStmt):
        return _variable_set_rules(node)
    summary = _ALLOWED_STATEMENT_SUMMARIES.get(type(node))
    if summary is not None:
        return [_allowed(summary)]
    return [_held(f"statement type {_statement_type(node)} is not on the read-only allowlist")]


_SEQUENCES = (tuple, list)
_WALKABLE = (ast.Node, tuple, list)  # a tuple, not a union: isinstance checks it faster on this hot path
_STATEMENT_CLASSES: dict[type, bool] = {}


def _is_statement(node: ast.Node) -> bool:
    """Statement nodes are the ones whose class name ends in 'Stmt'."""
    kind = type(node)
    known = _STATEMENT_CLASSES.get(kind)
    if known is None:
        known = _STATEMENT_CLASSES[kind] = kind.__name__.endswith("Stmt")
    return known


# --------------------------------------------------------------------------
# Function calls
# --------------------------------------------------------------------------


def _set_config_refusal(call: ast.FuncCall) -> str | None:
    """set_config(name, value, is_local) follows SET's allowlist (policy.session_settings), with constants only:
    a computed name or value is a setting the classifier cannot judge."""
    arguments = list(call.args or ())
    if call.agg_star or call.agg_distinct or call.over is not None or len(arguments) != 3:
        return "it takes a setting name, a value and is_local, as constants"
    name, value, is_local = (argument.val if isinstance(argument, ast.A_Const) else None for argument in arguments)
    if not isinstance(name, ast.String) or not _is_boolean_constant(arguments[2], is_local):
        return "its setting name and is_local must be constants"
    setting = (name.sval or "").lower()
    constant = arguments[1]
    if isinstance(constant, ast.A_Const) and constant.isnull:
        resettable = setting in session_settings.SETTABLE or setting in session_settings.RESET_ONLY
        return None if resettable else f"setting {setting} cannot be changed through the gateway"
    if setting == "application_name":
        return "use SET application_name: the gateway keeps the agent's name in front of it"
    if isinstance(arguments[1], ast.ParamRef) and setting in session_settings.ANY_VALUE:
        # A value the client binds (Django sets TimeZone, asyncpg restores jit this way): the client's own
        # constant, and every value of such a setting is acceptable. A computed value could carry PHI: refused.
        return None
    if not isinstance(value, ast.String):
        return "its value must be a constant string"
    refused = session_settings.refusal(setting, [value.sval or ""])
    return refused.message if refused is not None else None


def _is_boolean_constant(argument: object, value: object) -> bool:
    if isinstance(value, ast.Boolean):
        return True
    if isinstance(value, ast.String):
        return (value.sval or "").lower() in {"t", "f", "true", "false", "on", "off", "yes", "no", "1", "0"}
    return False


def _denied_function_reason(schema: str | None, name: str) -> str | None:
    """Why a function is on the denylist, or None if it is not.

    Most groups are PostgreSQL built-ins, so they only match unqualified or
    pg_catalog names; a user's own public.pg_stat_file is judged by the
    catalog like any other function.  Dynamic SQL matches in every schema.
    """
    bare = name.lower()
    if bare in DYNAMIC_SQL_FUNCTIONS:
        return _DYNAMIC_SQL_WHY
    if schema is not None and schema.lower() != "pg_catalog":
        return None
    for group, why in _CATALOG_DENY_GROUPS:
        if bare in group:
            return why
    if bare.startswith(_REPLICATION_PREFIXES):
        return _REPLICATION_WHY
    return None


def _function_name(call: ast.FuncCall) -> tuple[str | None, str, str]:
    """(schema, name, display) for a call; display is lower-case, as written.

    SQL-syntax forms such as EXTRACT(...) or x AT TIME ZONE y are parsed as
    pg_catalog calls; they are displayed by their bare name because that is
    how they were written, but still looked up in pg_catalog.
    """
    parts = tuple(part.sval or "" for part in call.funcname or () if isinstance(part, ast.String))
    schema = parts[-2] if len(parts) > 1 else None
    name = parts[-1] if parts else ""
    written_bare = call.funcformat == enums.CoercionForm.COERCE_SQL_SYNTAX
    display = name if written_bare else ".".join(parts)
    return schema, name, display.lower()


# Built-in catalog introspection functions that PostgreSQL marks VOLATILE only because they read live catalog or
# storage state (no snapshot), not because they change anything. psql's \d and \dt+ call them. Narrow on purpose:
# each entry is a pg_catalog function documented as a pure read of catalogs or file sizes; anything else volatile
# stays held. (A same-named function in another schema cannot be told apart for unqualified calls; the gateway's
# read-only role cannot create functions, and schema-qualified calls outside pg_catalog never match.)
CATALOG_INTROSPECTION_FUNCTIONS = frozenset(
    {
        "pg_partition_ancestors",
        "pg_partition_tree",
        "pg_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_total_relation_size",
        "pg_is_in_recovery",  # pg_dump asks it first: whether the server is a standby
    }
)


def _volatility_findings(display: str, code: str | None) -> list[_Finding]:
    """Judge a catalog volatility code; only immutable and stable are proven safe."""
    if code in ("i", "s"):
        return []
    if code is None:
        return [_held(f"unknown function {display}()", survives_plain_explain=True)]
    if code == "v":
        return [_held(f"volatile function {display}() may have side effects")]
    return [
        _held(
            f"function {display}() has unrecognised volatility {code!r}",
            survives_plain_explain=True,
        )
    ]


# --------------------------------------------------------------------------
# Tree walk
# --------------------------------------------------------------------------

# (node or list of nodes, CTE names visible there, is it the statement root)
_WalkItem = tuple[object, frozenset[str], bool]


class _Inspector:
    """Walks statement trees, collecting findings, relations and functions.

    With a relation catalog, a reference to a view walks the view's definition
    too (once per view per classification); its findings carry the view's name.

    The walk is iterative (an explicit stack), so deeply nested but valid SQL
    cannot exhaust Python's recursion limit.  One inspector serves one
    classify() call; it is not shared between threads.
    """

    def __init__(self, catalog: FunctionCatalog, relations: RelationCatalog | None = None) -> None:
        self._catalog = catalog
        self._relations = relations
        self._phi = relations if isinstance(relations, PhiColumns) else None
        self._volatility: dict[tuple[str | None, str], str | None] = {}
        # Views being expanded (innermost last), and each expanded view's findings, labelled with its name.
        self._view_stack: list[tuple[str, str]] = []
        self._view_findings: dict[tuple[str, str], list[_Finding]] = {}
        self.relations: set[str] = set()
        self.functions: set[str] = set()

    def inspect(self, statement: ast.Node, *, top_level: bool = True) -> list[_Finding]:
        """All findings for one statement, in the order they appear."""
        findings: list[_Finding] = []
        stack: list[_WalkItem] = [(statement, frozenset(), top_level)]
        while stack:
            value, ctes, top_level = stack.pop()
            if isinstance(value, _SEQUENCES):
                stack.extend([(item, ctes, False) for item in value][::-1])
            elif isinstance(value, ast.Node):
                found = self._visit(value, ctes, top_level)
                if found:
                    findings.extend(found)
                children = self._children(value, ctes)
                if children:
                    children.reverse()
                    stack.extend(children)
        return findings

    def _visit(self, node: ast.Node, ctes: frozenset[str], top_level: bool) -> list[_Finding]:
        """Findings contributed by one node (not its children)."""
        if isinstance(node, ast.RangeVar):
            return self._relation_findings(node, ctes)
        if isinstance(node, ast.DropStmt):
            self._record_dropped_relations(node)
        if isinstance(node, ast.FuncCall):
            return self._check_call(node)
        if isinstance(node, ast.CommonTableExpr):
            return _writable_cte_findings(node)
        if isinstance(node, ast.ExplainStmt):
            return self._explain(node)
        if _is_statement(node):
            found = _statement_rules(node, top_level)
            if isinstance(node, _WRITES_ROWS):
                found = [*found, *self._phi_write_findings(node)]
            return found
        return []

    def _phi_write_findings(self, node: ast.Node) -> list[_Finding]:
        """A write that stores or removes PHI ranks high: UPDATE of a tagged column, INSERT or COPY FROM into
        one, DELETE or MERGE on a table with one. A target the snapshot cannot vouch for ranks high too."""
        relation = getattr(node, "relation", None)
        if self._phi is None or self._relations is None or not isinstance(relation, ast.RangeVar):
            return []
        if isinstance(node, ast.CopyStmt) and not node.is_from:
            return []
        tag = _statement_type(node)
        written = ".".join(part for part in (relation.schemaname, relation.relname) if part)
        resolved = self._relations.resolve(relation.schemaname, relation.relname or "")
        if resolved is None:
            unknown = f"{tag} writes to {written}, which the catalog snapshot does not know (it may hold PHI)"
            return [_held(unknown, Risk.HIGH)]
        if self._relations.kind(*resolved) not in _PLAIN_TABLES:
            return [_held(f"{tag} writes through {written}, whose base columns may hold PHI", Risk.HIGH)]
        tagged = self._phi.phi_columns(*resolved)
        columns = _written_columns(node)
        touched = sorted(tagged if columns is None else tagged & columns)
        if not touched:
            return []
        verb = "removes PHI from" if isinstance(node, ast.DeleteStmt) else "writes PHI columns of"
        return [_held(f"{tag} {verb} {'.'.join(resolved)}: {', '.join(touched)}", Risk.HIGH)]

    def _children(self, node: ast.Node, ctes: frozenset[str]) -> list[_WalkItem]:
        """Child values to walk, each with the CTE names visible to it."""
        if isinstance(node, ast.ExplainStmt | ast.LockingClause):
            # EXPLAIN inspects its query itself; FOR UPDATE OF names aliases.
            return []
        with_clause = getattr(node, "withClause", None)
        items: list[_WalkItem] = []
        if with_clause is not None:
            items.extend(_cte_items(with_clause, ctes))
            ctes = ctes | {cte.ctename for cte in with_clause.ctes or ()}
        for attribute in node.__slots__:  # type: ignore[attr-defined]  # pglast declares them per class
            value = getattr(node, attribute)
            if value is None or not isinstance(value, _WALKABLE) or attribute == "withClause":
                continue
            items.append((value, _scope_for(node, attribute, ctes), False))
        return items

    def _relation_findings(self, node: ast.RangeVar, ctes: frozenset[str]) -> list[_Finding]:
        """A relation reference (not a CTE's name): recorded, denied if it exposes values, views expanded."""
        qualified = node.schemaname is not None or node.catalogname is not None
        if not qualified and node.relname in ctes:
            return []
        parts = (node.catalogname, node.schemaname, node.relname)
        written = ".".join(part for part in parts if part).lower()
        if not self._view_stack:  # what the statement itself names, not what its views read
            self.relations.add(written)
        exposing = exposing_relation(node.schemaname, node.relname or "")
        if exposing is not None:
            return [_denied(exposure_reason(exposing, written))]
        return self._view_body_findings(node)

    def _view_body_findings(self, node: ast.RangeVar) -> list[_Finding]:
        """What selecting a view runs: its definition, inspected like the statement itself.

        Only plain views ('v') run their query when read; a materialized view returns stored rows. Views in
        pg_catalog and information_schema are PostgreSQL's own (the exposure list judges them by name). Without
        a relation catalog, or for a name the catalog does not know, there is nothing to expand.
        """
        if self._relations is None or node.relname is None:
            return []
        resolved = self._relations.resolve(node.schemaname, node.relname)
        if resolved is None or resolved[0].lower() in _SYSTEM_SCHEMAS:
            return []
        if self._relations.kind(*resolved) != "v":
            return []
        cached = self._view_findings.get(resolved)
        if cached is None:
            cached = self._view_findings[resolved] = self._expand_view(*resolved)
        return cached

    def _expand_view(self, schema: str, name: str) -> list[_Finding]:
        """A view's findings, each named after the view; held when the definition cannot be inspected."""
        label = f"view {schema}.{name}"
        if (schema, name) in self._view_stack:
            return [_held(f"{label} refers to itself", survives_plain_explain=True)]
        if len(self._view_stack) >= MAX_VIEW_NESTING:
            return [_held(f"{label} is nested in more than {MAX_VIEW_NESTING} views", survives_plain_explain=True)]
        body = _view_query(self._relations.view_definition(schema, name) if self._relations else None)
        if body is None:
            return [_held(f"the definition of {label} cannot be inspected", survives_plain_explain=True)]
        self._view_stack.append((schema, name))
        try:
            findings = self.inspect(body, top_level=False)
        finally:
            self._view_stack.pop()
        return [
            dataclasses.replace(finding, reason=f"{label}: {finding.reason}")
            for finding in findings
            if finding.verdict is not Verdict.ALLOWED
        ]

    def _record_dropped_relations(self, node: ast.DropStmt) -> None:
        """DROP names its relations as plain name lists, not RangeVars."""
        if node.removeType not in _RELATION_OBJECTS:
            return
        for name in node.objects or ():
            if isinstance(name, tuple):
                parts = (getattr(part, "sval", None) or "" for part in name)
                self.relations.add(".".join(parts).lower())

    def _check_call(self, call: ast.FuncCall) -> list[_Finding]:
        """Denylisted calls are denied; otherwise only immutable/stable pass."""
        schema, name, display = _function_name(call)
        if not self._view_stack:
            self.functions.add(display)
        exposing = exposing_function(schema, name)
        if exposing is not None:
            return [_denied(exposure_reason(exposing, f"{display}()"))]
        if name.lower() in _CONFIGURATION_FUNCTIONS and schema in (None, "pg_catalog"):
            refused = _set_config_refusal(call)
            return [_denied(f"function {display}() is denied: {refused}")] if refused else []
        why = _denied_function_reason(schema, name)
        if why is not None:
            return [_denied(f"function {display}() is denied: it {why}")]
        introspection = schema in (None, "pg_catalog") and name.lower() in CATALOG_INTROSPECTION_FUNCTIONS
        if introspection and self._lookup("pg_catalog", name) is not None:
            return []
        return _volatility_findings(display, self._lookup(schema, name))

    def _lookup(self, schema: str | None, name: str) -> str | None:
        """Catalog volatility, asked once per name per classification."""
        key = (schema, name)
        if key not in self._volatility:
            self._volatility[key] = self._catalog.volatility(schema, name)
        return self._volatility[key]

    def _explain(self, node: ast.ExplainStmt) -> list[_Finding]:
        """EXPLAIN ANALYZE runs its statement; plain EXPLAIN only plans it.

        Planning runs nothing with side effects, so a plain EXPLAIN keeps only
        denied findings and unknown functions (planning may evaluate functions
        the catalog snapshot cannot vouch for).
        """
        if node.query is None:
            return [_held("EXPLAIN without a statement cannot be inspected")]
        inner = self.inspect(node.query)
        if explain_options(node).analyze:
            note = _allowed("EXPLAIN ANALYZE runs the statement, which is read-only")
            return [note, *inner]
        kept = [finding for finding in inner if finding.survives_plain_explain]
        return [_allowed("EXPLAIN without ANALYZE does not run the statement"), *kept]


# Statements that change stored rows of their target relation, and the relation kinds that are plain tables.
_WRITES_ROWS = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt, ast.CopyStmt)
_PLAIN_TABLES = frozenset({"r", "p"})


def _written_columns(node: ast.Node) -> frozenset[str] | None:
    """Columns whose stored values a write sets; None when it writes or removes whole rows."""
    names: list[object] = []
    if isinstance(node, ast.UpdateStmt):
        names = [target.name for target in node.targetList or ()]
    elif isinstance(node, ast.InsertStmt):
        if node.cols is None:
            return None
        names = [target.name for target in node.cols]
        conflict = node.onConflictClause
        if conflict is not None:
            names += [target.name for target in conflict.targetList or ()]
    elif isinstance(node, ast.CopyStmt):
        if node.attlist is None:
            return None
        names = [getattr(name, "sval", None) for name in node.attlist]
    else:  # DELETE removes whole rows; MERGE may insert, update or delete them
        return None
    return frozenset(name for name in names if isinstance(name, str))


#: How many views deep a view may be found (views of views of ...); deeper ones are held, not expanded.
MAX_VIEW_NESTING = 24
# PostgreSQL's own schemas: their views are not expanded (the target catalog does not load their definitions).
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


def _view_query(definition: str | None) -> ast.Node | None:
    """The query of a view definition (pg_get_viewdef text), or None when it is missing or not one query."""
    if definition is None:
        return None
    try:
        statements = parse_statements(definition)
    except (ParseError, TooDeep, UnicodeError):
        return None
    if len(statements) != 1 or not isinstance(statements[0].stmt, ast.SelectStmt):
        return None
    return statements[0].stmt


def _cte_items(with_clause: ast.WithClause, outer: frozenset[str]) -> list[_WalkItem]:
    """CTE bodies with their scopes: recursive CTEs see all names, others earlier ones."""
    ctes = with_clause.ctes or ()
    names = [cte.ctename for cte in ctes]
    items: list[_WalkItem] = []
    for index, cte in enumerate(ctes):
        visible = names if with_clause.recursive else names[:index]
        items.append((cte, outer | frozenset(visible), False))
    return items


def _scope_for(node: ast.Node, attribute: str, ctes: frozenset[str]) -> frozenset[str]:
    """CTE names visible to a child; DML targets and INTO always name real tables."""
    if attribute == "relation" and isinstance(node, _DATA_MODIFYING):
        return frozenset()
    if attribute == "intoClause":
        return frozenset()
    return ctes


def _writable_cte_findings(cte: ast.CommonTableExpr) -> list[_Finding]:
    """A data-modifying statement inside WITH makes the whole query a write."""
    if isinstance(cte.ctequery, _DATA_MODIFYING):
        tag = _statement_type(cte.ctequery)
        return [_held(f'writable CTE "{cte.ctename}" runs {tag}')]
    return []


@dataclass(frozen=True)
class ExplainOptions:
    """EXPLAIN's options as PostgreSQL reads them (``ExplainQuery`` in explain.c).

    Options apply in order, so a later spelling of an option overrides an earlier one: ``EXPLAIN (ANALYZE
    false, ANALYZE true)`` analyzes. A bare option means true. ``timing``, ``summary`` and ``buffers`` are None
    when not given (their default depends on ANALYZE and on the server version).

    ``problems`` lists what PostgreSQL would reject: an unknown option name (names compare case-sensitively, as
    PostgreSQL's strcmp does, so a quoted ``"ANALYZE"`` is unknown), or a value that is not of the option's type.
    PostgreSQL refuses such an EXPLAIN before running anything, but which server reads it (and which options
    that version knows) is not the classifier's to assume: whenever there is a problem, ``analyze`` is True,
    so the statement is judged as if it were run (fail closed).
    """

    analyze: bool = False
    verbose: bool = False
    costs: bool = True
    settings: bool = False
    generic_plan: bool = False
    buffers: bool | None = None
    wal: bool = False
    timing: bool | None = None
    summary: bool | None = None
    memory: bool = False
    serialize: str = "none"
    format: str = "text"
    problems: tuple[str, ...] = ()


# Every boolean EXPLAIN option PostgreSQL 15 to 18 knows (generic_plan since 16, memory since 17).
_EXPLAIN_BOOLEAN_OPTIONS = frozenset(
    {"analyze", "verbose", "costs", "settings", "generic_plan", "buffers", "wal", "timing", "summary", "memory"}
)
_EXPLAIN_FORMATS = frozenset({"text", "xml", "json", "yaml"})
_EXPLAIN_SERIALIZE_MODES = frozenset({"none", "text", "binary"})  # since 17; a bare SERIALIZE means text


def explain_options(node: ast.ExplainStmt) -> ExplainOptions:
    """The options of an EXPLAIN, with PostgreSQL's semantics (see ExplainOptions); legacy syntax included.

    ``EXPLAIN ANALYZE VERBOSE q`` reaches pglast as the option list (analyze, verbose) without values, exactly
    like ``EXPLAIN (ANALYZE, VERBOSE) q``, so both read the same.
    """
    values: dict[str, Any] = {}  # option name -> a value of that option's type (_explain_option_value checks it)
    problems: list[str] = []
    for option in node.options or ():
        name = option.defname if isinstance(option, ast.DefElem) else None
        if name is None or not isinstance(option, ast.DefElem):
            problems.append("an option that is not a name")
            continue
        value = _explain_option_value(name, option.arg)
        if value is None:
            known = name in _EXPLAIN_BOOLEAN_OPTIONS or name in ("format", "serialize")
            problems.append(f"{name} has an invalid value" if known else f"unrecognized option {name!r}")
        else:
            values[name] = value
    options = ExplainOptions(**values, problems=tuple(problems))
    return dataclasses.replace(options, analyze=True) if problems else options


def _explain_option_value(name: str, argument: object) -> bool | str | None:
    """One option's value as PostgreSQL would read it, or None when PostgreSQL would reject it."""
    if name in _EXPLAIN_BOOLEAN_OPTIONS:
        return _option_boolean(argument)
    if name == "format":
        word = _option_word(argument)
        return word if word in _EXPLAIN_FORMATS else None
    if name == "serialize":
        word = "text" if argument is None else _option_word(argument)
        return word if word in _EXPLAIN_SERIALIZE_MODES else None
    return None


def _option_boolean(argument: object) -> bool | None:
    """PostgreSQL's defGetBoolean: no value is true; 1/0; true/false/on/off in any case; anything else errors.

    (``yes`` and ``no`` are not accepted for options, unlike for settings, so they are errors here too.)
    """
    if argument is None:
        return True
    if isinstance(argument, ast.Integer):
        return {0: False, 1: True}.get(argument.ival or 0)
    if isinstance(argument, ast.Boolean):
        return bool(argument.boolval)
    word = _option_word(argument)
    return {"true": True, "on": True, "false": False, "off": False}.get((word or "").lower())


def _option_word(argument: object) -> str | None:
    """PostgreSQL's defGetString for the value kinds the EXPLAIN grammar produces (words, strings, numbers)."""
    if isinstance(argument, ast.String):
        return argument.sval or ""
    if isinstance(argument, ast.Float):
        return argument.fval or ""
    if isinstance(argument, ast.Integer):
        return str(argument.ival)
    if isinstance(argument, ast.Boolean):
        return "true" if argument.boolval else "false"
    return None


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def _parse(sql: str) -> tuple[ast.Node, ...]:
    """Parse with PostgreSQL's parser; anything it rejects is UnparsableStatement."""
    if "\x00" in sql:
        # The C parser stops at a NUL, so text after it would go unseen.
        raise UnparsableStatement("SQL text contains a NUL character")
    try:
        statements = parse_statements(sql)
    except TooDeep as error:
        raise UnparsableStatement(str(error)) from error
    except ParseError as error:
        message, position = _parse_error_details(error)
        raise UnparsableStatement(message, position) from error
    except UnicodeError as error:
        raise UnparsableStatement("SQL text is not valid Unicode") from error
    nodes = tuple(raw.stmt for raw in statements if raw.stmt is not None)
    if not nodes:
        raise UnparsableStatement("no SQL statement found")
    return nodes


def _parse_error_details(error: ParseError) -> tuple[str, int | None]:
    """The parser's own message and character position."""
    message = str(error.args[0]) if error.args else str(error)
    position = error.args[1] if len(error.args) > 1 else None
    return message, position if isinstance(position, int) else None


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _StatementResult:
    """One top-level statement's classification inside a request."""

    statement_type: str
    outcome: _Outcome
    is_transaction_control: bool
    is_session_hygiene: bool = False


def classify(sql: str, functions: FunctionCatalog, *, relations: RelationCatalog | None = None) -> Classification:
    """Classify a request of one or more SQL statements.

    ``relations`` (normally the target's TargetCatalog) lets the classifier see through views: every
    referenced view's definition is inspected like the statement itself (views of views included), since
    selecting a view runs its query. Without it views are judged by name only. ``Classification.relations`` and
    ``functions`` list what the statement itself names, never what its views read.

    Raises UnparsableStatement for syntax errors and for input with no
    statement in it (empty, whitespace, comments only).
    """
    statements = _parse(sql)
    inspector = _Inspector(functions, relations)
    results = [_classify_statement(node, inspector) for node in statements]
    outcome = results[0].outcome if len(results) == 1 else _batch_outcome(results)
    return Classification(
        verdict=outcome.verdict,
        risk=outcome.risk,
        reasons=outcome.reasons,
        statement_types=tuple(result.statement_type for result in results),
        relations=tuple(sorted(inspector.relations)),
        functions=tuple(sorted(inspector.functions)),
        approvals_required=outcome.approvals,
        is_transaction_control=len(results) == 1 and results[0].is_transaction_control,
        fingerprint=_fingerprint(sql),
    )


def _classify_statement(node: ast.Node, inspector: _Inspector) -> _StatementResult:
    """Walk one top-level statement and fold its findings."""
    setting = _set_config_from_pg_settings(node)
    if setting is not None:
        name, value, is_local = setting
        refused = _set_config_refusal(_set_config_call(name, value, is_local))
        outcome = _outcome(
            [_denied(f"function set_config() is denied: {refused}")]
            if refused
            else [_allowed(f"set_config() of {name} through pg_settings, judged like SET")]
        )
        return _StatementResult(_statement_type(node), outcome, is_transaction_control=False)
    if _is_session_hygiene(node):
        return _StatementResult(
            statement_type=_statement_type(node),
            outcome=_outcome([_allowed("session hygiene: forgets this session's own state and reads no data")]),
            is_transaction_control=False,
            is_session_hygiene=True,
        )
    findings = inspector.inspect(node)
    return _StatementResult(
        statement_type=_statement_type(node),
        outcome=_outcome(findings),
        is_transaction_control=_is_transaction_control(node),
    )


def _set_config_from_pg_settings(node: ast.Node) -> tuple[str, ast.Node, ast.Node] | None:
    """``SELECT set_config(name, <value>, <is_local>) FROM pg_settings WHERE name = '<setting>'`` (pg_dump's way to
    set a setting only if the server has it): (setting, value, is_local) to judge as set_config('<setting>', ...),
    or None for anything else."""
    if not isinstance(node, ast.SelectStmt) or len(node.targetList or ()) != 1 or len(node.fromClause or ()) != 1:
        return None
    others = (node.groupClause, node.havingClause, node.sortClause, node.limitCount, node.withClause, node.larg)
    source = (node.fromClause or ())[0]
    if any(others) or not isinstance(source, ast.RangeVar) or source.relname != "pg_settings":
        return None
    if source.schemaname not in (None, "pg_catalog") or source.alias is not None:
        return None
    call = (node.targetList or ())[0].val
    if not isinstance(call, ast.FuncCall) or len(call.args or ()) != 3 or call.over or call.agg_star:
        return None
    if tuple(part.sval for part in call.funcname or ()) not in (("set_config",), ("pg_catalog", "set_config")):
        return None
    first, value, is_local = call.args  # type: ignore[misc]
    where = node.whereClause
    if not (_is_column(first, "name") and isinstance(where, ast.A_Expr) and _is_column(where.lexpr, "name")):
        return None
    operator = tuple(part.sval for part in where.name or ())
    constant = where.rexpr.val if isinstance(where.rexpr, ast.A_Const) else None
    if operator != ("=",) or where.kind != enums.A_Expr_Kind.AEXPR_OP or not isinstance(constant, ast.String):
        return None
    return constant.sval or "", value, is_local


def _is_column(node: object, name: str) -> bool:
    return isinstance(node, ast.ColumnRef) and [getattr(f, "sval", None) for f in node.fields or ()] == [name]


def _set_config_call(name: str, value: ast.Node, is_local: ast.Node) -> ast.FuncCall:
    """The equivalent ``set_config('<name>', value, is_local)`` call, for ``_set_config_refusal``."""
    return ast.FuncCall(
        funcname=(ast.String(sval="set_config"),),
        args=(ast.A_Const(val=ast.String(sval=name)), value, is_local),
        agg_star=False,
        agg_distinct=False,
        over=None,
    )


# What connection pools send when a connection goes back to the pool (asyncpg's reset query
# ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``, pgbouncer's ``DISCARD ALL``): each
# forgets state of this session only and reads no table. Such a batch is allowed as a whole.
_HYGIENE_STATEMENTS = (ast.ClosePortalStmt, ast.DiscardStmt, ast.DeallocateStmt, ast.UnlistenStmt)
_HYGIENE_FUNCTIONS = frozenset({("pg_advisory_unlock_all",), ("pg_catalog", "pg_advisory_unlock_all")})


def _is_session_hygiene(node: ast.Node) -> bool:
    if isinstance(node, _HYGIENE_STATEMENTS):
        return True
    if isinstance(node, ast.VariableSetStmt):
        return node.kind == enums.VariableSetKind.VAR_RESET_ALL
    if not isinstance(node, ast.SelectStmt) or len(node.targetList or ()) != 1:
        return False
    clauses = (
        node.fromClause, node.whereClause, node.groupClause, node.havingClause, node.windowClause,
        node.sortClause, node.limitCount, node.limitOffset, node.withClause, node.distinctClause,
        node.valuesLists, node.larg, node.lockingClause, node.intoClause,
    )  # fmt: skip
    if any(clause for clause in clauses):
        return False
    call = (node.targetList or ())[0].val
    if not isinstance(call, ast.FuncCall) or call.args or call.agg_filter or call.over or call.agg_star:
        return False
    name = tuple(part.sval for part in call.funcname or ())
    return name in _HYGIENE_FUNCTIONS


def _is_transaction_control(node: ast.Node) -> bool:
    """BEGIN/START/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/ROLLBACK TO (not two-phase)."""
    return isinstance(node, ast.TransactionStmt) and node.kind not in _TWO_PHASE_KINDS


def _batch_outcome(results: Sequence[_StatementResult]) -> _Outcome:
    """Several statements are never allowed, and never mixed with transaction control.

    The gateway runs an approved batch inside one transaction of its own, so
    a BEGIN/COMMIT inside the batch would break that guarantee.
    """
    if all(result.is_session_hygiene for result in results):
        return _Outcome(Verdict.ALLOWED, Risk.LOW, ("a connection pool's session reset: reads no data",), 0)
    reasons = [_BATCH_REASON]
    has_transaction_control = any(result.is_transaction_control for result in results)
    if has_transaction_control:
        reasons.append(_BATCH_TRANSACTION_REASON)
    outcomes = [result.outcome for result in results]
    for outcome in outcomes:
        if outcome.verdict is not Verdict.ALLOWED:
            reasons.extend(outcome.reasons)
    denied = any(outcome.verdict is Verdict.DENIED for outcome in outcomes)
    if denied or has_transaction_control:
        return _Outcome(Verdict.DENIED, Risk.CRITICAL, _unique(reasons), 0)
    risk = max((outcome.risk for outcome in outcomes), key=_RISK_RANK.__getitem__)
    approvals = max([1, *(outcome.approvals for outcome in outcomes)])
    return _Outcome(Verdict.HELD, risk, _unique(reasons), approvals)
