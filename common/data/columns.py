"""``--columns auto|all|codes``: whether a run models whole records or the code matrix only.

``auto`` (the default of every command) is ``all`` where the input has per-patient columns a
schema describes: diabetes130, MIMIC with PATIENTS and ADMISSIONS beside the diagnoses, or any
input given ``--schema``; ``codes`` otherwise (a long table without a schema, a 0/1 matrix,
MIMIC diagnoses alone). The choice reads the file's header and the folder's listing, nothing
else.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsynth.common.errors import InputError

if TYPE_CHECKING:
    from fedsynth.common.data.matrix import CodeMatrix
    from fedsynth.common.data.record_tokens import TokenLayout
    from fedsynth.common.data.records import Records

log = logging.getLogger(__name__)

CHOICES = ("auto", "all", "codes")
COLUMNS_HELP = ("all: whole records, the schema's columns (demographics, admission, counts, "
                "outcomes) beside the codes; codes: the code matrix only; auto (default): all "
                "for diabetes130, MIMIC with PATIENTS/ADMISSIONS beside the diagnoses, or with "
                "--schema; codes otherwise")
SCHEMA_HELP = "whole records: a built-in schema name or a TOML file (default: the format's)"


def add_columns_args(parser: argparse.ArgumentParser, schema_note: str = "") -> None:
    """``--columns`` and ``--schema``, worded the same in every command."""
    parser.add_argument("--columns", choices=CHOICES, default="auto", help=COLUMNS_HELP)
    parser.add_argument("--schema", help=SCHEMA_HELP + schema_note)


def format_name(path: str | Path, fmt: str = "auto") -> str:
    """The loader format of ``path``: ``fmt`` through its aliases, or detected from the header
    when "auto" ("matrix" when nothing matches)."""
    from fedsynth.common.data.loaders import FORMAT_ALIASES, detect_format  # pandas: lazily
    from fedsynth.common.data.reading import read_header, resolve_input

    name = FORMAT_ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
    if name == "auto":
        name = detect_format(read_header(resolve_input(path))) or "matrix"
    return name


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
    from fedsynth.common.data.reading import resolve_input
    from fedsynth.common.data.records_mimic import find_beside

    try:
        p = resolve_input(path)
        name = format_name(p, fmt)
        has = name == "diabetes130" or (
            name == "mimic" and find_beside(p, "patients") is not None
            and find_beside(p, "admissions") is not None)
    except (InputError, OSError):
        return "codes"
    log.info("%s: %s", p, "whole records (the schema's columns beside the codes; --columns "
             "codes for the code matrix only)" if has else "the code matrix (no per-patient "
             "columns this format's built-in schema describes)")
    return "all" if has else "codes"


def load_data(path: str | Path, fmt: str = "auto", columns: str = "auto",
              schema: str | None = None, vocab: Any = None,
              flag: str = "--") -> CodeMatrix | Records:
    """``--columns``' decision and load: the ``Records`` (``load_records``) or the code matrix
    (``load_codes``), over ``vocab`` when given. A schema with the code matrix is refused
    (``flag``: how the error names the options, "--" on the command line, "" in Python)."""
    from fedsynth.common.data import load_codes

    if resolve_columns(columns, path, fmt, schema) == "codes":
        if schema:
            raise InputError(f"{flag}schema", f"only with {flag}columns all")
        return load_codes(path, format=fmt, vocab=vocab)
    from fedsynth.common.data.records import load_records

    return load_records(path, fmt, schema=schema, vocab=vocab)


def load_matrix(path: str | Path, fmt: str = "auto", columns: str = "auto",
                schema: str | None = None) -> tuple[CodeMatrix, Records | None,
                                                    TokenLayout | None]:
    """What a command trains on, by ``--columns`` (``load_data``): whole records as the
    model's matrix (the schema's tokens, then the codes: ``record_tokens.records_matrix``) with
    the ``Records`` and their token layout, or the code matrix alone with (None, None)."""
    from fedsynth.common.data.record_tokens import records_matrix
    from fedsynth.common.data.records import Records

    data = load_data(path, fmt, columns, schema)
    if not isinstance(data, Records):
        return data, None, None
    matrix, layout = records_matrix(data)
    return matrix, data, layout
