"""Hyper-parameters: one dataclass per concern, defaults that work, loadable from TOML or flags.

A TOML file may hold the tables ``[model]``, ``[train]``, ``[privacy]`` and ``[federation]``;
unknown keys are an input error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common.errors import InputError

T = TypeVar("T")


@dataclass
class ModelConfig:
    """EHRDiff-style EDM diffusion model over a binary code vector."""

    hidden: tuple[int, ...] = (1024, 384, 384, 384, 1024)
    time_dim: int = 256
    sigma_data: float = 0.14
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.02
    sigma_max: float = 80.0
    rho: float = 7.0
    sample_steps: int = 32
    threshold: float = 0.5


@dataclass
class TrainConfig:
    """Optimisation of the denoiser (centralized or at one site)."""

    epochs: int = 100
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    noise_multiplicity: int = 1
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0: torch default


@dataclass
class PrivacyConfig:
    """DP-SGD at a site. ``epsilon=None`` means non-private."""

    epsilon: float | None = None
    delta: float | None = None  # None: min(1e-5, 1/(10 n_site))
    max_grad_norm: float = 0.1
    noise_multiplicity: int = 4
    accountant: str = "prv"
    grad_sample_mode: str = "ghost"


@dataclass
class FederationConfig:
    """Rounds, sites and the aggregation strategy."""

    rounds: int = 6
    min_sites: int = 2
    local_epochs: float = 5.0
    # Each site's Poisson sampling rate q_k (expected batch q_k * n_k); 0: train.batch_size / n_k
    sample_rate: float = 1 / 28
    # Site learning rate in federated rounds; 0: train.lr
    lr: float = 2e-3
    holdout: float = 0.2
    round_timeout: float = 600.0
    strategy: str = "fedavg"
    server_lr: float = 1.0
    server_momentum: float = 0.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object = "config") -> Config:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(source, f"unknown config section(s): {', '.join(sorted(unknown))}")
        return cls(
            model=_build(ModelConfig, data.get("model", {}), source),
            train=_build(TrainConfig, data.get("train", {}), source),
            privacy=_build(PrivacyConfig, data.get("privacy", {}), source),
            federation=_build(FederationConfig, data.get("federation", {}), source),
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise InputError(path, "file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise InputError(path, f"not valid TOML ({err})") from None
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
        kwargs[name] = _coerce(value, expected, f"{cls.__name__}.{name}", source)
    return cls(**kwargs)


def _coerce(value: Any, expected: Any, name: str, source: object) -> Any:
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
    if isinstance(expected, float) or expected is None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    if isinstance(expected, str) and isinstance(value, str):
        return value
    raise InputError(source, f"{name} has the wrong type ({type(value).__name__})")
