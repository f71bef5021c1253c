"""Wording for the ticket page: times people read at a glance, decisions in the past tense, SQL values.

Django's ``timesince`` says "0 minutes" for anything under a minute; people say "just now".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timesince import timesince, timeuntil

from approvals.models import Decision

register = template.Library()


@register.filter
def ago(moment: datetime | None) -> str:
    """ "just now", "5 minutes ago", "2 hours, 3 minutes ago"."""
    if moment is None:
        return ""
    if timezone.now() - moment < timedelta(minutes=1):
        return "just now"
    return f"{timesince(moment)} ago"


@register.filter
def from_now(moment: datetime | None) -> str:
    """ "in less than a minute", "in 58 minutes"; "now" once it has passed."""
    if moment is None:
        return ""
    left = moment - timezone.now()
    if left <= timedelta(0):
        return "now"
    if left < timedelta(minutes=1):
        return "in less than a minute"
    return f"in {timeuntil(moment)}"


@register.filter
def past_tense(decision: str) -> str:
    return Decision(decision).past_tense if decision in Decision.values else str(decision)


@register.filter
def sql_value(value: object) -> SafeString:
    """A value from a result row: NULL marked as such (never confused with the text 'NULL')."""
    if value is None:
        return format_html('<span class="null">NULL</span>')
    return format_html("{}", value)
