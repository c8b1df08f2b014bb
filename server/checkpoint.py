"""The coordinator's checkpoint, written atomically after every completed round.

Layout of ``OUT/checkpoint/``:
- ``round-<r>.npz``: global weights (``w/<name>``), EMA (``ema/<name>``) and the server
  optimizer state (``opt/<slot>/<name>``) after round r (plain arrays; loaded with
  ``allow_pickle=False``: nothing from disk is ever unpickled).
- ``checkpoint.json``: written last, it names the round file, so a crash while writing leaves the
  previous checkpoint valid. Holds round, run id, strategy, settings, vocabulary, the sites'
  latest privacy reports and the per-round log entries so far.

Resuming loads the last ``checkpoint.json`` and its arrays and continues at ``round + 1``.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import atomic_path, write_json
from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

State = dict[str, np.ndarray]
META = "checkpoint.json"
KEEP = 2


@dataclass
class Checkpoint:
    round: int
    run_id: str
    weights: State
    ema: State | None
    optimizer_state: dict[str, State] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # settings, vocab, site reports, ...


def save(folder: str | Path, ckpt: Checkpoint) -> Path:
    """Write the arrays, then the JSON that points at them; prune older round files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {f"w/{k}": v for k, v in ckpt.weights.items()}
    if ckpt.ema is not None:
        arrays.update({f"ema/{k}": v for k, v in ckpt.ema.items()})
    for slot, state in ckpt.optimizer_state.items():
        arrays.update({f"opt/{slot}/{k}": v for k, v in state.items()})
    name = f"round-{ckpt.round}.npz"
    with atomic_path(folder / name) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    meta = {"round": ckpt.round, "run_id": ckpt.run_id, "arrays": name, **ckpt.meta}
    write_json(folder / META, meta)
    for old in folder.glob("round-*.npz"):
        try:
            r = int(old.stem.split("-", 1)[1])
        except ValueError:
            continue
        if r <= ckpt.round - KEEP:
            old.unlink(missing_ok=True)
    return folder / META


def exists(folder: str | Path) -> bool:
    return (Path(folder) / META).exists()


def load(folder: str | Path) -> Checkpoint:
    """Load the last completed round; InputError (one line) if missing or damaged."""
    folder = Path(folder)
    meta_path = folder / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        arrays_path = folder / str(meta["arrays"])
        with np.load(arrays_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        rnd, run_id = int(meta["round"]), str(meta["run_id"])
    except FileNotFoundError as err:
        raise InputError(meta_path, f"no checkpoint to resume from ({err.filename} missing)",
                         "was the run started with this --out?") from None
    except (ValueError, KeyError, TypeError, OSError, EOFError, NotImplementedError,
            zipfile.BadZipFile) as err:  # a damaged round-<r>.npz raises the zip errors
        raise InputError(meta_path, f"damaged checkpoint ({type(err).__name__}: {err})") from None
    weights = {k[2:]: v for k, v in arrays.items() if k.startswith("w/")}
    ema = {k[4:]: v for k, v in arrays.items() if k.startswith("ema/")} or None
    opt: dict[str, State] = {}
    for k, v in arrays.items():
        if k.startswith("opt/"):
            _, slot, name = k.split("/", 2)
            opt.setdefault(slot, {})[name] = v
    extra = {k: v for k, v in meta.items() if k not in ("round", "run_id", "arrays")}
    return Checkpoint(rnd, run_id, weights, ema, opt, extra)
