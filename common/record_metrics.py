"""Fidelity of synthetic patient records (the schema's mixed columns) against real ones.

Every function takes pandas tables holding the schema's columns (category / integer / real, as
``load_records`` types them; strings are read through the schema too) and works for
real-vs-real as well as synthetic-vs-real. The formulas:

- marginals: categorical total variation TV = 0.5 * sum_c |p_c - q_c| over the schema's
  categories; numeric Kolmogorov-Smirnov KS = sup_x |F_real(x) - F_synth(x)|
  (``scipy.stats.ks_2samp``). Missing values are left out of both.
- association: for every pair of columns an association in [0, 1]: Cramer's V with Bergsma's
  (2013) bias correction for categorical x categorical, the correlation ratio eta (adjusted
  for the number of groups like an adjusted R^2) for categorical x numeric, |Spearman rho| for
  numeric x numeric. ``association_r`` is the Pearson r between the real and the synthetic
  values over all pairs (upper triangle). The corrections matter: uncorrected V and eta grow
  with categories / n, a pattern real and synthetic tables share even with no association at
  all (independent columns), which would inflate r.
- downstream: gradient boosting (``HistGradientBoostingClassifier``, native categorical
  features, fixed seed) predicting ``target == value`` from the other columns (plus the 50 most
  prevalent codes as 0/1 features when the codes are given: on diabetes130 they lift the
  readmission AUROC trained on real from 0.66 to 0.73), trained on synthetic (TSTR) and on real
  (TRTR), both tested on held-out real; ratio = TSTR / TRTR AUROC.
- discriminator: the same classifier telling real from synthetic records (every column, and the
  same codes), cross-validated AUROC on equal-size samples; 0.5 = indistinguishable.
- distance to closest record: Gower distance (``fedsynth.common.gower``).

``record_fidelity`` returns all of them as one flat dict of finite floats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, rankdata
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from fedsynth.common.data.schema import Column, Schema
from fedsynth.common.errors import InputError
from fedsynth.common.gower import category_codes, gower_dcr, numeric_values

log = logging.getLogger(__name__)

TOP_CODES = 10  # codes (most prevalent in the real set) added to the association matrix
MODEL_CODES = 50  # codes added as 0/1 features of the downstream task and the discriminator
MAX_BINS = 255  # HistGradientBoosting's limit on categories of a categorical feature


# ---------------------------------------------------------------- marginals

def column_marginals(real: pd.DataFrame, synth: pd.DataFrame,
                     schema: Schema) -> dict[str, Any]:
    """{'tv': {column: TV}, 'ks': {column: KS}, 'tv_mean', 'ks_mean', 'tv_max', 'ks_max'}.

    A column with no present value on either side is left out (its figure is undefined)."""
    tv: dict[str, float] = {}
    ks: dict[str, float] = {}
    for col in schema.columns:
        if col.is_categorical:
            k = len(col.categories or ())
            p, q = (_distribution(category_codes(t[col.name], col), k) for t in (real, synth))
            if p is not None and q is not None:
                tv[col.name] = float(0.5 * np.abs(p - q).sum())
        else:
            a, b = (numeric_values(t[col.name]) for t in (real, synth))
            a, b = a[~np.isnan(a)], b[~np.isnan(b)]
            if len(a) and len(b):
                ks[col.name] = float(ks_2samp(a, b).statistic)
    out: dict[str, Any] = {"tv": tv, "ks": ks}
    for name, d in (("tv", tv), ("ks", ks)):
        if d:
            out[f"{name}_mean"] = float(np.mean(list(d.values())))
            out[f"{name}_max"] = float(max(d.values()))
    return out


def _distribution(codes: np.ndarray, k: int) -> np.ndarray | None:
    present = codes[codes >= 0]
    return np.bincount(present, minlength=k) / len(present) if len(present) else None


# ---------------------------------------------------------------- association

def cramers_v(a: np.ndarray, b: np.ndarray, ka: int, kb: int, corrected: bool = True) -> float:
    """Cramer's V of two category-code vectors (codes >= 0, same rows), Bergsma-corrected.

    phi^2 = chi^2 / n = sum_ij O_ij^2 / (R_i C_j) - 1 over the levels present; corrected:
    phi2~ = max(0, phi^2 - (r-1)(c-1)/(n-1)), r~ = r - (r-1)^2/(n-1), c~ likewise,
    V = sqrt(phi2~ / min(r~ - 1, c~ - 1))."""
    n = len(a)
    if n < 2:
        return 0.0
    table = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).astype(np.float64)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    r, c = table.shape
    if r < 2 or c < 2:
        return 0.0
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    phi2 = float((table**2 / np.outer(rows, cols)).sum() - 1.0)
    if corrected:
        phi2 = max(0.0, phi2 - (r - 1) * (c - 1) / (n - 1))
        r, c = r - (r - 1) ** 2 / (n - 1), c - (c - 1) ** 2 / (n - 1)
    denom = min(r - 1, c - 1)
    return float(np.sqrt(min(phi2 / denom, 1.0))) if denom > 0 else 0.0


def correlation_ratio(groups: np.ndarray, y: np.ndarray, k: int, corrected: bool = True) -> float:
    """eta = sqrt(between-group sum of squares / total sum of squares); corrected for the
    number of groups g like an adjusted R^2: 1 - (1 - eta^2)(n - 1)/(n - g), floored at 0."""
    n = len(y)
    total = float(((y - y.mean()) ** 2).sum())
    if n < 2 or total <= 0:
        return 0.0
    counts = np.bincount(groups, minlength=k)
    means = np.bincount(groups, weights=y, minlength=k) / np.maximum(counts, 1)
    eta2 = float((counts * (means - y.mean()) ** 2).sum() / total)
    g = int((counts > 0).sum())
    if corrected:
        eta2 = 1.0 - (1.0 - eta2) * (n - 1) / (n - g) if n > g else 0.0
    return float(np.sqrt(min(max(eta2, 0.0), 1.0)))


def abs_spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(abs(np.corrcoef(ra, rb)[0, 1]))


def _variables(table: pd.DataFrame, schema: Schema, codes: np.ndarray | None,
               code_idx: np.ndarray) -> list[tuple[str, int, np.ndarray]]:
    """(name, number of categories or 0 for numeric, values) per column, then per code."""
    out = []
    for col in schema.columns:
        if col.is_categorical:
            out.append((col.name, len(col.categories or ()), category_codes(table[col.name], col)))
        else:
            out.append((col.name, 0, numeric_values(table[col.name])))
    if codes is not None:
        for j in code_idx:
            out.append((f"code:{j}", 2, np.asarray(codes[:, j], dtype=np.int64)))
    return out


def association_matrix(table: pd.DataFrame, schema: Schema, codes: np.ndarray | None = None,
                       code_idx: Sequence[int] = (), corrected: bool = True) -> np.ndarray:
    """Symmetric matrix of pairwise associations (module docstring) over the schema's columns,
    then the codes ``code_idx`` of ``codes`` as binary categorical columns."""
    vs = _variables(table, schema, codes, np.asarray(code_idx, dtype=np.int64))
    ok = [(v >= 0) if k else ~np.isnan(v) for _, k, v in vs]
    # numeric columns without missing values are ranked once, not once per pair
    ranks = {i: rankdata(v) for i, ((_, k, v), m) in enumerate(zip(vs, ok, strict=True))
             if not k and m.all()}
    A = np.eye(len(vs))
    for i in range(len(vs)):
        for j in range(i + 1, len(vs)):
            m = ok[i] & ok[j]
            (_, ki, vi), (_, kj, vj) = vs[i], vs[j]
            if ki and kj:
                a = cramers_v(vi[m], vj[m], ki, kj, corrected)
            elif ki or kj:
                g, k, y = (vi, ki, vj) if ki else (vj, kj, vi)
                a = correlation_ratio(g[m], y[m], k, corrected)
            elif i in ranks and j in ranks:
                a = _abs_pearson(ranks[i], ranks[j])
            else:
                a = abs_spearman(vi[m], vj[m])
            A[i, j] = A[j, i] = a
    return A


def _abs_pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(abs(np.corrcoef(a, b)[0, 1]))


def association_r(real: pd.DataFrame, synth: pd.DataFrame, schema: Schema,
                  codes_real: np.ndarray | None = None, codes_synth: np.ndarray | None = None,
                  top_codes: int = 0, corrected: bool = True) -> float:
    """Pearson r between the real and the synthetic association matrices (upper triangle),
    optionally with the ``top_codes`` most prevalent real codes as binary columns. A side with
    no association at all (a constant matrix) reproduces none of the structure: 0.0."""
    idx: np.ndarray = np.zeros(0, dtype=np.int64)
    if top_codes and codes_real is not None and codes_synth is not None:
        idx = np.argsort(-np.asarray(codes_real).mean(axis=0), kind="stable")[:top_codes]
    else:
        codes_real = codes_synth = None
    Ar = association_matrix(real, schema, codes_real, idx, corrected)
    As = association_matrix(synth, schema, codes_synth, idx, corrected)
    iu = np.triu_indices(len(Ar), k=1)
    a, b = Ar[iu], As[iu]
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------- classifiers

def parse_target(text: str, schema: Schema) -> tuple[str, str]:
    """'readmitted=<30' -> ('readmitted', '<30'), checked against the schema."""
    col, sep, value = str(text).partition("=")
    col, value = col.strip(), value.strip()
    if not sep or not col or not value:
        raise InputError("--target", f"expected COLUMN=VALUE (e.g. readmitted=<30), not {text!r}")
    if col not in schema.names:
        raise InputError("--target", f"column {col!r} is not in schema {schema.name!r}")
    c = schema.column(col)
    if c.is_categorical and value not in (c.categories or ()):
        raise InputError("--target", f"{value!r} is not a category of {col!r} (categories: "
                         f"{', '.join(c.categories or ())})")
    if not c.is_categorical:
        try:
            float(value)
        except ValueError:
            raise InputError("--target", f"{col!r} is numeric: the value must be a number, "
                             f"not {value!r}") from None
    return col, value


DEFAULT_TARGET = "readmitted=<30"  # the downstream task


def default_target(schema: Schema) -> str | None:
    """``DEFAULT_TARGET`` when ``schema`` can score it (``parse_target``'s rules), else None
    (no downstream task)."""
    try:
        parse_target(DEFAULT_TARGET, schema)
    except InputError:
        return None
    return DEFAULT_TARGET


def _is_positive(s: pd.Series, col: Column | None, value: str) -> np.ndarray:
    if col is not None and not col.is_categorical:
        return numeric_values(s) == float(value)
    return (s.astype("string") == value).fillna(False).to_numpy(dtype=bool)


def _features(tables: Sequence[pd.DataFrame], schema: Schema,
              exclude: Sequence[str] = ()) -> tuple[list[np.ndarray], np.ndarray]:
    """Feature matrices (categories as schema codes, missing NaN) for each table, the same
    columns for all (the schema's, then any 0/1 code columns every table has), and the
    categorical mask."""
    names = [c for c in schema.names if c not in exclude]
    extra = [c for c in tables[0].columns if c not in schema.names and c not in exclude
             and c != "patient_id" and all(c in t.columns for t in tables[1:])]
    mats, mask = [], []
    for name in names + extra:
        col = schema.column(name) if name in schema.names else None
        is_cat = col is not None and col.is_categorical and len(col.categories or ()) < MAX_BINS
        mask.append(is_cat)
        for i, t in enumerate(tables):
            if col is not None and col.is_categorical:
                v = category_codes(t[name], col).astype(np.float64)
                v[v < 0] = np.nan
            else:
                v = numeric_values(t[name])
            if len(mats) <= i:
                mats.append([])
            mats[i].append(v)
    return [np.column_stack(m) for m in mats], np.asarray(mask, dtype=bool)


def top_code_indices(codes: np.ndarray, k: int) -> np.ndarray:
    """The k most prevalent codes (ties by column order)."""
    return np.argsort(-np.asarray(codes).mean(axis=0), kind="stable")[:k]


def with_codes(table: pd.DataFrame, codes: np.ndarray, idx: np.ndarray,
               names: Sequence[str] | None = None) -> pd.DataFrame:
    """``table`` plus the codes ``idx`` of ``codes`` (same rows) as 0/1 columns 'code:<name>'."""
    labels = [f"code:{names[j] if names is not None else j}" for j in idx]
    extra = pd.DataFrame(np.asarray(codes)[:, idx].astype(np.uint8), columns=labels,
                         index=table.index)
    return pd.concat([table, extra], axis=1)


def _classifier(mask: np.ndarray, seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(categorical_features=mask if mask.any() else None,
                                          random_state=seed)


def downstream_auroc(train_real: pd.DataFrame, synth: pd.DataFrame, test_real: pd.DataFrame,
                     target_col: str, positive_value: str, schema: Schema,
                     seed: int = 0) -> dict[str, float]:
    """TSTR and TRTR AUROC of predicting ``target_col == positive_value`` from the other columns
    (and any 0/1 code columns all three tables share), and their ratio. A training set with one
    class gives a constant predictor (AUROC 0.5); a test set with one class has no AUROC."""
    col = schema.column(target_col) if target_col in schema.names else None
    ys = [_is_positive(t[target_col], col, positive_value) for t in (train_real, synth, test_real)]
    if ys[2].all() or not ys[2].any():
        raise InputError(None, f"the held-out real records all have the same {target_col} == "
                         f"{positive_value!r}: no AUROC")
    (Xr, Xs, Xt), mask = _features([train_real, synth, test_real], schema, [target_col])
    out: dict[str, float] = {}
    for name, X, y in (("trtr", Xr, ys[0]), ("tstr", Xs, ys[1])):
        if y.all() or not y.any():
            out[f"auroc_{name}"] = 0.5
            continue
        clf = _classifier(mask, seed).fit(X, y)
        out[f"auroc_{name}"] = float(roc_auc_score(ys[2], clf.predict_proba(Xt)[:, 1]))
    out["auroc_ratio"] = out["auroc_tstr"] / out["auroc_trtr"] if out["auroc_trtr"] > 0 else 0.0
    out["positive_rate_real"] = float(ys[2].mean())
    out["positive_rate_synth"] = float(ys[1].mean())
    return out


def discriminator_auroc_records(real: pd.DataFrame, synth: pd.DataFrame, schema: Schema,
                                seed: int = 0, max_rows: int = 10_000,
                                folds: int = 3) -> float:
    """Cross-validated AUROC of gradient boosting telling real from synthetic records (every
    schema column, plus 0/1 code columns both share) on equal-size samples; 0.5 = no
    difference. Trees see interactions, so broken associations show even with exact
    marginals."""
    rng = np.random.default_rng(seed)
    m = min(len(real), len(synth), max_rows)
    if m < folds * 2:
        return float("nan")  # too few records to cross-validate: no figure
    R = real.iloc[rng.choice(len(real), m, replace=False)]
    S = synth.iloc[rng.choice(len(synth), m, replace=False)]
    (Xr, Xs), mask = _features([R, S], schema)
    X, y = np.vstack([Xr, Xs]), np.r_[np.ones(m), np.zeros(m)]
    scores = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        scores[te] = _classifier(mask, seed).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1]
    return float(roc_auc_score(y, scores))


# ---------------------------------------------------------------- everything

def record_fidelity(real_holdout: pd.DataFrame, synth: pd.DataFrame, schema: Schema,
                    real_train: pd.DataFrame | None = None, target: str | None = None,
                    codes_real: np.ndarray | None = None, codes_synth: np.ndarray | None = None,
                    codes_train: np.ndarray | None = None, seed: int = 0,
                    dcr_rows: int = 2000, disc_rows: int = 10_000,
                    timings: dict[str, float] | None = None) -> dict[str, float]:
    """All record metrics in one flat dict of finite floats (``tv.<column>``, ``ks.<column>``,
    ``tv_mean``, ``ks_mean``, ``association_r``, ``downstream_*``, ``discriminator_auroc``,
    ``dcr_*``).

    ``target`` ('readmitted=<30'): the downstream task; trained on ``real_train`` for TRTR, or,
    without it, on a random half of ``real_holdout`` (both then tested on the other half).
    ``real_train`` also gives the members of the distance-to-closest-record comparison (left
    out without it). ``codes_*``: 0/1 code matrices in the tables' row order (same columns);
    with them the association matrix gains the 10 most prevalent codes
    (``association_r_codes``) and the classifiers the 50 most prevalent as features.
    ``timings`` is filled with the seconds each part took.
    """
    timings = timings if timings is not None else {}
    out: dict[str, float] = {"n_real": float(len(real_holdout)), "n_synth": float(len(synth))}
    has_codes = codes_real is not None and codes_synth is not None
    if has_codes and (real_train is None) != (codes_train is None):
        raise ValueError("give codes_train with real_train (or neither)")

    t0 = time.perf_counter()
    marg = column_marginals(real_holdout, synth, schema)
    out.update({k: v for k, v in marg.items() if not isinstance(v, dict)})
    out.update({f"tv.{c}": v for c, v in marg["tv"].items()})
    out.update({f"ks.{c}": v for c, v in marg["ks"].items()})
    timings["marginals"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out["association_r"] = association_r(real_holdout, synth, schema)
    if has_codes:
        out["association_r_codes"] = association_r(real_holdout, synth, schema, codes_real,
                                                   codes_synth, TOP_CODES)
    timings["association"] = time.perf_counter() - t0

    hold, syn, train = real_holdout, synth, real_train
    if has_codes:  # the classifiers also see the most prevalent codes (of the real side)
        idx = top_code_indices(codes_train if codes_train is not None else codes_real,
                               MODEL_CODES)
        hold, syn = with_codes(hold, codes_real, idx), with_codes(syn, codes_synth, idx)
        train = None if train is None else with_codes(train, codes_train, idx)
    if target:
        t0 = time.perf_counter()
        col, value = parse_target(target, schema)
        test = hold
        if train is None:
            perm = np.random.default_rng(seed).permutation(len(hold))
            half = len(perm) // 2
            train, test = hold.iloc[perm[:half]], hold.iloc[perm[half:]]
        d = downstream_auroc(train, syn, test, col, value, schema, seed)
        out.update({f"downstream_{k}": v for k, v in d.items()})
        timings["downstream"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out["discriminator_auroc"] = discriminator_auroc_records(hold, syn, schema, seed, disc_rows)
    timings["discriminator"] = time.perf_counter() - t0

    if real_train is not None:
        t0 = time.perf_counter()
        out.update(gower_dcr(real_train, real_holdout, synth, schema, dcr_rows, seed))
        timings["dcr"] = time.perf_counter() - t0

    bad = [k for k, v in out.items() if not np.isfinite(v)]
    for k in bad:
        log.warning("record metric %s is not finite (%s): left out", k, out.pop(k))
    return {k: float(v) for k, v in out.items()}


__all__ = ["abs_spearman", "association_matrix", "association_r", "column_marginals",
           "correlation_ratio", "cramers_v", "default_target", "discriminator_auroc_records",
           "downstream_auroc",
           "gower_dcr", "parse_target", "record_fidelity", "top_code_indices", "with_codes"]
