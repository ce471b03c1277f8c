"""
Verify a signed JWT at the opening handshake; refuse with HTTP 401 otherwise.

The token is taken from, in this order, the ``Authorization: Bearer ...``
header, the ``--jwt-query-param`` query parameter (``?token=...``) and the
``--jwt-cookie`` cookie. It must be signed with ``--jwt-secret`` (HS256) or
with the private key of ``--jwt-public-key`` (RS256, or ES256/PS256 with
``--jwt-algorithms``); ``exp`` and ``nbf`` are checked when present,
``--jwt-audience`` and ``--jwt-issuer`` when given. Its claims end up on the
connection as ``web_socket_instance.claims``, for later filters (and for
``--group-claim``).

    fws_server -f fws.filters.auth_jwt fws.filters.broadcast_messages_by_token \\
        --jwt-public-key /etc/fws/jwt.pub --group-claim groups
"""

from __future__ import annotations

from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any

import jwt

from fws.filters.base import Refuse, WebSocketConnectFilter

SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                        "ES512", "EdDSA"})


@dataclass(frozen=True)
class JwtSettings:
    """What one server verifies tokens with (kept in ``pipeline.state``)."""

    key: Any
    algorithms: tuple[str, ...]
    audience: str | None
    issuer: str | None
    query_param: str
    cookie: str


def configure(config: Any) -> JwtSettings:
    """Check the ``--jwt-*`` options once, at startup."""
    options = config.options if config is not None else {}
    secret, key_file = options.get("jwt_secret"), options.get("jwt_public_key")
    if bool(secret) == bool(key_file):
        raise ValueError("needs exactly one of --jwt-secret (HS256) or --jwt-public-key (RS256)")
    algorithms = tuple(options.get("jwt_algorithms") or (("HS256",) if secret else ("RS256",)))
    allowed = SYMMETRIC if secret else ASYMMETRIC
    wrong = [a for a in algorithms if a not in allowed]
    if wrong:
        # Mixing families is how algorithm-confusion attacks work: refuse it.
        kind = "a secret" if secret else "a public key"
        raise ValueError(f"algorithm {wrong[0]} cannot be used with {kind}")
    key: Any = secret
    if key_file:
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            with open(key_file, "rb") as f:
                key = load_pem_public_key(f.read())
        except OSError as e:
            raise ValueError(f"cannot read --jwt-public-key {key_file}: {e.strerror}") from None
        except ValueError:
            raise ValueError(f"--jwt-public-key {key_file} is not a PEM public key") from None
    return JwtSettings(key, algorithms, options.get("jwt_audience"), options.get("jwt_issuer"),
                       options.get("jwt_query_param") or "token", options.get("jwt_cookie") or "token")


def token_from(request: Any, settings: JwtSettings) -> str | None:
    """The bearer token of a handshake request, or ``None``."""
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = request.params.get(settings.query_param)
    if values and values[0]:
        return str(values[0])
    cookies = request.headers.get("cookie")
    if cookies:
        try:
            jar = SimpleCookie(cookies)
        except CookieError:
            return None
        if settings.cookie in jar and jar[settings.cookie].value:
            return jar[settings.cookie].value
    return None


class AuthJwt(WebSocketConnectFilter):
    """Refuse the handshake with 401 unless it carries a valid token."""

    @staticmethod
    def filter(web_socket_instance: Any, data: Any) -> None:
        settings: JwtSettings = web_socket_instance.factory.configured(__name__)
        token = token_from(data, settings)
        if token is None:
            raise Refuse(401, "a token is required")
        try:
            claims = jwt.decode(
                token, settings.key, algorithms=list(settings.algorithms),
                audience=settings.audience, issuer=settings.issuer, leeway=5,
                options={"verify_aud": settings.audience is not None},
            )
        except jwt.PyJWTError as e:
            # The client learns only that the token is invalid; the log's line says why.
            raise Refuse(401, "invalid token", detail=str(e)) from None
        web_socket_instance.claims = claims
