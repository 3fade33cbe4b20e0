"""load_object: `module:attribute` flags find modules next to the current directory."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from webscale.errors import ConfigError
from webscale.loading import load_object


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh directory with a package `myapp_<n>` in it, made the current directory.

    sys.path and sys.modules are restored afterwards, so no test sees another's modules.
    """
    package = tmp_path / f"myapp_{tmp_path.name.replace('-', '_')}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "handlers.py").write_text(
        "class Outer:\n    class Inner:\n        pass\n\n"
        "def on_message(handle, message):\n    return message\n")
    (package / "broken.py").write_text("import a_module_that_does_not_exist_at_all\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = set(sys.modules)
    yield package
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_module_next_to_the_current_directory_is_found(app_dir: Path) -> None:
    handler = load_object(f"{app_dir.name}.handlers:on_message", "--handler")
    assert callable(handler) and handler(None, 42) == 42
    assert sys.path[0] == os.getcwd()
    nested = load_object(f"{app_dir.name}.handlers:Outer.Inner", "--message-type")
    assert isinstance(nested, type) and nested.__qualname__ == "Outer.Inner"


def test_the_current_directory_is_added_once_and_only_when_absent(app_dir: Path) -> None:
    load_object(f"{app_dir.name}.handlers:on_message", "--handler")
    load_object(f"{app_dir.name}.handlers:Outer", "--message-type")
    assert sys.path.count(os.getcwd()) == 1
    sys.path.remove(os.getcwd())
    sys.path.append("")  # "" already means the current directory
    load_object(f"{app_dir.name}:handlers", "--handler")
    assert os.getcwd() not in sys.path


@pytest.mark.parametrize("spec, complaint", [
    ("nomodule_here_at_all:handle", "--handler 'nomodule_here_at_all:handle': no module named "
                                    "'nomodule_here_at_all'"),
    ("{app}.nothere:handle", "--handler '{app}.nothere:handle': no module named '{app}.nothere'"),
    ("{app}.handlers:missing", "--handler '{app}.handlers:missing': module '{app}.handlers' has "
                               "no attribute 'missing'"),
    ("{app}.handlers:Outer.missing", "has no attribute 'Outer.missing'"),
    ("{app}.handlers", "expected module:attribute"),
    ("{app}.handlers:", "expected module:attribute"),
    (":on_message", "expected module:attribute"),
    (".handlers:on_message", "expected module:attribute"),
])
def test_what_is_missing_is_a_config_error_naming_the_flag(app_dir: Path, spec: str,
                                                           complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_object(spec.format(app=app_dir.name), "--handler")
    assert complaint.format(app=app_dir.name) in str(caught.value)


def test_a_missing_dependency_of_the_module_is_not_hidden(app_dir: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist_at_all"):
        load_object(f"{app_dir.name}.broken:anything", "--message-type")
