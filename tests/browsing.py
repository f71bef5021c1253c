"""Browser helpers for page tests: a signed-in Chromium context without the login form, and what a page did
under the Content-Security-Policy (violations) or despite it (injected script ran)."""

from __future__ import annotations

from typing import Any

from django.test import Client

# Runs in every document before its own scripts (Playwright's init scripts are not subject to the page's CSP):
# collect the violations the browser reports, so a test can tell "blocked by CSP" from "never injected".
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push({directive: event.violatedDirective, blocked: event.blockedURI,
                               sample: event.sample, source: event.sourceFile, line: event.lineNumber});
});
"""


def session_cookie(user: Any) -> str:
    """A real Django session for the user (as a sign-in makes), for a browser that skips the login form."""
    client = Client()
    client.force_login(user)
    return str(client.cookies["sessionid"].value)


def browser_context(chromium: Any, base_url: str, user: Any | None = None, **options: Any) -> Any:
    """A fresh context (own cookies), signed in as ``user`` when one is given, recording CSP violations."""
    options.setdefault("viewport", {"width": 1280, "height": 800})
    context = chromium.new_context(**options)
    context.add_init_script(RECORD_VIOLATIONS)
    if user is not None:
        context.add_cookies([{"name": "sessionid", "value": session_cookie(user), "url": base_url}])
    return context


def violations(page: Any) -> list[dict[str, Any]]:
    return list(page.evaluate("window.__cspViolations || []"))
