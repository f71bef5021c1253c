"""``POST /api/v1/queries``: the HTTP front of the policy pipeline.

The web process authenticates and validates, then hands the statement to the gateway (gateway.rpc), which holds
the read-only credential and runs the pipeline. Nothing here touches the target database.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals.notify import redis_client
from approvals.result_schema import QueryAnswerSerializer
from approvals.serializers import QueryRequestSerializer
from gateway.rpc import GatewayUnavailable, call_gateway
from identity.authentication import principal_of, request_context
from phigate import faults, outages

_HTTP_STATUS = {"executed": 200, "pending": 202, "denied": 403, "invalid": 400, "failed": 400}


class QueryView(APIView):
    @extend_schema(
        request=QueryRequestSerializer,
        responses={
            200: QueryAnswerSerializer,
            202: QueryAnswerSerializer,
            400: QueryAnswerSerializer,
            403: QueryAnswerSerializer,
        },
        summary="Submit a statement: safe reads run at once (masked), risky ones become tickets.",
    )
    def post(self, request: Request) -> Response:
        body = QueryRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            outcome = call_gateway(
                redis_client(),
                principal=principal_of(request),
                datasource=body.validated_data["datasource"],
                sql=body.validated_data["sql"],
                reason=body.validated_data["reason"],
                context=request_context(request),
                timeout_seconds=settings.READ_STATEMENT_TIMEOUT_MS / 1000 + 10,
            )
        except GatewayUnavailable as exc:  # no reply by the deadline (a Redis outage is phigate.outages' 503)
            unanswered = {"status": "failed", "error": str(exc), "dependency": faults.GATEWAY}
            return Response(unanswered, status=503, headers=outages.retry_after())
        payload: dict[str, object] = {"status": outcome.status}
        if outcome.status == "executed":
            payload.update(
                columns=outcome.columns,
                column_types=outcome.column_types,
                rows=outcome.rows,
                rowcount=outcome.rowcount,
                truncated=outcome.truncated,
            )
        elif outcome.status == "pending":
            payload.update(ticket={"id": outcome.ticket_id, "url": outcome.ticket_url}, reasons=outcome.reasons)
        elif outcome.status == "denied":
            payload.update(reasons=outcome.reasons)
        else:
            payload.update(error=outcome.error)
        return Response(payload, status=_HTTP_STATUS[outcome.status])
