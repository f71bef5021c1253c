"""``POST /integrations/slack/interactions``: Approve/Reject clicks from the ticket messages.

Order matters: the signature (with its five-minute window and replay guard) is checked on the raw body before
anything in it is read; an invalid request gets 401 and an audit event that records why, never what was sent.
A signed click is then mapped to a phigate user through a SlackLink and reviewed by
``approvals.review.submit_review``, the code path of the web UI and the API, so the same rules refuse the
same people. Whoever clicked is answered ephemerally (through the worker); the message itself is updated by
the transition's own Slack hook. Slack wants an answer within three seconds, so this view only decides.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from approvals.lifecycle import TransitionConflict
from approvals.models import Decision, Ticket
from approvals.review import ReviewForbidden, submit_review
from approvals.slack import blocks, config, linking, signature, tasks
from approvals.slack.models import SlackLink
from audit.models import EventKind, Outcome
from audit.recorder import Context, record
from identity.principal import Principal

log = logging.getLogger(__name__)

_DECISIONS = {blocks.APPROVE_ACTION: Decision.APPROVE, blocks.REJECT_ACTION: Decision.REJECT}


@dataclass(frozen=True)
class Click:
    """The parts of a block_actions payload this endpoint acts on."""

    user_id: str
    team_id: str
    decision: Decision
    ticket_id: int
    sql_sha256: str
    response_url: str
    channel_id: str

    @property
    def session_id(self) -> str:
        return f"slack:{self.team_id}:{self.user_id}"[:64]


def _field(data: Any, *path: str) -> str:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, str) else ""


def parse_click(body: bytes) -> Click | None:
    """The review click in a signed body, or None when it is anything else (or malformed)."""
    try:
        payload = json.loads(parse_qs(body.decode("utf-8"), max_num_fields=20).get("payload", [""])[0])
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    if not isinstance(actions, list) or len(actions) != 1 or not isinstance(actions[0], dict):
        return None
    decision = _DECISIONS.get(_field(actions[0], "action_id"))
    target = blocks.parse_action_value(_field(actions[0], "value"))
    user_id, team_id = (
        _field(payload, "user", "id"),
        _field(payload, "team", "id") or _field(payload, "user", "team_id"),
    )
    if decision is None or target is None or not user_id or not team_id:
        return None
    return Click(
        user_id=user_id[:32],
        team_id=team_id[:32],
        decision=decision,
        ticket_id=target[0],
        sql_sha256=target[1],
        response_url=_field(payload, "response_url"),
        channel_id=_field(payload, "channel", "id") or _field(payload, "container", "channel_id"),
    )


def _reply(click: Click, text: str) -> None:
    tasks.enqueue(tasks.reply_task, click.response_url, text, click.channel_id, click.user_id)


def _refuse_unidentified(context: Context, why: str, click: Click | None = None) -> None:
    """Audit a request that identified nobody; only Slack ids (not secrets, not the body) are kept."""
    details: dict[str, Any] = {"reason": why}
    if click is not None:
        details.update(slack_user_id=click.user_id, slack_team_id=click.team_id, decision=str(click.decision))
    record(
        EventKind.AUTH_FAILED,
        principal=None,
        context=context,
        outcome=Outcome.FAILURE,
        ticket_id=click.ticket_id if click else None,
        summary=f"Slack interaction refused: {why}",
        details=details,
        attempted_name=f"slack:{click.user_id}" if click else "",
    )


def _review(click: Click, principal: Principal, context: Context) -> tuple[Outcome, str, str | None]:
    """(outcome, what happened, ephemeral answer or None) for a click by a linked user."""
    shown = Ticket.objects.filter(pk=click.ticket_id).values_list("sql_sha256", flat=True).first()
    if shown is None or shown != click.sql_sha256:
        why = "the message does not match a phigate ticket (different statement)"
        return Outcome.FAILURE, why, "This message no longer matches a phigate ticket; nothing was recorded."
    try:
        ticket = submit_review(click.ticket_id, principal, click.decision, "", context)
    except ReviewForbidden as exc:
        return Outcome.DENIED, f"refused: {exc}", f"Not recorded: {exc}."
    except TransitionConflict as exc:
        return Outcome.FAILURE, f"not recorded: {exc}", f"Not recorded: {exc}."
    progress = f"{ticket.approvals_count} of {ticket.approvals_required} approvals"
    return Outcome.SUCCESS, f"{click.decision} recorded; ticket {ticket.status} ({progress})", None


@csrf_exempt
@require_POST
def interactions(request: HttpRequest) -> HttpResponse:
    body = request.body  # the exact signed bytes, read before anything parses them
    context = Context(front="slack", source_address=request.META.get("REMOTE_ADDR") or None)
    try:
        signature.verify_request(request.META, body)
    except signature.InvalidSignature as exc:
        _refuse_unidentified(context, str(exc))
        return HttpResponse("invalid signature", status=401, content_type="text/plain")
    except signature.ReplayGuardUnavailable:
        _refuse_unidentified(context, "replay guard unavailable")
        return HttpResponse("try again later", status=503, content_type="text/plain")

    click = parse_click(body)
    if click is None:
        _refuse_unidentified(context, "not a phigate review click")
        return HttpResponse(status=200)
    context = replace(context, session_id=click.session_id)
    if not config.team_allowed(click.team_id):
        _refuse_unidentified(context, "Slack workspace not connected", click)
        _reply(click, "This Slack workspace is not connected to phigate; nothing was recorded.")
        return HttpResponse(status=200)

    link = SlackLink.objects.for_slack_user(click.user_id, click.team_id).select_related("user").first()
    if link is None:
        link = linking.link_by_email(click.user_id, click.team_id, context)
    if link is None:
        _refuse_unidentified(context, "Slack user not linked to a phigate account", click)
        _reply(click, blocks.link_instructions(linking.link_url(click.user_id, click.team_id)))
        return HttpResponse(status=200)

    principal = Principal(human=link.user)
    outcome, what, answer = _review(click, principal, context)
    record(
        EventKind.AUTH_SUCCEEDED,
        principal=principal,
        context=context,
        outcome=outcome,
        ticket_id=click.ticket_id,
        summary=f"Slack {click.decision} by {principal.human.get_username()} on ticket {click.ticket_id}: {what}",
        details={"slack_user_id": click.user_id, "slack_team_id": click.team_id, "decision": str(click.decision)},
    )
    if answer is not None:
        _reply(click, answer)
    return HttpResponse(status=200)
