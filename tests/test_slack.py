"""Slack approvals against real peers: a local HTTP receiver plays Slack's Web API and response_url, the real
gateway opens tickets, the real Celery worker sends the messages (with retries) and runs approved statements,
and the interactions endpoint is driven with correctly and incorrectly signed payloads.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import psycopg
import pytest
import time_machine
from django.conf import settings
from django.db import IntegrityError, transaction
from django.test import Client, override_settings
from django.utils import timezone

from approvals.models import Review, Status, Ticket
from approvals.slack import linking, notifications
from approvals.slack.client import SlackUnavailable
from approvals.slack.models import SlackChannel, SlackLink, SlackMessage, VerifiedBy
from approvals.slack.tasks import sync_ticket_message_task
from audit.models import AuditEvent, EventKind, Outcome
from identity.roles import Role
from policy.models import DataSource
from tests import environment
from tests.factories import agent_client, make_agent, make_user, user_client
from tests.services import free_port, wait_until

pytestmark = pytest.mark.usefixtures("services")

INTERACTIONS = "/integrations/slack/interactions"
TEAM = "T0TEST"
CHANNEL = "C0CLINIC"
# Everything secret this module sends (signatures, link tokens): none may ever appear in an audit event.
SENT_SECRETS: list[str] = []
_serial = itertools.count(1)


# --- the receiver: Slack's Web API and response_url, on 127.0.0.1 -------------------------------------------------


@dataclass
class Call:
    method: str  # Web API method ("chat.postMessage"), or "response_url"
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    failed: bool


@dataclass
class Receiver:
    port: int
    calls: list[Call] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)  # users.info answers by user id
    failures: dict[str, list[str]] = field(default_factory=dict)  # method -> upcoming answers: "500" or "drop"
    lock: threading.Lock = field(default_factory=threading.Lock)
    ts: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fail(self, method: str, how: str, times: int) -> None:
        with self.lock:
            self.failures[method] = [how] * times

    def take(self, method: str) -> str | None:
        with self.lock:
            pending = self.failures.get(method) or []
            return pending.pop(0) if pending else None

    def record(self, call: Call) -> None:
        with self.lock:
            self.calls.append(call)

    def find(self, predicate: Callable[[Call], bool]) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if predicate(call)]

    def wait(self, predicate: Callable[[Call], bool], what: str, timeout: float = 30) -> Call:
        return wait_until(lambda: next(iter(self.find(predicate)), None), timeout, what=what)  # type: ignore[no-any-return]

    def hooks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{secrets.token_hex(8)}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "json" in (self.headers.get("Content-Type") or ""):
            body = json.loads(raw or b"{}")
        else:
            body = {key: values[0] for key, values in parse_qs(raw.decode()).items()}
        path = urlsplit(self.path).path
        method = path.removeprefix("/api/") if path.startswith("/api/") else "response_url"
        receiver = self.server.receiver
        failure = receiver.take(method)
        receiver.record(Call(method, path, dict(self.headers.items()), body, failed=failure is not None))
        if failure == "drop":
            self.close_connection = True  # say nothing and hang up: what an outage looks like to the client
            return
        if failure == "500":
            return self._answer(500, {"ok": False, "error": "internal_error"})
        if method == "chat.postMessage":
            return self._answer(
                200, {"ok": True, "channel": body["channel"], "ts": f"1700000000.{next(receiver.ts):06d}"}
            )
        if method == "chat.update":
            return self._answer(200, {"ok": True, "channel": body["channel"], "ts": body["ts"]})
        if method == "users.info":
            profile = receiver.profiles.get(body.get("user", ""))
            return self._answer(
                200, {"ok": True, "user": profile} if profile else {"ok": False, "error": "user_not_found"}
            )
        return self._answer(200, {"ok": True})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """Listens where SLACK_API_URL points for every process of this run (tests/environment.py)."""
    server = _Server(("127.0.0.1", environment.SLACK_RECEIVER_PORT), _Handler)
    server.receiver = Receiver(port=environment.SLACK_RECEIVER_PORT)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.receiver
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def clinic_channel(services, receiver: Receiver) -> Iterator[SlackChannel]:  # type: ignore[no-untyped-def]
    """Tickets on "clinic" go to CHANNEL while this module runs; other modules' tickets post nothing."""
    channel = SlackChannel.objects.create(
        datasource=DataSource.objects.get(name=environment.DATASOURCE), channel=CHANNEL
    )
    yield channel
    channel.delete()


