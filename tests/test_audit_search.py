"""GET /api/v1/audit/events: compliance officers only; filters; every search is itself audited."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent, EventKind
from identity.roles import Role
from tests.factories import agent_client, make_user, user_client

pytestmark = pytest.mark.usefixtures("services")


def test_only_compliance_officers_can_search() -> None:
    owner = make_user(Role.ENGINEER)
    _, agent_api = agent_client(owner)
    assert agent_api.get("/api/v1/audit/events").status_code == 403
    assert user_client(owner).get("/api/v1/audit/events").status_code == 403
    assert user_client(make_user(Role.REVIEWER)).get("/api/v1/audit/events").status_code == 403
    assert user_client(make_user()).get("/api/v1/audit/events").status_code == 403
    assert user_client(make_user(Role.COMPLIANCE)).get("/api/v1/audit/events").status_code == 200


def test_filters_and_search_is_audited() -> None:
    owner = make_user(Role.ENGINEER)
    agent, agent_api = agent_client(owner)
    marker = f"marker_{agent.pk}"
    assert (
        agent_api.post(
            "/api/v1/queries", {"datasource": "clinic", "sql": f"SELECT 1 AS {marker}"}, format="json"
        ).status_code
        == 200
    )
    officer = make_user(Role.COMPLIANCE)
    officer_api = user_client(officer)
    body = officer_api.get("/api/v1/audit/events", {"q": marker, "actor": owner.username}).json()
    kinds = {event["kind"] for event in body["results"]}
    assert kinds == {EventKind.QUERY_SUBMITTED}
    assert all(event["agent_name"] == agent.name and event["actor_name"] == owner.username for event in body["results"])
    by_kind = officer_api.get("/api/v1/audit/events", {"actor": owner.username, "kind": "query.executed"}).json()
    assert [event["kind"] for event in by_kind["results"]] == ["query.executed"]
    none = officer_api.get("/api/v1/audit/events", {"actor": owner.username, "since": "2999-01-01"}).json()
    assert none["results"] == []
    assert officer_api.get("/api/v1/audit/events", {"since": "not-a-date"}).status_code == 400
    searched = AuditEvent.objects.filter(kind=EventKind.AUDIT_SEARCHED, actor=officer)
    assert searched.count() == 4
    assert searched.first().details["filters"]  # type: ignore[union-attr]


def test_failed_sign_ins_name_no_secret() -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer pga_leaked-looking-token-value")
    assert client.get("/api/v1/tickets/1").status_code == 401
    event = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED).order_by("-id").first()
    assert event is not None and event.actor is None
    assert "leaked-looking-token-value" not in str(event.details) + event.summary + event.statement


def test_full_text_and_filters_on_table_phi_type_decision_agent_session_and_ticket() -> None:
    owner = make_user(Role.ENGINEER)
    agent, agent_api = agent_client(owner)
    word = f"probe{agent.pk}"

    def submit(sql: str) -> dict:  # type: ignore[type-arg]
        return agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json").json()

    assert submit(f"SELECT id, ssn AS {word} FROM patients WHERE id = 1")["status"] == "executed"
    assert submit(f"COPY (SELECT 1 AS {word}) TO PROGRAM 'true'")["status"] == "denied"
    ticket_id = submit(f"DELETE FROM scratch WHERE id = 0 AND label = '{word}'")["ticket"]["id"]

    officer_api = user_client(make_user(Role.COMPLIANCE))

    def found(**filters: str) -> list[tuple[str, str]]:
        response = officer_api.get("/api/v1/audit/events", {"agent": agent.name, **filters})
        assert response.status_code == 200, response.content
        return sorted((event["kind"], event["outcome"]) for event in response.json()["results"])

    assert found(q=word) == [("query.denied", "denied"), ("query.submitted", "success"), ("ticket.created", "held")]
    assert found(q=f"{word} -program") == [("query.submitted", "success"), ("ticket.created", "held")]
    assert found(q=f'"{word} from patients"') == [("query.submitted", "success")]  # a phrase, in order
    assert found(table="patients") == [("query.submitted", "success")]
    assert found(table="public.scratch") == [("ticket.created", "held")]
    assert found(phi_type="ssn") == [("query.executed", "success")]
    assert found(phi_type="email") == []
    assert found(decision="denied") == [("query.denied", "denied")]
    assert found(decision="held") == [("ticket.created", "held")]
    assert [kind for kind, _ in found(ticket=str(ticket_id))] == ["ticket.created"]
    assert officer_api.get("/api/v1/audit/events", {"decision": "maybe"}).status_code == 400
    assert officer_api.get("/api/v1/audit/events", {"ticket": "x"}).status_code == 400
    session_day = f"http:agent-{agent.pk}:"
    sessions = set(AuditEvent.objects.filter(agent_name=agent.name).values_list("session_id", flat=True))
    assert len(sessions) == 1 and next(iter(sessions)).startswith(session_day)
    assert {kind for kind, _ in found(session=next(iter(sessions)))} == {
        "auth.succeeded",
        "query.submitted",
        "query.executed",
        "query.denied",
        "ticket.created",
    }

    agent_api.credentials(
        HTTP_AUTHORIZATION=agent_api._credentials["HTTP_AUTHORIZATION"], HTTP_X_PHIGATE_SESSION="task-42"
    )
    submit("SELECT 1")
    assert [kind for kind, _ in found(session="http:task-42")] == [
        "auth.succeeded",
        "query.executed",
        "query.submitted",
    ]


def test_pages_follow_each_other_newest_first_without_gaps_or_repeats() -> None:
    owner = make_user(Role.ENGINEER)
    agent, agent_api = agent_client(owner)
    for n in range(5):
        agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": f"SELECT {n} AS paging"}, format="json")
    officer_api = user_client(make_user(Role.COMPLIANCE))
    expected = list(
        AuditEvent.objects.filter(agent_name=agent.name, kind=EventKind.QUERY_SUBMITTED)
        .order_by("-id")
        .values_list("id", flat=True)
    )
    assert len(expected) == 5
    seen: list[int] = []
    url: str | None = "/api/v1/audit/events"
    params: dict[str, str] | None = {"agent": agent.name, "kind": "query.submitted", "page_size": "2"}
    while url:
        body = officer_api.get(url, params).json()
        seen.extend(event["id"] for event in body["results"])
        url, params = body["next"], None
    assert seen == expected
    assert officer_api.get("/api/v1/audit/events", {"page_size": "0"}).status_code == 400
    assert officer_api.get("/api/v1/audit/events", {"before": "x"}).status_code == 400


@pytest.mark.parametrize(
    "filters",
    [
        {"q": "select"},
        {"q": "no-such-word-anywhere"},
        {"kind": "query.executed"},
        {"decision": "denied"},
        {"table": "patients"},
        {"phi_type": "ssn"},
    ],
)
def test_both_plans_find_the_same_newest_events(filters: dict[str, str]) -> None:
    """The ordered walk and the index plan (the fallback) must agree; they differ only in speed."""
    from audit.api import search
    from audit.search_paging import newest_ids

    queryset = search(filters)
    assert newest_ids(queryset, 50, walk_budget_ms=60_000) == newest_ids(queryset, 50, walk_budget_ms=None)


def test_the_callers_own_searches_are_hidden_unless_asked_for() -> None:
    """As on the search page: an officer's own look-ups would crowd out what they are looking for."""
    officer = make_user(Role.COMPLIANCE)
    officer_api = user_client(officer)
    mine = {"kind": "audit.searched", "actor": officer.username}
    for _ in range(3):
        assert officer_api.get("/api/v1/audit/events", mine).json()["results"] == []
    shown = officer_api.get("/api/v1/audit/events", {**mine, "own_searches": "shown"}).json()
    assert len(shown["results"]) == 4  # each search is recorded before it runs
    other = user_client(make_user(Role.COMPLIANCE)).get("/api/v1/audit/events", mine).json()
    assert len(other["results"]) == 4  # another officer sees them all
    assert officer_api.get("/api/v1/audit/events", {"own_searches": "yes"}).status_code == 400


