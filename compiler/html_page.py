"""The page kit both report pages share (compile: compiler/report_html.py; tune: autotune/report.py):
inline CSS, HTML-escaped formatting, cards, tables, sections, and matplotlib charts drawn without
pyplot state and inlined as SVG (or a PNG as a data: URL). No scripts, no network."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path

INTEGER_COLOR = "#2a9d8f"
FLOAT_COLOR = "#e76f51"
WORST_COLOR = "#d62828"
ROLE_COLORS = ["#457b9d", "#8ab17d", "#e9c46a", "#9c89b8", "#f4a261", "#6d6875", "#90be6d", "#4d908e"]

CSS = """
:root{--fg:#1d2433;--muted:#5b6475;--line:#dde2ea;--bg:#f6f8fb;--accent:#264653;--bad:#d62828;--ok:#2a9d8f}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px}
header{border-bottom:3px solid var(--accent);margin-bottom:18px;padding-bottom:10px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 10px;color:var(--accent)}
h3{font-size:15px;margin:14px 0 6px}
.sub{color:var(--muted);font-size:13px;word-break:break-all}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:16px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px}
.card{background:#fff;border:1px solid var(--line);border-left:4px solid var(--accent);border-radius:6px;
 padding:8px 12px;min-width:0}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:18px;font-weight:600;overflow-wrap:anywhere}
.card .n{color:var(--muted);font-size:12px;overflow-wrap:anywhere}
.card.bad{border-left-color:var(--bad)}
.card.ok{border-left-color:var(--ok)}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
table.narrow{width:auto;min-width:360px}
code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;background:#eef1f6;
 padding:0 3px;border-radius:3px}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.code{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere}
