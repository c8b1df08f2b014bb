"""The audit as one self-contained HTML page (inline CSS, figures as base64 PNG, no URLs).

Sections (element ids): identity (run id, date, software, data and model digests: what a
sign-off refers to), verdict, threat-model, epsilon-bounds (eps vs eps_lb), membership (ROC
curves; a worst-case row per attack, per-site rows folded), presence (worst case per site, the
rest folded), attribute, attribute-records (whole-records models: each target column inferred
from the others, with a plain verdict), prevalence (scatter), epsilon-rounds (cumulative spend
from the code-count release at round 0, with the budget lines). Delta is always in scientific
notation: at 1e-5 a fixed-point "0.000" would hide it.
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

from fedsynth.privacy.audit.identity import NOT_RECORDED  # noqa: E402

SECTIONS = ("identity", "verdict", "threat-model", "epsilon-bounds", "membership", "presence",
            "attribute", "attribute-records", "prevalence", "epsilon-rounds")
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
table.identity th{text-align:left;width:13em} table.identity td{text-align:left}
code{font-size:.95em} details{margin:.4em 0 1em} summary{cursor:pointer;color:#345}
"""
MAX_ROWS = 40  # a folded detail table shows at most this many rows (the rest: audit.json)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
_LINESTYLES = ("-", "--", "-.", ":")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def sci(v: Any) -> str | None:
    """A delta (or any tiny probability) in scientific notation: 1e-05 -> "1.0e-05"."""
    if v is None:
        return None
    v = float(v)
    return "0" if v == 0 else f"{v:.1e}"


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.5 * 10 ** -digits:  # never print a non-zero value as 0.000
            return escape(sci(v) or "")
        return f"{v:.{digits}f}"
    return escape(str(v))