def test_the_callers_own_patient_look_ups_are_hidden_unless_asked_for() -> None:
    officer = make_user(Role.COMPLIANCE)
    officer_api = user_client(officer)
    looked_up = officer_api.post(
        "/api/v1/audit/disclosures", {"datasource": "clinic", "key_name": "patient_id", "key": "7"}, format="json"
    )
    assert looked_up.status_code == 200, looked_up.content
    mine = {"kind": "audit.disclosures_listed", "actor": officer.username}
    assert officer_api.get("/api/v1/audit/events", mine).json()["results"] == []
    assert len(officer_api.get("/api/v1/audit/events", {**mine, "own_searches": "shown"}).json()["results"]) == 1
    assert len(user_client(make_user(Role.COMPLIANCE)).get("/api/v1/audit/events", mine).json()["results"]) == 1


def test_pages_go_both_ways_keeping_the_filters_while_events_arrive() -> None:
    owner = make_user(Role.ENGINEER)
    agent, agent_api = agent_client(owner)

    def submit(n: int) -> None:
        sql = f"SELECT {n} AS paging"
        assert agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": sql}, format="json").status_code == 200

    for n in range(5):
        submit(n)
    officer_api = user_client(make_user(Role.COMPLIANCE))
    ids = list(
        AuditEvent.objects.filter(agent_name=agent.name, kind=EventKind.QUERY_SUBMITTED)
        .order_by("-id")
        .values_list("id", flat=True)
    )
    first = officer_api.get(
        "/api/v1/audit/events", {"agent": agent.name, "kind": "query.submitted", "page_size": "2"}
    ).json()
    assert [event["id"] for event in first["results"]] == ids[:2] and first["previous"] is None
    second = officer_api.get(first["next"]).json()
    last = officer_api.get(second["next"]).json()
    assert [event["id"] for event in last["results"]] == ids[4:] and last["next"] is None
    submit(5)  # a newer event arrives while the officer reads: going back neither skips nor repeats one
    back = officer_api.get(last["previous"]).json()
    assert "kind=query.submitted" in last["previous"] and "page_size=2" in last["previous"]
    assert "before=" not in last["previous"]
    assert [event["id"] for event in back["results"]] == ids[2:4]
    assert back["previous"] is not None and back["next"] is not None
    assert [event["id"] for event in officer_api.get(back["next"]).json()["results"]] == ids[4:]
    front = officer_api.get(back["previous"]).json()
    assert [event["id"] for event in front["results"]] == ids[:2] and front["previous"] is not None
    newest = officer_api.get(front["previous"]).json()  # less than a page is newer than ids[0]: the newest page
    arrived = AuditEvent.objects.filter(agent_name=agent.name, kind=EventKind.QUERY_SUBMITTED).latest("id").pk
    assert [event["id"] for event in newest["results"]] == [arrived, ids[0]] and newest["previous"] is None
    assert officer_api.get("/api/v1/audit/events", {"after": "x"}).status_code == 400
    assert officer_api.get("/api/v1/audit/events", {"after": "1", "before": "9"}).status_code == 400


def test_the_schema_documents_paging_and_own_searches() -> None:
    import yaml
    from rest_framework.test import APIClient

    schema = yaml.safe_load(APIClient().get("/api/schema/").content)
    operation = schema["paths"]["/api/v1/audit/events"]["get"]
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"own_searches", "before", "after", "page_size", "kind"} <= names
    body = operation["responses"]["200"]["content"]["application/json"]["schema"]
    if "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert {"next", "previous", "results"} <= set(body["properties"])
