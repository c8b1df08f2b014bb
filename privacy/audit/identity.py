"""What an audit is of: run id, date, software, data and model identity (for sign-off).

A signed-off audit must be tied to one release: the run that produced the model, the exact
model weights and the exact patient files attacked. Files are identified by the first 16 hex
digits of the SHA-256 of their bytes, which changes when any byte does and says nothing about
any patient.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"
HASH_HEX = 16  # hex digits of SHA-256 kept: 64 bits, enough to tell releases apart
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors", ".bin", ".npz")
_CHUNK = 1 << 20


def _update(h: Any, path: Path) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)


def files_sha256(paths: Iterable[Path]) -> str:
    """SHA-256 (first HASH_HEX hex) over the files' bytes, in sorted order of their paths."""
    h = hashlib.sha256()
    for path in sorted(paths):
        _update(h, path)
    return h.hexdigest()[:HASH_HEX]


def data_identity(path: str | Path, patients: int, role: str) -> dict[str, Any]:
    """{role, name, sha256, patients} of the patient file read for ``path`` (a MIMIC folder:
    its diagnoses table, the one file the loader reads)."""
    from fedsynth.common.data.reading import resolve_input

    given, read = Path(path), resolve_input(path)
    name = f"{given.name}/{read.relative_to(given).as_posix()}" if given.is_dir() else read.name
    return {"role": role, "name": name, "sha256": files_sha256([read]),
            "patients": int(patients)}


def model_identity(model_dir: str | Path) -> dict[str, Any]:
    """{name, sha256, files} of a model directory: the digest covers its weight file(s) only
    (config and output step are derived settings; the weights are what was trained)."""
    d = Path(model_dir)
    weights = [f for f in d.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES]
    return {"name": d.resolve().name, "sha256": files_sha256(weights) if weights else None,
            "files": sorted(f.name for f in weights)}


def find_run_id(
    privacy: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    round_log: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """The run id from privacy.json (top level, else one shared by every site report), the
    model's config.json ``extra`` (or its embedded privacy report), or the round log rows."""
    candidates: list[Any] = []
    if privacy:
        candidates.append(privacy.get("run_id"))
        sites = privacy.get("sites")
        reports = sites.values() if isinstance(sites, Mapping) else sites or []
        ids = {r.get("run_id") for r in reports if isinstance(r, Mapping)} - {None}
        if len(ids) == 1:
            candidates.append(ids.pop())
    if extra:
        candidates.append(extra.get("run_id"))
        inner = extra.get("privacy")
        if isinstance(inner, Mapping):
            candidates.append(inner.get("run_id"))
    candidates += [row.get("run_id") for row in round_log or []]
    return next((str(c) for c in candidates if c not in (None, "")), None)


def audit_identity(
    run_id: str | None = None,
    data: Sequence[Mapping[str, Any]] = (),
    model: Mapping[str, Any] | None = None,
    created: str | None = None,
) -> dict[str, Any]:
    """The header of an audit: missing parts stay None (the report says "not recorded")."""
    from fedsynth.privacy.report import software_version

    return {
        "run_id": run_id,
        "created": created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "software": software_version(),
        "data": [dict(d) for d in data],
        "model": dict(model) if model else None,
    }
