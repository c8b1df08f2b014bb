"""What one ``ehr-benchmark`` run does: the generators, epsilons, metrics and presets.

Every other ``benchmark_*`` module reads these names, so the table columns, the plots and the
CLI's choices cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "diabetes130" / "diabetic_data_dev.csv.gz"
GENERATORS = ("medgan", "corgan", "dp_marginals", "mst", "aim", "mst_federated", "ours",
              "ours_federated")
EPSILONS: tuple[float | None, ...] = (1.0, 3.0, 10.0, None)
LABELS = {"medgan": "medGAN", "corgan": "corGAN", "dp_marginals": "DP marginals",
          "mst": "MST", "aim": "AIM (top-K codes)", "ours": "ours (central)",
          "ours_federated": "ours (federated)", "mst_federated": "MST (federated)"}


class Metric(NamedTuple):
    """One column of the table: the row key, its title, and whether it gets a plot."""

    key: str
    title: str
    plotted: bool


METRICS: tuple[Metric, ...] = (
    Metric("prevalence_r", "prevalence r", True),
    Metric("cooccurrence_r", "co-occurrence r", True),
    Metric("dimwise_auroc_ratio", "dim-wise AUROC ratio", True),
    Metric("discriminator_auroc", "discriminator AUROC (0.5 best)", True),
    Metric("membership_auroc", "membership AUROC, DCR (0.5 best)", True),
    Metric("attribute_f1", "attribute F1", True),
    Metric("codes_per_patient", "codes/patient", False),
    Metric("train_seconds", "train s", False),
    Metric("sample_per_s", "sampling records/s", False),
    Metric("epsilon_spent", "epsilon spent", False),
)


# ``--columns all``: the same table on whole records (issue 16). Generators fit the schema's
# columns and the codes; the reference rows (``FLOORS``) are the real train part and its
# columns sampled independently (``bench_record_floors``), scored like any generator.
RECORD_GENERATORS = ("dp_marginals", "mst", "ours")
FLOORS = ("real", "independent")
RECORD_LABELS = {"dp_marginals": "independent DP marginals", "mst": "MST (records)",
                 "ours": "ours (records model)", "real": "floor: real vs real",
                 "independent": "floor: independent columns"}
RECORD_METRICS: tuple[Metric, ...] = (
    Metric("tv_mean", "categorical TV (mean)", False),
    Metric("ks_mean", "numeric KS (mean)", False),
    Metric("association_r", "association r", False),
    Metric("downstream_auroc_ratio", "downstream AUROC ratio (TSTR/TRTR)", False),
    Metric("downstream_auroc_tstr", "downstream AUROC (TSTR)", False),
    Metric("downstream_positive_rate_synth", "target rate", False),
    Metric("discriminator_auroc", "discriminator AUROC (0.5 best)", False),
    Metric("cooccurrence_r", "code co-occurrence r", False),
    Metric("codes_per_patient", "codes/patient", False),
    Metric("train_seconds", "train s", False),
    Metric("epsilon_spent", "epsilon spent", False),
)


def eps_key(eps: float | None) -> float:
    """Sort key: epsilons ascending, non-private last."""
    return float("inf") if eps is None else float(eps)


def eps_label(eps: float | None) -> str:
    return "non-private" if eps is None else f"{eps:g}"


@dataclass
class BenchmarkSettings:
    """What one ``ehr-benchmark`` run does. ``preset``: full | quick | smoke (tests)."""

    out: Path
    data: Path | None = None
    format: str = "auto"
    preset: str = "full"
    seeds: int = 1
    generators: tuple[str, ...] = GENERATORS
    epsilons: tuple[float | None, ...] = EPSILONS
    holdout: float = 0.2
    max_train: int | None = None
    max_holdout: int | None = None
    n_synth: int = 10_000
    audit_rows: int = 2_000  # members and non-members scored by the membership attack
    delta: float | None = None  # None: min(1e-5, 1/(10 n_train))
    sites: int = 5
    partition: str = "dirichlet:0.5"
    device: str = "cpu"
    speed: bool = True
    demo_patients: int = 2_000  # per site, when the demo cohort stands in for missing data
    time_budget: float | None = None  # seconds; cells not started by then are marked skipped
    columns: str = "codes"  # codes: the code matrix; all: whole records (schema columns + codes)
    target: str | None = None  # records: downstream task COLUMN=VALUE (None: readmitted=<30
    # when the schema has it, else no downstream task)

    @classmethod
    def for_preset(cls, preset: str, out: Path, **overrides: Any) -> BenchmarkSettings:
        """Defaults per preset: ``quick`` subsamples patients (< 10 min on 2 cores);
        ``smoke`` is a seconds-long run on a tiny demo cohort, for tests. ``None`` overrides
        keep the preset's value; ``time_budget=0`` means no budget."""
        base: dict[str, Any] = {}
        if preset == "quick":
            base = dict(max_train=1500, max_holdout=600, n_synth=1000, audit_rows=500,
                        demo_patients=500, time_budget=480.0)
        elif preset == "smoke":
            base = dict(max_train=300, max_holdout=150, n_synth=200, audit_rows=100,
                        generators=("medgan", "corgan", "dp_marginals"), epsilons=(3.0, None),
                        speed=False, demo_patients=150)
        elif preset != "full":
            raise ValueError(f"unknown preset {preset!r}")
        if overrides.get("columns") == "all":
            base["generators"] = RECORD_GENERATORS
            if preset == "smoke":
                base.update(max_train=240, max_holdout=120, n_synth=150)
        base.update({k: v for k, v in overrides.items() if v is not None})
        if base.get("time_budget") == 0:
            base["time_budget"] = None
        return cls(out=out, preset=preset, **base)

    def to_json(self) -> dict[str, Any]:
        """The ``settings`` object of benchmark.json (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v)
                for k, v in dataclasses.asdict(self).items()}
