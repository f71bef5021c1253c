"""Catalog relations and functions that reveal data no mask covers, listed by what they reveal.

Masks apply to the columns of user tables that the policy tags. PostgreSQL also keeps copies of stored values,
of statement text and of secrets in places that are not user tables: column statistics hold the most common
values of every analysed column, ``pg_stat_activity`` holds other sessions' statements with their literals (an
SSN in a WHERE clause), ``pg_subscription`` holds connection strings with passwords. Reading any of them is
reading PHI (or a key to it) sideways, so the classifier denies every reference to them, wherever it appears:
FROM, the target list, subqueries, CTEs, and the bodies of the views a statement reads.

The list names both the relation (view or table) and the function behind it: ``pg_stat_activity`` is a view
over ``pg_stat_get_activity()``, and denying the view alone let ``SELECT * FROM pg_stat_get_activity(NULL)``
through. Each entry says what it exposes and where; ``tests/test_exposure.py`` checks every name against a real
server's pg_class/pg_proc, and that no catalog column which carries statement text, values or secrets is
missing from the list without a recorded reason.

Matching rules (fail closed):

* PostgreSQL's own objects match when written unqualified or qualified with their home schema (``pg_catalog``
  or ``information_schema``). An unqualified name matches even if the session's search path could make it
  resolve elsewhere: an agent may change ``search_path``, so the name alone decides. A user table of the same
  name is still readable when qualified with its own schema (``public.pg_stats``).
* Extension objects (``pg_stat_statements``, pageinspect's page decoders, ...) match in every schema, because
  extensions install into whichever schema the administrator chose.
* Names compare case-insensitively (a quoted upper-case spelling names another object, but refusing it costs
  nothing).

Deliberately not listed (reviewed; they reveal nothing stored in user tables, no other session's statement and
no secret): ``pg_roles`` and ``pg_user`` (passwords shown as ``********``), ``pg_settings`` and
``current_setting()`` (this session's settings; PostgreSQL itself hides superuser-only ones such as
``primary_conninfo``), ``pg_stat_statements_info`` (counters only), foreign server and table options (host and
remote names; postgres_fdw accepts passwords only in user mappings, which are listed), ``pg_stat_ssl`` (client
certificate subjects), ``pg_config``. ``pg_logical_slot_*_changes`` and ``query_to_xml`` & co. are denied by
the classifier's own function denylist (replication, dynamic SQL).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType


class Exposure(enum.StrEnum):
    """What an object reveals that masks cannot cover."""

    STORED_VALUES = "values stored in user tables or large objects"
    STATEMENT_TEXT = "statement text of other sessions or earlier requests, with its literals"
    CREDENTIALS = "connection strings, passwords or password hashes"
    SERVER_FILES = "the server's configuration files"


class ObjectKind(enum.StrEnum):
    """How an exposing object is referenced in SQL."""

    RELATION = "relation"
    FUNCTION = "function"


#: ``ExposingObject.schema`` for extension objects, which may be installed in any schema.
ANY_SCHEMA = "*"


@dataclass(frozen=True)
class ExposingObject:
    """One relation or function that exposes data beyond what masks reveal.

    ``since`` is the first ``server_version_num`` that provides the object (0: every supported version), so the
    existence test only asks servers that have it. ``extension`` names the contrib extension that installs it.
    """

    kind: ObjectKind
    schema: str
    name: str
    exposes: Exposure
    where: str
    extension: str | None = None
    since: int = 0

    @property
    def display(self) -> str:
        """How reasons name it: ``pg_catalog.pg_stats``, ``pg_stat_get_activity()``."""
        qualified = self.name if self.schema == ANY_SCHEMA else f"{self.schema}.{self.name}"
        return f"{qualified}()" if self.kind is ObjectKind.FUNCTION else qualified


_R, _F = ObjectKind.RELATION, ObjectKind.FUNCTION
_VALUES, _TEXT = Exposure.STORED_VALUES, Exposure.STATEMENT_TEXT
_SECRETS, _FILES = Exposure.CREDENTIALS, Exposure.SERVER_FILES
_PG, _INFO = "pg_catalog", "information_schema"

#: Every object the classifier denies by name, grouped by what it exposes.
EXPOSING_OBJECTS: tuple[ExposingObject, ...] = (
    # Stored values of user tables: planner statistics keep samples of column values, and large objects are
    # data that no column tag (and so no mask) covers.
    ExposingObject(_R, _PG, "pg_statistic", _VALUES, "stavalues1..5: most common values and histogram bounds"),
    ExposingObject(_R, _PG, "pg_stats", _VALUES, "most_common_vals, most_common_elems, histogram_bounds"),
    ExposingObject(_R, _PG, "pg_stats_ext", _VALUES, "most_common_vals of extended statistics"),
    ExposingObject(_R, _PG, "pg_stats_ext_exprs", _VALUES, "most common values and histograms of expressions"),
    ExposingObject(_R, _PG, "pg_statistic_ext_data", _VALUES, "stxdmcv: serialized most-common-value lists"),
    ExposingObject(_F, _PG, "pg_mcv_list_items", _VALUES, "decodes a most-common-value list into its values"),
    ExposingObject(_F, _PG, "pg_mcv_list_out", _VALUES, "text form of a most-common-value list"),
    ExposingObject(_F, _PG, "pg_mcv_list_send", _VALUES, "binary form of a most-common-value list"),
    ExposingObject(_R, _PG, "pg_largeobject", _VALUES, "data: the contents of every large object"),
    ExposingObject(_F, _PG, "lo_get", _VALUES, "the contents of a large object"),
    ExposingObject(_F, _PG, "loread", _VALUES, "the contents of an open large object"),
    ExposingObject(_F, ANY_SCHEMA, "get_raw_page", _VALUES, "raw table pages, tuples included", "pageinspect"),
    ExposingObject(_F, ANY_SCHEMA, "heap_page_items", _VALUES, "t_data: raw heap tuples", "pageinspect"),
    ExposingObject(_F, ANY_SCHEMA, "heap_page_item_attrs", _VALUES, "raw column values of heap tuples", "pageinspect"),
    ExposingObject(_F, ANY_SCHEMA, "tuple_data_split", _VALUES, "raw column values of a tuple", "pageinspect"),
    ExposingObject(_F, ANY_SCHEMA, "bt_page_items", _VALUES, "data: B-tree index keys", "pageinspect"),
    ExposingObject(_F, ANY_SCHEMA, "brin_page_items", _VALUES, "value: BRIN summaries (min/max values)", "pageinspect"),
    ExposingObject(_F, ANY_SCHEMA, "gist_page_items", _VALUES, "keys: GiST index keys as text", "pageinspect"),
    ExposingObject(_F, ANY_SCHEMA, "gist_page_items_bytea", _VALUES, "key_data: raw GiST index keys", "pageinspect"),
    ExposingObject(
        _F, ANY_SCHEMA, "hash_page_items", _VALUES, "data: hash codes of keys (small value sets reverse)", "pageinspect"
    ),
    ExposingObject(
        _F, ANY_SCHEMA, "pg_get_wal_block_info", _VALUES, "block_data: raw tuple data in WAL", "pg_walinspect", 160000
    ),
    # Statement text: other sessions' statements (pg_stat_activity, pg_stat_statements), and this connection's
    # prepared statements, cursors and cached plans, which a pooled connection keeps from earlier requests.
    ExposingObject(_R, _PG, "pg_stat_activity", _TEXT, "query: every session's current or last statement"),
    ExposingObject(_F, _PG, "pg_stat_get_activity", _TEXT, "query: the function behind pg_stat_activity"),
    ExposingObject(_F, _PG, "pg_stat_get_backend_activity", _TEXT, "another backend's current statement"),
    ExposingObject(_R, ANY_SCHEMA, "pg_stat_statements", _TEXT, "query: normalized statements", "pg_stat_statements"),
    ExposingObject(
        _F, ANY_SCHEMA, "pg_stat_statements", _TEXT, "query: the function behind the view", "pg_stat_statements"
    ),
    ExposingObject(_R, _PG, "pg_prepared_statements", _TEXT, "statement: prepared statements of the connection"),
    ExposingObject(_F, _PG, "pg_prepared_statement", _TEXT, "statement: the function behind the view"),
    ExposingObject(_R, _PG, "pg_cursors", _TEXT, "statement: open cursors of the connection"),
    ExposingObject(_F, _PG, "pg_cursor", _TEXT, "statement: the function behind the view"),
    ExposingObject(_R, _PG, "pg_backend_memory_contexts", _TEXT, "ident: text of cached plans' statements"),
    ExposingObject(_F, _PG, "pg_get_backend_memory_contexts", _TEXT, "ident: the function behind the view"),
    # Credentials: connection strings and password hashes.
    ExposingObject(_R, _PG, "pg_authid", _SECRETS, "rolpassword: password hashes"),
    ExposingObject(_R, _PG, "pg_shadow", _SECRETS, "passwd: password hashes"),
    ExposingObject(_R, _PG, "pg_subscription", _SECRETS, "subconninfo: the publisher's connection string"),
    ExposingObject(_R, _PG, "pg_stat_wal_receiver", _SECRETS, "conninfo: the primary's connection string"),
    ExposingObject(_F, _PG, "pg_stat_get_wal_receiver", _SECRETS, "conninfo: the function behind the view"),
    ExposingObject(_R, _PG, "pg_user_mapping", _SECRETS, "umoptions: foreign servers' user names and passwords"),
    ExposingObject(_R, _PG, "pg_user_mappings", _SECRETS, "umoptions: foreign servers' user names and passwords"),
    ExposingObject(_R, _INFO, "user_mapping_options", _SECRETS, "option_value: user mapping options"),
    ExposingObject(_R, _INFO, "_pg_user_mappings", _SECRETS, "umoptions: user mapping options"),
    # Server configuration files: settings as written (connection strings included), client authentication.
    ExposingObject(_R, _PG, "pg_file_settings", _FILES, "setting: postgresql.conf as written"),
    ExposingObject(_F, _PG, "pg_show_all_file_settings", _FILES, "setting: the function behind pg_file_settings"),
    ExposingObject(_R, _PG, "pg_hba_file_rules", _FILES, "pg_hba.conf: who may connect from where, and how"),
    ExposingObject(_F, _PG, "pg_hba_file_rules", _FILES, "the function behind the view"),
    ExposingObject(_R, _PG, "pg_ident_file_mappings", _FILES, "pg_ident.conf: operating system user mappings"),
    ExposingObject(_F, _PG, "pg_ident_file_mappings", _FILES, "the function behind the view"),
)


def _by_name(kind: ObjectKind, objects: Iterable[ExposingObject]) -> Mapping[str, tuple[ExposingObject, ...]]:
    """Entries of one kind, keyed by lower-case name (a name may live in several schemas)."""
    grouped: dict[str, list[ExposingObject]] = {}
    for entry in objects:
        if entry.kind is kind:
            grouped.setdefault(entry.name.lower(), []).append(entry)
    return MappingProxyType({name: tuple(entries) for name, entries in grouped.items()})


_RELATIONS = _by_name(ObjectKind.RELATION, EXPOSING_OBJECTS)
_FUNCTIONS = _by_name(ObjectKind.FUNCTION, EXPOSING_OBJECTS)

#: Bare names, for callers that only have written relation names (gateway.pipeline's older check).
EXPOSING_RELATION_NAMES = frozenset(_RELATIONS)
EXPOSING_FUNCTION_NAMES = frozenset(_FUNCTIONS)


def _match(candidates: tuple[ExposingObject, ...], schema: str | None) -> ExposingObject | None:
    """The entry a reference names: unqualified names always match; qualified ones need the home schema."""
    for entry in candidates:
        if schema is None or entry.schema == ANY_SCHEMA or entry.schema == schema.lower():
            return entry
    return None


def exposing_relation(schema: str | None, name: str) -> ExposingObject | None:
    """The listed relation a (possibly qualified) relation reference names, or None."""
    return _match(_RELATIONS.get(name.lower(), ()), schema)


def exposing_function(schema: str | None, name: str) -> ExposingObject | None:
    """The listed function a (possibly qualified) call names, or None."""
    return _match(_FUNCTIONS.get(name.lower(), ()), schema)


def exposure_reason(entry: ExposingObject, written: str) -> str:
    """The refusal text: what was written, and what it would have exposed."""
    noun = "function" if entry.kind is ObjectKind.FUNCTION else "relation"
    return f"{noun} {written} is denied: it exposes {entry.exposes} ({entry.where})"
