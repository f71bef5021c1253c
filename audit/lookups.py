"""``details__path_exists``: PostgreSQL's jsonpath test (``@?``), which the jsonb_path_ops GIN index serves."""

from __future__ import annotations

from typing import Any

from django.db.models import JSONField, Lookup


@JSONField.register_lookup
class PathExists(Lookup):  # type: ignore[type-arg]
    lookup_name = "path_exists"

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        return f"{lhs} @? %s::jsonpath", [*lhs_params, self.rhs]
