"""The audit as one self-contained HTML page (inline CSS, figures as base64 PNG, no URLs).

Sections (element ids): verdict, threat-model, epsilon-bounds (eps vs eps_lb), membership (ROC
curves and tables), presence, attribute, prevalence (scatter), epsilon-rounds.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from html import escape
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SECTIONS = ("verdict", "threat-model", "epsilon-bounds", "membership", "presence", "attribute",
            "prevalence", "epsilon-rounds")
_ATTACK_NAMES = {"dcr_hamming": "DCR Hamming", "dcr_jaccard": "DCR Jaccard",
                 "domias": "density ratio (DOMIAS)"}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right} th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.verdict{padding:1em;border-radius:6px;font-size:1.1em}
.fail{background:#fdd;border:2px solid #c00} .risk{background:#fff1d6;border:2px solid #d80}
.pass{background:#e3f6e3;border:2px solid #2a2} img{max-width:100%} .muted{color:#666}
"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _roc_figure(sites: Mapping[str, Mapping[str, Any]]) -> str:
    n = len(sites)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, (name, audit) in zip(axes[0], sites.items(), strict=False):
        curves = {k: audit["membership"][k] for k in _ATTACK_NAMES}
        for key in ("white_box", "loss_attack"):
            if key in audit:
                curves[f"white-box {audit[key]['kind']}"] = audit[key]["roc"]
        for label, res in curves.items():
            roc = res["roc"]
            ax.plot(roc["fpr"], roc["tpr"], label=f"{_ATTACK_NAMES.get(label, label)} "
                    f"(AUROC {res['auroc']:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=f"site {name}", xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _prevalence_figure(sites: Mapping[str, Mapping[str, Any]]) -> str:
    n = len(sites)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, (name, audit) in zip(axes[0], sites.items(), strict=False):
        prev = audit.get("prevalence") or {}
        real, syn = prev.get("members", []), prev.get("synthetic", [])
        ax.scatter(real, syn, s=6, alpha=0.6)
        top = max([0.01, *real, *syn])
        ax.plot([0, top], [0, top], "k:", lw=0.8)
        ax.set(title=f"site {name}: code prevalence", xlabel="real (members)", ylabel="synthetic")
    return _png(fig)


def _rounds_figure(by_round: Mapping[str, list[list[float]]]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for site, points in by_round.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"site {site}")
    ax.set(xlabel="round", ylabel="epsilon spent (cumulative)", title="epsilon spent per round")
    ax.legend(fontsize=8)
    return _png(fig)


def _bounds_figure(audit: Mapping[str, Any]) -> str:
    names = list(audit["sites"])
    eps = [audit["sites"][s].get("epsilon") for s in names]
    lbs = [audit["sites"][s].get("eps_lb") for s in names]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names) + 2), 3.6))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [e or 0 for e in eps], 0.4, label="accountant epsilon (upper)")
    ax.bar([i + 0.2 for i in x], [b or 0 for b in lbs], 0.4, label="audit eps_lb (lower)")
    for i, e in zip(x, eps, strict=False):
        if e is None:
            ax.annotate("no DP\nclaim", (i - 0.2, 0.02), ha="center", va="bottom", fontsize=8,
                        color="#c00")
    ax.set_xticks(list(x), [f"site {s}" for s in names])
    ax.set_ylim(0, max([1.0, *(e or 0 for e in eps), *(b or 0 for b in lbs)]) * 1.15)
    ax.set(ylabel="epsilon", title="accountant epsilon vs empirical lower bound")
    ax.legend(fontsize=8)
    return _png(fig)


def _membership_rows(sites: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, audit in sites.items():
        for key, label in _ATTACK_NAMES.items():
            r = audit["membership"][key]
            rows.append([name, label, r["auroc"], r["tpr_at_fpr_1pct"], r["tpr_at_fpr_0.1pct"],
                         r["n_members"], r["n_non_members"]])
        for wb in (audit.get("white_box"), audit.get("loss_attack")):
            if wb:
                r = wb["roc"]
                rows.append([name, f"white-box {wb['kind']}", r["auroc"], r["tpr_at_fpr_1pct"],
                             r["tpr_at_fpr_0.1pct"], r["n_members"], r["n_non_members"]])
    return rows


def _presence_rows(sites: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, audit in sites.items():
        for block in audit["membership"]["presence"]:
            for row in block["by_distance"][:6]:
                rows.append([name, block["fraction"], block["n_each"], row["h"],
                             row["precision"], row["sensitivity"]])
    return rows


def _attribute_rows(sites: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, audit in sites.items():
        a = audit["attribute"]
        for src in ("synthetic", "baseline_holdout"):
            r = a[src]
            rows.append([name, src.replace("_", " "), a["known_codes"], a["k"], r["precision"],
                         r["recall"], r["f1"]])
    return rows


def _bounds_rows(audit: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for name, s in audit["sites"].items():
        wb = s.get("white_box") or {}
        if not wb:
            status = "no white-box audit"
        elif not wb.get("passed"):
            status = "FAIL: eps_lb > epsilon"
        else:
            status = "consistent" if s.get("epsilon") is not None else "no DP claim"
        rows.append([name, s.get("epsilon"), s.get("delta"), s.get("eps_lb"),
                     wb.get("confidence"), wb.get("kind"), wb.get("m"), status])
    return rows


def render_html(audit: Mapping[str, Any]) -> str:
    """The whole report as one string."""
    sites = audit["sites"]
    v = audit["verdict"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>fedsynth privacy audit</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>Privacy audit of the synthetic-data generator</h1>",
        f"<section id='verdict'><h2>Verdict</h2><div class='verdict {escape(v['status'])}'>"
        f"<b>{escape(v.get('headline', v['status'].upper()))}</b>: {escape(v['text'])}</div>"
        "</section>",
        f"<section id='threat-model'><h2>Threat model</h2><p>{escape(audit['threat_model'])}"
        "</p></section>",
        "<section id='epsilon-bounds'><h2>Accountant epsilon vs empirical lower bound</h2>",
        _table(["site", "epsilon (accountant)", "delta", "eps_lb", "confidence", "method",
                "canaries / rows", "status"], _bounds_rows(audit)),
        _bounds_figure(audit), "</section>",
        "<section id='membership'><h2>Membership inference (ROC)</h2>",
        "<p class='muted'>Score: higher means 'member'. TPR at low FPR is what matters for "
        "individual patients.</p>",
        _table(["site", "attack", "AUROC", "TPR @ FPR 1%", "TPR @ FPR 0.1%", "members",
                "non-members"], _membership_rows(sites)),
        _roc_figure(sites), "</section>",
        "<section id='presence'><h2>Presence disclosure (medGAN)</h2>"
        "<p class='muted'>The attacker holds a share of the records (half members) and claims "
        "'present' when a synthetic record is within Hamming distance h.</p>",
        _table(["site", "share held", "records each", "h", "precision", "sensitivity"],
               _presence_rows(sites)), "</section>",
        "<section id='attribute'><h2>Attribute disclosure (medGAN)</h2>"
        "<p class='muted'>The attacker knows some codes of a member and infers the rest by "
        "k-nearest neighbours; the baseline uses held-out real patients instead of synthetic "
        "data.</p>",
        _table(["site", "source", "known codes", "k", "precision", "recall", "F1"],
               _attribute_rows(sites)), "</section>",
        "<section id='prevalence'><h2>Code prevalence: real vs synthetic</h2>",
        _prevalence_figure(sites), "</section>",
        "<section id='epsilon-rounds'><h2>Epsilon spent per round per site</h2>",
    ]
    by_round = audit.get("epsilon_by_round") or {}
    if by_round:
        parts.append(_rounds_figure(by_round))
    else:
        parts.append("<p class='muted'>No per-round privacy history was given (non-private "
                     "model or no privacy report).</p>")
    parts.append("</section></body></html>")
    return "\n".join(parts)
