"""The OpenAPI 3 schema documents the contract's endpoints."""

from __future__ import annotations

import yaml
from rest_framework.test import APIClient


def test_schema_lists_the_contract_endpoints() -> None:
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    assert {
        "/api/v1/queries",
        "/api/v1/tickets/{ticket_id}",
        "/api/v1/tickets/{ticket_id}/wait",
        "/api/v1/tickets/{ticket_id}/result",
        "/api/v1/tickets/{ticket_id}/reviews",
        "/api/v1/tickets/{ticket_id}/cancel",
        "/api/v1/audit/events",
    } <= paths
    assert "post" in schema["paths"]["/api/v1/queries"]
