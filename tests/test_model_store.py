"""Model directory round trip, the Generator, bf16 sampling and broken directories."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from fedsynth.common.config import ModelConfig
from fedsynth.common.data import Vocabulary
from fedsynth.common.errors import InputError
from fedsynth.common.model import EMA, OutputStep, build_model, load_model, save_model
from fedsynth.common.model.store import Generator

VOCAB = Vocabulary(tuple(f"{i:03d}" for i in range(1, 13)), {}, "test")
CFG = ModelConfig(hidden=(16, 16), time_dim=8, sample_steps=3, sample_precision="fp32")


def test_round_trip_keeps_weights_config_vocab_and_output_step(tmp_path):
    torch.manual_seed(0)
    model = build_model(len(VOCAB), CFG)
    ema = EMA(model, 0.9)
    step = OutputStep("per_code", thresholds=np.linspace(0.1, 0.9, len(VOCAB)))
    save_model(tmp_path / "m", ema, CFG, VOCAB, extra={"note": 1}, output_step=step)
    gen = load_model(tmp_path / "m")
    for k, v in ema.state_dict().items():
        assert torch.equal(gen.model.state_dict()[k], v)
    assert gen.cfg == CFG and gen.vocab.codes == VOCAB.codes and gen.extra == {"note": 1}
    assert np.array_equal(gen.output_step.thresholds, step.thresholds)
    original = Generator(ema.module, CFG, VOCAB, step)
    assert np.array_equal(gen.sample(30, seed=4), original.sample(30, seed=4))
    assert not np.array_equal(gen.sample_continuous(30, seed=4), gen.sample_continuous(30, seed=5))


def test_missing_output_step_falls_back_to_scalar_threshold(tmp_path):
    save_model(tmp_path, build_model(len(VOCAB), CFG), CFG, VOCAB)
    gen = load_model(tmp_path)
    assert gen.output_step.kind == "threshold" and gen.output_step.threshold == CFG.threshold


@pytest.mark.parametrize("param", ["edm", "binary"])
def test_bf16_sampling_stays_close_to_fp32(param):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**CFG.__dict__, "parameterization": param})
    model = build_model(len(VOCAB), cfg)
    fp32 = Generator(model, cfg, VOCAB, OutputStep()).sample_continuous(200, seed=1)
    cfg16 = ModelConfig(**{**cfg.__dict__, "sample_precision": "bf16"})
    bf16 = Generator(model, cfg16, VOCAB, OutputStep()).sample_continuous(200, seed=1)
    if param == "edm":
        assert np.abs(bf16 - fp32).max() < 0.05 * max(1.0, np.abs(fp32).max())
    else:  # 0/1 outputs: a code at the decision boundary may flip, rarely
        assert np.mean(np.abs(bf16 - fp32) > 0.5) < 0.01


def test_modelled_codes_round_trip_and_others_never_emitted(tmp_path):
    cols = [1, 4, 5, 9]
    torch.manual_seed(0)
    model = build_model(len(cols), CFG, np.full(len(cols), 0.5))
    save_model(tmp_path, model, CFG, VOCAB, output_step=OutputStep("threshold", 0.5),
               modelled=cols)
    gen = load_model(tmp_path)
    assert list(gen.modelled) == cols and gen.n_modelled == 4 and gen.n_codes == len(VOCAB)
    S = gen.sample(500, seed=0)
    assert S.shape == (500, len(VOCAB))
    others = np.setdiff1d(np.arange(len(VOCAB)), cols)
    assert S[:, others].sum() == 0 and S[:, cols].sum() > 0
    with pytest.raises(ValueError, match="modelled"):
        save_model(tmp_path / "bad", model, CFG, VOCAB, modelled=[1, 2])


@pytest.mark.parametrize("cols", [[3, 1, 2, 4], [0, 1, 2, 99], [-1, 0, 1, 2], [1, 1, 2, 3], []])
def test_hostile_codes_modelled_is_an_input_error(tmp_path, cols):
    model = build_model(4, CFG)
    save_model(tmp_path, model, CFG, VOCAB, modelled=[1, 2, 3, 4])
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["codes_modelled"] = cols
    (tmp_path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(InputError, match="config.json"):
        load_model(tmp_path)


def test_format_1_directory_loads_as_ehrdiff_parameterisation(tmp_path):
    cfg = ModelConfig(**{**CFG.__dict__, "parameterization": "edm"})
    model = build_model(len(VOCAB), cfg)
    save_model(tmp_path, model, cfg, VOCAB)
    conf = json.loads((tmp_path / "config.json").read_text())
    conf["format"] = "fedsynth-edm/1"
    del conf["codes_modelled"], conf["model"]["parameterization"]
    (tmp_path / "config.json").write_text(json.dumps(conf))
    gen = load_model(tmp_path)
    assert gen.cfg.parameterization == "edm" and gen.modelled is None


def test_broken_model_directories_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope")
    save_model(tmp_path / "m", build_model(len(VOCAB), CFG), CFG, VOCAB)
    (tmp_path / "m" / "model.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match="model.pt"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="config.json"):
        load_model(tmp_path / "m")


def test_release_from_a_state_dict_calibrates_and_saves_what_save_model_would(tmp_path,
                                                                            monkeypatch):
    """common.model.release: weights (module or numpy state dict) -> the calibrated Generator
    (fixed threshold with its source, tail of unmodelled codes) -> the model directory."""
    import fedsynth.common.model.calibrate as calibration
    from fedsynth.common.model.release import release_generator, save_release

    monkeypatch.setattr(calibration, "CALIBRATION_SAMPLES", 500)
    cfg = ModelConfig(**{**CFG.__dict__, "parameterization": "binary"})
    torch.manual_seed(0)
    model = build_model(3, cfg)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}  # as a coordinator has
    plain, info = release_generator(state, cfg, VOCAB, [0, 4, 7], threshold_source="why")
    assert info == {} and plain.tail is None and plain.output_step.threshold == cfg.threshold
    assert plain.output_step.info == {"source": "why"}
    prev = np.zeros(len(VOCAB))
    prev[[0, 4, 7, 9]] = [0.3, 0.2, 0.1, 0.05]
    gen, info = release_generator(model, cfg, VOCAB, [0, 4, 7], threshold_source="why",
                                  prevalence=prev, prevalence_source="test counts")
    assert info["samples"] == 500 and info["prevalence_source"] == "test counts"
    assert gen.output_step.info["calibration"] == info
    assert np.flatnonzero(gen.tail).tolist() == [9]
    save_release(tmp_path / "a", gen, extra={"note": 1})
    # the release's config is cfg with its auto dependency scale decided (codes only: 1)
    assert gen.cfg == dataclasses.replace(cfg, dependency_scale=1.0)
    save_model(tmp_path / "b", gen.model, gen.cfg, VOCAB, extra={"note": 1},
               output_step=gen.output_step, modelled=[0, 4, 7], tail=gen.tail)
    for name in ("config.json", "vocabulary.json", "output_step.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    back = load_model(tmp_path / "a", device="cpu")
    assert np.array_equal(back.sample(200, seed=2), gen.sample(200, seed=2))


def test_a_records_model_with_one_hot_groups_round_trips(tmp_path) -> None:
    """The groups are rebuilt from config.json (the loader first builds on the meta device)."""
    import dataclasses

    cfg = dataclasses.replace(CFG, one_hot_groups=(3, 4))
    model = build_model(len(VOCAB), cfg, np.full(len(VOCAB), 0.2))
    save_model(tmp_path, model, cfg, VOCAB)
    gen = load_model(tmp_path)
    assert gen.cfg.one_hot_groups == (3, 4)
    X = gen.sample(200, seed=1)
    assert (X[:, :3].sum(axis=1) == 1).all() and (X[:, 3:7].sum(axis=1) == 1).all()
    np.testing.assert_array_equal(X, load_model(tmp_path).sample(200, seed=1))
