"""Private counts and site size (one Gaussian mechanism) and their estimate: the sensitivity
holds with the size coordinate, a code no patient has never reaches a visible prevalence, the
total prevalence stays close to the real codes per patient, and the Generator's tail samples
the codes the network does not model at their prevalence and survives a save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedsynth.common.config import ModelConfig
from fedsynth.common.data import Vocabulary
from fedsynth.common.errors import InputError
from fedsynth.common.model import OutputStep, build_model, load_model, save_model
from fedsynth.common.model.calibrate import calibrate
from fedsynth.common.model.store import Generator
from fedsynth.privacy.counts import NoisyCounts, combine, estimate, release_counts

VISIBLE = 1e-3  # a prevalence a reader of the synthetic data would notice


def _cohort(seed: int = 0, n: int = 20_000, v: int = 1_000, real: int = 400) -> np.ndarray:
    """n patients over v codes, only the first ``real`` ever present (prevalences log-uniform
    from 1e-4 to 0.05, a fifth of the occurrences below 1%): the other codes have a true count
    of zero."""
    rng = np.random.default_rng(seed)
    p = np.exp(rng.uniform(np.log(1e-4), np.log(0.05), real))
    X = np.zeros((n, v), dtype=np.uint8)
    X[:, :real] = rng.random((n, real)) < p
    return X


def test_adding_a_patient_moves_codes_and_size_by_at_most_clip() -> None:
    """Neighbouring data sets (one patient with k codes added): the released vector (codes,
    size) moves by min(sqrt(k + 1), clip) in L2, computed by hand; noise identical (same seed),
    so the difference is the exact sum's."""
    X = _cohort(n=300, v=60, real=40)
    clip = 4.0
    for k in (0, 3, 15, 40):  # 15 codes + the patient = norm 4: the edge; 40: clipped
        extra = np.zeros((1, X.shape[1]), dtype=np.uint8)
        extra[0, :k] = 1
        a = release_counts(X, clip, 2.0, np.random.default_rng(7))
        b = release_counts(np.vstack([X, extra]), clip, 2.0, np.random.default_rng(7))
        moved = np.linalg.norm(np.append(b.counts - a.counts, b.size - a.size))
        assert moved == pytest.approx(min(np.sqrt(k + 1), clip), rel=1e-9)
        assert moved <= clip + 1e-9
        assert b.size - a.size == pytest.approx(min(1.0, clip / np.sqrt(k + 1)))
    assert a.noise_std == pytest.approx(2.0 * clip)


def test_release_without_rng_uses_fresh_os_noise() -> None:
    X = _cohort(n=200, v=30, real=10)
    a, b = release_counts(X, 4.0, 1.0), release_counts(X, 4.0, 1.0)
    assert not np.array_equal(a.counts, b.counts) and a.size != b.size


def test_combine_sums_counts_and_sizes_and_adds_variances() -> None:
    a = NoisyCounts(np.array([1.0, 2.0]), 10.0, 3.0)
    b = NoisyCounts(np.array([5.0, -1.0]), 20.0, 4.0)
    c = combine([a, b])
    assert np.array_equal(c.counts, [6.0, 1.0]) and c.size == 30.0
    assert c.noise_std == pytest.approx(5.0)  # sqrt(3^2 + 4^2)
    # the noise std it states is the one the sum has (empirically, over many releases)
    X1, X2 = _cohort(1, 100, 20, 10), _cohort(2, 150, 20, 10)
    rng = np.random.default_rng(0)
    draws = [combine([release_counts(X1, 2.0, 1.5, rng), release_counts(X2, 2.0, 0.5, rng)])
             for _ in range(2000)]
    exact = combine([release_counts(X1, 2.0, 1e-12, rng), release_counts(X2, 2.0, 1e-12, rng)])
    err = np.array([d.counts - exact.counts for d in draws]).ravel()
    assert err.std() == pytest.approx(draws[0].noise_std, rel=0.03)  # sqrt(3^2 + 1^2)
    assert draws[0].noise_std == pytest.approx(np.sqrt(10.0))
    with pytest.raises(ValueError):
        combine([])


@pytest.fixture(scope="module")
def releases() -> tuple[np.ndarray, list[NoisyCounts]]:
    """Ten releases of a 20,000-patient cohort at the noise of a real plan (z 13, clip 4:
    std 52, 0.26% of the patients, so a null code's noise reaches ~0.9%)."""
    X = _cohort()
    return X, [release_counts(X, 4.0, 13.0, np.random.default_rng(s)) for s in range(10)]


def test_no_code_with_true_count_zero_gets_a_visible_prevalence(releases) -> None:
    X, draws = releases
    null = X.sum(axis=0) == 0
    for noisy in draws:
        est = estimate(noisy)
        assert est.prevalence[null].max() <= VISIBLE
        assert not np.any(null[est.kept])
        # nor sprayed below the visible level: the tail gate (present with probability >= 15%)
        # keeps the mass on codes no patient has under 0.05 codes per patient (here <= 0.038)
        assert est.prevalence[null].sum() < 0.05
    # (an ungated tail would give each of the 600 null codes its posterior mean, ~s/5)
    assert estimate(draws[0], tail_gate=1.1).prevalence[null].sum() > 0.1
    # the former rule (3 std, raw noisy prevalence) invents codes in these very releases
    old = [estimate(noisy, "threshold3").prevalence[null].max() for noisy in draws]
    assert max(old) > 3 * VISIBLE


