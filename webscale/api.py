"""`webscale.serve(...)`: run the server from Python, as `webscale serve` runs it from a shell.

    import webscale

    def on_message(handle: webscale.ConnectionHandle, message: MyReading) -> None:
        handle.send(f"stored {message.seq}")

    webscale.serve(on_message, port=8443, threads=32)

Keyword options are `Config` fields (the command line's flags with underscores); `authorize`
also takes the hook itself (`webscale.serve(on_message, authorize=check_token)`). With
`workers > 1` the workers are separate processes started with the command line, so the handler
and the hook must be importable by name (module-level functions, not defined under `__main__`).
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .app import resolve
from .authorize import Authorizer
from .config import Config
from .units import Handler
from .errors import ConfigError


def serve(handler: Handler | str | None = None, *, config: Config | None = None,
          message_type: type | str | None = None, authorize: Authorizer | str | None = None,
          **options: Any) -> int:
    """Serve until SIGTERM/SIGINT (main thread) or until drained; the exit code."""
    config = config or Config()
    if isinstance(handler, str):
        options["handler"] = handler
        handler = None
    if isinstance(message_type, str):
        options["message_type"] = message_type
        message_type = None
    if isinstance(authorize, str):
        options["authorize"] = authorize
        authorize = None
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; see webscale.Config")
    config = replace(config, **options).validate()
    if config.workers > 1:
        from .supervisor import run_supervisor

        if handler is not None:
            config = replace(config, handler=_importable_name(handler))
        if message_type is not None:
            config = replace(config, message_type=_importable_name(message_type))
        if authorize is not None:
            config = replace(config, authorize=_importable_name(authorize))
        return run_supervisor(config, config_argv(config))
    from .server import run

    return run(config, app=resolve(config, handler, message_type, authorize))


def _importable_name(obj: Any) -> str:
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in name:
        raise ConfigError(f"{obj!r}: with workers > 1 each worker imports it by name; define it "
                          "at the top level of an importable module")
    return f"{module}:{name}"


def config_argv(config: Config) -> list[str]:
    """The `serve ...` command line that gives `config` (what differs from the defaults)."""
    defaults = Config()
    argv = ["serve"]
    for f in fields(Config):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "tls":
            argv.append("--no-tls")
        elif isinstance(value, tuple):  # a repeatable flag
            for item in value:
                argv += [flag, str(item)]
        elif isinstance(value, Path | str | int | float):
            argv += [flag, str(value)]
    return argv
