"""The public code vocabulary: which diagnosis codes are matrix columns, in which order.

The vocabulary is never derived from patients (a data-derived column set would leak membership
and would have to be paid for in the DP accounting). The default is every ICD-9-CM 3-digit
category (001-999, V01-V91, E000-E999: 2,090 codes); a coordinator may instead distribute a
vocabulary file (JSON written by ``Vocabulary.save``, or one code per line / first CSV column).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedsynth.common.atomic import write_json
from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

ICD9_CATEGORIES_NAME = "icd9cm-3digit"
ICD10_CATEGORIES_NAME = "icd10cm-3char"

_NUMERIC = re.compile(r"^\d+$")
# a column name that is safe in CSV headers (no formula injection) and in file formats
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


@dataclass(frozen=True)
class Vocabulary:
    """An ordered tuple of codes (matrix columns) with optional human-readable titles."""

    codes: tuple[str, ...]
    titles: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    name: str = "custom"
    _positions: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        codes = tuple(str(c) for c in self.codes)
        object.__setattr__(self, "codes", codes)
        positions = {c: i for i, c in enumerate(codes)}
        if len(positions) != len(codes):
            dup = next(c for i, c in enumerate(codes) if positions[c] != i)
            raise ValueError(f"vocabulary {self.name!r} lists code {dup!r} twice")
        object.__setattr__(self, "_positions", positions)

    def __len__(self) -> int:
        return len(self.codes)

    def __contains__(self, code: object) -> bool:
        return code in self._positions

    def __iter__(self) -> Iterator[str]:
        return iter(self.codes)

    def index(self, code: str) -> int:
        """Column of ``code``; KeyError if it is not in the vocabulary."""
        try:
            return self._positions[code]
        except KeyError:
            raise KeyError(f"code {code!r} is not in vocabulary {self.name!r}") from None

    def positions(self) -> dict[str, int]:
        """A copy of the code -> column mapping (for vectorised look-ups)."""
        return dict(self._positions)

    def title(self, code: str) -> str:
        return self.titles.get(code, "")

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "codes": list(self.codes), "titles": dict(self.titles)}

    @classmethod
    def from_dict(cls, obj: dict[str, object], source: object = None) -> Vocabulary:
        codes = obj.get("codes")
        if not isinstance(codes, list) or not codes:
            raise InputError(source, "vocabulary JSON has no non-empty 'codes' list")
        titles = obj.get("titles") or {}
        if not isinstance(titles, dict):
            raise InputError(source, "vocabulary JSON 'titles' must be an object code -> title")
        _check_codes([str(c).strip() for c in codes], source)
        try:
            return cls(
                tuple(str(c).strip() for c in codes),
                {str(k): str(v) for k, v in titles.items()},
                str(obj.get("name") or "custom"),
            )
        except ValueError as err:
            raise InputError(source, str(err)) from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON (``name``, ``codes``, ``titles``), atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary file: JSON (from ``save``, or a plain list of codes), or text/CSV
        with one code per line (first column; a header line 'code' is skipped)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise InputError(p, "vocabulary file not found") from None
        except UnicodeDecodeError:
            raise InputError(p, "vocabulary file is not UTF-8 text") from None
        except OSError as err:
            raise InputError(p, f"cannot read vocabulary file ({err.strerror})") from None
        if not text.strip():
            raise InputError(p, "vocabulary file is empty")
        if text.lstrip()[:1] in "[{":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as err:
                problem = f"invalid JSON in vocabulary file (line {err.lineno})"
                raise InputError(p, problem) from None
            if isinstance(obj, list):
                obj = {"codes": obj, "name": p.stem}
            if not isinstance(obj, dict):
                raise InputError(p, "vocabulary JSON must be an object or a list of codes")
            obj.setdefault("name", p.stem)
            return cls.from_dict(obj, p)
        codes: list[str] = []
        titles: dict[str, str] = {}
        for i, row in enumerate(csv.reader(io.StringIO(text))):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            code = row[0].strip()
            if i == 0 and code.lower() in {"code", "codes", "icd9_code", "icd_code"}:
                continue
            codes.append(code)
            if len(row) > 1 and row[1].strip():
                titles[code] = row[1].strip()
        if not codes:
            raise InputError(p, "vocabulary file lists no codes")
        _check_codes(codes, p)
        try:
            return cls(tuple(codes), titles, p.stem)
        except ValueError as err:
            raise InputError(p, str(err)) from None


def _check_codes(codes: list[str], source: object) -> None:
    """A distributed vocabulary file holds codes only: no formulas, spaces or control bytes."""
    bad = next((c for c in codes if not _CODE.match(c)), None)
    if bad is not None:
        raise InputError(
            source, f"{bad[:40]!r} is not a code",
            "Codes are letters, digits and '.:_/-', start with a letter or digit, max 64 chars",
        )


def icd9_category(code: str) -> str:
    """The 3-digit ICD-9-CM category of a code, as medGAN groups them.

    Dotted codes keep the part before the point; undotted (MIMIC) codes are split the same way:
    numeric -> first 3 digits, zero-padded ('8' -> '008', '250.83' -> '250', '4019' -> '401');
    V codes -> 'V' + 2 digits ('V4581' -> 'V45'); E codes -> 'E' + 3 digits ('E8889' -> 'E888').
    Anything else (e.g. an ICD-10 code) comes back upper-cased and unchanged, so that it is
    reported as out of vocabulary rather than mangled.
    """
    c = str(code).strip().upper()
    head, dot, _ = c.partition(".")
    if _NUMERIC.match(head):
        return head.zfill(3) if dot or len(head) <= 3 else head[:3]
    prefix, body = head[:1], head[1:]
    if prefix in ("V", "E") and _NUMERIC.match(body):
        width = 2 if prefix == "V" else 3
        if len(body) == width or (not dot and len(body) > width):
            return prefix + body[:width]
    return c


def icd10_category(code: str) -> str:
    """The 3-character ICD-10-CM category of a code ('E11.9' -> 'E11', 'I110' -> 'I11')."""
    return str(code).strip().upper().replace(".", "")[:3]


def icd9_full_code(code: str) -> str:
    """A full ICD-9-CM code in dotted form ('4019' -> '401.9', 'E8889' -> 'E888.9', 'V4581' ->
    'V45.81', '250.83' -> '250.83'); the form the full-code vocabulary file uses."""
    c = str(code).strip().upper()
    if not c or "." in c:
        return c
    split = 4 if c[:1] == "E" else 3
    return c if len(c) <= split else f"{c[:split]}.{c[split:]}"


@functools.cache
def _icd9_category_codes() -> tuple[str, ...]:
    numeric = [f"{i:03d}" for i in range(1, 1000)]
    v_codes = [f"V{i:02d}" for i in range(1, 92)]
    e_codes = [f"E{i:03d}" for i in range(0, 1000)]
    return tuple(numeric + v_codes + e_codes)


@functools.cache
def icd9_categories() -> Vocabulary:
    """Every ICD-9-CM 3-digit category: 001-999, V01-V91, E000-E999 (2,090 codes), public."""
    from fedsynth.common.data.titles import icd9_category_titles

    return Vocabulary(_icd9_category_codes(), icd9_category_titles(), ICD9_CATEGORIES_NAME)


@functools.cache
def icd10_categories() -> Vocabulary:
    """ICD-10-CM 3-character categories, public: the official list when a package ships it
    offline, else every letter + 2 digits (A00-Z99) plus the alphanumeric categories."""
    from fedsynth.common.data.titles import icd10_category_list

    codes, titles = icd10_category_list()
    return Vocabulary(codes, titles, ICD10_CATEGORIES_NAME)
