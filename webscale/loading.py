"""Load the object a `module:attribute` flag names (`--handler`, `--message-type`, ...).

The current directory goes on sys.path first, as uvicorn's --app-dir and gunicorn do: a user who
runs `webscale serve --handler myapp.handlers:on_message` next to myapp/ expects it to be found
without installing it or setting PYTHONPATH. It is added once, at the front, and only when no
sys.path entry already names it.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from .errors import ConfigError

logger = logging.getLogger(__name__)


def load_object(spec: str, flag: str) -> object:
    """The object `spec` ("package.module:name", or "module:outer.inner") names.

    Raises ConfigError naming `flag` when the spec is malformed, the module does not exist or
    lacks the attribute. An error raised while the module itself imports (a missing dependency,
    a syntax error) propagates unchanged, with its traceback.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute or module_name.startswith("."):
        raise ConfigError(f"{flag} {spec!r}: expected module:attribute, "
                          "for example myapp.handlers:on_message")
    _current_directory_on_path()
    importlib.invalidate_caches()  # a module written since start-up is found too
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing != module_name and not module_name.startswith(missing + "."):
            raise  # the module exists but imports something that does not
        raise ConfigError(f"{flag} {spec!r}: no module named {missing!r} (looked in the "
                          f"current directory {os.getcwd()} and sys.path)") from None
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ConfigError(f"{flag} {spec!r}: module {module_name!r} has no attribute "
                              f"{attribute!r}") from None
    return target


def _current_directory_on_path() -> None:
    cwd = os.getcwd()
    if any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        return
    sys.path.insert(0, cwd)
    logger.debug("added the current directory %s to the front of sys.path", cwd)
