"""The embedded demo cohort: a seeded generator of realistic multi-site EHR code matrices.

Its parameters are figures, not patient rows: comorbidity clusters over real ICD-9-CM 3-digit
categories (each code with its probability given the cluster), per-site cluster weights (a
cardiac centre, a general hospital, a psychiatric/community service, ...), demographic effects
on clusters, and a Zipf-weighted long tail of rarer codes. About 3-5 codes per patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedsynth.common.data.matrix import CodeMatrix, LoadReport
from fedsynth.common.vocabulary import Vocabulary, icd9_categories

# cluster -> {code: P(code | patient in cluster)}
CLUSTERS: dict[str, dict[str, float]] = {
    "diabetes": {"250": 0.97, "401": 0.55, "272": 0.45, "278": 0.15, "403": 0.10, "585": 0.12,
                 "357": 0.06, "362": 0.06, "V58": 0.25, "707": 0.05},
    "cardiac": {"414": 0.75, "401": 0.50, "427": 0.40, "272": 0.40, "410": 0.25, "424": 0.15,
                "V45": 0.30, "428": 0.20, "413": 0.08, "V58": 0.15},
    "heart_failure_renal": {"428": 0.90, "427": 0.40, "403": 0.40, "584": 0.35, "585": 0.35,
                            "276": 0.30, "285": 0.25, "518": 0.10, "V45": 0.15},
    "respiratory": {"486": 0.60, "491": 0.35, "496": 0.30, "518": 0.30, "493": 0.15,
                    "786": 0.20, "V46": 0.05},
    "sepsis": {"038": 0.92, "995": 0.70, "785": 0.30, "584": 0.35, "599": 0.30, "276": 0.30,
               "518": 0.20, "041": 0.25},
    "mental": {"296": 0.45, "311": 0.35, "300": 0.35, "305": 0.25, "295": 0.12, "309": 0.12,
               "V62": 0.10, "E950": 0.03, "303": 0.10},
    "substance": {"303": 0.60, "305": 0.50, "291": 0.20, "571": 0.20, "304": 0.25, "V62": 0.05},
    "injury": {"E849": 0.55, "E888": 0.35, "E880": 0.20, "959": 0.20, "820": 0.20, "873": 0.15,
               "850": 0.15, "E812": 0.12, "812": 0.10, "824": 0.10, "805": 0.05},
    "pregnancy": {"V27": 0.95, "650": 0.50, "664": 0.30, "648": 0.25, "659": 0.15, "644": 0.10,
                  "654": 0.10},
    "gastro": {"578": 0.30, "574": 0.25, "577": 0.20, "562": 0.20, "558": 0.20, "530": 0.30,
               "787": 0.20, "789": 0.25, "571": 0.08},
    "oncology": {"162": 0.20, "174": 0.15, "153": 0.12, "185": 0.12, "197": 0.25, "198": 0.20,
                 "V58": 0.35, "285": 0.30, "V10": 0.20, "E933": 0.10},
    "neuro": {"434": 0.35, "436": 0.15, "342": 0.20, "345": 0.25, "331": 0.15, "332": 0.10,
              "780": 0.30, "438": 0.15, "401": 0.30},
}

# rarer codes outside the clusters, most frequent first (Zipf-weighted)
_TAIL_TEXT = """
780 789 787 729 719 724 722 715 733 682 440 443 435 433 437 244 266 280 281 287 288 008 009 079
112 117 110 154 157 183 188 189 191 199 202 203 204 211 218 225 235 238 239 404 411 415 416 423
425 426 429 441 442 444 447 451 453 455 456 458 459 466 473 477 480 481 482 485 487 490 492 494
507 511 512 514 515 516 531 532 533 535 536 537 550 553 555 556 560 564 566 567 568 569 570 572
573 575 576 579 581 583 588 590 591 592 593 594 595 596 600 601 603 607 611 614 617 618 620 625
626 627 681 686 692 693 696 698 701 706 709 710 711 714 716 718 721 723 726 727 728 730 731 736
737 738 756 758 759 781 782 783 784 788 790 791 793 794 796 799 802 807 808 813 814 816 823 825
836 840 842 844 845 847 851 852 853 854 864 870 881 882 883 891 892 919 920 922 924 933 934 935
942 945 958 965 966 967 968 969 970 977 980 986 989 990 994 996 997 998 999 V08 V12 V13 V15 V16
V17 V42 V43 V44 V49 V53 V54 V55 V57 V64 V66 V85 E878 E879 E884 E885 E917 E927 E928 E930 E932
E934 E935 E936 E937 E938 E939 E942 E944 E947
"""
TAIL: tuple[str, ...] = tuple(dict.fromkeys(_TAIL_TEXT.split()))
TAIL_ZIPF_EXPONENT = 1.1
TAIL_ZIPF_OFFSET = 5.0

AGE_BANDS: tuple[str, ...] = tuple(f"[{a}-{a + 10})" for a in range(0, 100, 10))


@dataclass(frozen=True)
class SiteProfile:
    """One kind of hospital: its case mix (cluster weights), demographics and tail rate."""

    kind: str
    cluster_weights: dict[str, float]
    age_weights: tuple[float, ...]  # over AGE_BANDS
    female: float  # share of women
    second_cluster: float  # P(a patient has a second cluster)
    tail_rate: float  # mean number of long-tail codes per patient


PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        "cardiac centre",
        {"cardiac": 5.0, "heart_failure_renal": 3.0, "diabetes": 2.5, "neuro": 1.0,
         "respiratory": 0.8, "sepsis": 0.4, "gastro": 0.5, "oncology": 0.3, "mental": 0.3,
         "substance": 0.2, "injury": 0.3, "pregnancy": 0.05},
        (0.0, 0.005, 0.01, 0.03, 0.08, 0.16, 0.24, 0.25, 0.17, 0.055), 0.38, 0.55, 0.8,
    ),
    SiteProfile(
        "general hospital",
        {"cardiac": 1.5, "heart_failure_renal": 1.2, "diabetes": 1.8, "neuro": 1.0,
         "respiratory": 1.6, "sepsis": 1.2, "gastro": 1.5, "oncology": 1.0, "mental": 0.6,
         "substance": 0.6, "injury": 1.4, "pregnancy": 1.0},
        (0.02, 0.03, 0.08, 0.10, 0.11, 0.14, 0.16, 0.16, 0.13, 0.07), 0.54, 0.45, 1.0,
    ),
    SiteProfile(
        "psychiatric and community",
        {"cardiac": 0.3, "heart_failure_renal": 0.2, "diabetes": 0.8, "neuro": 0.6,
         "respiratory": 0.5, "sepsis": 0.2, "gastro": 0.4, "oncology": 0.1, "mental": 5.0,
         "substance": 3.0, "injury": 1.2, "pregnancy": 0.3},
        (0.01, 0.06, 0.20, 0.20, 0.18, 0.14, 0.09, 0.06, 0.04, 0.02), 0.50, 0.50, 0.7,
    ),
)

# demographic multipliers on cluster weights: (female, male) and per age band
SEX_EFFECT: dict[str, tuple[float, float]] = {"pregnancy": (1.0, 0.0), "cardiac": (0.7, 1.3),
                                              "substance": (0.5, 1.5), "injury": (0.8, 1.2)}
AGE_EFFECT: dict[str, tuple[float, ...]] = {
    "pregnancy": (0, 0.3, 1.0, 1.0, 0.4, 0.02, 0, 0, 0, 0),
    "cardiac": (0.01, 0.02, 0.05, 0.15, 0.4, 0.8, 1.0, 1.2, 1.2, 1.1),
    "heart_failure_renal": (0.01, 0.01, 0.03, 0.08, 0.2, 0.5, 0.9, 1.2, 1.4, 1.5),
    "diabetes": (0.05, 0.1, 0.2, 0.4, 0.7, 1.0, 1.1, 1.0, 0.8, 0.6),
    "neuro": (0.2, 0.2, 0.3, 0.3, 0.5, 0.7, 1.0, 1.3, 1.5, 1.5),
    "oncology": (0.05, 0.05, 0.1, 0.2, 0.5, 0.9, 1.2, 1.2, 1.0, 0.8),
    "mental": (0.3, 1.2, 1.4, 1.3, 1.2, 1.0, 0.7, 0.5, 0.5, 0.5),
    "substance": (0.0, 0.6, 1.4, 1.4, 1.3, 1.0, 0.6, 0.3, 0.1, 0.05),
    "injury": (1.5, 1.5, 1.3, 1.0, 0.8, 0.7, 0.7, 0.9, 1.3, 1.6),
    "sepsis": (0.5, 0.3, 0.3, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 1.6),
}
SITE_JITTER = 0.25  # sites beyond the built-in profiles: log-normal jitter of cluster weights


def site_names(n_sites: int) -> list[str]:
    """'A', 'B', ..., 'Z', 'AA', 'AB', ..."""
    names = []
    for i in range(n_sites):
        s, k = "", i
        while True:
            s = chr(ord("A") + k % 26) + s
            k = k // 26 - 1
            if k < 0:
                break
        names.append(s)
    return names


def site_profile(i: int) -> SiteProfile:
    """The profile of site i: the built-in ones in turn, jittered (fixed seed) past the first
    round so that every site differs."""
    base = PROFILES[i % len(PROFILES)]
    if i < len(PROFILES):
        return base
    rng = np.random.default_rng(10_000 + i)
    weights = {k: v * float(np.exp(rng.normal(0, SITE_JITTER))) for k, v in
               base.cluster_weights.items()}
    return SiteProfile(f"{base.kind} {i // len(PROFILES) + 1}", weights, base.age_weights,
                       base.female, base.second_cluster, base.tail_rate)


def demo_cohort(n_sites: int = 3, patients_per_site: int = 2000, seed: int = 0) -> CodeMatrix:
    """A seeded multi-site cohort over the public ICD-9 vocabulary, covariates site/age/gender.

    Deterministic for (n_sites, patients_per_site, seed).
    """
    if n_sites < 1 or patients_per_site < 1:
        raise ValueError("n_sites and patients_per_site must be >= 1")
    vocab = icd9_categories()
    rng = np.random.default_rng(seed)
    parts, covs, ids = [], [], []
    for i, name in enumerate(site_names(n_sites)):
        X, age, sex = _sample_site(site_profile(i), patients_per_site, vocab, rng)
        parts.append(X)
        covs.append(pd.DataFrame({"site": name, "age_band": age, "gender": sex}))
        ids.extend(f"{name}-{j + 1:06d}" for j in range(patients_per_site))
    X = np.concatenate(parts)
    source = f"demo_cohort(n_sites={n_sites}, patients_per_site={patients_per_site}, seed={seed})"
    report = LoadReport(path=source, format="demo", rows_read=X.shape[0], patients=X.shape[0],
                        codes_used=int(X.any(axis=0).sum()), vocabulary=vocab.name)
    return CodeMatrix(X, np.array(ids), vocab, source, report,
                      pd.concat(covs, ignore_index=True))


def _sample_site(
    profile: SiteProfile, n: int, vocab: Vocabulary, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names = list(CLUSTERS)
    age = rng.choice(len(AGE_BANDS), size=n, p=_norm(profile.age_weights))
    female = rng.random(n) < profile.female
    # per-patient cluster weights: site case mix x demographic effects
    W = np.tile([profile.cluster_weights.get(k, 0.0) for k in names], (n, 1))
    for k, name in enumerate(names):
        if name in AGE_EFFECT:
            W[:, k] *= np.asarray(AGE_EFFECT[name])[age]
        if name in SEX_EFFECT:
            W[:, k] *= np.where(female, SEX_EFFECT[name][0], SEX_EFFECT[name][1])
    member = np.zeros((n, len(names)), dtype=bool)
    member[np.arange(n), _categorical(W, rng)] = True
    second = rng.random(n) < profile.second_cluster
    member[np.flatnonzero(second), _categorical(W[second], rng)] = True
    # code probabilities: P(code) = 1 - prod over the patient's clusters (1 - P(code | cluster))
    local = sorted({c for cl in CLUSTERS.values() for c in cl}, key=vocab.index)
    C = np.zeros((len(names), len(local)))
    for k, name in enumerate(names):
        for code, p in CLUSTERS[name].items():
            C[k, local.index(code)] = p
    P = 1.0 - np.exp(member.astype(float) @ np.log1p(-np.minimum(C, 0.999)))
    Xl = rng.random(P.shape) < P
    X = np.zeros((n, len(vocab)), dtype=np.uint8)
    X[:, [vocab.index(c) for c in local]] = Xl
    # every patient has at least one code: the most likely code of their first cluster
    empty = np.flatnonzero(~Xl.any(axis=1))
    first = member[empty].argmax(axis=1)
    X[empty, [vocab.index(max(CLUSTERS[names[k]], key=CLUSTERS[names[k]].get)) for k in first]] = 1
    # long tail
    tail_idx = np.array([vocab.index(c) for c in TAIL])
    tail_p = _norm(1.0 / (np.arange(len(TAIL)) + TAIL_ZIPF_OFFSET) ** TAIL_ZIPF_EXPONENT)
    counts = rng.poisson(profile.tail_rate, size=n)
    rows = np.repeat(np.arange(n), counts)
    X[rows, tail_idx[rng.choice(len(TAIL), size=rows.size, p=tail_p)]] = 1
    ages = np.asarray(AGE_BANDS)[age]
    sexes = np.where(female, "Female", "Male")
    return X, ages, sexes


def _categorical(W: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of the (unnormalised) weight matrix W."""
    cum = np.cumsum(W, axis=1)
    u = rng.random(W.shape[0]) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), W.shape[1] - 1)


def _norm(w: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(w, dtype=float)
    return a / a.sum()
