"""Result column names and built-in function knowledge for the lineage analyzer.

Output names must match what PostgreSQL reports in RowDescription, because the
gateway pairs each lineage entry with a result column by position and shows the
name to reviewers.  The rules follow PostgreSQL's FigureColname(): an alias
wins, then a "strong" name (column, function, field), then a weak one (a cast's
type name, "case"), then "?column?".

The function tables only list pg_catalog built-ins whose result shape and
meaning are fixed; anything else is treated by the analyzer as an opaque
computation over its arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from pglast import ast, enums

from policy.classifier import DYNAMIC_SQL_FUNCTIONS

UNNAMED = "?column?"

# Strength of a figured name, as in PostgreSQL: a cast or CASE only names its
# result when nothing inside it offers a better name.
_NO_NAME = 0
_WEAK = 1
_STRONG = 2

_SQL_VALUE_FUNCTION_NAMES: Mapping[int, str] = MappingProxyType(
    {
        enums.SQLValueFunctionOp.SVFOP_CURRENT_DATE: "current_date",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_TIME: "current_time",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_TIME_N: "current_time",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP: "current_timestamp",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_TIMESTAMP_N: "current_timestamp",
        enums.SQLValueFunctionOp.SVFOP_LOCALTIME: "localtime",
        enums.SQLValueFunctionOp.SVFOP_LOCALTIME_N: "localtime",
        enums.SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP: "localtimestamp",
        enums.SQLValueFunctionOp.SVFOP_LOCALTIMESTAMP_N: "localtimestamp",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_ROLE: "current_role",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_USER: "current_user",
        enums.SQLValueFunctionOp.SVFOP_USER: "user",
        enums.SQLValueFunctionOp.SVFOP_SESSION_USER: "session_user",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_CATALOG: "current_catalog",
        enums.SQLValueFunctionOp.SVFOP_CURRENT_SCHEMA: "current_schema",
    }
)

_XML_NAMES: Mapping[int, str] = MappingProxyType(
    {
        enums.XmlExprOp.IS_XMLCONCAT: "xmlconcat",
        enums.XmlExprOp.IS_XMLELEMENT: "xmlelement",
        enums.XmlExprOp.IS_XMLFOREST: "xmlforest",
        enums.XmlExprOp.IS_XMLPARSE: "xmlparse",
        enums.XmlExprOp.IS_XMLPI: "xmlpi",
        enums.XmlExprOp.IS_XMLROOT: "xmlroot",
        enums.XmlExprOp.IS_XMLSERIALIZE: "xmlserialize",
    }
)

_JSON_FUNCTION_NAMES: Mapping[int, str] = MappingProxyType(
    {
        enums.JsonExprOp.JSON_EXISTS_OP: "json_exists",
        enums.JsonExprOp.JSON_QUERY_OP: "json_query",
        enums.JsonExprOp.JSON_VALUE_OP: "json_value",
        enums.JsonExprOp.JSON_TABLE_OP: "json_table",
    }
)

# Nodes whose name never depends on their contents.
_FIXED_NAMES: Mapping[type[ast.Node], str] = MappingProxyType(
    {
        ast.GroupingFunc: "grouping",
        ast.A_ArrayExpr: "array",
        ast.RowExpr: "row",
        ast.CoalesceExpr: "coalesce",
        ast.XmlSerialize: "xmlserialize",
        ast.MergeSupportFunc: "merge_action",
        ast.JsonParseExpr: "json",
        ast.JsonScalarExpr: "json_scalar",
        ast.JsonSerializeExpr: "json_serialize",
        ast.JsonObjectConstructor: "json_object",
        ast.JsonArrayConstructor: "json_array",
        ast.JsonArrayQueryConstructor: "json_array",
        ast.JsonObjectAgg: "json_objectagg",
        ast.JsonArrayAgg: "json_arrayagg",
    }
)

# Looks up the name of an already analyzed scalar subquery's first column.
SublinkNamer = Callable[[ast.SubLink], str | None]


def output_name(node: object, sublink_name: SublinkNamer) -> str:
    """The column name PostgreSQL gives an unaliased target expression.

    Casts, CASE and COLLATE wrap an inner expression whose name they inherit
    (a cast falls back to its type name, CASE to "case"); the chain is walked
    iteratively so absurdly nested casts cannot exhaust the stack.
    """
    wrappers: list[object] = []
    current = node
    while True:
        if isinstance(current, ast.TypeCast | ast.CollateClause):
            wrappers.append(current)
            current = current.arg
        elif isinstance(current, ast.CaseExpr):
            wrappers.append(current)
            current = current.defresult
        elif isinstance(current, ast.A_Indirection) and _last_field(current) is None:
            current = current.arg
        else:
            break
    name, strength = _leaf_name(current, sublink_name)
    for wrapper in reversed(wrappers):
        if strength > _WEAK:
            break
        if isinstance(wrapper, ast.TypeCast):
            name, strength = _type_name(wrapper), _WEAK
        elif isinstance(wrapper, ast.CaseExpr):
            name, strength = "case", _WEAK
    return name if name else UNNAMED


def _leaf_name(node: object, sublink_name: SublinkNamer) -> tuple[str | None, int]:
    """FigureColnameInternal for nodes that are not name-inheriting wrappers."""
    fixed = _FIXED_NAMES.get(type(node)) if isinstance(node, ast.Node) else None
    if fixed is not None:
        return fixed, _STRONG
    if isinstance(node, ast.ColumnRef):
        last = node.fields[-1] if node.fields else None
        return (last.sval, _STRONG) if isinstance(last, ast.String) else (None, _NO_NAME)
    if isinstance(node, ast.A_Indirection):
        return _last_field(node), _STRONG
    if isinstance(node, ast.FuncCall):
        return function_name(node)[1], _STRONG
    if isinstance(node, ast.SubLink):
        return _sublink_name(node, sublink_name)
    return _enum_name(node)


def _enum_name(node: object) -> tuple[str | None, int]:
    """Names chosen by an operator code rather than by the node type alone."""
    name: str | None = None
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_NULLIF:
        name = "nullif"
    elif isinstance(node, ast.MinMaxExpr):
        name = "greatest" if node.op == enums.MinMaxOp.IS_GREATEST else "least"
    elif isinstance(node, ast.SQLValueFunction):
        name = _SQL_VALUE_FUNCTION_NAMES.get(node.op or 0)
    elif isinstance(node, ast.XmlExpr):
        name = _XML_NAMES.get(node.op or 0)
    elif isinstance(node, ast.JsonFuncExpr):
        name = _JSON_FUNCTION_NAMES.get(node.op or 0)
    return name, _STRONG if name else _NO_NAME


def _sublink_name(node: ast.SubLink, sublink_name: SublinkNamer) -> tuple[str | None, int]:
    """EXISTS and ARRAY name themselves; a scalar subquery takes its column's name."""
    if node.subLinkType == enums.SubLinkType.EXISTS_SUBLINK:
        return "exists", _STRONG
    if node.subLinkType == enums.SubLinkType.ARRAY_SUBLINK:
        return "array", _STRONG
    if node.subLinkType == enums.SubLinkType.EXPR_SUBLINK:
        name = sublink_name(node)
        return (name, _STRONG) if name else (None, _NO_NAME)
    return None, _NO_NAME


