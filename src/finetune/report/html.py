"""The report as one self-contained page: plots as base64 PNG (matplotlib, Agg), no script, no network.

Top: the recommended model and why. Then: held-out loss and style distance per step (one plot), replay
rate and leaked strings per step (one plot), the feature table (your value vs each model's), the leak
table, the replayed replies, and side-by-side samples (context, your reply, each model's reply).
"""

from __future__ import annotations

import base64
import io
from html import escape
from typing import Any

from finetune.errors import MissingDependencyError
from finetune.report.style import SCALARS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.3rem 0.6rem; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
.recommended { background: #eef7ee; border: 1px solid #7b7; padding: 1rem; }
.context { white-space: pre-wrap; font-family: monospace; font-size: 0.8rem; max-width: 24rem; }
img { max-width: 100%; }
"""


def _figure_png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plots(models: list[dict[str, Any]]) -> dict[str, str]:
    """{"loss_style": png base64, "replay_leaks": png base64}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("the report's plots need matplotlib: pip install matplotlib") from None
    steps = [m["step"] for m in models]
    labels = [m["name"] for m in models]
    out = {}
    for key, (left, left_label), (right, right_label) in (
        ("loss_style", ("heldout_loss", "held-out loss"), ("style_distance", "style distance")),
        ("replay_leaks", ("replay_rate", "replay rate"), ("leaks", "leaked strings")),
    ):
        figure, axis = plt.subplots(figsize=(7, 3.5))
        values = [m[left] for m in models]
        other = [sum(leak["count"] for leak in m["leaked"]) if right == "leaks" else m[right] for m in models]
        axis.plot(steps, values, "o-", color="tab:blue", label=left_label)
        axis.set_xlabel("step")
        axis.set_ylabel(left_label, color="tab:blue")
        twin = axis.twinx()
        twin.plot(steps, other, "s--", color="tab:orange", label=right_label)
        twin.set_ylabel(right_label, color="tab:orange")
        for step, value, label in zip(steps, values, labels):
            axis.annotate(label, (step, value), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
        axis.set_title(f"{left_label} and {right_label} per step")
        out[key] = _figure_png(figure)
        plt.close(figure)
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.0%}" for k, v in sorted(value.items(), key=lambda kv: -kv[1]))
    return escape(str(value))


def render(report: dict[str, Any]) -> str:
    """The page (module doc) from report.json's content."""
    models = report["models"]
    images = plots(models)
    chosen = report["recommended"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>finetune report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Does it sound like you?</h1>",
        f"<div class='recommended' id='recommended'><b>Recommended: {escape(chosen['name'])}</b><br>"
        f"{escape(chosen['reason'])}</div>",
        f"<p>Held-out: {escape(report['heldout']['how'])}; {report['heldout']['replies']} replies of yours.</p>",
        "<h2>Models</h2><table><tr><th>model</th><th>step</th><th>held-out loss</th><th>style distance</th>"
        "<th>replay rate</th><th>leaked</th></tr>",
    ]
    for m in models:
        leaks = sum(leak["count"] for leak in m["leaked"])
        parts.append(f"<tr><td>{escape(m['name'])}</td><td>{m['step']}</td><td>{m['heldout_loss']:.4f}</td>"
                     f"<td>{m['style_distance']:.3f}</td><td>{m['replay_rate']:.0%}</td><td>{leaks}</td></tr>")
    parts.append("</table>")
    parts.append(f"<h2>Loss and style</h2><img alt='held-out loss and style distance per step' "
                 f"src='data:image/png;base64,{images['loss_style']}'>")
    parts.append(f"<h2>Replay and leaks</h2><img alt='replay rate and leaked strings per step' "
                 f"src='data:image/png;base64,{images['replay_leaks']}'>")
    parts.append("<h2>Style features</h2><table><tr><th>feature</th><th>you</th>"
                 + "".join(f"<th>{escape(m['name'])}</th>" for m in models) + "</tr>")
    real = report["real"]["features"]
    for name in (*SCALARS, "language"):
        parts.append(f"<tr><td>{name}</td><td>{_fmt(real[name])}</td>"
                     + "".join(f"<td>{_fmt(m['features'][name])}</td>" for m in models) + "</tr>")
    parts.append("<tr><td>vocabulary divergence</td><td>0</td>"
                 + "".join(f"<td>{m['style']['vocabulary']:.3f}</td>" for m in models) + "</tr></table>")
    parts.append("<h2>Leaked</h2><table><tr><th>model</th><th>kind</th><th>text</th><th>count</th></tr>")
    rows = [(m["name"], leak) for m in models for leak in m["leaked"]]
    for name, leak in rows:
        parts.append(f"<tr><td>{escape(name)}</td><td>{escape(leak['kind'])}</td><td>{escape(leak['text'])}</td>"
                     f"<td>{leak['count']}</td></tr>")
    if not rows:
        parts.append("<tr><td colspan='4'>nothing private-looking from the training data was generated</td></tr>")
    parts.append("</table><h2>Replayed training replies</h2><table><tr><th>model</th><th>reply</th>"
                 "<th>training reply</th></tr>")
    for m in models:
        for hit in m["replays"][:20]:
            parts.append(f"<tr><td>{escape(m['name'])}</td><td>{escape(hit['reply'])}</td>"
                         f"<td>{escape(hit['training_reply'])}</td></tr>")
    parts.append("</table><h2>Samples</h2><table><tr><th>context</th><th>you</th>"
                 + "".join(f"<th>{escape(m['name'])}</th>" for m in models) + "</tr>")
    for sample in report["samples"]:
        parts.append(f"<tr><td class='context'>{escape(sample['context'][-600:])}</td><td>{escape(sample['real'])}</td>"
                     + "".join(f"<td>{escape(sample['replies'].get(m['name'], ''))}</td>" for m in models) + "</tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts)
