"""The notebook API behind ``import fedsynth``: the command-line tools as functions.

Each function runs the code path of its command, so a notebook and the CLIs cannot drift:

- ``load`` is ``ehr-train``'s loader: ``--columns auto|all|codes``
  (``common.data.columns.load_data``) picks whole records (``load_records``) or the code
  matrix (``load_codes``);
- ``train`` builds the ``Config`` the way ``ehr-train`` does from its flags
  (``client.train_cli.build_config``) and calls the same trainer
  (``client.train_cli.train_loaded``: a records model's one-hot groups and layout file, then
  non-private ``common.model.central.train_centralized``, or with ``epsilon`` DP-SGD through
  ``client.private_train.train_centralized_private``, whose spend goes into the data set's
  ledger in ``state_dir`` (default the user's state folder) exactly like ``ehr-train
  --epsilon``, so notebook and CLI runs on the same patients compose in one budget);
- ``Generator.sample`` draws what ``ehr-sample`` writes (whole records through
  ``common.model.record_output.sample_records``); ``Generator.save`` writes the model folder
  ``ehr-train --out`` writes (``ehr-sample --model`` reads it) and ``load_generator`` reads one
  (``common.model.store.load_model``, ``record_tokens.read_layout``);
- ``evaluate`` is ``ehr-evaluate``'s ``common.metrics.fidelity``, on records ``ehr-evaluate
  --records``' ``common.cli.evaluate_records.score_records``;
- ``simulate`` runs ``ehr-simulate`` (``simulations.simulate_cli.run``) on keyword arguments.

Torch, Opacus and Flower are imported inside the functions that need them: ``import fedsynth``
(which every CLI runs first) stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedsynth.common.config import Config
from fedsynth.common.data import CodeMatrix, synthetic_ids
from fedsynth.common.data.columns import load_data
from fedsynth.common.data.records import Records
from fedsynth.common.errors import InputError

if TYPE_CHECKING:
    from fedsynth.common.data.record_tokens import TokenLayout
    from fedsynth.common.data.schema import Schema
    from fedsynth.common.model.store import Generator as Sampler
    from fedsynth.common.vocabulary import Vocabulary

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
PRIVACY = "privacy.json"
# ``train``'s options: ehr-train's flags (--config, --epochs, --device, --seed, --state-dir,
# --quiet as progress=False, and for a file path --format, --columns, --schema); epsilon and
# delta are named parameters.
LOAD_OPTIONS = ("format", "columns", "schema")
TRAIN_OPTIONS = ("config", "epochs", "device", "seed", "state_dir", "progress", *LOAD_OPTIONS)


def load(path: PathLike, format: str = "auto",  # noqa: A002 - the CLI flag's name
         vocab: Vocabulary | PathLike | None = None, columns: str = "auto",
         schema: Schema | PathLike | None = None) -> CodeMatrix | Records:
    """Read a data file as ``ehr-train --data PATH --format F --columns C --schema S`` does.

    ``columns``: "auto" (default) gives whole records where the file has per-patient columns
    (diabetes130, MIMIC with PATIENTS/ADMISSIONS beside the diagnoses, any file given
    ``schema``), else the code matrix; "all" whole records (an ``InputError`` where there are
    none); "codes" always the code matrix. Whole records: a ``Records`` (``.table`` of the
    schema's columns, ``.codes`` a ``CodeMatrix``, ``.schema``, ``.patient_ids``); the code
    matrix: a ``CodeMatrix`` (``.X`` 0/1, ``.vocab``, ``.patient_ids``, ``.report``).

    ``format``: auto|mimic|diabetes130|long|matrix; ``vocab``: a coordinator's vocabulary
    (default: every ICD-9-CM 3-digit category); ``schema``: a built-in schema name or a TOML
    file (default: the format's)."""
    data = load_data(path, format, columns, schema, vocab, flag="")
    log.info("%s", data.report.summary())
    return data


def train(data: CodeMatrix | Records | PathLike, epsilon: float | None = None,
          delta: float | None = None, **options: Any) -> Generator:
    """Train a generator on every patient of ``data``: a ``load`` result (a ``Records``
    trains a whole-records model, a ``CodeMatrix`` a codes model) or a file path (read like
    ``load`` with the options ``format``, ``columns`` and ``schema``).

    Without ``epsilon`` the model is non-private (``ehr-train``). With ``epsilon`` it is
    trained with DP-SGD plus private code counts, and for records private column counts
    (``ehr-train --epsilon``): the run is refused (``BudgetExceeded``) unless this data set's
    whole ledger history plus this run stays within ``epsilon``; ``delta`` defaults to the one
    pinned in the ledger, else min(1e-5, 1/(10 n)).

    ``options`` (ehr-train's flags): ``config`` (a TOML path as ``--config``, a ``Config`` or a
    dict of ``[model]``/``[train]``/``[privacy]`` tables), ``epochs`` (``train.epochs``; a DP
    run uses ``privacy.epochs``), ``device``, ``seed``, ``state_dir`` (the ledgers' folder),
    ``progress`` (default True) and, for a path, ``format``, ``columns``, ``schema``. Any
    other name is a ``TypeError``."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise TypeError(f"fedsynth.train() got unknown option(s) {', '.join(unknown)}; "
                        f"valid options: {', '.join(TRAIN_OPTIONS)} (model, training and "
                        "privacy settings go in config=...)")
    loading = {k: options[k] for k in LOAD_OPTIONS if options.get(k) is not None}
    if isinstance(data, CodeMatrix | Records) and loading:
        raise TypeError(f"fedsynth.train(): {', '.join(loading)} only apply when data is a "
                        "file path (pass them to fedsynth.load)")
    config = _train_config(epsilon, delta, options)
    if not isinstance(data, CodeMatrix | Records):
        data = load(data, **loading)
    from fedsynth.client.train_cli import train_loaded
    from fedsynth.common.data.record_tokens import records_matrix

    if isinstance(data, Records):
        records: Records | None = data
        matrix, layout = records_matrix(data)
    else:
        matrix, records, layout = data, None, None
    with tempfile.TemporaryDirectory(prefix="fedsynth-train-") as tmp:
        out = Path(tmp) / "model"
        train_loaded(matrix, records, layout, config, out, state_dir=options.get("state_dir"),
                     progress=bool(options.get("progress", True)), flag="")
        return load_generator(out, device=config.train.device)


def _train_config(epsilon: float | None, delta: float | None,
                  options: Mapping[str, Any]) -> Config:
    """The Config of ``train``: ehr-train's ``build_config`` over the same flags."""
    from fedsynth.client.train_cli import build_config

    base = options.get("config")
    from_file = base is None or isinstance(base, str | os.PathLike)
    flags = argparse.Namespace(config=base if from_file else None, epsilon=epsilon, delta=delta,
                               **{k: options.get(k) for k in ("epochs", "device", "seed")})
    if from_file:
        return build_config(flags)  # validates every flag (InputError naming it)
    if isinstance(base, Config):
        base = base.to_dict()
    if not isinstance(base, Mapping):
        raise TypeError(f"config must be a TOML path, a Config or a dict, not "
                        f"{type(base).__name__}")
    start = Config.from_dict(dict(base), source="config")  # unknown keys -> InputError
    return build_config(flags, base=start)


class Generator:
    """A trained generator: samples synthetic patients as a DataFrame, saves its model folder.

    ``privacy``: the model's privacy report (the content of ``privacy.json``: epsilon, delta,
    accountant, the ledger's history), None for a non-private model. ``sampler``: the
    underlying ``common.model.store.Generator`` (numpy 0/1 samples; a records model's columns
    are its schema's tokens, then the codes). ``layout`` and ``schema``: a whole-records
    model's token layout and schema (``records_layout.json``), None for a codes model."""

    def __init__(self, sampler: Sampler, privacy: dict[str, Any] | None = None,
                 records: tuple[TokenLayout, Schema] | None = None) -> None:
        self.sampler = sampler
        self.privacy = privacy
        self.layout: TokenLayout | None = None if records is None else records[0]
        self.schema: Schema | None = None if records is None else records[1]

    @property
    def is_records(self) -> bool:
        """Whether this model draws whole records (the schema's columns beside the codes)."""
        return self.layout is not None

    @property
    def _n_tokens(self) -> int:
        return 0 if self.layout is None else self.layout.n_tokens

    @property
    def vocab(self) -> Vocabulary:
        """The vocabulary of the code columns."""
        if self.layout is None:
            return self.sampler.vocab
        from fedsynth.common.vocabulary import Vocabulary

        return Vocabulary(tuple(self.codes), name=self.sampler.vocab.name)

    @property
    def codes(self) -> list[str]:
        """The code columns of every sample, in order."""
        return list(self.sampler.vocab.codes[self._n_tokens:])

    @property
    def columns(self) -> list[str]:
        """The schema's columns of every sample ([] for a codes model), before the codes."""
        return [] if self.schema is None else list(self.schema.names)

    @property
    def training(self) -> dict[str, Any]:
        """The training report stored with the model (empty when there is none)."""
        return dict(self.sampler.extra.get("training") or {})

    def __repr__(self) -> str:
        eps = "non-private" if self.privacy is None else \
            f"epsilon={self.privacy.get('epsilon')}, delta={self.privacy.get('delta')}"
        kind = f"{len(self.codes)} codes"
        if self.schema is not None:
            cols = self.columns
            shown = ", ".join(cols[:6]) + (", ..." if len(cols) > 6 else "")
            kind = (f"records of schema {self.schema.name!r}: {len(cols)} columns ({shown}) "
                    f"and {kind}")
        return f"<fedsynth.Generator {kind}, {eps}>"

    def sample(self, n: int, seed: int | None = None, batch: int = 1000,
               progress: bool = False) -> pd.DataFrame:
        """``n`` synthetic patients: index ``patient_id`` (syn-000001, ...); for a records model
        the schema's columns (typed like ``load``'s ``Records.table``: categories, nullable
        Int64/Float64), then one int 0/1 column (uint8) per vocabulary code. An int ``seed``
        gives the rows ``ehr-sample --seed`` writes; None draws a fresh one. Sampling is
        post-processing: it costs no privacy."""
        if int(n) < 1:
            raise ValueError(f"n must be at least 1 (got {n})")
        if seed is None:
            seed = secrets.randbelow(2**31)
            log.debug("sampling with seed %d", seed)
        index = pd.Index(synthetic_ids(int(n)), name="patient_id")
        if self.layout is None:
            X = self.sampler.sample(int(n), seed=int(seed), batch=batch, progress=progress)
            return pd.DataFrame(X, columns=self.codes, index=index)
        from fedsynth.common.model.record_output import sample_records

        table, X, vocab = sample_records(self.sampler, self.layout, self.schema, int(n),
                                         seed=int(seed), batch=batch, progress=progress)
        table.index = index
        return pd.concat([table, pd.DataFrame(X, columns=list(vocab.codes), index=index)],
                         axis=1)

    def save(self, directory: PathLike, overwrite: bool = False) -> Path:
        """Write the model folder ``ehr-train --out`` writes (weights, config.json,
        vocabulary.json, output_step.json, records_layout.json for a records model and
        privacy.json for a DP model), atomically: into a sibling temporary folder renamed into
        place. An existing non-empty ``directory`` is an error unless ``overwrite``."""
        from fedsynth.common.atomic import write_json
        from fedsynth.common.model.release import save_release

        target = Path(directory)
        exists = target.exists() and (not target.is_dir() or any(target.iterdir()))
        if exists and not overwrite:
            raise FileExistsError(f"{target} exists (pass overwrite=True to replace it)")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()  # the user's umask, like ehr-train's folder
        try:
            save_release(tmp, self.sampler, extra=self.sampler.extra)
            if self.layout is not None and self.schema is not None:
                from fedsynth.common.data.record_tokens import write_layout

                write_layout(tmp, self.layout, self.schema)
            if self.privacy is not None:
                write_json(tmp / PRIVACY, self.privacy)
            old = None
            if target.exists():
                old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
                target.rename(old)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        elif old is not None:
            old.unlink()
        return target


def load_generator(directory: PathLike, device: str = "auto") -> Generator:
    """Read a model folder (``ehr-train --out``, ``Generator.save``, or a federation's
    ``OUT/model``); a records model by its ``records_layout.json``. Its privacy report: the
    folder's privacy.json, else the one stored in config.json, else for a federated model the
    run's ``OUT/privacy.json``; None if none."""
    from fedsynth.common.data.record_tokens import read_layout
    from fedsynth.common.model.store import load_model

    folder = Path(directory)
    sampler = load_model(folder, device=device)
    extra = sampler.extra
    privacy = None
    if (folder / PRIVACY).is_file():
        privacy = _read_json(folder / PRIVACY)
    elif isinstance(extra.get("privacy"), dict):
        privacy = dict(extra["privacy"])
    elif extra.get("federated") and (folder.parent / PRIVACY).is_file():
        privacy = _read_json(folder.parent / PRIVACY)
    return Generator(sampler, privacy, read_layout(folder))


def evaluate(real: CodeMatrix | Records | pd.DataFrame,
             synthetic: CodeMatrix | pd.DataFrame | PathLike,
             train: CodeMatrix | Records | pd.DataFrame | None = None, seed: int = 0,
             target: str | None = "auto") -> dict[str, Any]:
    """Fidelity of ``synthetic`` against ``real`` patients, as ``ehr-evaluate REAL SYN``.

    Whole records (``real`` a ``Records``): ``ehr-evaluate REAL SYN --records [--train]``'s
    dict (without its file names): ``synthetic`` is a records model's ``sample`` (or a records
    CSV/Parquet file), ``train`` a ``Records`` of the same schema or None; the code metrics
    below at the top level, the record metrics (``tv.<column>``, ``ks.<column>``,
    ``association_r``, ``downstream_*``, ``discriminator_auroc``, ``dcr_*``) under
    ``"records"``, and ``schema``, ``synth_out_of_schema``, ``timings_s``. ``target``: the
    downstream task COLUMN=VALUE ("auto": ``readmitted=<30`` where the schema has it, None:
    no task). For the codes alone pass ``real.codes``.

    Codes: each argument is a ``load`` result or a DataFrame of 0/1 code columns (a ``patient_id``
    column, if any, is dropped). Columns are matched by code: the synthetic (and ``train``)
    columns are put in the order of ``real``'s, a code ``real`` lacks is an error, a code only
    ``real`` has counts as absent. ``real`` should be held-out patients; ``train`` the real
    training patients (the real side of the dimension-wise baseline; default: half of
    ``real``).

    Returns ``common.metrics.fidelity``'s figures: ``n_real``, ``n_synth``, ``prevalence_r``
    (Pearson r of per-code prevalences), ``cooccurrence_r`` (of the pairwise co-occurrence
    rates of real's 100 most common codes), ``dimwise_auroc_real`` / ``_synth`` / ``_ratio`` and
    ``dimwise_per_code`` (medGAN's dimension-wise prediction on the 10 most common codes, each
    with its ``code``), ``codes_per_patient_real`` / ``_synth`` (mean, sd, histogram) and
    ``discriminator_auroc`` (real vs synthetic; 0.5 = indistinguishable)."""
    from fedsynth.common.metrics import fidelity

    if isinstance(real, Records):
        return _evaluate_records(real, synthetic, train, seed, target)
    if target != "auto":
        raise ValueError("target scores whole records: real must be a Records "
                         "(fedsynth.load(..., columns='all'))")
    if isinstance(train, Records):
        raise TypeError("train is a Records: pass real as a Records too, or train.codes")
    codes, R = _codes_and_matrix(real, "real")
    S = _aligned(synthetic, codes, "synthetic")
    T = None if train is None else _aligned(train, codes, "train")
    if S.shape[0] < 2:
        raise ValueError("synthetic holds fewer than 2 patients")
    metrics = fidelity(R, S, T, seed=seed)
    for c in metrics["dimwise_per_code"]:
        c["code"] = codes[c["code_index"]]
    return metrics


def _evaluate_records(real: Records, synthetic: Any, train: Any, seed: int,
                      target: str | None) -> dict[str, Any]:
    """``evaluate`` on whole records: ``ehr-evaluate --records``' ``score_records``."""
    from fedsynth.common.cli.evaluate_records import score_records
    from fedsynth.common.record_metrics import default_target, parse_target

    if not isinstance(synthetic, pd.DataFrame | str | os.PathLike):
        raise TypeError(f"with real records, synthetic must be a records DataFrame "
                        f"(Generator.sample) or a records file, not {type(synthetic).__name__} "
                        "(for the codes alone: fedsynth.evaluate(real.codes, ...))")
    if train is not None:
        if not isinstance(train, Records):
            raise TypeError(f"with real records, train must be a Records, not "
                            f"{type(train).__name__}")
        if train.schema.names != real.schema.names:
            raise ValueError(f"train's schema {train.schema.name!r} is not real's "
                             f"{real.schema.name!r}")
        codes = list(real.codes.vocab.codes)
        if list(train.codes.vocab.codes) != codes:  # the CLI loads it over real's vocabulary
            X = _aligned(train.codes, codes, "train")
            train = Records(train.patient_ids, train.table,
                            CodeMatrix(X, train.patient_ids, real.codes.vocab,
                                       source=train.codes.source, report=train.codes.report),
                            train.schema, train.report)
    if target == "auto":
        target = default_target(real.schema)
    elif target is not None:
        parse_target(target, real.schema)  # a bad target fails before any work
    metrics, _, _ = score_records(real, synthetic, train, target, seed)
    return metrics


def _codes_and_matrix(data: CodeMatrix | pd.DataFrame, name: str) -> tuple[list[str], np.ndarray]:
    if isinstance(data, CodeMatrix):
        return list(data.vocab.codes), data.X
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"{name} must be a fedsynth.load() result or a pandas DataFrame, not "
                        f"{type(data).__name__}")
    frame = data.drop(columns=["patient_id"], errors="ignore")
    X = frame.to_numpy()
    if X.size and not np.isin(X, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 code columns")
    return [str(c) for c in frame.columns], X.astype(np.uint8)


def _aligned(data: CodeMatrix | pd.DataFrame, codes: list[str], name: str) -> np.ndarray:
    """``data``'s matrix with the columns ``codes`` (zeros for codes it lacks)."""
    have, X = _codes_and_matrix(data, name)
    position = {c: j for j, c in enumerate(codes)}
    extra = [c for c in have if c not in position]
    if extra:
        raise ValueError(f"{name} has {len(extra)} code column(s) the real data lacks "
                         f"(e.g. {', '.join(extra[:3])}); was it sampled from another model?")
    out = np.zeros((X.shape[0], len(codes)), dtype=np.uint8)
    out[:, [position[c] for c in have]] = X
    return out


@dataclass
class Simulation:
    """The outputs of ``simulate``: the run folder and the JSON it wrote (``privacy``: the
    released epsilon/delta and every site's report; ``evaluation``: the pooled evaluation;
    ``audit``: the merged audit with ``audit=True``, else None); ``audit_refutes``: the audit
    refutes a site's accountant (``ehr-simulate`` exits 1)."""

    out: Path
    privacy: dict[str, Any]
    evaluation: dict[str, Any]
    audit: dict[str, Any] | None = None
    audit_refutes: bool = False

    @property
    def model_dir(self) -> Path:
        return self.out / "model"

    def generator(self, device: str = "auto") -> Generator:
        """The released global model, with the run's privacy report."""
        return load_generator(self.model_dir, device=device)

    def synthetic(self) -> pd.DataFrame:
        """``OUT/synthetic.csv`` (index ``patient_id``)."""
        return pd.read_csv(self.out / "synthetic.csv", index_col="patient_id",
                           dtype={"patient_id": str})


def simulate(data: PathLike, out: PathLike, sites: int = 3, epsilon: float = 3.0,
             progress: bool = True, **options: Any) -> Simulation:
    """A local multi-site federation on one machine: ``ehr-simulate --data DATA --out OUT
    --sites K --epsilon E`` (``data="demo"``: the built-in demo cohort, one site per simulated
    site). ``options`` are ehr-simulate's other flags with underscores (``format``,
    ``partition``, ``rounds``, ``delta``, ``samples``, ``config``, ``local_epochs``,
    ``batch_size``, ``lr``, ``strategy``, ``holdout``, ``seed``, ``audit=True``, ...); an
    unknown one is a ``TypeError``. Raises ``RuntimeError`` when the federation does not
    complete (logs in ``OUT/logs``)."""
    from fedsynth.simulations.simulate_cli import parser, run

    p = parser()
    p.exit_on_error = False
    flags = {a.dest: a for a in p._actions if a.option_strings and a.dest not in  # noqa: SLF001
             ("help", "data", "out", "sites", "epsilon", "no_progress")}
    unknown = sorted(set(options) - set(flags))
    if unknown:
        raise TypeError(f"fedsynth.simulate() got unknown option(s) {', '.join(unknown)}; "
                        f"valid options: {', '.join(sorted(flags))}")
    argv = ["--data", str(data), "--out", str(out), "--sites", str(sites),
            "--epsilon", repr(float(epsilon))]
    if not progress:
        argv.append("--no-progress")
    for name, value in options.items():
        action = flags[name]
        if action.nargs == 0:  # a switch (--audit)
            argv += [action.option_strings[0]] if value else []
        elif value is not None:
            argv += [action.option_strings[0], str(value)]
    try:
        args = p.parse_args(argv)
    except argparse.ArgumentError as err:
        raise InputError(None, f"fedsynth.simulate(): {err}") from None
    outcome = run(args)
    if not outcome.completed:
        raise RuntimeError(f"simulation failed: {outcome.status.get('detail', '')}; logs in "
                           f"{outcome.out / 'logs'}")
    audit_path = outcome.out / "audit.json"
    return Simulation(outcome.out, _read_json(outcome.out / PRIVACY),
                      _read_json(outcome.out / "evaluation.json"),
                      _read_json(audit_path) if audit_path.is_file() else None,
                      audit_refutes=outcome.audit_rc != 0)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
