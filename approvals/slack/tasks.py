"""Celery tasks for Slack: thin wrappers with retries around approvals.slack.notifications.

Only SlackUnavailable is retried (network, 5xx, rate limits), with exponential backoff and jitter; a refusal
from Slack (bad channel, revoked token) or a missing setting is logged and dropped. Return values are logged by
Celery, so they are short words, never content.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import shared_task

from approvals.slack import notifications
from approvals.slack.client import SlackError, SlackUnavailable
from approvals.slack.config import SlackNotConfigured

log = logging.getLogger(__name__)

RETRY = {
    "autoretry_for": (SlackUnavailable,),
    "retry_backoff": True,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 8,
}


def _dropping_refusals(what: str, call: Callable[[], str]) -> str:
    try:
        return call()
    except (SlackError, SlackNotConfigured) as exc:
        log.warning("Slack %s dropped: %s", what, exc)
        return "dropped"


@shared_task(name="approvals.slack.sync_message", **RETRY)
def sync_ticket_message_task(ticket_id: int) -> str:
    return _dropping_refusals(f"message of ticket {ticket_id}", lambda: notifications.sync_ticket_message(ticket_id))


@shared_task(name="approvals.slack.tell_owner", **RETRY)
def tell_owner_task(ticket_id: int, status: str) -> str:
    return _dropping_refusals(
        f"owner notice of ticket {ticket_id}", lambda: notifications.tell_owner_about(ticket_id, status)
    )


@shared_task(name="approvals.slack.reply", **RETRY)
def reply_task(response_url: str, text: str, channel: str = "", user: str = "") -> str:
    return _dropping_refusals("reply", lambda: notifications.reply(response_url, text, channel=channel, user=user))


def enqueue(task: Any, *args: Any) -> None:
    """Queue a Slack task; a broker failure is logged, never raised into the decision that caused it."""
    try:
        task.delay(*args)
    except Exception:
        log.exception("could not queue Slack task %s", task.name)
