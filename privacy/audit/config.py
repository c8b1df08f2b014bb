"""Audit hyper-parameters: one dataclass, defaults that work (kept here, not in functions)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AuditConfig:
    """How the privacy audit of a sampler is run."""

    n_synth: int = 10_000  # synthetic records drawn for the black-box attacks
    alpha: float = 0.05  # 1 - confidence of every epsilon lower bound
    seed: int = 0
    # black-box membership
    kde_bandwidth: float = 1.0  # Hamming kernel exp(-d / h) of the density-ratio attack
    presence_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)  # medGAN: share of records held
    presence_max_distance: int = 10  # Hamming thresholds h = 0..max
    roc_points: int = 200  # ROC curves are downsampled to this many points
    min_cell: int = 5  # real-data code counts below this are suppressed in shared figures
    max_eval: int = 20_000  # members / non-members scored at most (random subsample)
    # attribute disclosure (medGAN)
    attr_known: int = 16  # s: codes the attacker knows
    attr_known_mode: str = "top"  # "top" (most common codes) | "random"
    attr_k: int = 1  # neighbours voting (medGAN reports k = 1 and 10)
    attr_targets: int = 1_000  # member patients attacked
    # white-box canaries / loss attack
    # noise levels of the canary / loss-attack scores; () = the model's defaults
    # (privacy.audit.canaries.audit_sigmas: where memorisation shows for its parameterisation)
    canary_sigmas: tuple[float, ...] = ()
    canary_draws: int = 8  # noise draws per sigma, shared by every scored row
    canary_codes: int = 8  # codes per canary patient
    white_box_rows: int = 1_000  # members and as many non-members scored by the loss attack
    one_run_guess_fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0)  # Bonferroni over r