tr.worst td{background:#fdecea}
tr.best td{background:#e6f4f1}
figure.chart{margin:8px 0 4px}
.split{display:grid;grid-template-columns:minmax(280px,max-content) 1fr;gap:28px;align-items:start}
.split>*{min-width:0}
dl.gloss{margin:6px 0;font-size:13px;color:var(--muted)}
dl.gloss dt{font-weight:600;color:var(--fg);margin-top:6px}
dl.gloss dd{margin:0}
.chart-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:12px}
.chart-grid figure.chart img{max-width:770px}
figure.chart svg,figure.chart img{display:block;width:100%;height:auto;max-width:100%}
figcaption{color:var(--muted);font-size:12px;margin-top:4px}
.note{color:var(--muted);font-size:13px}
.warn{background:#fff4e5;border-left:4px solid #f4a261;padding:6px 10px;border-radius:4px}
ol.worst{margin:6px 0 0 0;padding-left:22px}
ol.worst li{margin:2px 0}
details summary{cursor:pointer;color:var(--accent);margin:6px 0}
pre{background:#f3f5f9;border:1px solid var(--line);padding:10px;overflow:auto;font-size:12px}
.pill{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff}
.pill.int{background:#2a9d8f}.pill.float{background:#e76f51}
footer{color:var(--muted);font-size:12px;margin-top:24px}
"""


# ---------------------------------------------------------------------------------------------- helpers

def esc(v) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def fmt(v, digits: int = 4) -> str:
    """A number for people: 4 significant digits, inf / nan spelled out; anything else escaped."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.{digits}g}"
    if v is None:
        return "–"
    if isinstance(v, (dict, list)):
        return esc(json.dumps(v, default=str))
    return esc(v)


def num(v) -> float | None:
    """v as a float, or None when it is not a number (missing keys, strings, None)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def fmt_bytes(n) -> str:
    n = num(n)
    if n is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def card(label: str, value, note: str | None = None, cls: str = "") -> str:
    v = value if isinstance(value, str) else fmt(value)
    n = f"<div class='n'>{esc(note)}</div>" if note else ""
    return f"<div class='card {esc(cls)}'><div class='k'>{esc(label)}</div><div class='v'>{v}</div>{n}</div>"


def cards(items: list[str]) -> str:
    return "<div class='cards'>" + "".join(items) + "</div>" if items else ""


def table(headers: list[str], rows: list[list], *, num_cols: set[int] | None = None, code_cols: set[int] = frozenset(),
          row_classes: list[str] | None = None, table_id: str | None = None, narrow: bool = False) -> str:
    """An HTML table; cells are formatted with fmt() (numbers right-aligned) unless they are Raw."""
    if num_cols is None:
        num_cols = {j for j in range(len(headers)) if rows and all(num(r[j]) is not None or r[j] is None
                                                                     for r in rows if j < len(r))}
    tid = f" id='{esc(table_id)}'" if table_id else ""
    klass = " class='narrow'" if narrow else ""
    out = [f"<table{tid}{klass}><thead><tr>"]
    out += [f"<th class='{'num' if j in num_cols else ''}'>{esc(h)}</th>" for j, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(rows):
        cls = f" class='{esc(row_classes[i])}'" if row_classes and row_classes[i] else ""
        out.append(f"<tr{cls}>")
        for j, c in enumerate(r):
            klass = "num" if j in num_cols else "code" if j in code_cols else ""
            text = c.html if isinstance(c, Raw) else fmt(c)
            out.append(f"<td class='{klass}'>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, html_text: str):
        self.html = html_text


def split(left: str, right: str) -> str:
    """Two columns: a narrow one (a table) and the rest (a chart, notes)."""
    return f"<div class='split'><div>{left}</div><div>{right}</div></div>" if right else left


def section(title: str, body: str, sid: str) -> str:
    return f"<section id='{esc(sid)}'><h2>{esc(title)}</h2>{body}</section>"


def page(title: str, subtitle: str, sections: list[str], footer: str = "") -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"<header><h1>{esc(title)}</h1><div class='sub'>{subtitle}</div></header>"
            + "".join(s for s in sections if s)
            + (f"<footer>{footer}</footer>" if footer else "") + "</main></body></html>\n")


def new_figure(width: float, height: float):
    """A matplotlib Figure with no pyplot state (thread-safe, no global backend switch)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


_RC = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
       "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"]}


def svg_of(fig, chart_id: str) -> str:
    """The figure as an inline <svg> element (text kept as text, ids salted per chart, no XML prolog)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": chart_id}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    return inline_svg(buf.getvalue(), chart_id)


def inline_svg(text: str, label: str) -> str:
    """An SVG document as an element for the page: no XML prolog / DOCTYPE / metadata, and no fixed
    pt width / height (it scales with the page; the viewBox keeps the aspect ratio)."""
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    head, rest = text.split(">", 1)
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    return head + f' role="img" aria-label="{esc(label)}">' + rest


def chart_style():
    """The rc settings charts are built under (fonts, spines; text kept as SVG text): a context manager."""
    import matplotlib

    return matplotlib.rc_context(_RC)


def chart(fig, chart_id: str, caption: str = "") -> str:
    body = svg_of(fig, chart_id)
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure class='chart' id='{esc(chart_id)}'>{body}{cap}</figure>"


def image_chart(path: Path, chart_id: str, caption: str = "") -> str:
    """A chart from an image file: an .svg inlined, anything else (PNG) as a base64 data URL."""
    path = Path(path)
    if path.suffix.lower() == ".svg":
        body = inline_svg(path.read_text(encoding="utf-8"), chart_id)
    else:
        data = base64.b64encode(path.read_bytes()).decode()
        body = f"<img alt='{esc(path.stem)}' src='data:image/png;base64,{data}'>"
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure class='chart' id='{esc(chart_id)}'>{body}{cap}</figure>"


def style_axes(ax, grid_axis: str = "y") -> None:
    ax.grid(axis=grid_axis, alpha=0.3)
    ax.set_axisbelow(True)


def short(name: str, n: int = 28) -> str:
    name = str(name)
    parts = [p for p in name.split("/") if p]
    s = "/".join(parts[-2:]) if len(parts) > 1 else name
    return s if len(s) <= n else "…" + s[-(n - 1):]


def get_in(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d