def _table(header: list[str], rows: list[list[Any]], max_rows: int | None = None) -> str:
    """An HTML table; with ``max_rows``, the first rows and one line counting the rest."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    shown = rows if max_rows is None else rows[:max_rows]
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>"
                   for row in shown)
    if len(rows) > len(shown):
        body += (f"<tr class='more'><td class='muted' colspan='{len(header)}'>&hellip; and "
                 f"{len(rows) - len(shown)} more rows (all in audit.json)</td></tr>")
    return f"<table><tr>{head}</tr>{body}</table>"


def _folded(summary: str, table: str) -> str:
    return f"<details><summary>{escape(summary)}</summary>{table}</details>"


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
        ax.set(title=str(name), xlabel="false positive rate", ylabel="true positive rate")
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
        ax.set(title=f"{name}: code prevalence", xlabel="real (members)", ylabel="synthetic")
    return _png(fig)


def rounds_series(audit: Mapping[str, Any]) -> dict[str, Any]:
    """What the epsilon-per-round figure draws, as data (tested without pixels).

    sites: per site (label as given) its rounds, cumulative epsilon, the x positions drawn
    (rounds shifted by a small per-site offset so that equal curves stay visible side by side),
    its own marker and line style, and ``count_release``: the epsilon after round 0 (the DP
    code-count release) when the history records it. budgets: one horizontal line per distinct
    value of the run's target epsilon and the sites' budgets, labelled with who holds it."""
    by_round = audit.get("epsilon_by_round") or {}
    n = len(by_round)
    step = min(0.08, 0.3 / n) if n > 1 else 0.0
    sites = []
    for i, (site, points) in enumerate(by_round.items()):
        rounds = [int(p[0]) for p in points]
        eps = [float(p[1]) for p in points]
        offset = (i - (n - 1) / 2) * step
        sites.append({
            "site": str(site), "rounds": rounds, "epsilon": eps,
            "x": [r + offset for r in rounds],
            "count_release": eps[rounds.index(0)] if 0 in rounds else None,
            "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": _LINESTYLES[i % len(_LINESTYLES)],
        })
    return {"sites": sites, "budgets": _budget_lines(audit.get("budgets") or {})}


def _budget_lines(budgets: Mapping[str, Any]) -> list[dict[str, Any]]:
    holders: dict[float, list[str]] = {}
    if budgets.get("target") is not None:
        holders.setdefault(round(float(budgets["target"]), 9), []).append("target")
    for site, value in (budgets.get("sites") or {}).items():
        holders.setdefault(round(float(value), 9), []).append(str(site))
    return [{"epsilon": v, "holders": who,
             "label": f"budget {v:g} ({', '.join(who)})"} for v, who in sorted(holders.items())]


def _rounds_figure(series: Mapping[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for s in series["sites"]:
        (line,) = ax.plot(s["x"], s["epsilon"], marker=s["marker"], linestyle=s["linestyle"],
                          ms=5, alpha=0.85, label=s["site"])
        if s["count_release"] is not None:
            x0 = s["x"][s["rounds"].index(0)]
            ax.plot([x0], [s["count_release"]], marker="*", ms=12, ls="none",
                    color=line.get_color(), markeredgecolor="k")
    if any(s["count_release"] is not None for s in series["sites"]):  # one legend entry
        ax.plot([], [], marker="*", ms=12, ls="none", color="w", markeredgecolor="k",
                label="code-count release (round 0)")
    for b in series["budgets"]:
        ax.axhline(b["epsilon"], color="#c00", ls=(0, (6, 3)), lw=1.2, label=b["label"])
    rounds = sorted({r for s in series["sites"] for r in s["rounds"]})
    if rounds and len(rounds) <= 25:
        ax.set_xticks(rounds, [f"{r}\ncounts" if r == 0 else str(r) for r in rounds])
    top = max([0.0, *(e for s in series["sites"] for e in s["epsilon"]),
               *(b["epsilon"] for b in series["budgets"])])
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
    ax.set(xlabel="round", ylabel="epsilon spent (cumulative)", title="epsilon spent per round")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
    ax.set_xticks(list(x), [str(s) for s in names],
                  rotation=30 if sum(len(str(s)) for s in names) > 40 else 0)
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


def membership_summary(rows: list[list[Any]]) -> list[list[Any]]:
    """One row per attack: the worst case over sites (highest AUROC and the site it is at, the
    highest TPR at each low FPR: what matters for individual patients)."""
    out: dict[str, list[Any]] = {}
    for name, label, auroc, tpr1, tpr01, *_ in rows:
        cur = out.get(label)
        if cur is None:
            out[label] = [label, auroc, name, tpr1, tpr01, 1]
            continue
        if auroc > cur[1]:
            cur[1], cur[2] = auroc, name
        cur[3], cur[4], cur[5] = max(cur[3], tpr1), max(cur[4], tpr01), cur[5] + 1
    return list(out.values())


def _presence_rows(sites: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, audit in sites.items():
        for block in audit["membership"]["presence"]:
            for row in block["by_distance"][:6]:
                rows.append([name, block["fraction"], block["n_each"], row["h"],
                             row["precision"], row["sensitivity"]])
    return rows


def presence_summary(
    sites: Mapping[str, Mapping[str, Any]], min_claims: int = 5
) -> list[list[Any]]:
    """One row per site: the attacker's best (share held, h) by precision (ties: sensitivity),
    among thresholds with at least ``min_claims`` correct claims (a precision of 1.0 from one
    lucky claim says nothing); 0.5 is chance, as half the records held are members."""
    out = []
    for name, audit in sites.items():
        best, best_any = None, None
        for block in audit["membership"]["presence"]:
            for row in block["by_distance"]:
                if row["precision"] is None:
                    continue
                key = (row["precision"], row["sensitivity"])
                cand = (key, block, row)
                if best_any is None or key > best_any[0]:
                    best_any = cand
                if row["sensitivity"] * block["n_each"] >= min_claims and (
                        best is None or key > best[0]):
                    best = cand
        pick = best or best_any
        if pick is None:
            out.append([name, None, None, None, None, None])
            continue
        _, block, row = pick
        out.append([name, block["fraction"], block["n_each"], row["h"], row["precision"],
                    row["sensitivity"]])
    return out


def _attribute_rows(sites: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for name, audit in sites.items():
        a = audit["attribute"]
        for src in ("synthetic", "baseline_holdout"):
            r = a[src]
            rows.append([name, src.replace("_", " "), a["known_codes"], a["k"], r["precision"],
                         r["recall"], r["f1"]])
    return rows


def attribute_records_rows(sites: Mapping[str, Mapping[str, Any]]) -> list[list[Any]]:
    """One row per site and target of the attribute attack on whole records."""
    rows = []
    for name, audit in sites.items():
        a = audit.get("attribute_records")
        if not isinstance(a, Mapping):
            continue
        for target, r in (a.get("by_target") or {}).items():
            rows.append([name, target, r["accuracy_members_synth"],
                         r["accuracy_nonmembers_synth"], r["accuracy_members_holdout"],
                         r["majority_rate"], r["gain_over_nonmembers"],
                         r["gain_over_baseline"], "yes" if r.get("signal") else "no"])
    return rows


def _attribute_records_section(sites: Mapping[str, Mapping[str, Any]]) -> str:
    head = ("<section id='attribute-records'><h2>Attribute disclosure on whole records</h2>")
    rows = attribute_records_rows(sites)
    if not rows:
        return (head + "<p class='muted'>Not a whole-records model: the model holds codes only, "
                "so there are no record columns to infer.</p></section>")
    verdicts = "".join(
        f"<p>{escape(str(a['attribute_records'].get('verdict', '')))}</p>"
        for a in sites.values() if isinstance(a.get("attribute_records"), Mapping))
    return (head + "<p class='muted'>The attacker knows every other column of a patient's record "
            "and takes the value of the target column held by the closest record (Gower "
            "distance) of a source: the synthetic records, for training patients (members) and "
            "for patients the model never saw (non-members), and, as the baseline, real records "
            "of other patients from the same population. Disclosure attributable to the "
            "generator is what members gain over non-members.</p>" + verdicts
            + _table(["site", "target", "members (synthetic)", "non-members (synthetic)",
                      "members (real baseline)", "majority class", "gain over non-members",
                      "gain over baseline", "beyond chance"], rows, MAX_ROWS)
            + "</section>")


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
        rows.append([name, s.get("epsilon"), sci(s.get("delta")), s.get("eps_lb"),
                     wb.get("confidence"), wb.get("kind"), wb.get("m"), status])
    return rows


def _identity_rows(audit: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, HTML) rows of the header: every field shown, "not recorded" when absent."""
    ident = audit.get("identity") or {}
    missing = f"<span class='muted'>{NOT_RECORDED}</span>"

    def text(v: Any) -> str:
        return escape(str(v)) if v not in (None, "") else missing

    data = ident.get("data") or []
    if data:
        data_html = "<br>".join(
            f"{escape(str(d.get('role', 'data')))}: <code>{escape(str(d.get('name')))}</code> "
            f"sha256 <code>{escape(str(d.get('sha256')))}</code>, {int(d.get('patients', 0))} "
            "patients" for d in data)
    else:
        per_site = "; ".join(
            f"{escape(str(n))}: {a.get('n_members', '?')} members, "
            f"{a.get('n_non_members', '?')} held out" for n, a in audit["sites"].items())
        data_html = f"{missing} (patients audited per site: {per_site})"
    model = ident.get("model") or {}
    if model:
        files = ", ".join(model.get("files") or []) or "no weight file"
        model_html = (f"<code>{escape(str(model.get('name')))}</code> sha256 "
                      f"<code>{text(model.get('sha256'))}</code> ({escape(files)})")
    else:
        model_html = missing
    eps = audit.get("epsilon")
    release = missing if eps is None else (
        f"epsilon {float(eps):.3f}, delta {escape(sci(audit.get('delta')) or NOT_RECORDED)}")
    return [("Run id", text(ident.get("run_id"))),
            ("Audit date (UTC)", text(ident.get("created"))),
            ("Software", text(ident.get("software"))),
            ("Data", data_html), ("Model", model_html), ("Release guarantee", release)]


