"""webscale: a TLS WebSocket server on a hand-written selectors loop and a thread pool.

The public API is what `__all__` lists; handlers and examples import from here, never from the
internal modules (their names may change).
"""

from __future__ import annotations

from .api import serve
from .config import Config
from .errors import ConfigError, DecodeError, Reject, SendTimeout, WebscaleError
from .handle import ConnectionHandle
from .http import Headers, PeerCertificate, Request, Response

__all__ = ["Config", "ConfigError", "ConnectionHandle", "DecodeError", "Headers",
           "PeerCertificate", "Reject", "Request", "Response", "SendTimeout", "WebscaleError",
           "serve"]
