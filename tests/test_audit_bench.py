"""bench_audit's pass/fail logic (the training itself runs in the benchmark, not here)."""

from __future__ import annotations

from fedsynth.simulations.bench_audit import expectations

GOOD = {
    "nonprivate": {"epsilon": None, "eps_lb": 2.9, "canary_auroc": 1.0, "loss_attack_auroc": 0.71,
                   "dcr_hamming_auroc": 0.53, "domias_auroc": 0.53, "verdict": "risk"},
    "dp": {"epsilon": 1.0, "eps_lb": 0.0, "canary_auroc": 0.48, "loss_attack_auroc": 0.51,
           "dcr_hamming_auroc": 0.51, "domias_auroc": 0.50, "verdict": "pass"},
}


def test_expected_outcome_passes_every_check() -> None:
    assert all(ok for _, ok in expectations(GOOD))


def test_a_dp_model_beaten_by_the_audit_is_reported() -> None:
    bad = {k: dict(v) for k, v in GOOD.items()}
    bad["dp"].update(eps_lb=1.4, verdict="fail")
    failed = [c for c, ok in expectations(bad) if not ok]
    assert any("eps_lb <= epsilon" in c for c in failed) and any("verdict" in c for c in failed)


def test_an_unflagged_memoriser_is_reported() -> None:
    bad = {k: dict(v) for k, v in GOOD.items()}
    bad["nonprivate"].update(eps_lb=0.0, canary_auroc=0.5, loss_attack_auroc=0.5)
    assert sum(not ok for _, ok in expectations(bad)) == 2
