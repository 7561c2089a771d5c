"""The tuning report: PNG plots and one self-contained HTML page (images inlined as base64).

    loss.png     loss of every trial (dots) and the best feasible loss so far (line), per searcher
    pareto.png   size (or latency) vs loss of every trial; the Pareto front (no other trial is both
                 smaller and more accurate) joined by a line; the --max-loss budget dashed
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def best_so_far(losses: list[float]) -> list[float]:
    out, best = [], math.inf
    for v in losses:
        best = min(best, v)
        out.append(best)
    return out


def plot_loss(series: dict[str, list[float]], path: Path, ylabel: str = "loss", target: float | None = None) -> Path:
    """series: searcher name -> loss of each trial in order."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, losses) in enumerate(series.items()):
        color = f"C{i}"
        x = list(range(1, len(losses) + 1))
        finite = [(a, b) for a, b in zip(x, losses) if math.isfinite(b)]
        if finite:
            ax.scatter(*zip(*finite), s=10, alpha=0.35, color=color)
        ax.step(x, best_so_far(losses), where="post", color=color, label=f"{name} (best so far)")
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label="target")
    return _save(fig, ax, path, "trial", ylabel, _linthresh(series))


def _linthresh(series) -> float:
    vals = sorted(abs(v) for s in series.values() for v in s if math.isfinite(v) and v != 0)
    return max(vals[0], 1e-4) if vals else 1e-2


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, loss) no other point beats on both, by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best_loss = [], math.inf
    for i in order:
        if points[i][1] < best_loss:
            front.append(i)
            best_loss = points[i][1]
    return front


def plot_pareto(costs: list[float], losses: list[float], path: Path, xlabel: str, ylabel: str = "loss",
                max_loss: float | None = None, chosen: int | None = None) -> Path:
    pts = [(c, v) for c, v in zip(costs, losses) if math.isfinite(c) and math.isfinite(v)]
    fig, ax = plt.subplots(figsize=(7, 4))
    if pts:
        ax.scatter(*zip(*pts), s=12, alpha=0.5, label="trials")
        front = [pts[i] for i in pareto_front(pts)]
        ax.plot(*zip(*front), "o-", color="C3", label="Pareto front")
    if chosen is not None and math.isfinite(costs[chosen]) and math.isfinite(losses[chosen]):
        ax.scatter([costs[chosen]], [losses[chosen]], s=120, marker="*", color="C2", label="exported", zorder=5)
    if max_loss is not None and math.isfinite(max_loss):
        ax.axhline(max_loss, color="gray", ls="--", lw=1, label="--max-loss")
    return _save(fig, ax, path, xlabel, ylabel, _linthresh({"": [p[1] for p in pts]}))


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, linthresh: float) -> Path:
    """Shared finish of both plots: labels, symlog loss axis, legend, grid, PNG."""

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_html(path: Path, title: str, summary: dict, images: list[Path], rows: list[dict]) -> Path:
    """One page, no external files: the summary, the plots (base64 PNG) and a table of trials."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             "td.l{text-align:left}pre{background:#f6f6f6;padding:1em}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre>"]
    for img in images:
        data = base64.b64encode(Path(img).read_bytes()).decode()
        parts.append(f"<h2>{html.escape(Path(img).stem)}</h2><img alt='{html.escape(Path(img).stem)}' "
                     f"src='data:image/png;base64,{data}'>")
    if rows:
        cols = list(rows[0])
        parts.append("<h2>trials</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(
                f"<td class='l'>{html.escape(str(r[c]))}</td>" if isinstance(r[c], str) else
                f"<td>{_fmt(r[c])}</td>" for c in cols) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    Path(path).write_text("\n".join(parts))
    return Path(path)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))
