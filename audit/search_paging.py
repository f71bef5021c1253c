"""Newest-first pages of audit search results that stay fast over millions of events.

A search wants the newest 100 matches. PostgreSQL has two ways to get them: walk the primary key backwards
and test each row (instant when matches are common, a full scan when they are rare), or collect every match
from the indexes and sort (instant when matches are rare, slow when there are hundreds of thousands). Its
estimates for full-text and jsonb conditions cannot tell these cases apart, and a wrong guess costs half a
second on a million events. So we try the backward walk under a small time budget, and if it runs out, ask
for the index plan explicitly. Each is fast in exactly the case where the other is slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import OperationalError, connection, transaction
from django.db.models import QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

ORDERED_WALK_BUDGET_MS = 40
INDEX_PLAN_TIMEOUT_MS = 20_000
COUNT_BUDGET_MS = 3_000


def newest_ids(
    queryset: QuerySet[Any],
    count: int,
    walk_budget_ms: int | None = ORDERED_WALK_BUDGET_MS,
    *,
    oldest_first: bool = False,
) -> list[int]:
    """The ids of the ``count`` newest rows of ``queryset``, by whichever plan answers first (see above).

    ``walk_budget_ms=None`` skips the walk (the index plan only). ``oldest_first`` walks the other way (the
    oldest rows, ascending): a page of newer events is the oldest ones after the page being read.
    """
    order = "id" if oldest_first else "-id"
    sql, params = queryset.order_by(order).values_list("id", flat=True)[:count].query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        if walk_budget_ms is not None:
            try:
                with transaction.atomic():  # a savepoint: a cancelled walk leaves the transaction usable
                    cursor.execute(f"SET LOCAL statement_timeout = {int(walk_budget_ms)}")
                    cursor.execute(sql, params)
                    return [row[0] for row in cursor.fetchall()]
            except OperationalError as exc:
                if not isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
                    raise
        cursor.execute(f"SET LOCAL statement_timeout = {INDEX_PLAN_TIMEOUT_MS}")
        cursor.execute("SET LOCAL enable_indexscan = off")  # bitmap index scans stay on: matches, then sort
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def newest_page(queryset: QuerySet[Any], size: int, before: int | None = None) -> tuple[list[Any], int | None]:
    """One page, newest first, from before the id ``before``: the rows, and the id the next page starts before
    (None on the last page)."""
    if before is not None:
        queryset = queryset.filter(id__lt=before)
    ids = newest_ids(queryset, size + 1)
    following = ids[size - 1] if len(ids) > size else None
    rows = queryset.model.objects.in_bulk(ids[:size])
    return [rows[pk] for pk in ids[:size]], following


@dataclass
class Page:
    """A page of the search page, newest first, with where the pages on either side start.

    ``older`` is the ``before=`` of the next older page, ``newer`` the ``after=`` of the next newer one; None
    when there is none (or, for ``newer``, when this is the newest page).
    """

    rows: list[Any]
    older: int | None
    newer: int | None


def page_between(queryset: QuerySet[Any], size: int, before: int | None = None, after: int | None = None) -> Page:
    """The page before the id ``before`` (older events), after the id ``after`` (newer ones), or the newest.

    Keyset pages in both directions: following a link never skips or repeats an event while new ones arrive.
    A newer page that would not be full is the newest page instead (there is nothing newer to fill it with).
    """
    if after is not None:
        ids = newest_ids(queryset.filter(id__gt=after), size + 1, oldest_first=True)
        if len(ids) <= size:
            return page_between(queryset, size)
        shown = ids[:size][::-1]
        rows = queryset.model.objects.in_bulk(shown)
        return Page([rows[pk] for pk in shown], older=shown[-1], newer=shown[0])
    rows, older = newest_page(queryset, size, before)
    newer = None
    if before is not None:
        newer = rows[0].pk if rows else before - 1
    return Page(rows, older=older, newer=newer)


def count_within(queryset: QuerySet[Any], budget_ms: int = COUNT_BUDGET_MS) -> int | None:
    """How many rows match, or None when counting would take longer than ``budget_ms`` (a rare full scan over
    millions of events): the page then says "many" rather than keep the officer waiting."""
    sql, params = queryset.order_by().values("id").query.sql_with_params()
    with transaction.atomic(), connection.cursor() as cursor:
        try:
            with transaction.atomic():
                cursor.execute(f"SET LOCAL statement_timeout = {int(budget_ms)}")
                cursor.execute(f"SELECT count(*) FROM ({sql}) AS matching", params)
                row = cursor.fetchone()
                return int(row[0]) if row else 0
        except OperationalError as exc:
            if not isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
                raise
            return None


class NewestFirst(BasePagination):
    """Keyset pages, newest first, both ways (``page_between``, as the search page pages): ``next`` is the
    ``?before=<id>`` of the older page, ``previous`` the ``?after=<id>`` of the newer one. Both links keep every
    other parameter (the filters, the page size), so following them never skips or repeats an event."""

    page_size = 100
    max_page_size = 1000

    def paginate_queryset(self, queryset: QuerySet[Any], request: Request, view: Any = None) -> list[Any]:
        self.request = request
        size = self._page_size(request)
        before, after = self._event_id(request, "before"), self._event_id(request, "after")
        if before is not None and after is not None:
            raise ValidationError({"after": "either before or after, not both"})
        self.page = page_between(queryset, size, before=before, after=after)
        return self.page.rows

    @staticmethod
    def _event_id(request: Request, name: str) -> int | None:
        raw = request.query_params.get(name)
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit() and len(raw) < 19):
            raise ValidationError({name: "an event id"})
        return int(raw)

    def _page_size(self, request: Request) -> int:
        raw = request.query_params.get("page_size")
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError({"page_size": f"1 to {self.max_page_size}"})
        return int(raw)

    def _link(self, name: str, value: int | None, other: str) -> str | None:
        """This request's URL with ``name=value`` and without ``other`` (a page starts from one side only)."""
        if value is None:
            return None
        return replace_query_param(remove_query_param(self.request.build_absolute_uri(), other), name, value)

    def get_paginated_response(self, data: Any) -> Response:
        return Response(
            {
                "next": self._link("before", self.page.older, "after"),
                "previous": self._link("after", self.page.newer, "before"),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {
            "type": "object",
            "required": ["results"],
            "properties": {
                "next": {**link, "description": "the older page (null on the oldest)"},
                "previous": {**link, "description": "the newer page (null on the newest)"},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        def parameter(name: str, description: str) -> dict[str, Any]:
            return {
                "name": name,
                "required": False,
                "in": "query",
                "description": description,
                "schema": {"type": "integer", "minimum": 1},
            }

        return [
            parameter("before", "events older than this id (the ``next`` link sets it)"),
            parameter("after", "events newer than this id (the ``previous`` link sets it)"),
            parameter("page_size", f"events per page, {self.page_size} unless given, at most {self.max_page_size}"),
        ]
