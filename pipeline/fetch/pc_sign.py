"""Signed downloads for Microsoft Planetary Computer (``eo.sign: planetary-computer``).

Planetary Computer's STAC API is searched without any key, but its assets live in Azure Blob
Storage and are read with a short-lived SAS token, which its token endpoint
(``{TOKEN_URL}/{account}/{container}``) hands out anonymously (rate-limited). Should Microsoft
require a subscription key for a collection, the token request fails with an error naming the URL;
keys are not supported here (a build should not depend on someone's account).

The token is appended only when a request is made: the cache keys, provenance and checksums all
use the unsigned href, so a rebuild with a fresh token is the same build.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from pipeline.fetch.cache import Cache
from pipeline.fetch.stacio import FetchError, Transport
from pipeline.provenance import parse_datetime

TOKEN_URL = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
BLOB_SUFFIX = ".blob.core.windows.net"
SIGNERS = ("planetary-computer",)
RENEW_S = 300.0  # renew a token this long before it expires


def blob_parts(href: str) -> tuple[str, str] | None:
    """(storage account, container) of an Azure Blob URL, None for any other href (left unsigned)."""
    u = urllib.parse.urlsplit(href)
    host = u.hostname or ""
    if u.scheme != "https" or not host.endswith(BLOB_SUFFIX):
        return None
    container = u.path.lstrip("/").split("/", 1)[0]
    return (host[: -len(BLOB_SUFFIX)], container) if container else None


def with_token(href: str, token: str) -> str:
    """``href`` with the SAS ``token`` (a query string) appended."""
    return href + ("&" if urllib.parse.urlsplit(href).query else "?") + token.lstrip("?")


class PlanetaryComputerSigner:
    """Signs Azure Blob hrefs with tokens from the token endpoint, one per (account, container), reused
    until ``RENEW_S`` before their ``msft:expiry``. Other hrefs pass unchanged."""

    def __init__(self, transport: Transport, token_url: str = TOKEN_URL) -> None:
        self.transport, self.token_url = transport, token_url.rstrip("/")
        self.tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self.lock = threading.Lock()

    def token(self, account: str, container: str) -> str:
        with self.lock:
            tok = self.tokens.get((account, container))
            if tok and tok[1] - RENEW_S > time.time():
                return tok[0]
            url = f"{self.token_url}/{account}/{container}"
            body = self.transport.read_bytes(url)
            try:
                doc = json.loads(body)
                token = str(doc["token"])
                expiry = parse_datetime(doc.get("msft:expiry"))
            except (ValueError, KeyError, TypeError) as exc:
                raise FetchError(f"{url}: not a SAS token answer ({exc})") from None
            self.tokens[(account, container)] = (token, expiry.timestamp() if expiry else time.time() + 600)
            return token

    def __call__(self, href: str) -> str:
        parts = blob_parts(href)
        return href if parts is None else with_token(href, self.token(*parts))


@dataclass(frozen=True)
class SignedTransport(Transport):
    """A Transport that signs each href just before opening it (retries, checks and errors unchanged)."""

    signer: Callable[[str], str] | None = None

    @contextmanager
    def _open_once(self, href: str) -> Iterator[tuple[IO[bytes], int | None]]:
        with super()._open_once(self.signer(href) if self.signer else href) as opened:
            yield opened


def signed_cache(cache: Cache, sign: str | None, token_url: str = TOKEN_URL) -> Cache:
    """``cache`` itself, or the same cache (same keys) downloading through a signing transport."""
    if sign is None:
        return cache
    if sign not in SIGNERS:
        raise FetchError(f"eo.sign: {sign!r} is not a known signer; use one of {', '.join(SIGNERS)}")
    signer = PlanetaryComputerSigner(cache.transport, token_url)
    fields = {f.name: getattr(cache.transport, f.name) for f in dataclasses.fields(Transport)}
    return dataclasses.replace(cache, transport=SignedTransport(**fields, signer=signer))