def _last_field(node: ast.A_Indirection) -> str | None:
    """The last field selected by an indirection, ignoring subscripts and '*'."""
    names = [item.sval for item in node.indirection or () if isinstance(item, ast.String)]
    return names[-1] if names else None


def _type_name(node: ast.TypeCast) -> str | None:
    """The last part of a cast's type name (PostgreSQL's weak fallback name)."""
    names = node.typeName.names if node.typeName is not None else None
    last = names[-1] if names else None
    return last.sval if isinstance(last, ast.String) else None


def function_name(node: ast.FuncCall) -> tuple[str | None, str]:
    """(schema or None, name) of a called function, as written (already case-folded by the parser)."""
    parts = [part.sval or "" for part in node.funcname or () if isinstance(part, ast.String)]
    if not parts:
        return None, ""
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def is_builtin(schema: str | None) -> bool:
    """Only unqualified or pg_catalog-qualified names can mean the built-in function."""
    return schema is None or schema == "pg_catalog"


# --------------------------------------------------------------------------
# Built-in functions whose meaning is fixed
# --------------------------------------------------------------------------

COUNT_AGGREGATES = frozenset({"count"})

# Aggregates whose result is (or is computed from) the aggregated values
# themselves, so PHI survives aggregation.
VALUE_AGGREGATES = frozenset(
    {
        "min",
        "max",
        "sum",
        "avg",
        "any_value",
        "string_agg",
        "array_agg",
        "json_agg",
        "jsonb_agg",
        "json_agg_strict",
        "jsonb_agg_strict",
        "json_object_agg",
        "jsonb_object_agg",
        "json_object_agg_strict",
        "jsonb_object_agg_strict",
        "json_object_agg_unique",
        "jsonb_object_agg_unique",
        "json_object_agg_unique_strict",
        "jsonb_object_agg_unique_strict",
        "xmlagg",
        "range_agg",
        "range_intersect_agg",
        "bit_and",
        "bit_or",
        "bit_xor",
        "bool_and",
        "bool_or",
        "every",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "corr",
        "covar_pop",
        "covar_samp",
        "regr_avgx",
        "regr_avgy",
        "regr_count",
        "regr_intercept",
        "regr_r2",
        "regr_slope",
        "regr_sxx",
        "regr_sxy",
        "regr_syy",
        "mode",
        "percentile_cont",
        "percentile_disc",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
    }
)

# Set-returning built-ins that return one column of a base type in FROM.
SCALAR_SET_FUNCTIONS = frozenset(
    {
        "generate_series",
        "generate_subscripts",
        "unnest",
        "regexp_matches",
        "regexp_split_to_table",
        "string_to_table",
        "json_object_keys",
        "jsonb_object_keys",
        "jsonb_path_query",
        "jsonb_path_query_tz",
    }
)