@pytest.fixture
def scratch_datasource() -> Iterator[DataSource]:
    """A data source with no target, for tickets made directly in the database (never executed)."""
    datasource = DataSource.objects.create(name=f"slackonly{next(_serial)}")
    yield datasource
    Ticket.objects.filter(datasource=datasource).delete()
    datasource.delete()


def orm_ticket(datasource: DataSource, sql: str = "DELETE FROM scratch WHERE id = 0") -> Ticket:
    return Ticket.objects.create(
        datasource=datasource,
        owner=make_user(Role.ENGINEER),
        sql=sql,
        sql_sha256=hashlib.sha256(sql.encode()).hexdigest(),
        risk="high",
        reasons=["writes need a review"],
        expires_at=timezone.now() + timedelta(hours=1),
    )


# --- helpers --------------------------------------------------------------------------------------------------------


def slack_user_id() -> str:
    return f"U{next(_serial):03d}{secrets.token_hex(4).upper()}"


def linked(*roles: Role, name: str = "user") -> tuple[Any, str]:
    user = make_user(*roles, name=name)
    slack_id = slack_user_id()
    SlackLink.objects.create(user=user, slack_user_id=slack_id, slack_team_id=TEAM, verified_by=VerifiedBy.EXPLICIT)
    return user, slack_id


def submit(agent_api, sql: str) -> Ticket:  # type: ignore[no-untyped-def]
    response = agent_api.post("/api/v1/queries", {"datasource": "clinic", "sql": sql, "reason": "slack"}, format="json")
    assert response.status_code == 202, response.json()
    return Ticket.objects.get(pk=response.json()["ticket"]["id"])


def held_ticket(approvals_required: int = 1, owner: Any = None) -> Ticket:
    _, agent_api = agent_client(owner or make_user(Role.ENGINEER, name="owner"))
    ticket = submit(agent_api, f"DELETE FROM scratch WHERE id = {-next(_serial)}")
    if approvals_required != 1:
        Ticket.objects.filter(pk=ticket.pk).update(approvals_required=approvals_required)
    return ticket


