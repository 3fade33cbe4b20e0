"""deploy/grafana/webscale.json: what its generator builds, importable (the fields Grafana's
import reads), valid PromQL (promtool, when installed), and every metric its queries name is
served by a live server's /metrics (one process and --workers 2), used as its type allows
(rate() over counters and histogram series, never over gauges) and grouped only by labels it
has. Grafana itself is not installed here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.client import connect

from helpers import ROOT, UNIT, ServerProcess, client_ssl_context, raw_upgrade, wait_for
from payloads import telemetry_json

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "webscale.json"
PROMTOOL = shutil.which("promtool")
# Series only the supervisor serves (--workers N): absent from a single process's /metrics.
SUPERVISOR_ONLY = {"webscale_worker_up"}
# Labels a selector may group by that the server does not set: Prometheus adds `instance` and
# `job` at scrape time, and a single process has no `worker` (grouping by it is harmless).
SCRAPE_LABELS = {"instance", "job"}
# Grafana's own variables, and what to put in their place for promtool.
BUILTINS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "inf", "nan"}
RATE_FUNCTIONS = "rate|irate|increase"  # a regex alternation


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_dashboard",
                                                  GRAFANA / "build_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def substituted(expr: str) -> str:
    """The expression as Prometheus receives it (every variable at 'All')."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def strip_promql(expr: str) -> str:
    """Drop what holds no metric names: strings, label matchers, ranges, grouping clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", substituted(expr))
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)


def metric_names(expr: str) -> set[str]:
    """Identifiers that are not functions, keywords or numbers: the metric names."""
    found = re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", strip_promql(expr))
    return {m.group(1) for m in found if m.group(1).lower() not in KEYWORDS}


def rated_names(expr: str) -> set[str]:
    """Metric names that are the argument of rate(), irate() or increase()."""
    pattern = rf"\b(?:{RATE_FUNCTIONS})\(\s*([a-zA-Z_:][\w:]*)"
    return set(re.findall(pattern, strip_promql(expr)))


def groupings(expr: str) -> list[tuple[set[str], str]]:
    """(labels, metric) for every `agg by (labels) (` directly over a selector or a rate."""
    expr = substituted(expr)
    out = []
    pattern = rf"\bby\s*\(([\w,\s]*)\)\s*\(\s*(?:(?:{RATE_FUNCTIONS})\(\s*)?([a-zA-Z_:][\w:]*)"
    for labels, name in re.findall(pattern, expr):
        out.append(({label.strip() for label in labels.split(",") if label.strip()}, name))
    return out


def test_the_tokenizer_finds_names_and_only_names() -> None:
    expr = ('histogram_quantile(0.99, sum by (instance, le) (rate(webscale_x_bucket'
            '{instance=~"$instance",worker=~"a|b"}[$__rate_interval]))) / '
            "on (instance) group_left max(webscale_y) > bool 2e-3")
    assert metric_names(expr) == {"webscale_x_bucket", "webscale_y"}
    assert rated_names(expr) == {"webscale_x_bucket"}
    assert groupings(expr) == [({"instance", "le"}, "webscale_x_bucket")]


def test_the_json_is_what_its_generator_builds() -> None:
    builder = load_builder()
    assert DASHBOARD.read_text() == builder.render(), \
        "run python deploy/grafana/build_dashboard.py and commit webscale.json"


def test_import_fields(dashboard: dict[str, Any]) -> None:
    # What Grafana's "Import dashboard" reads: one Prometheus input, what the panels need.
    (ds_input,) = dashboard["__inputs"]
    assert ds_input == {**ds_input, "name": "DS_PROMETHEUS", "type": "datasource",
                        "pluginId": "prometheus"}
    requires = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert {("grafana", "grafana"), ("datasource", "prometheus")} <= requires
    kinds = {p["type"] for p in panels(dashboard)} - {"row"}
    assert kinds == {r_id for r_type, r_id in requires if r_type == "panel"}
    assert dashboard["id"] is None  # a new dashboard on import, never overwriting by id
    assert re.fullmatch(r"[\w-]{1,40}", dashboard["uid"])
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36  # the datasource-as-object era (Grafana 9+)
    assert set(dashboard["time"]) == {"from", "to"} and dashboard["refresh"]

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # Provisioned files get no __inputs substitution: a variable of the same name resolves it.
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name in ("instance", "worker"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["includeAll"] and variable["multi"]
        # "All" must also match a single process's series, which have no worker label.
        assert variable["allValue"] == ".*"
        assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert f", {name})" in variable["query"]

    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["title"] and panel["description"] and panel["targets"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24

    # Every $variable a query uses is defined (or Grafana's own).
    used = {m for expr in expressions(dashboard) for m in re.findall(r"\$\{?(\w+)", expr)}
    assert used <= set(variables) | {b.removeprefix("$") for b in BUILTINS}, used


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_the_dashboard_covers_the_issue(dashboard: dict[str, Any]) -> None:
    """Issue 14's list: each family has a panel."""
    used = {name for expr in expressions(dashboard) for name in metric_names(expr)}
    for name in ("webscale_connections_open", "webscale_tls_handshake_failures_by_reason_total",
                 "webscale_connections_rejected_total", "webscale_messages_received_total",
                 "webscale_bytes_received_total", "webscale_decode_errors_total",
                 "webscale_pool_batches", "webscale_pool_gil_bound",
                 "webscale_handler_seconds_bucket", "webscale_loop_iteration_seconds_bucket",
                 "webscale_closes_total", "webscale_worker_up"):
        assert name in used, name


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package: prometheus)")
def test_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses every query, as a recording rule (variables at 'All')."""
    assert PROMTOOL is not None
    rules = ["groups:", "  - name: grafana_dashboard", "    rules:"]
    for index, expr in enumerate(expressions(dashboard)):
        # A JSON string is a valid YAML double-quoted scalar.
        rules += [f"      - record: grafana:query_{index}",
                  f"        expr: {json.dumps(substituted(expr))}"]
    path = tmp_path / "rules.yml"
    path.write_text("\n".join(rules) + "\n")
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=30 * UNIT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- against a live server ---------------------------------------------------------------------

def exposition(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """({family: type} from the TYPE lines, {sample name: label names seen})."""
    types: dict[str, str] = {}
    samples: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split(" ", 1)[0]
            labels = set(re.findall(r'(\w+)="', rest.rpartition("}")[0])) if rest else set()
            samples.setdefault(name, set()).update(labels)
    return types, samples


def family_type(name: str, types: dict[str, str]) -> str:
    """The TYPE of the family a sample name belongs to (histogram for its _bucket/_sum/_count)."""
    if name in types:
        return types[name]
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return "histogram"
    return "absent"


async def exercise(server: ServerProcess) -> None:
    """Two good messages and a bad one on a WebSocket closed with 1000, and an upgrade refused
    by --allowed-origin: every labelled family then has a sample."""
    ctx = client_ssl_context(server.cafile)  # type: ignore[arg-type]
    async with connect(server.url, ssl=ctx, origin="https://ok.example") as ws:  # type: ignore[arg-type]
        await ws.send(telemetry_json(1, 0, size=512))
        await ws.send(telemetry_json(1, 1, size=512))
        await ws.send("not json")
        await asyncio.wait_for(await ws.ping(), 5 * UNIT)
    answer = await asyncio.to_thread(raw_upgrade, server,
                                     headers=(("Origin", "https://elsewhere.example"),))
    assert answer.status == 403


@pytest.mark.parametrize("workers", [1, 2])
def test_every_queried_metric_is_served(server_factory: Callable[..., ServerProcess],
                                        dashboard: dict[str, Any], workers: int) -> None:
    server = server_factory("--workers", str(workers), "--allowed-origin", "https://ok.example")
    asyncio.run(exercise(server))

    def scraped() -> str | None:
        status, body = server.admin_get("/metrics")
        assert status == 200
        text = body.decode()
        settled = (re.search(r"^webscale_closes_total\{[^}]*code=\"1000\"\} 1$", text, re.M)
                   and re.search(r"^webscale_upgrades_refused_total\{", text, re.M))
        return text if settled else None

    types, samples = exposition(wait_for(scraped, 10, 0.1, "the close and the refusal"))
    exprs = expressions(dashboard)
    # label_values(metric{...}, label): the variables' metric.
    variable_metrics = {re.match(r"label_values\((\w+)", v["query"]).group(1)  # type: ignore[union-attr]
                        for v in dashboard["templating"]["list"] if v["type"] == "query"}
    used = {name for expr in exprs for name in metric_names(expr)} | variable_metrics
    assert used and all(name.startswith("webscale_") for name in used), used

    expected_absent = SUPERVISOR_ONLY if workers == 1 else set()
    missing = {name for name in used if name not in samples} - expected_absent
    assert not missing, f"queried but not in /metrics: {sorted(missing)}"
    if workers > 1:
        # The supervisor-only list is not stale: those series do appear with workers.
        assert SUPERVISOR_ONLY <= samples.keys()
        # The worker variable finds values: every family's series carry worker="i".
        assert all("worker" in samples[name] for name in used), used

    for expr in exprs:
        rated = rated_names(expr)
        for name in metric_names(expr):
            kind = family_type(name, types)
            if name in expected_absent:
                continue
            if name in rated:
                assert kind in ("counter", "histogram"), f"rate() over a {kind}: {expr}"
            else:
                assert kind == "gauge", f"a {kind} without rate(): {expr}"
        for labels, name in groupings(expr):
            if name in expected_absent:
                continue
            extra = labels - SCRAPE_LABELS - {"worker"} - samples[name]
            assert not extra, f"{name} has no label {sorted(extra)}: {expr}"


def test_the_provisioning_example_matches_the_readme() -> None:
    """The provider loads the directory the README installs the dashboard into, and the README
    shows the provider file as it is (without its comments)."""
    provider = (GRAFANA / "provisioning" / "dashboards" / "webscale.yaml").read_text()
    readme = (GRAFANA / "README.md").read_text()
    match = re.search(r"^\s+path: (\S+)$", provider, re.M)
    assert match is not None
    assert f"{match.group(1)}/webscale.json" in readme
    bare = "\n".join(line for line in provider.splitlines()
                     if not line.lstrip().startswith("#"))
    assert f"```yaml\n{bare}\n```" in readme
