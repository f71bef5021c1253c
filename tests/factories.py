"""Plain factories: every call makes new, uniquely named objects, so tests never depend on each other."""

from __future__ import annotations

import itertools
from typing import Any

from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from identity.models import Agent, ApiToken
from identity.roles import Role, grant_role

_serial = itertools.count(1)


def make_user(*roles: Role, name: str = "user") -> Any:
    user = get_user_model().objects.create_user(username=f"{name}{next(_serial)}", password="correct horse battery")
    for role in roles:
        grant_role(user, role)
    return user


def make_group(name: str) -> Any:
    """An auth group named after its role in the test, unique across the whole run (groups are never rolled back)."""
    from django.contrib.auth.models import Group

    return Group.objects.create(name=f"{name}-{next(_serial)}")


def scratch_row(label: str = "a row of its own") -> int:
    """A new row in the target's `scratch` table, for a test that deletes or changes one: rows 1-50 are shared by
    tests that expect them untouched (the target is never rolled back)."""
    import psycopg

    from tests import environment

    row_id = 100_000 + next(_serial)
    with psycopg.connect(environment.db_url(environment.TARGET_DB)) as conn:
        conn.execute("INSERT INTO scratch (id, label) VALUES (%s, %s)", (row_id, label))
    return row_id


def make_agent(owner: Any) -> tuple[Agent, str]:
    return Agent.issue(owner=owner, name=f"agent-{next(_serial)}")


def api_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def user_client(user: Any) -> APIClient:
    _, token = ApiToken.issue(user=user)
    return api_client(token)


def agent_client(owner: Any) -> tuple[Agent, APIClient]:
    agent, token = make_agent(owner)
    return agent, api_client(token)


def mark_classified(*tables: str, schema: str = "public") -> None:
    """Classify relations a test created outside the gateway, as a reviewer would: agents may read them."""
    from policy.models import ClassificationSource, ClassifiedRelation, DataSource
    from tests import environment

    datasource = DataSource.objects.get(name=environment.DATASOURCE)
    for table in tables:
        ClassifiedRelation.objects.get_or_create(
            datasource=datasource, schema_name=schema, table_name=table, defaults={"how": ClassificationSource.MANUAL}
        )
