"""Dependency guidance (``common.model.guidance``): the sampler's w scales exactly the network's
term of the posterior, auto picks w by how a records model was trained, the release keeps the
w its sampler uses, and a bad w is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsynth.common.config import Config, ModelConfig
from fedsynth.common.errors import InputError
from fedsynth.common.model import build_model, edm_sigmas, heun_sample, load_model
from fedsynth.common.model.guidance import AUTO_SCALE, resolve_scale, sampling_scale
from fedsynth.common.model.release import release_generator, save_release
from fedsynth.common.vocabulary import Vocabulary

GROUPS = (3, 2)
RECORDS = ModelConfig(hidden=(16,), time_dim=8, one_hot_groups=GROUPS,
                      ordinal_values=(0.0, 0.0, 0.0, -1.0, 1.0))


def _model(cfg: ModelConfig = RECORDS) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(7, cfg, np.array([0.5, 0.3, 0.2, 0.6, 0.4, 0.1, 0.3])).double()
    for p in model.parameters():  # a network that says something (the last layer starts at 0)
        torch.nn.init.normal_(p, std=0.5)
    return model


def test_the_scale_multiplies_exactly_the_networks_term() -> None:
    # z(w) = z(0) + w (z(1) - z(0)), and z(0) is the independent posterior prior + (x - 1/2)/s^2
    # (+ the calibration offset), computed here without the module
    model = _model()
    with torch.no_grad():
        model.logit_offset.normal_()
    x = torch.randn(6, 7, dtype=torch.float64)
    s = torch.full((6, 1), 0.7, dtype=torch.float64)
    z0, z1 = (model(x, s, logits=True, dependency_scale=w).detach() for w in (0.0, 1.0))
    independent = model.prior_logit + model.logit_offset + (x - 0.5) / 0.49
    np.testing.assert_allclose(z0.numpy(), independent.numpy(), rtol=1e-12)
    assert not torch.allclose(z0, z1)
    for w in (0.5, 1.75, 3.0):
        zw = model(x, s, logits=True, dependency_scale=w).detach()
        np.testing.assert_allclose(zw.numpy(), (z0 + w * (z1 - z0)).numpy(), rtol=1e-9,
                                   atol=1e-12)
        with torch.no_grad():  # the sampler's in-place path: the same probabilities
            probs = model(x, s, dependency_scale=w)
        np.testing.assert_allclose(probs.numpy(), model.probs(zw).detach().numpy(), rtol=1e-12)


def test_auto_scale_depends_on_how_a_records_model_was_trained() -> None:
    for training, w in AUTO_SCALE.items():
        assert resolve_scale(RECORDS, training).dependency_scale == w
        assert resolve_scale(ModelConfig(), training).dependency_scale == 1.0  # codes only
    set_by_user = ModelConfig(one_hot_groups=GROUPS, dependency_scale=2.5)
    assert resolve_scale(set_by_user, "federated").dependency_scale == 2.5
    assert sampling_scale(RECORDS) == 1.0  # not released yet: the trained posterior
    with pytest.raises(ValueError, match="training"):
        resolve_scale(RECORDS, "coordinator")


def test_the_release_keeps_the_scale_its_sampler_uses(tmp_path) -> None:
    model = _model()
    vocab = Vocabulary(tuple(f"c{i}" for i in range(7)), name="t")
    gen, _ = release_generator(model, RECORDS, vocab, None, threshold_source="test",
                               training="federated")
    assert gen.cfg.dependency_scale == AUTO_SCALE["federated"] > 1
    x = torch.randn(5, 7, dtype=torch.float64)
    s = torch.full((5, 1), 0.4, dtype=torch.float64)
    gen.cfg.sample_precision = "fp32"
    w = AUTO_SCALE["federated"]
    with torch.no_grad():
        np.testing.assert_allclose(gen.denoiser()(x, s).numpy(),
                                   model(x, s, dependency_scale=w).numpy(), rtol=1e-12)
    save_release(tmp_path / "m", gen)
    again = load_model(tmp_path / "m", device="cpu")
    assert again.cfg.dependency_scale == AUTO_SCALE["federated"]
    # sampling with guidance still gives one category per group
    noise = torch.randn(500, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = heun_sample(gen.denoiser(), noise, edm_sigmas(8, 0.02, 5.0, 7.0)).numpy()
    assert np.allclose(out[:, :3].sum(axis=1), 1.0, atol=1e-6)


def test_a_bad_scale_is_refused() -> None:
    for bad in (-1, 11, "2"):
        with pytest.raises(InputError, match="dependency_scale"):
            Config.from_dict({"model": {"dependency_scale": bad}})
    with pytest.raises(InputError, match="binary"):  # before training, from a config file
        Config.from_dict({"model": {"parameterization": "edm", "dependency_scale": 2}})
    assert Config.from_dict({"model": {"parameterization": "edm", "dependency_scale": 1}})
    edm = ModelConfig(hidden=(8,), time_dim=8, parameterization="edm", dependency_scale=2.0)
    vocab = Vocabulary(("a", "b"), name="t")
    gen, _ = release_generator(build_model(2, edm), edm, vocab, None, threshold_source="test")
    with pytest.raises(InputError, match="binary"):
        gen.denoiser()


def test_a_records_release_samples_with_its_own_steps_and_is_calibrated_at_the_base_steps(
        tmp_path, monkeypatch) -> None:
    """A whole-records release samples with ``records_sample_steps``; its calibration ran at
    ``sample_steps`` (cheaper) and says so; a codes-only release keeps ``sample_steps``."""
    from fedsynth.common.model import calibrate

    monkeypatch.setattr(calibrate, "CALIBRATION_SAMPLES", 400)
    vocab = Vocabulary(tuple(f"c{i}" for i in range(7)), name="t")
    prevalence = np.array([0.5, 0.3, 0.2, 0.6, 0.4, 0.1, 0.3])
    seen: list[int] = []
    from fedsynth.common.model.store import Generator

    original = Generator.sample

    def counting(self, n, seed=0, batch=1000, progress=False):
        seen.append(self.cfg.sample_steps)
        return original(self, n, seed, batch, progress)

    monkeypatch.setattr(Generator, "sample", counting)
    records = ModelConfig(hidden=(16,), time_dim=8, one_hot_groups=GROUPS,
                          ordinal_values=(0.0, 0.0, 0.0, -1.0, 1.0), sample_steps=8,
                          records_sample_steps=12)
    gen, info = release_generator(_model(records).float(), records, vocab, None,
                                  threshold_source="test", prevalence=prevalence)
    assert seen and set(seen) == {8} and info["sampler_steps"] == 8
    assert gen.cfg.sample_steps == 12
    save_release(tmp_path / "m", gen)
    assert load_model(tmp_path / "m", device="cpu").cfg.sample_steps == 12
    codes = ModelConfig(hidden=(16,), time_dim=8, records_sample_steps=12)
    gen, _ = release_generator(build_model(7, codes, prevalence), codes, vocab, None,
                               threshold_source="test", prevalence=prevalence)
    assert gen.cfg.sample_steps == 8
    with pytest.raises(InputError, match="records_sample_steps"):
        Config.from_dict({"model": {"records_sample_steps": 0}})
