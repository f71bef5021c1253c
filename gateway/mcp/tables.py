"""The table listing an agent sees: relations it may read, their columns, and the mask each PHI column gets.

Runs in the gateway (it needs the target's catalog, so the read-only credential). No value is read: only the
catalog, joined with the PHI tags and the masks and inference rules of the caller's kind of identity.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from gateway.pipeline import DatasourceRuntime
from identity.principal import Principal
from policy.models import DataSource, Mask

# Relations the read role may SELECT, outside PostgreSQL's own schemas, one row per column.
_COLUMNS_SQL = """
SELECT n.nspname, c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND has_table_privilege(c.oid, 'SELECT')
ORDER BY n.nspname, c.relname, a.attnum
"""
MAX_COLUMNS = 20_000
_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"}
_VIEW_NOTE = "masked by lineage: a column from a PHI column gets that column's mask, anything unknown is redacted"


class TablesRefused(Exception):
    """The listing cannot be given (unknown or inactive data source); the message is safe to show."""


def list_tables(principal: Principal, datasource_name: str, runtime: DatasourceRuntime) -> dict[str, Any]:
    if not DataSource.objects.filter(name=datasource_name, is_active=True).exists():
        raise TablesRefused(f"unknown data source {datasource_name!r}")
    catalog = runtime.catalog(datasource_name)
    kind = principal.identity_kind
    tags = catalog.tags_by_column
    raw = runtime.executor(datasource_name).run(
        _COLUMNS_SQL, cursor_capable=False, row_cap=MAX_COLUMNS, timeout_ms=settings.READ_STATEMENT_TIMEOUT_MS
    )
    tables: dict[tuple[str, str], dict[str, Any]] = {}
    for schema, name, relkind, column, sql_type in raw.rows:
        assert schema is not None and name is not None and relkind is not None and column is not None
        table = tables.setdefault(
            (schema, name), {"schema": schema, "name": name, "kind": _KINDS.get(relkind, relkind), "columns": []}
        )
        if relkind in ("v", "m"):
            table["note"] = _VIEW_NOTE
        entry: dict[str, Any] = {"name": column, "type": sql_type}
        tag = tags.get((schema, name, column))
        if tag is not None:
            entry.update(
                phi_type=tag.phi_type,
                mask=catalog.mask_for(tag.phi_type, kind),
                filtering=catalog.inference_for(tag.phi_type, kind),
            )
        table["columns"].append(entry)
    return {
        "datasource": datasource_name,
        "identity_kind": kind,
        "tables": list(tables.values()),
        "truncated": raw.truncated,
        "masks": {str(mask.value): str(mask.label) for mask in Mask},
        "filtering": "what happens to a statement that filters, sorts, groups or joins on the column: "
        "allow, hold (a reviewer must approve) or deny",
    }
