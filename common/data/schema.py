"""A public record schema: the columns of a patient record, their types and their domains.

Types and domains (categories, integer or real bounds) come from a schema, never from the
patients: a model scaled by the data's own min/max or categories would leak them outside the
privacy ledger. Built-in schemas (``schema_for``) follow the sources' data dictionaries; other
sources describe theirs in a TOML file (``read_schema``); ``schema_infer`` reads one off a table
for non-private use only. Any invalid schema raises ``InputError`` (one line).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedsynth.common.atomic import atomic_open
from fedsynth.common.errors import InputError

KINDS = ("categorical", "integer", "real")
TRANSFORMS = ("none", "log1p")
RESERVED = ("patient_id",)  # the output's id column
# the records model's own column of a record's number of codes (record_tokens.model_layout)
CODES_COUNT = "codes:count"
_COLUMN_KEYS = {"name", "kind", "categories", "low", "high", "transform", "note", "outcome"}
INT_LIMIT = 2**53  # exact in float64, so bounds survive encode/decode and TOML


@dataclass(frozen=True)
class Column:
    """One record column: categorical (``categories``) or integer/real in ``[low, high]``.

    ``transform='log1p'`` puts counts on a log scale before scaling to [-1, 1]; ``note`` says
    where a domain comes from (e.g. a bound chosen because the dictionary gives none).
    ``outcome``: the column downstream studies predict (at most one per schema, categorical):
    a records model trained under DP keeps the outcome's rate within each value of the other
    columns that matter most (``common.model.outcome``).
    """

    name: str
    kind: str
    categories: tuple[str, ...] | None = None
    low: float | int | None = None
    high: float | int | None = None
    transform: str = "none"
    note: str = ""
    outcome: bool = False

    @property
    def is_categorical(self) -> bool:
        return self.kind == "categorical"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "kind": self.kind}
        if self.is_categorical:
            out["categories"] = list(self.categories or ())
        else:
            out.update(low=self.low, high=self.high, transform=self.transform)
        if self.note:
            out["note"] = self.note
        if self.outcome:
            out["outcome"] = True
        return out


@dataclass(frozen=True)
class Schema:
    """A named, ordered set of columns (the record layout of a source)."""

    name: str
    columns: tuple[Column, ...]
    description: str = ""
    source: str = field(default="", compare=False)  # file it was read from, for messages

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def outcome(self) -> str | None:
        """The name of the outcome column (``Column.outcome``), or None."""
        return next((c.name for c in self.columns if c.outcome), None)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "description": self.description,
                "columns": [c.to_dict() for c in self.columns]}


def schema_from_dict(data: object, source: str | Path | None = None) -> Schema:
    """A validated Schema from parsed TOML/JSON; InputError naming ``source`` otherwise."""
    where = source if source is not None else "schema"
    if not isinstance(data, dict):
        raise InputError(where, "a schema is a table with 'name' and [[columns]]")
    unknown = set(data) - {"name", "description", "columns"}
    if unknown:
        raise InputError(where, f"unknown schema key {sorted(unknown)[0]!r}",
                         "Use name, description and [[columns]]")
    name, desc, cols = data.get("name"), data.get("description", ""), data.get("columns")
    if not isinstance(name, str) or not name.strip():
        raise InputError(where, "the schema needs a non-empty 'name'")
    if not isinstance(desc, str):
        raise InputError(where, "'description' must be a string")
    if not isinstance(cols, list) or not cols:
        raise InputError(where, "the schema needs at least one [[columns]] entry")
    columns = tuple(_column(c, i, where) for i, c in enumerate(cols))
    seen: set[str] = set()
    for c in columns:  # any case: data columns are looked up case-insensitively
        if c.name.lower() in seen:
            raise InputError(where, f"column {c.name!r} is declared twice (names are compared "
                             "in any case)")
        seen.add(c.name.lower())
    outcomes = [c.name for c in columns if c.outcome]
    if len(outcomes) > 1:
        raise InputError(where, f"columns {outcomes[0]!r} and {outcomes[1]!r} are both marked "
                         "outcome: a schema has at most one")
    return Schema(name.strip(), columns, desc, str(source or ""))


def _column(d: object, i: int, where: object) -> Column:
    if not isinstance(d, dict):
        raise InputError(where, f"columns[{i}] must be a table")
    name = d.get("name")
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise InputError(where, f"columns[{i}] needs a 'name' without surrounding spaces")
    at = f"column {name!r}"
    if name.lower() in RESERVED:
        raise InputError(where, f"{at}: the name {name!r} is reserved for the patient id")
    if name == CODES_COUNT:
        raise InputError(where, f"{at}: the name {name!r} is reserved for the records model's "
                         "number of codes")
    if set(d) - _COLUMN_KEYS:
        raise InputError(where, f"{at}: unknown key {sorted(set(d) - _COLUMN_KEYS)[0]!r}")
    kind, note, outcome = d.get("kind"), d.get("note", ""), d.get("outcome", False)
    if kind not in KINDS:
        raise InputError(where, f"{at}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not isinstance(note, str):
        raise InputError(where, f"{at}: 'note' must be a string")
    if not isinstance(outcome, bool) or (outcome and kind != "categorical"):
        raise InputError(where, f"{at}: 'outcome' must be true or false, and only a "
                         "categorical column can be the outcome")
    if kind == "categorical":
        cats = d.get("categories")
        if not isinstance(cats, list) or not cats or not all(isinstance(c, str) for c in cats):
            raise InputError(where, f"{at}: 'categories' must be a non-empty list of strings")
        if len(set(cats)) != len(cats):
            dup = next(c for c in cats if cats.count(c) > 1)
            raise InputError(where, f"{at}: category {dup!r} is listed twice")
        odd = next((c for c in cats if not c.strip() or c != c.strip()), None)
        if odd is not None:  # values are read stripped, and an empty one is missing
            raise InputError(where, f"{at}: category {odd!r} is empty or has surrounding "
                             "spaces: no value could match it")
        if any(k in d for k in ("low", "high")) or d.get("transform", "none") != "none":
            raise InputError(where, f"{at}: a categorical column has no low/high/transform")
        return Column(name, kind, tuple(cats), note=note, outcome=outcome)
    if "categories" in d:
        raise InputError(where, f"{at}: an {kind} column has no 'categories'")
    low, high = (_bound(d.get(k), kind, f"{at}: {k!r}", where) for k in ("low", "high"))
    if low > high:
        raise InputError(where, f"{at}: low {low} is above high {high}")
    transform = d.get("transform", "none")
    if transform not in TRANSFORMS:
        raise InputError(where, f"{at}: transform must be none or log1p, not {transform!r}")
    if transform == "log1p" and low <= -1:
        raise InputError(where, f"{at}: log1p needs low > -1 (low is {low})")
    return Column(name, kind, None, low, high, transform, note)


def _bound(v: object, kind: str, at: str, where: object) -> float | int:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(where, f"{at} must be a number")
    if kind == "integer" and (not float(v).is_integer() or abs(v) > INT_LIMIT):
        raise InputError(where, f"{at} must be an integer within +-2**53 (got {v!r})")
    if not math.isfinite(v) or abs(v) > 1e300:
        raise InputError(where, f"{at} must be finite (got {v!r})")
    return int(v) if kind == "integer" else float(v)


def read_schema(path: str | Path) -> Schema:
    """Read and validate a schema TOML file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "schema file not found" if not p.exists() else "not a regular file")
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except (ValueError, UnicodeDecodeError) as err:  # TOMLDecodeError, or a 5000-digit int
        raise InputError(p, f"not a valid TOML schema ({str(err).splitlines()[0][:200]})"
                         ) from None
    except OSError as err:
        raise InputError(p, f"cannot read schema ({err.strerror})") from None
    return schema_from_dict(data, p)


def schema_to_toml(schema: Schema) -> str:
    """TOML text of a schema (``tomli_w``), one ``[[columns]]`` table per column."""
    import tomli_w

    doc: dict[str, object] = {"name": schema.name}
    if schema.description:
        doc["description"] = schema.description
    doc["columns"] = [{k: v for k, v in c.to_dict().items() if v is not None}
                      for c in schema.columns]
    return (f"# fedsynth record schema {schema.name!r}: one [[columns]] entry per column\n"
            + tomli_w.dumps(doc))


def write_schema(schema: Schema, path: str | Path) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(schema_to_toml(schema))


def schema_for(name: str) -> Schema:
    """The built-in schema of a source: diabetes130, mimic3 or mimic4."""
    from fedsynth.common.data.schema_builtin import BUILTIN

    key = str(name).strip().lower()
    if key not in BUILTIN:
        raise InputError(None, f"no built-in schema {name!r}",
                         f"Use one of {', '.join(BUILTIN)} or a schema TOML file")
    return BUILTIN[key]()


__all__ = ["KINDS", "Column", "Schema", "read_schema", "schema_for", "schema_from_dict",
           "schema_to_toml", "write_schema"]
