"""The tuning report: PNG plots and one self-contained HTML page (images inlined as base64).

    loss.png     loss of every trial (dots) and the best loss so far (line), per searcher, against the
                 trial numbers of the journal (1-based, as the log shows them)
    pareto.png   size (or latency) vs loss of every trial; the Pareto front (no other trial is both
                 smaller and more accurate) joined by a line and labelled with trial numbers; the
                 --max-loss budget dashed; the exported trial starred
    report.html  the same page style as `qcc compile`'s report.html (qcc.report_html): summary cards,
                 both plots, the trials table (best first, the exported trial highlighted)

matplotlib is imported inside the functions (pyplot-free Figures, so no global backend is switched).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def best_so_far(losses: list[float]) -> list[float]:
    out, best = [], math.inf
    for v in losses:
        best = min(best, v)
        out.append(best)
    return out


def _figure():
    from matplotlib.figure import Figure

    return Figure(figsize=(7, 4))


def plot_loss(series: dict[str, list[float]], path: Path, ylabel: str = "loss", target: float | None = None,
              trials: dict[str, list[int]] | None = None) -> Path:
    """series: searcher name -> loss of each trial in order; trials: searcher name -> the journal's
    trial numbers of those losses (default 1, 2, ...)."""
    fig = _figure()
    ax = fig.subplots()
    for i, (name, losses) in enumerate(series.items()):
        color = f"C{i}"
        x = list((trials or {}).get(name) or range(1, len(losses) + 1))
        finite = [(a, b) for a, b in zip(x, losses) if math.isfinite(b)]
        if finite:
            ax.scatter(*zip(*finite), s=10, alpha=0.35, color=color)
        ax.step(x, best_so_far(losses), where="post", color=color, label=f"{name} (best so far)")
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label="target")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, ax, path, "trial", ylabel, _linthresh(series), [v for s in series.values() for v in s])


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
                max_loss: float | None = None, chosen: int | None = None, labels: list | None = None) -> Path:
    """labels: one per trial (the journal's trial numbers): the Pareto-front points are labelled "#n"."""
    keep = [k for k, (c, v) in enumerate(zip(costs, losses)) if math.isfinite(c) and math.isfinite(v)]
    pts = [(costs[k], losses[k]) for k in keep]
    fig = _figure()
    ax = fig.subplots()
    if pts:
        ax.scatter(*zip(*pts), s=12, alpha=0.5, label="trials")
        idx = pareto_front(pts)
        front = [pts[i] for i in idx]
        ax.plot(*zip(*front), "o-", color="C3", label="Pareto front")
        if labels is not None:
            for i in idx:
                ax.annotate(f"#{labels[keep[i]]}", pts[i], xytext=(4, 4), textcoords="offset points", fontsize=7,
                            color="C3")
    if chosen is not None and math.isfinite(costs[chosen]) and math.isfinite(losses[chosen]):
        ax.scatter([costs[chosen]], [losses[chosen]], s=120, marker="*", color="C2", label="exported", zorder=5)
    if max_loss is not None and math.isfinite(max_loss):
        ax.axhline(max_loss, color="gray", ls="--", lw=1, label="--max-loss")
    return _save(fig, ax, path, xlabel, ylabel, _linthresh({"": [p[1] for p in pts]}), [p[1] for p in pts])


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, linthresh: float, values=()) -> Path:
    """Shared finish of both plots: labels, symlog loss axis (from 0 when no loss is negative), legend,
    grid, PNG."""

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_yscale("symlog", linthresh=linthresh)
    finite = [v for v in values if math.isfinite(v)]
    if finite and min(finite) >= 0:
        ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)   # the format follows the suffix: .png (default), .svg
    return path


