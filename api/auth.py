"""API keys: only SHA-256 digests are kept; a key carries scopes (`annotate`, `metrics`, `admin`).

No key → 401 `missing_api_key`; an unknown key → 401 `invalid_api_key`; a known key without the
route's scope → 403 `insufficient_scope`. Keys come as `Authorization: Bearer KEY` or `X-API-Key`.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from sigma.api.errors import ApiError
from sigma.service.settings import SCOPES, AuthSettings, hash_key


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


def _one_field(request: Request, name: str) -> str | None:
    """The value of header field `name`, which must be sent once (or repeated with one value): two `Authorization`
    (or `X-API-Key`) fields of different values are 400 `bad_request`, naming neither value. The first was used,
    where a proxy in front that adds its own (or checks the last) reads another one: a request could pass a check
    with one key and be served with the other. RFC 9110 11.6.2: Authorization is a single value."""
    values = list(dict.fromkeys(value.strip() for value in request.headers.getlist(name)))
    if len(values) > 1:
        raise ApiError(400, "bad_request", f"{name.title()} is sent {len(values)} times with different values: "
                       "send one API key, once")
    return values[0] if values else None


def presented_key(request: Request) -> str | None:
    auth = _one_field(request, "authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = _one_field(request, "x-api-key")
    return key.strip() if key and key.strip() else None


def key_spellings(key: str) -> list[str]:
    """The texts a presented key may stand for. Header bytes reach the app decoded as Latin-1 (ASGI), and a key is
    UTF-8 text (`SIGMA_API_KEYS`, `auth.keys`): `curl -H 'X-API-Key: clé'` from a UTF-8 terminal sends `cl\\xc3\\xa9`,
    read as `clÃ©`, and a valid non-ASCII key was 401 `invalid_api_key` unless sent in Latin-1. Its bytes read as
    UTF-8 come first; the Latin-1 reading stays (a client that sends Latin-1 bytes was served, and still is)."""
    try:
        utf8 = key.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return [key]
    return [utf8] if utf8 == key else [utf8, key]


class KeyChecker:
    def __init__(self, settings: AuthSettings):
        self.keys = [(k.sha256, Principal(k.name, frozenset(k.scopes))) for k in settings.keys]
        self.anonymous = settings.allow_anonymous and not self.keys

    def identify(self, request: Request) -> Principal:
        key = presented_key(request)
        if key is None:
            if self.anonymous:
                return ANONYMOUS
            raise ApiError(401, "missing_api_key", "send an API key as 'Authorization: Bearer KEY' or 'X-API-Key'",
                           {"WWW-Authenticate": "Bearer"})
        found = None
        for digest in {hash_key(spelling) for spelling in key_spellings(key)}:
            for stored, principal in self.keys:       # compare all, constant time each
                if hmac.compare_digest(stored, digest):
                    found = principal
        if found is None:
            if self.anonymous:
                return ANONYMOUS
            raise ApiError(401, "invalid_api_key", "the API key is not valid", {"WWW-Authenticate": "Bearer"})
        return found

    def require(self, scope: str):
        async def dependency(request: Request) -> Principal:
            principal = self.identify(request)
            if scope not in principal.scopes and not principal.admin:
                raise ApiError(403, "insufficient_scope", f"this API key lacks the '{scope}' scope")
            return principal
        return dependency


def require_key():
    """A route dependency: any valid key (whatever its scopes), e.g. for the docs when they are not public."""
    async def dependency(request: Request) -> Principal:
        return request.app.state.service.auth.identify(request)
    return dependency


def require_scope(scope: str):
    """A route dependency: the caller's principal, refused (401/403) without a key holding `scope`."""
    async def dependency(request: Request) -> Principal:
        return await request.app.state.service.auth.require(scope)(request)
    return dependency
