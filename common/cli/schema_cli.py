"""``ehr-schema``: the public record schemas (column types and domains).

    ehr-schema show NAME|FILE            print a built-in schema (diabetes130, mimic3, mimic4)
                                         or a checked schema file, as TOML
    ehr-schema infer DATA [--format F] --out schema.toml
                                         read a schema off NON-PRIVATE data (it reveals the
                                         data's categories and ranges)
    ehr-schema check DATA [--format F] [--schema S] [--strict]
                                         load the records and report values outside the schema
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fedsynth.common.data.schema import read_schema, schema_for, schema_to_toml, write_schema
from fedsynth.common.errors import InputError, cli_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ehr-schema", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="print a built-in schema or a schema file as TOML")
    show.add_argument("schema", help="diabetes130, mimic3, mimic4 or a schema .toml file")
    infer = sub.add_parser("infer", help="read a schema off non-private data (warns)")
    infer.add_argument("data", help="data file or MIMIC folder")
    infer.add_argument("--format", default="auto", help="auto|diabetes130|mimic|long")
    infer.add_argument("--out", required=True, type=Path, help="schema TOML to write")
    infer.add_argument("--name", help="schema name (default: <source>-inferred)")
    check = sub.add_parser("check", help="load the records; report values outside the schema")
    check.add_argument("data", help="data file or MIMIC folder")
    check.add_argument("--format", default="auto", help="auto|diabetes130|mimic|long")
    check.add_argument("--schema", help="built-in name or schema .toml (default: the source's)")
    check.add_argument("--strict", action="store_true",
                       help="stop with one line at the first value outside the schema")
    check.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return p


def _load_schema(text: str):  # -> Schema
    if Path(text).suffix.lower() == ".toml" or Path(text).exists():
        return read_schema(text)
    return schema_for(text)


def _show(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_to_toml(_load_schema(args.schema)))
    return 0


def _infer(args: argparse.Namespace) -> int:
    from fedsynth.common.data.schema_infer import INFER_WARNING, infer_from_file

    print(f"warning: {INFER_WARNING}", file=sys.stderr)
    if args.out.suffix.lower() != ".toml":
        raise InputError(args.out, "the schema file must end in .toml")
    schema = infer_from_file(args.data, args.format, args.name, warn=False)
    write_schema(schema, args.out)
    kinds = {k: sum(c.kind == k for c in schema.columns) for k in ("categorical", "integer",
                                                                    "real")}
    print(f"{args.out}: schema {schema.name!r}, {len(schema.columns)} columns "
          f"({', '.join(f'{n} {k}' for k, n in kinds.items() if n)}); review it before use")
    return 0


def _check(args: argparse.Namespace) -> int:
    from fedsynth.common.data.records import load_records

    schema = _load_schema(args.schema) if args.schema else None
    records = load_records(args.data, args.format, schema=schema, strict=args.strict)
    report = records.report
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(report.summary())
    for column, values in report.out_of_schema.items():
        shown = ", ".join(f"{v!r} x{n}" for v, n in list(values.items())[:10])
        print(f"  {column}: {sum(values.values())} outside the schema ({shown})")
    for column, n in report.missing.items():
        print(f"  {column}: {n} missing")
    for note in report.notes:
        print(f"  note: {note}")
    return 0


@cli_errors
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    code = {"show": _show, "infer": _infer, "check": _check}[args.cmd](args)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
