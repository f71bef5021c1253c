"""Template filters for the queue and the personal pages: the statement's first line and a countdown."""

from __future__ import annotations

from datetime import datetime

from django import template

from approvals import triage

register = template.Library()


@register.filter
def first_line(sql: str) -> str:
    """The statement's first meaningful line, cut sensibly, with "…" when anything was left out."""
    text, cut = triage.statement_preview(sql or "")
    return f"{text} …" if cut else text


@register.filter
def countdown(until: datetime | None) -> str:
    return "" if until is None else triage.countdown(until)


@register.filter
def ago(moment: datetime | None) -> str:
    return "" if moment is None else triage.ago(moment)
