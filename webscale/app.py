"""What the user brings, resolved once at start-up: the handler, its message type, the decoder.

How this works: `--handler module:function` (or a handler passed to `webscale.serve`) is loaded
with the current directory on sys.path (`loading.load_object`). The message type is
`--message-type module:Class` if given, else the annotation of the handler's message parameter
(`def on_message(handle, msg: MyReading)`), else the Telemetry example, the seed's workload. A
decoder specialised for that dataclass is generated once (`decoder.build_decoder`); a handler
annotated `str | bytes`, or `--decode none`, gets the raw payload instead. The authorization
hook (`--authorize module:function`, or a function given to `webscale.serve`) is loaded the same
way as the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .authorize import Authorizer
from .config import Config
from .decoder import Undecoded, build_decoder, message_type_for
from .units import Decoder, Handler
from .errors import ConfigError
from .examples.telemetry import Telemetry
from .loading import load_object


@dataclass(frozen=True, slots=True)
class App:
    handler: Handler | None
    decode: Decoder | None
    message_type: type | None  # None: raw payloads
    authorize: Authorizer | None = None


def resolve(config: Config, handler: Handler | None = None,
            message_type: type | None = None, authorize: Authorizer | None = None) -> App:
    """The handler, decoder and hook for `config`; explicit arguments win over the flags."""
    if authorize is None and config.authorize is not None:
        loaded = load_object(config.authorize, "--authorize")
        if not callable(loaded):
            raise ConfigError(f"--authorize {config.authorize}: not callable")
        authorize = cast(Authorizer, loaded)
    if handler is None and config.handler is not None:
        loaded = load_object(config.handler, "--handler")
        if not callable(loaded):
            raise ConfigError(f"--handler {config.handler}: not callable")
        handler = cast(Handler, loaded)
    if message_type is None and config.message_type is not None:
        loaded = load_object(config.message_type, "--message-type")
        if not isinstance(loaded, type):
            raise ConfigError(f"--message-type {config.message_type}: not a class")
        message_type = loaded
    if config.decode == "none":
        return App(handler, None, None, authorize)
    chosen = message_type_for(cast(Callable[..., object] | None, handler), message_type)
    if chosen is Undecoded:
        return App(handler, None, None, authorize)
    target: Any = chosen or Telemetry
    return App(handler, build_decoder(target), target, authorize)