def _identity_section(audit: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in _identity_rows(audit))
    return ("<section id='identity'><h2>What was audited</h2>"
            f"<table class='identity'>{rows}</table></section>")


def _membership_section(sites: Mapping[str, Mapping[str, Any]]) -> str:
    rows = _membership_rows(sites)
    parts = ["<section id='membership'><h2>Membership inference (ROC)</h2>",
             "<p class='muted'>Score: higher means 'member'. TPR at low FPR is what matters for "
             "individual patients. One row per attack: its worst case over the sites.</p>",
             _table(["attack", "worst AUROC", "at site", "worst TPR @ FPR 1%",
                      "worst TPR @ FPR 0.1%", "sites"], membership_summary(rows))]
    if len(sites) > 1:
        parts.append(_folded(f"every site ({len(rows)} rows)", _table(
            ["site", "attack", "AUROC", "TPR @ FPR 1%", "TPR @ FPR 0.1%", "members",
             "non-members"], rows, MAX_ROWS)))
    parts += [_roc_figure(sites), "</section>"]
    return "".join(parts)


def _presence_section(audit: Mapping[str, Any]) -> str:
    sites = audit["sites"]
    min_claims = int((audit.get("config") or {}).get("min_cell", 5))
    header = ["site", "share held", "records each", "h", "precision", "sensitivity"]
    rows = _presence_rows(sites)
    return ("<section id='presence'><h2>Presence disclosure (medGAN)</h2>"
            "<p class='muted'>The attacker holds a share of the records (half members) and claims "
            "'present' when a synthetic record is within Hamming distance h. Per site, the "
            "attacker's best threshold (highest precision with at least "
            f"{min_claims} correct claims; 0.5 is chance).</p>"
            + _table(header, presence_summary(sites, min_claims))
            + _folded(f"every share and h = 0..5 ({len(rows)} rows)",
                      _table(header, rows, MAX_ROWS))
            + "</section>")


