"""HTTP values that cross layers: a request's headers, the request, and a response.

The protocol parses a request head into these, the connection adds what only the transport knows
(the peer's address and certificate), the owner (the server's routes, the authorization hook)
reads them and answers with a `Response` value, and the connection sends it. Nothing here does
I/O; everything is an immutable value (wsproto/events.py's habit), safe to hand to a pool thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

REASONS = {101: "Switching Protocols", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           426: "Upgrade Required", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class Headers(Mapping[str, str]):
    """Request headers as a case-insensitive, read-only mapping (the first value of a name).

    `get_all(name)` returns every value of a repeated header; iteration yields lower-case names.
    """

    __slots__ = ("_pairs", "_first")

    def __init__(self, pairs: tuple[tuple[str, str], ...] = ()) -> None:
        self._pairs = pairs
        first: dict[str, str] = {}
        for name, value in pairs:
            first.setdefault(name.lower(), value)
        self._first = first

    @classmethod
    def from_raw(cls, raw: list[tuple[bytes, bytes]]) -> Headers:
        return cls(tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw))

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def get_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self._pairs if key.lower() == wanted]

    def raw_items(self) -> tuple[tuple[str, str], ...]:
        """Every (name, value) pair as received, in order, names as the client spelled them."""
        return self._pairs

    def __repr__(self) -> str:
        return f"Headers({list(self._pairs)!r})"


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """Who a client certificate names: its subject common name and subject alternative names."""

    common_name: str | None
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()

    @classmethod
    def from_ssl_dict(cls, cert: Mapping[str, Any]) -> PeerCertificate:
        """From `SSLSocket.getpeercert()`'s dictionary (a verified certificate)."""
        common_name = None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    common_name = value
        kinds: dict[str, list[str]] = {"DNS": [], "IP Address": [], "URI": [], "email": []}
        for kind, value in cert.get("subjectAltName", ()):
            if kind in kinds:
                kinds[kind].append(value.strip())
        return cls(common_name, tuple(kinds["DNS"]), tuple(kinds["IP Address"]),
                   tuple(kinds["URI"]), tuple(kinds["email"]))


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request head: a plain request (a health check, a scrape) or a WebSocket upgrade."""

    method: str
    target: str
    headers: Headers = field(default_factory=Headers)
    upgrade: bool = False
    remote_address: Any = None
    peer_cert: PeerCertificate | None = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(frozen=True, slots=True)
class Response:
    """What to answer a request with; the connection closes after sending it (no keep-alive:
    these are health checks, scrapes and refusals, not traffic)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, text: str | None = None,
             headers: tuple[tuple[str, str], ...] = ()) -> Response:
        """A short plain-text answer; by default the status's reason phrase."""
        body = (text if text is not None else REASONS.get(status, "Error")) + "\n"
        return cls(status, body.encode(), headers=headers)

    def serialize(self, head_only: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Error')}",
                 f"Content-Length: {len(self.body)}", f"Content-Type: {self.content_type}",
                 "Connection: close", "Cache-Control: no-store"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body
