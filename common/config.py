"""Hyper-parameters: one dataclass per concern, defaults that work, loadable from TOML or flags.

A TOML file may hold the tables ``[model]``, ``[train]``, ``[privacy]`` and ``[federation]``;
unknown keys are an input error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedsynth.common.errors import InputError

T = TypeVar("T")


@dataclass
class ModelConfig:
    """EHRDiff-style EDM diffusion model over a binary code vector.

    Defaults (experiments in simulations/bench_central.py): the denoiser is the Bayes posterior
    of 0/1 codes (``parameterization="binary"``, ``common.model.binary``) over an MLP of widths
    512-256-256-512, sampled with 8 Heun steps from sigma 5 (binary codes with sigma_data 0.14
    are pure noise well before sigma 80); its output is already 0/1, so the output step is
    EHRDiff's round at 0.5. ``parameterization="edm"`` is EHRDiff as published (c_skip/c_out
    preconditioning, weighted MSE; use sigma_max 80 and per-code output thresholds, which
    ``output_step="auto"`` picks for it).
    """

    hidden: tuple[int, ...] = (512, 256, 256, 512)
    time_dim: int = 256
    parameterization: str = "binary"  # "binary" (Bayes posterior, BCE) | "edm" (EHRDiff)
    sigma_data: float = 0.14
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.02
    sigma_max: float = 5.0
    rho: float = 7.0
    sample_steps: int = 8
    # ... of a released whole-records binary model (``model.one_hot_groups`` set; its marginal
    # calibration still runs at ``sample_steps``: ``common.model.release``). diabetes130 records,
    # the same weights at 8 / 16 steps: epsilon 3 association r 0.901 / 0.910 and 0.908 / 0.911
    # (sampling seeds 0 / 1), readmission ratio 0.882 / 0.879; non-private readmission 0.950
    # either way over sampling seeds 0-2 (README)
    records_sample_steps: int = 16
    threshold: float = 0.5  # scalar output step (EHRDiff: 0.5), used when output_step="threshold"
    # "auto": "threshold" for the binary parameterisation, "per_code" for edm (thresholds
    # matched to the training prevalence, or to the private prevalence under DP)
    output_step: str = "auto"
    # binary model: after training, per-code log-odds offsets so that each code's sampled
    # prevalence matches the training (non-private) or private (DP) prevalence
    calibrate: bool = True
    sample_precision: str = "auto"  # "auto" | "fp32" | "bf16" (inner net at sampling, CPU only)
    # whole records: the sizes of the one-hot groups (one per schema column) that open the
    # network's columns, in order; each is modelled with the softmax posterior of a one-hot
    # vector (common.model.binary). Set from the public token layout, never from data; ():
    # every column is an independent 0/1 code
    one_hot_groups: tuple[int, ...] = ()
    # whole records: one number per token of the groups (``record_tokens.ordinal_values``): a
    # numeric column's token is its value on the schema's [-1, 1] scale, a category's 0. The
    # network also reads each numeric column's expected value and tilts its tokens along this
    # scale (``common.model.binary``). Public (the schema's bounds); (): no such inputs
    ordinal_values: tuple[float, ...] = ()
    # sampling: the network's term of the posterior times this (``common.model.guidance``;
    # 1 = the trained posterior, > 1 sharpens the dependencies between columns); 0: auto (a
    # whole-records model 1.5 non-private, 1.75 centralized DP, 4 federated; codes-only 1)
    dependency_scale: float = 0.0
    # whole records: the schema's outcome column, as an index into ``one_hot_groups``
    # (``record_tokens.outcome_group``; public; -1: none). Under DP its rate within each value
    # of the ``outcome_columns`` other columns the released model ties it to most is measured
    # (a Gaussian mechanism of its own) and kept at sampling (``common.model.outcome``); 0
    # columns: off. Not run non-private: that model keeps the outcome's links itself
    # (readmission ratio 0.955 without, 0.957 with, for a 20,000-record sample more: +9%
    # training time)
    outcome_group: int = -1
    outcome_columns: int = 10

    def output_kind(self) -> str:
        """The output step ``output_step`` resolves to: "threshold" or "per_code"."""
        if self.output_step != "auto":
            return self.output_step
        return "threshold" if self.parameterization == "binary" else "per_code"

    def keeps_outcome(self) -> bool:
        """A whole-records model whose outcome column is kept within others
        (``outcome_group`` one of the groups, ``outcome_columns`` > 0)."""
        return 0 <= self.outcome_group < len(self.one_hot_groups) and self.outcome_columns > 0

    def records_posterior(self) -> bool:
        """A whole-records model whose groups have the one-hot posterior: ``one_hot_groups`` set
        and the binary parameterisation (edm ignores the groups)."""
        return bool(self.one_hot_groups) and self.parameterization == "binary"


@dataclass
class TrainConfig:
    """Optimisation of the denoiser (centralized or at one site). Defaults: 40 epochs of batch
    512 at Adam 2e-3 decayed to 0 (cosine) matched 80 epochs at a constant 1e-3 on diabetes130
    (co-occurrence 0.991, dim-wise 0.974) in half the time (~5 min on 2 cores)."""

    epochs: int = 40
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    noise_multiplicity: int = 1
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0: torch default
    lr_schedule: str = "cosine"  # "cosine" (decay to 0 over the run) or "constant"


@dataclass
class PrivacyConfig:
    """DP-SGD at a site. ``epsilon=None`` means non-private.

    Defaults (diabetes130, epsilon 3, ``simulations/bench_private.py``): a smaller denoiser
    (256-256, time embedding 64: DP noise grows with the number of parameters) trained with a
    5x larger Adam step than the non-private model (at 2e-3 the noise-driven random walk of the
    weights drowned the dependencies between codes: dim-wise prediction 0.67, no better than
    independent sampling; at 1e-2, 0.93), clip 1.0 (the median per-example gradient norm of
    the K-averaged loss at initialisation), 20 expected epochs."""

    epsilon: float | None = None
    delta: float | None = None  # None: min(1e-5, 1/(10 n_site))
    max_grad_norm: float = 1.0
    # ... of a whole-records model (``model.one_hot_groups`` set; ``Config.private_clip``).
    # diabetes130 records, epsilon 3, 45,743 patients (one run each, four at 0.5): clip 0.25 /
    # 0.5 / 1 / 2 association r 0.922 / 0.909-0.923 / 0.910 / 0.903, readmission ratio (4
    # classifier seeds) 0.883 / 0.878-0.894 (mean 0.886) / 0.879 / 0.875, co-occurrence 0.965 /
    # 0.965-0.969 / 0.963 / 0.965 (codes-only models keep 1.0, measured on codes). A
    # federation's sites use it too: 5 sites dirichlet:0.5, association / readmission 0.833 /
    # 0.78 at 0.5 (one run), 0.823 / 0.837 and 0.833 / 0.745 at 1.0 (two runs)
    records_max_grad_norm: float = 0.5
    noise_multiplicity: int = 4
    accountant: str = "prv"
    grad_sample_mode: str = "ghost"
    # Centralized private training (ehr-train --epsilon; client/private_train.py) only:
    epochs: int = 20  # expected passes over the data (DP-SGD steps = epochs / q)
    batch_size: int = 2048  # expected Poisson batch: q = batch_size / n
    # ... of a whole-records model (``model.one_hot_groups`` set; ``Config.private_batch``).
    # diabetes130 records, epsilon 3, 45,743 patients, 20 epochs: batch 2048 association r
    # 0.854, co-occurrence 0.958, discriminator 0.880; 4096 (two runs) 0.889 / 0.875, 0.962 /
    # 0.962, 0.842 / 0.821; 8192 0.855, 0.962, 0.843 (readmission ratio 0.78-0.86 throughout:
    # within its run-to-run spread)
    records_batch_size: int = 4096
    lr: float = 1e-2
    ema_decay: float = 0.995
    # The private model: ``Config.private_model()``; a federation uses ``[federation] hidden``
    hidden: tuple[int, ...] = (256, 256)  # denoiser widths under DP (centralized)
    time_dim: int = 64
    count_epsilon_share: float = 0.1  # epsilon share of the private code counts (0: none)
    # ... but at least this epsilon, at most half the budget (privacy.counts.count_epsilon)
    count_epsilon_min: float = 0.5
    count_clip: float = 3.0  # L2 bound of a patient's (codes, 1) vector in the counts: 8 codes
    # unscaled (diabetes130: 95% of patients have <= 7); 4.0 kept 20% fewer codes at 5 sites
    # a code too rare to model is drawn on its own (the tail) only when the counts say it is
    # present with probability >= 1 - this (privacy.counts.estimate); 0: no tail, so no code
    # appears that the counts cannot tell from absent (codes per patient a little lower)
    count_tail_gate: float = 0.85


@dataclass
class FederationConfig:
    """Rounds, sites and the aggregation strategy."""

    rounds: int = 4
    min_sites: int = 2
    local_epochs: float = 4.0
    # Each site's Poisson sampling rate q_k (expected batch q_k * n_k); 0: train.batch_size / n_k.
    # diabetes130, 5 sites dirichlet:0.5, eps 3 (4 rounds; 256-256, FedAvg): what mattered was
    # the number of DP-SGD steps: q 0.07 x 16 epochs (232 steps) dim-wise 0.83; q 0.035 x 16
    # epochs and q 0.07 x 32 epochs (464 steps each) 0.87; q 0.02 (800 steps) 0.87; q 0.2 (100
    # steps) 0.72
    sample_rate: float = 0.035
    # ... of a whole-records federation (``model.one_hot_groups`` set) while ``sample_rate`` is
    # set (> 0). diabetes130 records, 5 sites dirichlet:0.5, epsilon 3 (one run each): q 0.035
    # association r 0.581, readmission ratio 0.73, co-occurrence 0.919; q 0.14 0.629, 0.77,
    # 0.920 (centralized DP on records also gained from larger batches: records_batch_size)
    records_sample_rate: float = 0.14
    # Site learning rate in federated rounds; 0: privacy.lr (sites train with DP-SGD)
    lr: float = 0.0
    holdout: float = 0.2
    round_timeout: float = 600.0
    strategy: str = "fedavg"
    server_lr: float = 1.0
    # FedAvgM (server momentum, post-processing of the DP updates): with "fedavg", a momentum
    # above 0 makes it FedAvgM; 0 is plain FedAvg. FedAdam takes it as its beta1.
    server_momentum: float = 0.5
    # Denoiser widths of the federated (private) model; empty: ``[privacy] hidden``. Wider than
    # the centralized private model: diabetes130, 5 sites dirichlet:0.5, epsilon 1, dim-wise
    # 256-256 0.765 +- 0.014 (3 seeds), 512-512 0.818 / 0.838, 1024-1024 0.847 (2x the time),
    # 512-512-512 0.820; centralized at epsilon 1, 256-256 is better (0.928 vs 0.917).
    hidden: tuple[int, ...] = (512, 512)
    # No site's aggregation weight exceeds this many times the median of the other sites'
    # weights (server/aggregation.py: capped_weights): with equal others a site's share is at
    # most 2/(K+1), so a site that reports 1e9 examples cannot take over the global model.
    max_weight_ratio: float = 2.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def private_batch(self) -> int:
        """The expected batch of centralized DP-SGD: ``privacy.records_batch_size`` for a
        whole-records model (``model.one_hot_groups``), else ``privacy.batch_size``."""
        p = self.privacy
        return p.records_batch_size if self.model.one_hot_groups else p.batch_size

    def private_clip(self) -> float:
        """DP-SGD's clipping norm, centralized and at a federated site:
        ``privacy.records_max_grad_norm`` for a whole-records model (``model.one_hot_groups``),
        else ``privacy.max_grad_norm``."""
        p = self.privacy
        return p.records_max_grad_norm if self.model.one_hot_groups else p.max_grad_norm

    def private_model(self, federated: bool = False) -> ModelConfig:
        """The model config of DP training: ``[model]`` with the private widths and time
        embedding of ``[privacy]``; ``federated``: the widths of ``[federation] hidden`` (when
        set)."""
        hidden = self.federation.hidden if federated and self.federation.hidden else \
            self.privacy.hidden
        return dataclasses.replace(self.model, hidden=tuple(hidden),
                                   time_dim=self.privacy.time_dim)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object = "config") -> Config:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(source, f"unknown config section(s): {', '.join(sorted(unknown))}")
        config = cls(
            model=_build(ModelConfig, data.get("model", {}), source),
            train=_build(TrainConfig, data.get("train", {}), source),
            privacy=_build(PrivacyConfig, data.get("privacy", {}), source),
            federation=_build(FederationConfig, data.get("federation", {}), source),
        )
        _check_values(config, source)
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise InputError(path, "file not found") from None
        except OSError as err:  # a directory, no permission, ...
            raise InputError(path, f"cannot read ({err.strerror or err})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise InputError(path, f"not valid TOML ({err})") from None
        except ValueError as err:  # e.g. an integer of more than 4300 digits
            raise InputError(path, f"not a value Python reads ({str(err)[:80]})") from None
        return cls.from_dict(data, source=path)


def _build(cls: type[T], values: Any, source: object) -> T:
    if not isinstance(values, dict):
        raise InputError(source, f"[{cls.__name__}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - set(fields)
    if unknown:
        raise InputError(source, f"unknown key(s) {', '.join(sorted(unknown))} for {cls.__name__}")
    default = cls()
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        expected = getattr(default, name)
        kwargs[name] = _coerce(value, expected, f"{cls.__name__}.{name}", source,
                               str(fields[name].type))
    return cls(**kwargs)


def _coerce(value: Any, expected: Any, name: str, source: object, kind: str = "") -> Any:
    """``value`` as the type of the field's default ``expected``; ``kind``: the field's
    annotation, which tells a tuple of floats from one of positive integers."""
    if value is None and expected is None:  # optional field left unset (to_dict round trip)
        return None
    if kind == "tuple[float, ...]":
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise InputError(source, f"{name} must be a list of numbers")
        return tuple(float(v) for v in value)
    if isinstance(expected, tuple):
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise InputError(source, f"{name} must be a list of positive integers")
        return tuple(value)
    if isinstance(expected, bool):
        if not isinstance(value, bool):
            raise InputError(source, f"{name} must be true or false")
        return value
    if isinstance(expected, int) and not isinstance(value, bool) and isinstance(value, int):
        return value
    if (isinstance(expected, float) or expected is None) and (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        return float(value)
    if isinstance(expected, str) and isinstance(value, str):
        return value
    raise InputError(source, f"{name} has the wrong type ({type(value).__name__})")


# (section, field) -> (test, what a valid value is). Checked after types, so a typo'd value is a
# one-line InputError here rather than a NaN loss or a crash deep in training.
_RULES: dict[tuple[str, str], tuple[Any, str]] = {
    ("model", "hidden"): (lambda v: len(v) >= 1, "a non-empty list"),
    ("model", "time_dim"): (lambda v: v >= 1, ">= 1"),
    ("model", "sigma_data"): (lambda v: v > 0, "> 0"),
    ("model", "p_std"): (lambda v: v > 0, "> 0"),
    ("model", "sigma_min"): (lambda v: v > 0, "> 0"),
    ("model", "sigma_max"): (lambda v: v > 0, "> 0"),
    ("model", "rho"): (lambda v: v > 0, "> 0"),
    ("model", "sample_steps"): (lambda v: v >= 1, ">= 1"),
    ("model", "records_sample_steps"): (lambda v: v >= 1, ">= 1"),
    ("model", "threshold"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("model", "dependency_scale"): (lambda v: 0 <= v <= 10, "in [0, 10] (0: auto)"),
    ("model", "outcome_group"): (lambda v: v >= -1, ">= -1 (-1: none)"),
    ("model", "outcome_columns"): (lambda v: 0 <= v <= 1000, "in [0, 1000] (0: off)"),
    ("model", "ordinal_values"): (lambda v: all(-1 <= x <= 1 for x in v), "numbers in [-1, 1]"),
    ("train", "epochs"): (lambda v: v >= 0, ">= 0"),
    ("train", "batch_size"): (lambda v: v >= 1, ">= 1"),
    ("train", "lr"): (lambda v: v > 0, "> 0"),
    ("train", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("train", "ema_decay"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("train", "noise_multiplicity"): (lambda v: v >= 1, ">= 1"),
    ("train", "seed"): (lambda v: v >= 0, ">= 0"),
    ("train", "device"): (lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v), "auto|cpu|cuda"),
    ("train", "num_threads"): (lambda v: v >= 0, ">= 0"),
    ("privacy", "epsilon"): (lambda v: v is None or v > 0, "> 0"),
    ("privacy", "delta"): (lambda v: v is None or 0 < v < 1, "in (0, 1)"),
    ("privacy", "max_grad_norm"): (lambda v: v > 0, "> 0"),
    ("privacy", "records_max_grad_norm"): (lambda v: v > 0, "> 0"),
    ("privacy", "noise_multiplicity"): (lambda v: v >= 1, ">= 1"),
    ("privacy", "accountant"): (lambda v: v in ("prv", "rdp"), "prv or rdp"),
    ("privacy", "grad_sample_mode"): (
        lambda v: v in ("ghost", "hooks", "functorch", "ew"), "ghost|hooks|functorch|ew"),
    ("model", "output_step"): (
        lambda v: v in ("auto", "per_code", "threshold"), "auto|per_code|threshold"),
    ("model", "parameterization"): (lambda v: v in ("binary", "edm"), "binary|edm"),
    ("train", "lr_schedule"): (lambda v: v in ("constant", "cosine"), "constant|cosine"),
    ("privacy", "epochs"): (lambda v: v >= 0, ">= 0"),
    ("privacy", "batch_size"): (lambda v: v >= 1, ">= 1"),
    ("privacy", "records_batch_size"): (lambda v: v >= 1, ">= 1"),
    ("federation", "records_sample_rate"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("privacy", "lr"): (lambda v: v > 0, "> 0"),
    ("privacy", "ema_decay"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("privacy", "hidden"): (lambda v: len(v) >= 1, "a non-empty list"),
    ("privacy", "time_dim"): (lambda v: v >= 1, ">= 1"),
    ("privacy", "count_epsilon_share"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("privacy", "count_epsilon_min"): (lambda v: v >= 0, ">= 0"),
    ("privacy", "count_clip"): (lambda v: v > 0, "> 0"),
    ("privacy", "count_tail_gate"): (lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("federation", "sample_rate"): (lambda v: 0 <= v <= 1, "in [0, 1] (0: from batch_size)"),
    ("federation", "lr"): (lambda v: v >= 0, ">= 0 (0: privacy.lr)"),
    ("federation", "rounds"): (lambda v: v >= 1, ">= 1"),
    ("federation", "min_sites"): (lambda v: v >= 1, ">= 1"),
    ("federation", "local_epochs"): (lambda v: v > 0, "> 0"),
    ("federation", "holdout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("federation", "round_timeout"): (lambda v: v > 0, "> 0"),
    ("federation", "strategy"): (
        lambda v: v in ("fedavg", "fedavgm", "fedadam"), "fedavg|fedavgm|fedadam"),
    ("federation", "server_lr"): (lambda v: v > 0, "> 0"),
    ("federation", "server_momentum"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("federation", "max_weight_ratio"): (lambda v: v > 1, "> 1"),
    ("federation", "hidden"): (lambda v: all(w >= 1 for w in v),
                               "a list of widths >= 1 (empty: privacy.hidden)"),
}


def _check_values(config: Config, source: object) -> None:
    """Every float finite; every value in its valid range (``_RULES``)."""
    for section in dataclasses.fields(config):
        part = getattr(config, section.name)
        for f in dataclasses.fields(part):
            value = getattr(part, f.name)
            name = f"{type(part).__name__}.{f.name}"
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError(source, f"{name} must be a finite number, got {value}")
            rule = _RULES.get((section.name, f.name))
            if rule is not None and not rule[0](value):
                raise InputError(source, f"{name} must be {rule[1]}, got {value!r}")
    if config.model.sigma_min >= config.model.sigma_max:
        raise InputError(source, "ModelConfig.sigma_min must be below sigma_max")
    if config.model.parameterization != "binary" and config.model.dependency_scale not in (0, 1):
        # refused before any training, not at the release's first sample (common.model.guidance)
        raise InputError(source, "ModelConfig.dependency_scale needs the binary "
                                 "parameterisation (0 or 1 for edm)")