def render_html(audit: Mapping[str, Any]) -> str:
    """The whole report as one string."""
    sites = audit["sites"]
    v = audit["verdict"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>fedsynth privacy audit</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>Privacy audit of the synthetic-data generator</h1>",
        _identity_section(audit),
        f"<section id='verdict'><h2>Verdict</h2><div class='verdict {escape(v['status'])}'>"
        f"<b>{escape(v.get('headline', v['status'].upper()))}</b>: {escape(v['text'])}</div>"
        "</section>",
        f"<section id='threat-model'><h2>Threat model</h2><p>{escape(audit['threat_model'])}"
        "</p></section>",
        "<section id='epsilon-bounds'><h2>Accountant epsilon vs empirical lower bound</h2>",
        _table(["site", "epsilon (accountant)", "delta", "eps_lb", "confidence", "method",
                "canaries / rows", "status"], _bounds_rows(audit)),
        _bounds_figure(audit), "</section>",
        _membership_section(sites),
        _presence_section(audit),
        "<section id='attribute'><h2>Attribute disclosure (medGAN)</h2>"
        "<p class='muted'>The attacker knows some codes of a member and infers the rest by "
        "k-nearest neighbours; the baseline uses held-out real patients instead of synthetic "
        "data.</p>",
        _table(["site", "source", "known codes", "k", "precision", "recall", "F1"],
               _attribute_rows(sites)), "</section>",
        _attribute_records_section(sites),
        "<section id='prevalence'><h2>Code prevalence: real vs synthetic</h2>",
        _prevalence_figure(sites), "</section>",
        "<section id='epsilon-rounds'><h2>Epsilon spent per round per site</h2>",
    ]
    series = rounds_series(audit)
    if series["sites"]:
        parts.append("<p class='muted'>Cumulative epsilon after each round; round 0 (star) is "
                     "the DP release of code counts and site size when the history records it. "
                     "Dashed red lines: the budgets. Sites are drawn slightly apart so that "
                     "equal curves stay visible.</p>")
        parts.append(_rounds_figure(series))
    else:
        parts.append("<p class='muted'>No per-round privacy history was given (non-private "
                     "model or no privacy report).</p>")
    parts.append("</section></body></html>")
    return "\n".join(parts)
