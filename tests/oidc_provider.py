"""A small but real OpenID Connect provider for the browser tests, run in its own process on loopback.

``python -m tests.oidc_provider --port P --client-id ID --client-secret S --users FILE`` serves discovery,
an authorization endpoint with a sign-in form, the token endpoint (authorization code, client_secret_post or
basic), userinfo with a ``groups`` claim, and the JWKS. ID tokens are RS256 JWTs signed with a key made at
start-up. FILE is JSON: ``[{"username", "password", "email", "groups": [...]}]``. Test-only code: it keeps
state in memory and trusts loopback.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def uint_b64(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Provider:
    def __init__(self, issuer: str, client_id: str, client_secret: str, users: list[dict[str, Any]]) -> None:
        self.issuer, self.client_id, self.client_secret = issuer, client_id, client_secret
        self.users = {user["username"]: user for user in users}
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.kid = hashlib.sha256(str(numbers.n).encode()).hexdigest()[:16]
        self.jwk = {
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": uint_b64(numbers.n),
            "e": uint_b64(numbers.e),
        }
        self.codes: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, str] = {}
        self.lock = threading.Lock()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }

    def id_token(self, user: dict[str, Any], nonce: str | None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user["username"],
            "aud": self.client_id,
            "iat": now,
            "exp": now + 300,
            "email": user["email"],
            "preferred_username": user["username"],
        }
        if nonce:
            claims["nonce"] = nonce
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


class Handler(BaseHTTPRequestHandler):
    provider: Provider

    def log_message(self, *args: Any) -> None:  # quiet
        return

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        return {key: values[0] for key, values in parse_qs(self.rfile.read(length).decode()).items()}

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            self._json(200, self.provider.discovery())
        elif url.path == "/jwks":
            self._json(200, {"keys": [self.provider.jwk]})
        elif url.path == "/authorize":
            if query.get("client_id") != self.provider.client_id or query.get("response_type") != "code":
                self._json(400, {"error": "invalid_request"})
                return
            hidden = "".join(
                f'<input type="hidden" name="{html.escape(key)}" value="{html.escape(value)}">'
                for key, value in query.items()
            )
            page = (
                "<!doctype html><title>Test identity provider</title><h1>Sign in at the identity provider</h1>"
                f'<form method="post" action="/authorize">{hidden}'
                '<label>User <input name="login" id="op-login"></label> '
                '<label>Password <input name="secret" type="password" id="op-password"></label> '
                '<button type="submit" id="op-submit">Continue</button></form>'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif url.path == "/userinfo":
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            username = self.provider.tokens.get(token)
            if username is None:
                self._json(401, {"error": "invalid_token"})
                return
            user = self.provider.users[username]
            self._json(
                200,
                {"sub": username, "email": user["email"], "preferred_username": username, "groups": user["groups"]},
            )
        else:
            self._json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        form = self._form()
        if url.path == "/authorize":
            user = self.provider.users.get(form.get("login", ""))
            if user is None or not secrets.compare_digest(user["password"], form.get("secret", "")):
                self._json(401, {"error": "access_denied"})
                return
            code = secrets.token_urlsafe(24)
            with self.provider.lock:
                self.provider.codes[code] = {
                    "username": user["username"],
                    "redirect_uri": form["redirect_uri"],
                    "nonce": form.get("nonce"),
                }
            target = form["redirect_uri"] + "?" + urlencode({"code": code, "state": form.get("state", "")})
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
        elif url.path == "/token":
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
            basic = self.headers.get("Authorization", "")
            if basic.startswith("Basic "):
                client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
            if client_id != self.provider.client_id or client_secret != self.provider.client_secret:
                self._json(401, {"error": "invalid_client"})
                return
            with self.provider.lock:
                grant = self.provider.codes.pop(form.get("code", ""), None)  # a code works once
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                self._json(400, {"error": "invalid_grant"})
                return
            access = secrets.token_urlsafe(24)
            self.provider.tokens[access] = grant["username"]
            user = self.provider.users[grant["username"]]
            self._json(
                200,
                {
                    "access_token": access,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": self.provider.id_token(user, grant["nonce"]),
                },
            )
        else:
            self._json(404, {"error": "not_found"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--users", required=True)
    args = parser.parse_args()
    with open(args.users, encoding="utf-8") as handle:
        users = json.load(handle)
    Handler.provider = Provider(f"http://127.0.0.1:{args.port}", args.client_id, args.client_secret, users)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
