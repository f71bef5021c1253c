"""OpenAPI shapes of results with typed values (policy.result_values): ``POST /api/v1/queries`` and
``GET /api/v1/tickets/{id}/result``. Documentation only: the views build their answers themselves."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from approvals.serializers import TicketLinkSerializer
from policy.models import Mask
from policy.result_values import JsonKind

ROWS_HELP = (
    "Rows of JSON values, masked for the caller. A masked column's values are always strings (or null where the "
    "mask shows NULL), whatever the column's type. Unmasked: smallint/integer/bigint and real/double precision "
    "are numbers (NaN and +-Infinity are strings), boolean is true/false, json/jsonb is the parsed document, "
    "arrays are JSON arrays of values typed the same way, numeric is a string holding the exact decimal, and "
    "everything else (dates, timestamps, intervals, uuid, bytea as \\x hex, enums, text) is the string "
    "PostgreSQL prints. SQL NULL is null. Values beyond 2^53 in bigint columns are exact in the JSON text; "
    "parse them with a big-integer-aware reader if your language's numbers are doubles."
)


class ElementTypeSerializer(serializers.Serializer[Any]):
    type = serializers.CharField(help_text="PostgreSQL name of the element type")
    oid = serializers.IntegerField(help_text="element type OID")
    json = serializers.ChoiceField(choices=[str(kind) for kind in JsonKind], help_text="JSON type of the elements")


class ColumnTypeSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(help_text="column name, as in `columns`")
    type = serializers.CharField(
        help_text="PostgreSQL type name (format_type), e.g. integer, numeric, timestamp with time zone, text[]; "
        "'unknown' for a type created after the gateway's catalog snapshot"
    )
    oid = serializers.IntegerField(help_text="PostgreSQL type OID, as in the wire protocol's RowDescription")
    json = serializers.ChoiceField(
        choices=[str(kind) for kind in JsonKind],
        help_text="JSON type of this column's non-null values: number, boolean, string, json (any parsed JSON "
        "document) or array; always string for a masked column",
    )
    mask = serializers.ChoiceField(
        choices=[str(mask.value) for mask in Mask if mask != Mask.PASS],
        allow_null=True,
        help_text="the mask applied to this column for the caller, or null when values are shown as they are",
    )
    element = ElementTypeSerializer(required=False, help_text="arrays only: the element type")
    delimiter = serializers.CharField(required=False, help_text="arrays only: the element delimiter PostgreSQL used")


class TypedResultSerializer(serializers.Serializer[Any]):
    """``GET /api/v1/tickets/{id}/result``."""

    columns = serializers.ListField(child=serializers.CharField(), help_text="column names")
    column_types = ColumnTypeSerializer(
        many=True,
        allow_null=True,
        help_text="per column, in the order of `columns`: type, OID, JSON type and mask; null for a result "
        "stored before types were recorded (its values are all strings)",
    )
    rows = serializers.ListField(child=serializers.ListField(child=serializers.JSONField()), help_text=ROWS_HELP)
    rowcount = serializers.IntegerField()
    truncated = serializers.BooleanField(help_text="more rows existed than RESULT_ROW_CAP; only the first are kept")


class QueryAnswerSerializer(serializers.Serializer[Any]):
    """``POST /api/v1/queries``: executed (200), pending (202), denied (403), invalid or failed (400)."""

    status = serializers.ChoiceField(choices=["executed", "pending", "denied", "invalid", "failed"])
    columns = serializers.ListField(child=serializers.CharField(), required=False, help_text="column names")
    column_types = ColumnTypeSerializer(
        many=True, required=False, help_text="per column, in the order of `columns`: type, OID, JSON type and mask"
    )
    rows = serializers.ListField(
        child=serializers.ListField(child=serializers.JSONField()), required=False, help_text=ROWS_HELP
    )
    rowcount = serializers.IntegerField(required=False)
    truncated = serializers.BooleanField(required=False)
    ticket = TicketLinkSerializer(required=False)
    reasons = serializers.ListField(child=serializers.CharField(), required=False)
    error = serializers.CharField(required=False)