def test_a_zero_tail_gate_draws_no_code_the_counts_cannot_tell_from_absent(releases) -> None:
    """[privacy] count_tail_gate 0 (the demo's preset): nothing outside the modelled codes, so no
    code that no patient has; the default keeps a tail. The config refuses a gate outside [0, 1]."""
    from fedsynth.common.config import Config, PrivacyConfig
    from fedsynth.privacy.counts import TAIL_GATE

    X, draws = releases
    null = X.sum(axis=0) == 0
    for noisy in draws[:3]:
        est = estimate(noisy, tail_gate=0.0)
        rest = np.setdiff1d(np.arange(X.shape[1]), est.kept)
        assert est.info["tail_codes"] == 0 and not np.any(est.prevalence[rest] > 0)
        assert not np.any(est.prevalence[null] > 0)
        assert estimate(noisy).info["tail_codes"] > 0
    assert TAIL_GATE == PrivacyConfig().count_tail_gate == 0.85  # one default
    with pytest.raises(InputError, match="count_tail_gate"):
        Config.from_dict({"privacy": {"count_tail_gate": 1.5}})


def test_total_prevalence_is_close_to_the_real_codes_per_patient() -> None:
    """At the noise of a central diabetes130 release (std 0.08% of the patients), the summed
    prevalence is within 7% of the real codes per patient (what is lost: real codes below
    the noise, which cannot be told from absent ones); the size estimate is within its noise."""
    X = _cohort()
    real = X.sum(axis=1).mean()
    for seed in range(5):
        noisy = release_counts(X, 4.0, 4.0, np.random.default_rng(seed))
        est = estimate(noisy)
        assert est.prevalence.sum() == pytest.approx(real, rel=0.07)
        assert est.n == pytest.approx(X.shape[0], abs=5 * noisy.noise_std)
        # modelled codes: about their true prevalence (shrinkage does not eat real codes)
        big = est.kept[X[:, est.kept].mean(axis=0) > 0.01]
        assert np.allclose(est.prevalence[big], X[:, big].mean(axis=0),
                           atol=4 * noisy.noise_std / X.shape[0])


def test_estimate_keeps_at_least_two_codes_and_caps_their_invented_prevalence() -> None:
    noisy = NoisyCounts(np.random.default_rng(0).normal(0, 10.0, 500), 1000.0, 10.0)
    est = estimate(noisy)  # nothing but noise
    assert len(est.kept) == 2 and est.prevalence.max() <= 5e-4
    with pytest.raises(ValueError):
        estimate(noisy, "nonsense")


VOCAB = Vocabulary(tuple(f"{i:03d}" for i in range(1, 9)), {}, "test")
CFG = ModelConfig(hidden=(16, 16), time_dim=8, sample_steps=3, sample_precision="fp32",
                  parameterization="binary")
TAIL = np.array([0, 0, 0.3, 0.05, 0, 0.01, 0, 0])  # codes 2, 3, 5: not modelled


def _gen() -> Generator:
    torch.manual_seed(0)
    return Generator(build_model(2, CFG), CFG, VOCAB, OutputStep(), modelled=[0, 1], tail=TAIL)


def test_generator_samples_tail_codes_at_their_prevalence_and_round_trips(tmp_path) -> None:
    gen = _gen()
    X = gen.sample(20_000, seed=3)
    got = X.mean(axis=0)
    for j in (2, 3, 5):
        assert got[j] == pytest.approx(TAIL[j], abs=4 * np.sqrt(TAIL[j] / 20_000) + 1e-9)
    assert not X[:, [4, 6, 7]].any()  # neither modelled nor in the tail: never emitted
    assert np.array_equal(gen.sample(2500, seed=3, batch=1000), X[:2500])  # batch-independent
    assert not np.array_equal(gen.sample(2000, seed=4), X[:2000])
    save_model(tmp_path / "m", gen.model, CFG, VOCAB, output_step=gen.output_step,
               modelled=gen.modelled, tail=gen.tail)
    back = load_model(tmp_path / "m", device="cpu")
    assert np.array_equal(back.tail, TAIL)
    assert np.array_equal(back.sample(3000, seed=3), X[:3000])


@pytest.mark.parametrize("tail", [
    {"codes": [2, 3], "prevalence": [0.3, 1.5]},  # not a probability
    {"codes": [1, 3], "prevalence": [0.3, 0.1]},  # code 1 is modelled
    {"codes": [3, 2], "prevalence": [0.3, 0.1]},  # not sorted
    {"codes": [2, 99], "prevalence": [0.3, 0.1]},  # out of range
    {"codes": [2], "prevalence": [0.3, 0.1]},  # lengths differ
    {"codes": "2", "prevalence": None},
])
def test_a_damaged_tail_is_an_input_error(tmp_path, tail) -> None:
    gen = _gen()
    save_model(tmp_path, gen.model, CFG, VOCAB, modelled=gen.modelled, tail=gen.tail)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["tail"] = tail
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(InputError):
        load_model(tmp_path, device="cpu")


@pytest.mark.parametrize("param", ["binary", "edm"])
def test_calibrate_puts_unmodelled_prevalence_in_the_tail_only(param) -> None:
    cfg = ModelConfig(**{**CFG.__dict__, "parameterization": param,
                         **({"output_step": "per_code"} if param == "edm" else {})})
    torch.manual_seed(0)
    gen = Generator(build_model(2, cfg), cfg, VOCAB, OutputStep(), modelled=[0, 1])
    target = np.array([0.2, 0.4, 0.3, 0.05, 0, 0.01, 0, 0])
    calibrate(gen, target, "test", n=2000)
    assert np.array_equal(gen.tail, np.where(np.isin(np.arange(8), [0, 1]), 0.0, target))
    X = gen.sample(4000, seed=1)
    assert not X[:, [4, 6, 7]].any()
    assert X[:, 2].mean() == pytest.approx(0.3, abs=0.04)
