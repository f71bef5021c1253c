"""Template tags of the site's shell (``{% load shell %}``): the navigation bar and URLs that may not exist yet."""

from __future__ import annotations

from typing import Any

from django import template

from phigate.navigation import navigation, optional_reverse

register = template.Library()


@register.inclusion_tag("shell/_nav.html", takes_context=True)
def site_navigation(context: template.Context) -> dict[str, Any]:
    """The role-aware bar; empty without a request (an error page rendered without one still renders)."""
    request = context.get("request")
    return {"links": navigation(request) if request is not None else []}


@register.simple_tag
def url_if_exists(url_name: str) -> str:
    """``{% url %}`` that renders nothing, instead of failing the page, for a name no URL has (yet)."""
    return optional_reverse(url_name) or ""
