"""A bearer-token auth server for docker-registry's `auth: token` mode (the role auth.docker.io
plays for Docker Hub, which cannot exist offline). Tokens are RS256 JWTs signed with openssl by a
self-signed certificate the registry trusts (`rootcertbundle`), carried in the JWT `x5c` header.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

ISSUER = "banger-test-issuer"
SERVICE = "banger-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    root: Path
    user: str
    password: str
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def cert(self) -> Path:
        return self.root / "token.crt"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=banger-test-token", "-keyout", str(self.root / "token.key"),
             "-out", str(self.cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            check=True,
            capture_output=True,
        ).stdout
        x5c = base64.b64encode(der).decode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                q = parse_qs(urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                want = (
                    "Basic " + base64.b64encode(f"{outer.user}:{outer.password}".encode()).decode()
                )
                outer.requests.append({"query": q, "authorized": auth == want})
                access: list[dict[str, Any]] = []
                for scope in q.get("scope", []):
                    kind, name, actions = scope.split(":")
                    access.append({"type": kind, "name": name, "actions": actions.split(",")})
                # Like Docker Hub: anonymous clients get pull tokens for public repositories.
                public = all(str(a["name"]).startswith("public/") for a in access)
                if auth != want and not (public and access):
                    self.send_response(401)
                    self.end_headers()
                    return
                if auth != want:
                    for a in access:
                        a["actions"] = ["pull"]
                token = outer._sign(x5c, q.get("service", [""])[0], access)
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _sign(self, x5c: str, service: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [x5c]}
        claims = {
            "iss": ISSUER,
            "sub": self.user,
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.root / "token.key")],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{_b64(sig)}"

    def registry_config(self) -> list[str]:
        return [
            "auth:",
            "  token:",
            f"    realm: {self.url}",
            f"    service: {SERVICE}",
            f"    issuer: {ISSUER}",
            f"    rootcertbundle: {self.cert}",
        ]


class BearerAuth(httpx.Auth):
    """httpx auth for pushing fixtures: answer the registry's Bearer challenge with a token."""

    def __init__(self, user: str, password: str) -> None:
        self.basic = httpx.BasicAuth(user, password)
        self.token = ""

    def auth_flow(self, request: httpx.Request) -> Any:
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers.get("www-authenticate", "")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        scope = params.get("scope", "")
        if "push" not in scope:
            scope = scope.replace("pull", "pull,push")
        r = httpx.get(
            params["realm"],
            params={"service": params["service"], "scope": scope},
            auth=self.basic,
        )
        self.token = r.json()["token"]
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request
