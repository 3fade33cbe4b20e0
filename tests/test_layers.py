"""Dependencies point one way: a module imports only modules of lower layers.

Layers, top to bottom (STYLE.md: cli -> supervisor -> worker -> server -> admin -> connection ->
protocol, dispatch and the gate -> leaves). Every `import` in webscale/ is read from the source,
including those under `if TYPE_CHECKING:` and inside functions, so a circle cannot hide behind a
lazy import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "webscale"

LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"api"},
    {"supervisor"},
    {"supervisor_signals"},
    {"worker"},
    {"server"},
    {"drain"},
    {"admin"},
    {"app", "routes", "process", "admission", "listeners"},
    {"connection"},
    {"outbound", "keepalive", "endings", "transport"},
    {"protocol", "dispatch", "gate"},
    {"units", "reassembly"},
    {"unit_cap", "pool", "decoder", "deflate", "fastmask", "frames", "worker_slot", "metrics",
     "stats", "states", "loading", "authorize", "snapshots", "budget", "upgrade"},
    {"handle", "examples.telemetry", "shapes", "loop", "tls", "config", "systemd", "limits",
     "certs",
     "events", "peer_limits", "proxy_protocol", "rejections"},
    {"http", "errors"},
]
# The package's __init__ re-exports the public API (it sits on top); examples other than the
# Telemetry struct are user code: they import `webscale`, the public API.
OUTSIDE = {"__init__", "examples.__init__", "examples.echo"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"webscale.{name} is in no layer: add it to tests/test_layers.py")


def imported(path: Path) -> set[str]:
    """The webscale modules `path` imports, by name relative to the package."""
    here = module_name(path).split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                prefix = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.split(".")[0] == "webscale":
                prefix = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}" if prefix else alias.name
                out.add(candidate if (PACKAGE / (candidate.replace(".", "/") + ".py")).exists()
                        else prefix)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("webscale."):
                    out.add(alias.name.partition(".")[2])
    out.discard("")
    return out


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if module_name(p) not in OUTSIDE)


@pytest.mark.parametrize("path", SOURCES, ids=module_name)
def test_imports_point_down(path: Path) -> None:
    name = module_name(path)
    mine = layer_of(name)
    for target in sorted(imported(path)):
        if target in OUTSIDE:
            raise AssertionError(f"webscale.{name} imports webscale.{target or '__init__'}")
        assert layer_of(target) > mine, (
            f"webscale.{name} (layer {mine}) imports webscale.{target} (layer "
            f"{layer_of(target)}): pass it a narrow Protocol instead")


def test_the_check_sees_type_checking_and_function_imports(tmp_path: Path) -> None:
    source = PACKAGE / "connection.py"
    fake = PACKAGE / "_layer_probe.py"
    try:
        fake.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    from .server import Server\n"
                        "def f():\n    from webscale import supervisor\n")
        assert imported(fake) == {"server", "supervisor"}
    finally:
        fake.unlink()
    assert "protocol" in imported(source)


def test_every_module_has_a_layer() -> None:
    for path in SOURCES:
        layer_of(module_name(path))


def test_the_readme_layout_names_every_module() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout\n"):readme.index("## Tests\n")]
    named = set()
    for row in layout.splitlines():
        if row.startswith("| `webscale/"):
            cell = row.split("|")[1]
            folder = cell.strip().strip("`").rsplit("/", 1)[0] + "/"  # webscale/ or examples/
            for item in cell.split(","):
                item = item.strip().strip("`")
                named.add(item if "/" in item else folder + item)
    quiet = {"webscale/__main__.py", "webscale/examples/__init__.py"}
    files = {str(p.relative_to(PACKAGE.parent)) for p in SOURCES}
    missing = sorted(files - quiet - named)
    assert not missing, f"README.md's Layout does not name: {missing}"