def write_html(path: Path, title: str, summary: dict, images: list[Path], rows: list[dict],
               best_trial: int | None = None) -> Path:
    """One page, no external files, in the style of `qcc compile`'s report.html: the summary, the plots
    (PNG as base64, SVG inline; loss.png -> figure#loss-chart, pareto.png -> figure#pareto-chart) and a
    table of trials (the row whose "trial" is best_trial, default summary["best"]["trial"], highlighted)."""
    from qcc import html_page as H

    summary = summary if isinstance(summary, dict) else {}
    if best_trial is None:
        best_trial = H.get_in(summary, "best", "trial")
    sections = [H.section("Summary", _summary_cards(summary), "summary")]
    figures = []
    for img in images:
        stem = Path(img).stem
        caption = {"loss": "loss of every trial (dots) and the best loss so far (line), by journal trial number",
                   "pareto": "cost vs loss of every trial; the Pareto front labelled with trial numbers, "
                             "the --max-loss budget dashed, the exported trial starred"}.get(stem, "")
        figures.append(H.image_chart(img, f"{stem}-chart", caption))
    if figures:
        sections.append(H.section("Charts", "<div class='chart-grid'>" + "".join(figures) + "</div>", "charts"))
    if rows:
        cols = list(rows[0])
        body = ("<p class='note'>best first (feasible trials by objective, then the rest by loss); trial numbers "
                "as in the journal and the log</p>" if "trial" in cols else "")
        classes = ["best" if best_trial is not None and r.get("trial") == best_trial else "" for r in rows]
        num_cols = {j for j, c in enumerate(cols) if all(not isinstance(r.get(c), str) for r in rows)}
        code_cols = {j for j, c in enumerate(cols) if j not in num_cols}
        cells = [[H.Raw(_config_text(r.get(c))) if c == "config" else r.get(c) for c in cols] for r in rows]
        body += H.table(cols, cells, num_cols=num_cols, code_cols=code_cols,
                        row_classes=classes, table_id="trials-table")
        sections.append(H.section(f"Trials ({len(rows)})", body, "trials"))
    else:
        sections.append(H.section("Trials", "<p class='note'>no trials recorded</p>", "trials"))
    sections.append(H.section("Run", "<details><summary>summary.json</summary><pre>"
                              + H.esc(json.dumps(summary, indent=2, default=str)) + "</pre></details>", "run"))
    sub = " · ".join(H.esc(x) for x in (summary.get("model"), summary.get("target") and f"target {summary['target']}")
                     if x)
    Path(path).write_text(H.page(title, sub, sections, footer="Drawn from journal.jsonl and summary.json in this "
                                 "tuning folder; best/ holds the exported artifact with its own report.html."),
                          encoding="utf-8")
    return Path(path)


def _config_text(v) -> str:
    """A trial's point (a JSON object) as short escaped text: key=value, switched-on passes by name,
    switched-off ones left out; anything else (an error message) escaped as it is."""
    from qcc import html_page as H

    try:
        point = json.loads(v) if isinstance(v, str) else None
    except ValueError:
        point = None
    if not isinstance(point, dict):
        return H.esc(v)
    parts = []
    for k, val in point.items():
        name = k.removeprefix("pass:")
        if val is False or val is None:
            continue
        if val is True:
            parts.append(f"<b>{H.esc(name)}</b>")
        elif isinstance(val, dict):
            parts.append(f"<b>{H.esc(name)}</b>(" + H.esc(", ".join(f"{a}={b}" for a, b in val.items())) + ")")
        else:
            parts.append(f"{H.esc(name)}={H.esc(val)}")
    return " · ".join(parts) or "–"


def _summary_cards(summary: dict) -> str:
    from qcc import html_page as H

    items = []
    obj = summary.get("objective")
    max_loss = H.num(summary.get("max_loss"))
    if obj:
        items.append(H.card("objective", H.esc(obj),
                            f"--max-loss {H.fmt(max_loss)}" if max_loss is not None and math.isfinite(max_loss)
                            else "no loss budget"))
    if summary.get("loss"):
        items.append(H.card("loss", H.esc(summary["loss"])))
    if summary.get("searcher"):
        items.append(H.card("searcher", H.esc(summary["searcher"]), f"seed {summary.get('seed')}"))
    if summary.get("trials") is not None:
        items.append(H.card("trials", summary["trials"], f"of {H.fmt(summary.get('space_size'))} configs"
                            + (f", {summary['seconds']:.0f} s" if H.num(summary.get("seconds")) is not None else "")))
    for key, label in (("best", "best trial"), ("default_config", "qcc's default config")):
        b = summary.get(key)
        if isinstance(b, dict):
            note = []
            if H.num(b.get("size_bytes")) is not None:
                note.append(H.fmt_bytes(b["size_bytes"]))
            if H.num(b.get("size_ratio")) is not None:
                note.append(f"{b['size_ratio']:.2f}x FP32")
            if H.num(b.get("latency_ms")) is not None:
                note.append(f"{b['latency_ms']:.3g} ms")
            items.append(H.card(label, f"#{H.esc(b.get('trial'))} · loss {H.fmt(H.num(b.get('loss')))}",
                                ", ".join(note) or None, "ok" if key == "best" else ""))
        elif key == "best" and "best" in summary:
            items.append(H.card("best trial", "none", "no config met --max-loss", "bad"))
    if summary.get("artifact"):
        items.append(H.card("exported", H.esc(summary["artifact"]),
                            H.fmt_bytes(summary.get("artifact_size_bytes")) if summary.get("artifact_size_bytes")
                            else None))
    return H.cards(items) or "<p class='note'>no summary</p>"