def click_body(
    slack_id: str, ticket: Ticket, response_url: str, action: str = "phigate.approve", team: str = TEAM
) -> bytes:
    payload = {
        "type": "block_actions",
        "user": {"id": slack_id, "team_id": team},
        "team": {"id": team},
        "channel": {"id": CHANNEL},
        "message": {"ts": "1700000000.000001"},
        "response_url": response_url,
        "actions": [{"action_id": action, "value": f"{ticket.pk}:{ticket.sql_sha256}", "type": "button"}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def slack_signature(body: bytes, timestamp: str, secret: str | None = None) -> str:
    key = (secret or settings.SLACK_SIGNING_SECRET).encode()
    return "v0=" + hmac.new(key, f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()


def post(body: bytes, timestamp: str | None = None, signature: str | None = None):  # type: ignore[no-untyped-def]
    timestamp = timestamp if timestamp is not None else str(int(time.time()))
    signature = signature if signature is not None else slack_signature(body, timestamp)
    SENT_SECRETS.append(signature)
    return Client().post(
        INTERACTIONS,
        data=body,
        content_type="application/x-www-form-urlencoded",
        HTTP_X_SLACK_REQUEST_TIMESTAMP=timestamp,
        HTTP_X_SLACK_SIGNATURE=signature,
    )


def click(slack_id: str, ticket: Ticket, receiver: Receiver, action: str = "phigate.approve") -> str:
    """A correctly signed click; returns the response_url its answer (if any) goes to."""
    response_url = receiver.hooks_url()
    response = post(click_body(slack_id, ticket, response_url, action))
    assert response.status_code == 200, response.content
    return response_url


def reply_to(receiver: Receiver, response_url: str) -> str:
    call = receiver.wait(lambda c: c.method == "response_url" and c.path == urlsplit(response_url).path, "reply")
    assert "Authorization" not in call.headers  # the response_url is the credential; the bot token stays home
    assert call.body["response_type"] == "ephemeral"
    return str(call.body["text"])


def posted(receiver: Receiver, ticket: Ticket) -> Callable[[Call], bool]:
    return lambda c: c.method == "chat.postMessage" and str(c.body.get("text", "")).startswith(f"Ticket #{ticket.pk} ")


def updated(receiver: Receiver, ticket: Ticket, needle: str) -> Callable[[Call], bool]:
    return lambda c: (
        c.method == "chat.update"
        and not c.failed
        and str(c.body.get("text", "")).startswith(f"Ticket #{ticket.pk} ")
        and needle in json.dumps(c.body["blocks"], ensure_ascii=False)
    )


def unchanged(ticket: Ticket) -> None:
    assert not Review.objects.filter(ticket=ticket).exists()
    assert Ticket.objects.get(pk=ticket.pk).status == Status.PENDING


def slack_events(**filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(front="slack", **filters).order_by("id"))


# --- the message ----------------------------------------------------------------------------------------------------


def test_a_held_statement_posts_one_message_with_buttons_to_the_datasource_channel(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    agent, agent_api = agent_client(make_user(Role.ENGINEER, name="owner"))
    ticket = submit(agent_api, "DELETE FROM scratch WHERE id = 0")

    call = receiver.wait(posted(receiver, ticket), "the ticket's message")
    assert call.body["channel"] == CHANNEL
    assert call.headers["Authorization"] == f"Bearer {settings.SLACK_BOT_TOKEN}"
    blocks = json.dumps(call.body["blocks"])
    assert "```DELETE FROM scratch WHERE id = 0```" in blocks
    assert f"{agent.name} on behalf of {agent.owner.username}" in blocks
    assert "waiting for review: 0 of 1 approvals" in blocks
    actions = next(block for block in call.body["blocks"] if block["type"] == "actions")
    buttons = {element["action_id"]: element for element in actions["elements"]}
    assert set(buttons) == {"phigate.approve", "phigate.reject"}
    assert {button["value"] for button in buttons.values()} == {f"{ticket.pk}:{ticket.sql_sha256}"}
    assert (
        wait_until(lambda: SlackMessage.objects.filter(ticket=ticket).first(), 10, what="message saved").channel
        == CHANNEL
    )
    time.sleep(1.0)
    assert len(receiver.find(posted(receiver, ticket))) == 1


def held_on_the_wire(services, sql: str, params: tuple[Any, ...]) -> Ticket:  # type: ignore[no-untyped-def]
    agent, token = make_agent(make_user(Role.ENGINEER, name="owner"))
    dsn = f"postgresql://{agent.name}:{quote(token, safe='')}@127.0.0.1:{services.gateway_port}/clinic"
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as raised:
        conn.execute(sql, params)
    assert raised.value.sqlstate == "HA001"
    return Ticket.objects.get(pk=int(str(raised.value.diag.message_primary).rsplit(" ", 1)[1]))


def test_a_wire_statement_shows_its_parameters_and_approve_needs_all_shown(services, clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_on_the_wire(services, "UPDATE prescriptions SET dose = %s WHERE id = %b", ("3 mg <@U0ALL>", 921))
    call = receiver.wait(posted(receiver, ticket), "the ticket's message")
    params = next(block for block in call.body["blocks"] if block.get("block_id") == "phigate.params")["text"]["text"]
    assert "`$1` (text, inferred, text) = `3 mg &lt;@U0ALL&gt;`" in params  # escaped: no ping
    assert "`$2` (smallint, binary) = `921` · bytes `0399`" in params
    actions = next(block for block in call.body["blocks"] if block["type"] == "actions")
    assert {element["action_id"] for element in actions["elements"]} == {"phigate.approve", "phigate.reject"}
    approve = next(element for element in actions["elements"] if element["action_id"] == "phigate.approve")
    assert "with the parameters shown" in approve["confirm"]["text"]["text"]

    # A value Slack cannot show exactly (a backquote, a newline) is not approvable from Slack, only in phigate.
    hidden = held_on_the_wire(services, "UPDATE prescriptions SET dose = %s WHERE id = %b", ("3 mg`\nnightly", 922))
    call = receiver.wait(posted(receiver, hidden), "the second ticket's message")
    blocks = json.dumps(call.body["blocks"])
    assert "characters Slack cannot show exactly" in blocks and "approve it in phigate" in blocks
    actions = next(block for block in call.body["blocks"] if block["type"] == "actions")
    assert [element["action_id"] for element in actions["elements"]] == ["phigate.reject"]


def test_default_channel_and_per_datasource_bot(receiver, scratch_datasource, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The plain function, in this process: the default channel applies without a SlackChannel row, and a data
    source's own bot token comes from the environment variable it names (never from the database)."""
    datasource = scratch_datasource
    ticket = orm_ticket(datasource)
    assert notifications.sync_ticket_message(ticket.pk) == "no channel"
    with override_settings(SLACK_DEFAULT_CHANNEL="C0DEFAULT"):
        assert notifications.sync_ticket_message(ticket.pk) == "posted"
        assert notifications.sync_ticket_message(ticket.pk) == "unchanged"
    assert receiver.wait(posted(receiver, ticket), "default channel post").body["channel"] == "C0DEFAULT"

    other = orm_ticket(datasource, "DELETE FROM scratch WHERE id = 1")
    SlackChannel.objects.create(datasource=datasource, channel="C0OWNBOT", bot_token_env="SLACK_BOT_TOKEN_OWNBOT")
    monkeypatch.setenv("SLACK_BOT_TOKEN_OWNBOT", "xoxb-own-bot")
    assert notifications.sync_ticket_message(other.pk) == "posted"
    call = receiver.wait(posted(receiver, other), "own bot post")
    assert (call.body["channel"], call.headers["Authorization"]) == ("C0OWNBOT", "Bearer xoxb-own-bot")
    with pytest.raises(IntegrityError), transaction.atomic():  # a row can never name another secret
        SlackChannel.objects.filter(datasource=datasource).update(bot_token_env="DJANGO_SECRET_KEY")


# --- reviewing from Slack -------------------------------------------------------------------------------------------


def test_linked_reviewers_approve_in_slack_and_the_message_follows_to_execution(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    owner, owner_slack = linked(Role.ENGINEER, name="owner")
    _, agent_api = agent_client(owner)
    ticket = submit(agent_api, "UPDATE scratch SET label = label")  # no WHERE: the data source asks for two
    assert ticket.approvals_required == 2
    receiver.wait(posted(receiver, ticket), "the ticket's message")
    alice, alice_slack = linked(Role.REVIEWER, name="alice")
    dave, dave_slack = linked(Role.REVIEWER, name="dave")

    click(alice_slack, ticket, receiver)
    assert Ticket.objects.get(pk=ticket.pk).approvals_count == 1
    assert Ticket.objects.get(pk=ticket.pk).status == Status.PENDING
    receiver.wait(updated(receiver, ticket, f"1 of 2 approvals — approved by {alice.username}"), "1 of 2")

    click(dave_slack, ticket, receiver)
    assert Ticket.objects.get(pk=ticket.pk).status in {Status.APPROVED, Status.EXECUTING, Status.EXECUTED}
    done = wait_until(
        lambda: Ticket.objects.filter(pk=ticket.pk, status=Status.EXECUTED).first(), 60, what="the worker to run it"
    )
    rows = f"{done.rowcount} row{'' if done.rowcount == 1 else 's'}"
    receiver.wait(updated(receiver, ticket, f"executed: {rows}"), "executed update")
    final = receiver.find(updated(receiver, ticket, "executed"))[-1]
    assert not any(block["type"] == "actions" for block in final.body["blocks"])  # no buttons once decided
    notice = receiver.wait(
        lambda c: c.method == "chat.postMessage" and c.body["channel"] == owner_slack and "executed" in c.body["text"],
        "the owner's notice",
    )
    assert f"#{ticket.pk}" in notice.body["text"]

    assert set(Review.objects.filter(ticket=ticket).values_list("reviewer__username", "front")) == {
        (alice.username, "slack"),
        (dave.username, "slack"),
    }
    reviewed = AuditEvent.objects.filter(kind=EventKind.TICKET_REVIEWED, ticket_id=ticket.pk)
    assert set(reviewed.values_list("front", flat=True)) == {"slack"}
    interactions = slack_events(kind=EventKind.AUTH_SUCCEEDED, ticket_id=ticket.pk)
    assert [event.actor_id for event in interactions] == [alice.pk, dave.pk]
    assert all(
        event.session_id == f"slack:{TEAM}:{slack}"
        for event, slack in zip(interactions, [alice_slack, dave_slack], strict=True)
    )


def test_reject_shows_who_rejected(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    receiver.wait(posted(receiver, ticket), "the ticket's message")
    bob, bob_slack = linked(Role.REVIEWER, name="bob")
    click(bob_slack, ticket, receiver, action="phigate.reject")
    assert Ticket.objects.get(pk=ticket.pk).status == Status.REJECTED
    receiver.wait(updated(receiver, ticket, f"rejected by {bob.username}"), "rejected update")


@pytest.mark.parametrize(
    ("who", "roles", "refusal"),
    [
        ("outsider", (), "only users with the reviewer role"),
        ("compliance", (Role.COMPLIANCE,), "only users with the reviewer role"),
        ("engineer", (Role.ENGINEER,), "only users with the reviewer role"),
    ],
)
def test_linked_non_reviewers_are_refused(clinic_channel, receiver, who, roles, refusal) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    user, slack_id = linked(*roles, name=who)
    answer = reply_to(receiver, click(slack_id, ticket, receiver))
    assert refusal in answer and answer.startswith("Not recorded")
    unchanged(ticket)
    refused = AuditEvent.objects.get(kind=EventKind.REVIEW_REFUSED, ticket_id=ticket.pk)
    assert (refused.actor_id, refused.front) == (user.pk, "slack")


def test_the_owner_cannot_approve_their_own_agents_ticket(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    owner, owner_slack = linked(Role.ENGINEER, Role.REVIEWER, name="owner")  # a reviewer: the tricky case
    ticket = held_ticket(owner=owner)
    answer = reply_to(receiver, click(owner_slack, ticket, receiver))
    assert "cannot review" in answer
    unchanged(ticket)
    assert AuditEvent.objects.filter(kind=EventKind.REVIEW_REFUSED, ticket_id=ticket.pk, actor=owner).exists()
    event = slack_events(kind=EventKind.AUTH_SUCCEEDED, ticket_id=ticket.pk)[-1]
    assert event.outcome == Outcome.DENIED and event.actor_id == owner.pk


def test_a_ticket_no_longer_pending_is_explained(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    _, first = linked(Role.REVIEWER)
    _, second = linked(Role.REVIEWER)
    click(first, ticket, receiver, action="phigate.reject")
    answer = reply_to(receiver, click(second, ticket, receiver))
    assert "no longer pending" in answer
    assert Review.objects.filter(ticket=ticket).count() == 1


def test_a_button_for_other_bytes_is_refused(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    _, slack_id = linked(Role.REVIEWER)
    ticket.sql_sha256 = "0" * 64  # what an old message about another statement would carry
    answer = reply_to(receiver, click(slack_id, ticket, receiver))
    assert "no longer matches" in answer
    unchanged(ticket)


# --- signatures -----------------------------------------------------------------------------------------------------


def test_bad_signatures_are_401_and_change_nothing(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    _, slack_id = linked(Role.REVIEWER)
    body = click_body(slack_id, ticket, receiver.hooks_url())
    now = str(int(time.time()))
    before = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, front="slack").count()
    attempts = [
        post(body, now, slack_signature(body, now, secret=secrets.token_hex(16))),  # another app's secret
        post(body, now, slack_signature(body + b"x", now)),  # signature of other bytes
        post(body, now, "v0=" + "0" * 64),
        post(body, now, ""),
        post(body, "", slack_signature(body, "")),
        post(body, "not-a-time", slack_signature(body, "not-a-time")),
        Client().post(INTERACTIONS, data=body, content_type="application/x-www-form-urlencoded"),
    ]
    assert [response.status_code for response in attempts] == [401] * len(attempts)
    unchanged(ticket)
    refused = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, front="slack").order_by("id")[before:]
    assert len(refused) == len(attempts)
    assert {event.details["reason"] for event in refused} >= {
        "signature does not match",
        "missing or malformed timestamp",
    }
    assert all(event.actor_id is None and event.ticket_id is None for event in refused)  # nothing unsigned is trusted


def test_stale_and_future_timestamps_are_401(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    _, slack_id = linked(Role.REVIEWER)
    body = click_body(slack_id, ticket, receiver.hooks_url())
    # A minute beyond the five-minute window each way: the exact boundary is tested on check_signature with a
    # fixed `now`; here a slow request must not carry a "future" timestamp back inside the window.
    stale, future = str(int(time.time()) - 360), str(int(time.time()) + 360)
    assert post(body, stale).status_code == 401
    assert post(body, future).status_code == 401
    unchanged(ticket)
    reasons = [event.details["reason"] for event in slack_events(kind=EventKind.AUTH_FAILED)[-2:]]
    assert reasons == ["timestamp older than five minutes", "timestamp more than five minutes in the future"]
    assert post(body, str(int(time.time()) - 250)).status_code == 200  # inside the window: accepted
    assert Review.objects.filter(ticket=ticket).count() == 1


def test_a_replayed_body_is_401(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket(approvals_required=2)
    _, slack_id = linked(Role.REVIEWER)
    body, now = click_body(slack_id, ticket, receiver.hooks_url(), action="phigate.approve"), str(int(time.time()))
    assert post(body, now).status_code == 200
    assert post(body, now).status_code == 401
    assert slack_events(kind=EventKind.AUTH_FAILED)[-1].details["reason"] == "request already received (replay)"
    assert Review.objects.filter(ticket=ticket).count() == 1
    assert Ticket.objects.get(pk=ticket.pk).status == Status.PENDING


# --- linking --------------------------------------------------------------------------------------------------------


def test_an_unlinked_user_is_told_how_to_link_and_nothing_changes(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    stranger = slack_user_id()
    answer = reply_to(receiver, click(stranger, ticket, receiver))
    assert "not linked" in answer and "Link your account" in answer
    unchanged(ticket)
    event = slack_events(kind=EventKind.AUTH_FAILED, ticket_id=ticket.pk)[-1]
    assert event.details["reason"] == "Slack user not linked to a phigate account"
    assert event.details["slack_user_id"] == stranger and event.agent_name == f"slack:{stranger}"

    # The reply's link, opened by a signed-in reviewer and confirmed, links that Slack user to them.
    url = answer.split("<", 1)[1].split("|", 1)[0]
    token = parse_qs(urlsplit(url).query)["token"][0]
    SENT_SECRETS.append(token)
    reviewer = make_user(Role.REVIEWER)
    browser = Client()
    browser.force_login(reviewer)
    page = browser.get(urlsplit(url).path + "?" + urlsplit(url).query)
    assert page.status_code == 200 and stranger.encode() in page.content
    assert browser.post("/integrations/slack/link", {"action": "link", "token": token}).status_code == 302
    assert SlackLink.objects.get(slack_user_id=stranger).user == reviewer

    click(stranger, ticket, receiver)
    assert Review.objects.get(ticket=ticket).reviewer == reviewer


def test_a_confirmed_slack_email_links_the_matching_account(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    reviewer = make_user(Role.REVIEWER, name="mailed")
    reviewer.email = f"{reviewer.username}@clinic.example"
    reviewer.save(update_fields=["email"])
    slack_id = slack_user_id()
    receiver.profiles[slack_id] = {
        "id": slack_id,
        "team_id": TEAM,
        "is_email_confirmed": True,
        "profile": {"email": reviewer.email.upper()},
    }
    ticket = held_ticket()
    click(slack_id, ticket, receiver)
    link = SlackLink.objects.get(slack_user_id=slack_id)
    assert (link.user, link.verified_by) == (reviewer, VerifiedBy.EMAIL)
    assert Review.objects.get(ticket=ticket).reviewer == reviewer
    info = receiver.find(lambda c: c.method == "users.info" and c.body.get("user") == slack_id)
    assert info and info[0].headers["Authorization"] == f"Bearer {settings.SLACK_BOT_TOKEN}"
    issued = AuditEvent.objects.get(kind=EventKind.ACCOUNT_LINKED, actor=reviewer)
    assert issued.front == "slack" and issued.details["slack_link"]["verified_by"] == "email"


@pytest.mark.parametrize("flaw", ["unconfirmed", "other team", "shared address", "bot"])
def test_an_email_match_that_is_not_verified_links_nobody(clinic_channel, receiver, flaw) -> None:  # type: ignore[no-untyped-def]
    reviewer = make_user(Role.REVIEWER, name="mailed")
    reviewer.email = f"{reviewer.username}@clinic.example"
    reviewer.save(update_fields=["email"])
    if flaw == "shared address":
        twin = make_user(Role.REVIEWER)
        twin.email = reviewer.email
        twin.save(update_fields=["email"])
    slack_id = slack_user_id()
    receiver.profiles[slack_id] = {
        "id": slack_id,
        "team_id": "T0OTHER" if flaw == "other team" else TEAM,
        "is_email_confirmed": flaw != "unconfirmed",
        "is_bot": flaw == "bot",
        "profile": {"email": reviewer.email},
    }
    ticket = held_ticket()
    assert "not linked" in reply_to(receiver, click(slack_id, ticket, receiver))
    assert not SlackLink.objects.filter(slack_user_id=slack_id).exists()
    unchanged(ticket)


def test_another_workspace_is_refused(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    ticket = held_ticket()
    _, slack_id = linked(Role.REVIEWER)
    response_url = receiver.hooks_url()
    assert post(click_body(slack_id, ticket, response_url, team="T0OTHER")).status_code == 200
    assert "not connected" in reply_to(receiver, response_url)
    unchanged(ticket)


@pytest.mark.parametrize(
    ("who", "roles"),
    [
        ("outsider", ()),
        ("requester", (Role.ENGINEER,)),
        ("reviewer", (Role.REVIEWER,)),
        ("compliance", (Role.COMPLIANCE,)),
    ],
)
def test_link_page_links_only_the_signed_in_account(who, roles) -> None:  # type: ignore[no-untyped-def]
    assert Client().get("/integrations/slack/link").status_code == 302  # anonymous: sent to sign in
    user, bystander = make_user(*roles, name=who), make_user(Role.REVIEWER, name="bystander")
    slack_id = slack_user_id()
    token = linking.link_token(slack_id, TEAM)
    SENT_SECRETS.append(token)
    browser = Client()
    browser.force_login(user)
    assert browser.get("/integrations/slack/link").status_code == 200
    page = browser.get("/integrations/slack/link", {"token": token})
    assert page.status_code == 200 and b'id="slack-link-confirm"' in page.content

    # Naming someone else changes nothing: the link is always for whoever is signed in.
    response = browser.post("/integrations/slack/link", {"action": "link", "token": token, "user": bystander.pk})
    assert response.status_code == 302
    link = SlackLink.objects.get(slack_user_id=slack_id)
    assert (link.user, link.verified_by) == (user, VerifiedBy.EXPLICIT)
    assert not SlackLink.objects.filter(user=bystander).exists()
    issued = AuditEvent.objects.get(kind=EventKind.ACCOUNT_LINKED, actor=user)
    assert issued.front == "web" and issued.details["slack_link"]["slack_user_id"] == slack_id

    # The token works once; someone else holding it links nothing.
    other = Client()
    other.force_login(bystander)
    again = other.post("/integrations/slack/link", {"action": "link", "token": token})
    assert again.status_code == 400 and b"already" in again.content
    assert not SlackLink.objects.filter(user=bystander).exists()

    assert browser.post("/integrations/slack/link", {"action": "unlink"}).status_code == 302
    assert not SlackLink.objects.filter(user=user).exists()
    assert AuditEvent.objects.filter(kind=EventKind.ACCOUNT_UNLINKED, actor=user).exists()


def test_expired_tampered_and_forged_link_tokens_are_refused() -> None:
    user = make_user(Role.REVIEWER)
    browser = Client()
    browser.force_login(user)
    with time_machine.travel(timezone.now() - timedelta(minutes=11)):
        expired = linking.link_token(slack_user_id(), TEAM)
    good = linking.link_token(slack_user_id(), TEAM)
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    foreign = linking.link_token(slack_user_id(), "T0OTHER")  # a workspace that is not ours
    SENT_SECRETS.extend([expired, good, tampered, foreign])
    for token, why in [
        (expired, b"expired"),
        (tampered, b"not valid"),
        (foreign, b"not connected"),
        ("", b"not valid"),
    ]:
        assert browser.get("/integrations/slack/link", {"token": token}).status_code == (400 if token else 200)
        response = browser.post("/integrations/slack/link", {"action": "link", "token": token})
        assert response.status_code == 400 and why in response.content, (token, response.content)
    assert not SlackLink.objects.filter(user=user).exists()
    refusals = AuditEvent.objects.filter(kind=EventKind.AUTH_FAILED, actor=user, front="web")
    assert refusals.count() == 4

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.post("/integrations/slack/link", {"action": "link", "token": good}).status_code == 403
    assert not SlackLink.objects.filter(user=user).exists()


# --- Slack down -----------------------------------------------------------------------------------------------------


def test_a_slack_outage_never_blocks_a_ticket_or_a_decision(clinic_channel, receiver) -> None:  # type: ignore[no-untyped-def]
    receiver.fail("chat.postMessage", "500", 2)
    started = time.monotonic()
    ticket = held_ticket()
    assert time.monotonic() - started < 10 and Ticket.objects.get(pk=ticket.pk).status == Status.PENDING
    wait_until(lambda: SlackMessage.objects.filter(ticket=ticket).exists(), 45, what="the post to get through")
    # Retried by the worker until it got through, then posted once. (Another test's late post may have taken
    # one of the injected failures, so count at least one.)
    attempts = receiver.find(posted(receiver, ticket))
    assert attempts[0].failed and [call.failed for call in attempts].count(False) == 1

    receiver.fail("chat.update", "drop", 2)
    _, slack_id = linked(Role.REVIEWER)
    click(slack_id, ticket, receiver, action="phigate.reject")
    assert Ticket.objects.get(pk=ticket.pk).status == Status.REJECTED  # decided at once, Slack or not
    receiver.wait(updated(receiver, ticket, "rejected by"), "the update to get through", timeout=45)
    assert receiver.find(lambda c: c.method == "chat.update" and c.failed and f"#{ticket.pk} " in c.body["text"])

    # With Slack unreachable, the review still commits through the API; the task just has more to retry.
    receiver.fail("chat.update", "500", 50)
    other = held_ticket()
    wait_until(lambda: SlackMessage.objects.filter(ticket=other).exists(), 30, what="second post")
    response = user_client(make_user(Role.REVIEWER)).post(
        f"/api/v1/tickets/{other.pk}/reviews", {"decision": "reject", "comment": "no"}, format="json"
    )
    assert response.status_code == 201
    assert Ticket.objects.get(pk=other.pk).status == Status.REJECTED
    receiver.fail("chat.update", "500", 0)


def test_an_unreachable_slack_is_retried_not_dropped(scratch_datasource) -> None:  # type: ignore[no-untyped-def]
    ticket = orm_ticket(scratch_datasource)
    closed = free_port()  # nothing listens here
    unreachable = override_settings(SLACK_API_URL=f"http://127.0.0.1:{closed}/api/", SLACK_DEFAULT_CHANNEL="C0DEFAULT")
    with unreachable, pytest.raises(SlackUnavailable):
        notifications.sync_ticket_message(ticket.pk)
    assert not SlackMessage.objects.filter(ticket=ticket).exists()
    assert SlackUnavailable in sync_ticket_message_task.autoretry_for
    assert sync_ticket_message_task.max_retries >= 5


# --- the audit holds no secret --------------------------------------------------------------------------------------


def test_no_secret_reaches_the_audit_trail() -> None:
    secrets_sent = [settings.SLACK_SIGNING_SECRET, settings.SLACK_BOT_TOKEN, "xoxb-own-bot", *SENT_SECRETS]
    assert len(SENT_SECRETS) > 20
    events = AuditEvent.objects.filter(front__in=["slack", "web"]).values(
        "summary", "details", "statement", "agent_name", "actor_name", "session_id"
    )
    text = json.dumps(list(events), default=str)
    assert "slack" in text
    leaked = [secret for secret in secrets_sent if secret and secret in text]
    assert leaked == []
