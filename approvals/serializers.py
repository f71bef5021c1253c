"""JSON shapes of the contract (CONTRACT.md section 5)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from approvals.models import Decision, Review, Ticket
from approvals.params import shown_params


class ReviewSerializer(serializers.ModelSerializer[Review]):
    reviewer = serializers.CharField(source="reviewer.username")
    at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Review
        fields = ["reviewer", "decision", "comment", "at"]


class RequestedBySerializer(serializers.Serializer[Ticket]):
    agent = serializers.SerializerMethodField()
    owner = serializers.CharField(source="owner.username")

    def get_agent(self, ticket: Ticket) -> str | None:
        return ticket.agent.name if ticket.agent else None


class ParamSerializer(serializers.Serializer[Any]):
    """One bind parameter of a statement held on the wire, as its reviewers see it (approvals.params)."""

    position = serializers.IntegerField(help_text="1 for $1")
    type = serializers.CharField(help_text="PostgreSQL's name for the type; resolved by PostgreSQL when undeclared")
    type_declared = serializers.BooleanField(help_text="false: the client left the type to PostgreSQL")
    format = serializers.ChoiceField(choices=["text", "binary"])
    null = serializers.BooleanField()
    value = serializers.CharField(allow_null=True, help_text="the text form; null for NULL or undecodable bytes")
    decoded = serializers.BooleanField()
    hex = serializers.CharField(allow_null=True, help_text="the exact bytes sent, for binary values")


class TicketSerializer(serializers.ModelSerializer[Ticket]):
    datasource = serializers.CharField(source="datasource.name")
    requested_by = RequestedBySerializer(source="*")
    reviews = ReviewSerializer(many=True)
    url = serializers.CharField()
    approvals = serializers.IntegerField(source="approvals_count")
    params = serializers.SerializerMethodField(
        help_text="The bind parameters the statement runs with (null for plain SQL text): an approval covers these "
        "exact values, which sql_sha256 includes."
    )

    @extend_schema_field(ParamSerializer(many=True, allow_null=True))
    def get_params(self, ticket: Ticket) -> list[dict[str, Any]] | None:
        params = ticket.statement_params
        return None if params is None else [shown.as_json() for shown in shown_params(params, ticket.param_types)]

    class Meta:
        model = Ticket
        fields = [
            "id",
            "url",
            "status",
            "datasource",
            "sql",
            "params",
            "sql_sha256",
            "risk",
            "reasons",
            "requested_by",
            "reason",
            "reviews",
            "approvals",
            "approvals_required",
            "created_at",
            "expires_at",
            "decided_at",
            "approval_valid_until",
            "executed_at",
            "rowcount",
            "error",
        ]


class TicketLinkSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    url = serializers.CharField()


class QueryRequestSerializer(serializers.Serializer[Any]):
    datasource = serializers.CharField(max_length=63)
    sql = serializers.CharField(max_length=1_000_000, trim_whitespace=False)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class QueryResultSerializer(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=["executed", "pending", "denied", "invalid", "failed"])
    columns = serializers.ListField(child=serializers.CharField(), required=False)
    rows = serializers.ListField(
        child=serializers.ListField(child=serializers.CharField(allow_null=True)), required=False
    )
    rowcount = serializers.IntegerField(required=False)
    truncated = serializers.BooleanField(required=False)
    ticket = TicketLinkSerializer(required=False)
    reasons = serializers.ListField(child=serializers.CharField(), required=False)
    error = serializers.CharField(required=False)


class ResultSerializer(serializers.Serializer[Any]):
    columns = serializers.ListField(child=serializers.CharField())
    rows = serializers.ListField(child=serializers.ListField(child=serializers.CharField(allow_null=True)))
    rowcount = serializers.IntegerField()
    truncated = serializers.BooleanField()


class ReviewRequestSerializer(serializers.Serializer[Any]):
    decision = serializers.ChoiceField(choices=Decision.choices)
    comment = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")
