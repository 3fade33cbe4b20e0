"""Load reports people look at: one self-contained HTML file with charts (matplotlib, inline SVG).

How this works: `bench_report_page` draws a bench_client run from its report's `timeline`
(timeline.py): connections established and open over time, messages per second scheduled and
written, send lateness and ping round-trip percentiles per second, and failures and drops by
reason over time, under the summary table and the exact command. `comparison_page` draws a
comparison (scripts/pudding, benchmarks/peer_table.py) as one bar chart per metric, one colour
per server. Every chart is a `<figure id="chart-...">` holding an inline SVG that matplotlib
rendered, so the file needs no network and no other file to be viewed. matplotlib is an optional
extra (`pip install -e '.[report]'`); it is imported only when a page is drawn.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Callable, Sequence
from typing import Any

from bench_client.errors import ConfigError

# One colour per server, the same on every chart (matplotlib's default cycle, first entries).
SERVER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       background: #fff; }
h1 { font-size: 1.5em; } code { background: #f3f3f3; padding: 0.1em 0.3em; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc;
        padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
figure { margin: 1.5em 0; } figcaption { font-weight: 600; margin-bottom: 0.3em; }
figure svg { max-width: 100%; height: auto; }
"""


def pyplot() -> Any:
    """matplotlib's pyplot on a file-only backend, or a ConfigError saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("--html needs matplotlib: pip install -e '.[report]'") from None
    matplotlib.use("svg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, selectable
    import matplotlib.pyplot as plt

    return plt


def figure_svg(fig: Any) -> str:
    """The figure as an inline <svg> element (no XML prolog, no doctype)."""
    out = io.StringIO()
    fig.savefig(out, format="svg", bbox_inches="tight")
    fig.clf()
    svg = out.getvalue()
    return svg[svg.index("<svg"):]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def page(title: str, command: str, meta: Sequence[str], table: Sequence[Sequence[str]],
         charts: Sequence[tuple[str, str, str]]) -> str:
    """The whole document. `table`: rows of cells, the first row the header; `charts`:
    (element id, caption, svg)."""
    head, *rows = table
    table_html = ("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                  + "</tr></thead><tbody>"
                  + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                            + "</tr>" for row in rows) + "</tbody></table>")
    figures = "".join(f'<figure id="{chart_id}"><figcaption>{html.escape(caption)}</figcaption>'
                      f"{svg}</figure>" for chart_id, caption, svg in charts)
    meta_html = "".join(f"<p>{html.escape(line)}</p>" for line in meta)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Command: <code>{html.escape(command)}</code></p>"
            f"{meta_html}{table_html}{figures}</body></html>\n")


# -- bench_client ------------------------------------------------------------------------------


def bench_report_page(report: dict[str, Any], command: str,
                      table_rows: Sequence[tuple[str, str]]) -> str:
    plt = pyplot()
    from matplotlib import ticker

    tl = report["timeline"]
    t = tl["t"]
    timing = report["timing"]
    charts: list[tuple[str, str, str]] = []

    def chart(chart_id: str, caption: str, ylabel: str,
              draw: Callable[[Any], object], log: bool = False) -> None:
        fig, ax = plt.subplots(figsize=(10, 3.2))
        draw(ax)
        if "steady_from_s" in timing:
            ax.axvspan(timing["steady_from_s"], timing["steady_until_s"], color="#000",
                       alpha=0.05, label="steady state")
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("seconds since start")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        charts.append((chart_id, caption, figure_svg(fig)))
        plt.close(fig)

    chart("chart-connections", "Connections established and open (the ramp)", "connections",
          lambda ax: (ax.plot(t, tl["established"], label="established"),
                      ax.plot(t, tl["open"], label="open"),
                      ax.plot(t, [f + d for f, d in zip(tl["failed"], tl["dropped"],
                                                         strict=True)],
                              label="failed + dropped", color="#d62728")))
    chart("chart-messages", "Messages per second, scheduled and written", "messages / s",
          lambda ax: (ax.plot(t, tl["messages_scheduled_per_s"], label="scheduled"),
                      ax.plot(t, tl["messages_written_per_s"], label="written",
                              linestyle="--")))

    def millis(values: list[float | None]) -> list[float]:
        return [v * 1000 if v is not None else float("nan") for v in values]

    chart("chart-latency", "Send lateness and ping round trip, per second", "ms",
          lambda ax: (ax.plot(t, millis(tl["lateness_p50_s"]), label="send lateness p50"),
                      ax.plot(t, millis(tl["lateness_p99_s"]), label="send lateness p99"),
                      ax.plot(t, millis(tl["ping_rtt_p50_s"]), label="ping RTT p50",
                              marker="."),
                      ax.plot(t, millis(tl["ping_rtt_p99_s"]), label="ping RTT p99",
                              marker=".")),
          log=True)

    def failures(ax: Any) -> None:
        reasons = tl["failures_by_reason_per_s"]
        if not reasons:
            ax.plot(t, [0] * len(t), label="no failures or drops")
            return
        bottom = [0] * len(t)
        for reason, counts in reasons.items():
            ax.bar(t, counts, bottom=bottom, label=reason, width=0.9)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]

    chart("chart-failures", "Failures and drops by reason, per second", "connections",
          failures)
    cfg = report["config"]
    meta = [f"{cfg['clients']:,} clients at {cfg['rate']}/s, {cfg['size']:,}-byte "
            f"{cfg['document']} documents, {cfg['procs']} processes; "
            f"steady state {timing['steady_state_s']:.1f} s of {timing['elapsed_s']:.1f} s "
            "(shaded on the charts). " + report["percentiles"]]
    table = [("", "result"), *table_rows]
    return page(f"bench_client: {cfg['url']}", command, meta, table, charts)


# -- comparisons -------------------------------------------------------------------------------


def comparison_page(title: str, command: str, meta: Sequence[str], servers: Sequence[str],
                    rows: Sequence[tuple[str, str, Sequence[float | None]]],
                    table: Sequence[Sequence[str]]) -> str:
    """One bar chart per metric (`rows`: name, unit, one value per server in `servers`'
    order; None = not measured), one colour per server, under the comparison's table."""
    plt = pyplot()
    charts: list[tuple[str, str, str]] = []
    colours = {server: SERVER_COLOURS[i % len(SERVER_COLOURS)] for i, server in
               enumerate(servers)}
    for name, unit, values in rows:
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(servers)))
        positions = list(range(len(servers)))[::-1]
        bars = ax.barh(positions, [v if v is not None else 0 for v in values],
                       color=[colours[s] for s in servers])
        ax.set_yticks(positions, labels=list(servers))
        ax.bar_label(bars, labels=[f"{v:,.3g} {unit}".strip() if v is not None else "n/a"
                                   for v in values], padding=3, fontsize="small")
        ax.set_xlabel(unit or "value")
        ax.margins(x=0.25)
        ax.grid(True, axis="x", alpha=0.3)
        chart_id = f"chart-{slug(name)}"
        while any(chart_id == c[0] for c in charts):  # two rows of one name: ids stay unique
            chart_id += "-again"
        charts.append((chart_id, name, figure_svg(fig)))
        plt.close(fig)
    return page(title, command, meta, table, charts)
