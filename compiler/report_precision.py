"""report.html's "Precision search" section: what `--max-loss` measured and which layers it raised
(report.json "precision", compiler/precision_search.py)."""

from __future__ import annotations

from .html_page import card, cards, esc, section, table


def precision_section(report: dict, manifest: dict) -> str:
    p = report.get("precision")
    if not isinstance(p, dict):
        return ""
    met = bool(p.get("met"))
    cost = (p.get("modelled_cost") or {}).get("relative")
    items = [card(f"{p.get('metric', '?')} loss, all int8", p.get("int8_loss")),
             card("after the search", p.get("loss"), f"budget {p.get('max_loss')}", "ok" if met else "bad"),
             card("layers raised", len(p.get("raised") or []), p.get("rung")),
             card("modelled cost", f"{cost:.2f}x" if isinstance(cost, (int, float)) else "–", "of all-int8 MACs")]
    verdict = ("<p>the budget is met.</p>" if met else
               "<p class='warn'>no assignment met the budget: the artifact keeps the lowest loss found.</p>")
    raised = table(["layer", "op", "raised to", "alone dB", "MACs"],
                   [[r.get("node"), r.get("op"), r.get("to"), r.get("sqnr_db"), r.get("macs")]
                    for r in p.get("raised") or []], code_cols={0}, table_id="precision-raised")
    trials = table(["trial", "rung", "layers raised", "loss"],
                   [[i, t.get("rung"), t.get("k"), t.get("loss")] for i, t in enumerate(p.get("trials") or [])],
                   num_cols={0, 2, 3}, table_id="precision-trials", narrow=True)
    return section("Precision search", cards(items) + verdict + raised
                   + f"<h3>trials ({esc(p.get('data', ''))} set)</h3>" + trials, "precision")