# Set-returning built-ins with named OUT parameters: PostgreSQL names their
# columns after the parameters, whatever alias the FROM item has.
RECORD_SET_FUNCTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "json_array_elements": ("value",),
        "jsonb_array_elements": ("value",),
        "json_array_elements_text": ("value",),
        "jsonb_array_elements_text": ("value",),
        "json_each": ("key", "value"),
        "jsonb_each": ("key", "value"),
        "json_each_text": ("key", "value"),
        "jsonb_each_text": ("key", "value"),
    }
)

# Every set-returning function PostgreSQL ships in pg_catalog (15 to 17): in a target list each one
# multiplies rows, so its arguments decide how many rows come back.  tests/test_lineage_rule.py checks the
# list against the server's pg_proc.
SET_RETURNING_FUNCTIONS = frozenset(
    [
        "aclexplode",
        "generate_series",
        "generate_subscripts",
        "json_array_elements",
        "json_array_elements_text",
        "json_each",
        "json_each_text",
        "json_object_keys",
        "json_populate_recordset",
        "json_to_recordset",
        "jsonb_array_elements",
        "jsonb_array_elements_text",
        "jsonb_each",
        "jsonb_each_text",
        "jsonb_object_keys",
        "jsonb_path_query",
        "jsonb_path_query_tz",
        "jsonb_populate_recordset",
        "jsonb_to_recordset",
        "pg_available_extension_versions",
        "pg_available_extensions",
        "pg_config",
        "pg_cursor",
        "pg_event_trigger_ddl_commands",
        "pg_event_trigger_dropped_objects",
        "pg_extension_update_paths",
        "pg_get_backend_memory_contexts",
        "pg_get_catalog_foreign_keys",
        "pg_get_keywords",
        "pg_get_multixact_members",
        "pg_get_publication_tables",
        "pg_get_replication_slots",
        "pg_get_shmem_allocations",
        "pg_get_wal_resource_managers",
        "pg_hba_file_rules",
        "pg_ident_file_mappings",
        "pg_listening_channels",
        "pg_lock_status",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_binary_changes",
        "pg_logical_slot_peek_changes",
        "pg_ls_archive_statusdir",
        "pg_ls_dir",
        "pg_ls_logdir",
        "pg_ls_logicalmapdir",
        "pg_ls_logicalsnapdir",
        "pg_ls_replslotdir",
        "pg_ls_tmpdir",
        "pg_ls_waldir",
        "pg_mcv_list_items",
        "pg_options_to_table",
        "pg_partition_ancestors",
        "pg_partition_tree",
        "pg_prepared_statement",
        "pg_prepared_xact",
        "pg_show_all_file_settings",
        "pg_show_all_settings",
        "pg_show_replication_origin_status",
        "pg_snapshot_xip",
        "pg_stat_get_activity",
        "pg_stat_get_backend_idset",
        "pg_stat_get_progress_info",
        "pg_stat_get_recovery_prefetch",
        "pg_stat_get_slru",
        "pg_stat_get_subscription",
        "pg_stat_get_wal_senders",
        "pg_tablespace_databases",
        "pg_timezone_abbrevs",
        "pg_timezone_names",
        "regexp_matches",
        "regexp_split_to_table",
        "string_to_table",
        "ts_debug",
        "ts_parse",
        "ts_stat",
        "ts_token_type",
        "txid_snapshot_xip",
        "unnest",
        "pg_stat_get_io",
        "pg_get_wait_events",
        "pg_available_wal_summaries",
        "pg_wal_summary_contents",
        "pg_get_loaded_modules",
        "pg_get_acl",
        "pg_stat_get_backend_io",
        "pg_get_shmem_allocations_numa",
    ]
)

# Window functions proper: with OVER they compute from other rows' values.
WINDOW_FUNCTIONS = frozenset(
    {
        "row_number",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
        "ntile",
        "lag",
        "lead",
        "first_value",
        "last_value",
        "nth_value",
    }
)

# Functions that read data the statement does not name (SQL text in a string,
# a whole table or schema by name, server files, other sessions' queries,
# remote servers).  Their results cannot be traced, whatever their arguments;
# matched in any schema because extensions such as dblink install anywhere.
OUT_OF_SIGHT_FUNCTIONS = DYNAMIC_SQL_FUNCTIONS | frozenset(
    {
        # beyond the classifier's dynamic-SQL list: server files, large objects, other sessions' statements,
        # logical decoding (their values come from somewhere the statement does not name)
        "dblink_get_result",
        "pg_read_file",
        "pg_read_binary_file",
        "lo_get",
        "loread",
        "lo_import",
        "pg_stat_get_activity",
        "pg_stat_get_backend_activity",
        "pg_logical_slot_get_changes",
        "pg_logical_slot_peek_changes",
        "pg_logical_slot_get_binary_changes",
        "pg_logical_slot_peek_binary_changes",
    }
)
