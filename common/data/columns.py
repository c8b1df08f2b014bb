"""``--columns auto|all|codes``: whether a run models whole records or the code matrix only.

``auto`` (the default of every command) is ``all`` where the input has per-patient columns a
schema describes: diabetes130, MIMIC with PATIENTS and ADMISSIONS beside the diagnoses, or any
input given ``--schema``; ``codes`` otherwise (a long table without a schema, a 0/1 matrix,
MIMIC diagnoses alone). The choice reads the file's header and the folder's listing, nothing
else.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

CHOICES = ("auto", "all", "codes")


def resolve_columns(choice: str, path: str | Path, fmt: str = "auto",
                    schema: object = None) -> str:
    """"all" or "codes" for ``--columns choice`` on ``path`` (module docstring). An unreadable
    file resolves to "codes": its loader then says what is wrong in one line."""
    if choice not in CHOICES:
        raise InputError("--columns", f"unknown choice {choice!r} (one of {', '.join(CHOICES)})")
    if choice != "auto":
        return choice
    if schema:
        return "all"
    from fedsynth.common.data.loaders import FORMAT_ALIASES, detect_format  # pandas: lazily
    from fedsynth.common.data.reading import read_header, resolve_input
    from fedsynth.common.data.records_mimic import find_beside

    try:
        p = resolve_input(path)
        name = FORMAT_ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
        if name == "auto":
            name = detect_format(read_header(p)) or "matrix"
        has = name == "diabetes130" or (
            name == "mimic" and find_beside(p, "patients") is not None
            and find_beside(p, "admissions") is not None)
    except (InputError, OSError):
        return "codes"
    log.info("%s: %s", p, "whole records (the schema's columns beside the codes; --columns "
             "codes for the code matrix only)" if has else "the code matrix (no per-patient "
             "columns this format's built-in schema describes)")
    return "all" if has else "codes"
