"""Model directory round trip, the Generator, bf16 sampling and broken directories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.config import ModelConfig
from common.data import Vocabulary
from common.errors import InputError
from common.model import EMA, OutputStep, build_model, load_model, save_model
from common.model.store import Generator

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


def test_bf16_sampling_stays_close_to_fp32():
    torch.manual_seed(0)
    model = build_model(len(VOCAB), CFG)
    fp32 = Generator(model, CFG, VOCAB, OutputStep()).sample_continuous(200, seed=1)
    cfg16 = ModelConfig(**{**CFG.__dict__, "sample_precision": "bf16"})
    bf16 = Generator(model, cfg16, VOCAB, OutputStep()).sample_continuous(200, seed=1)
    assert np.abs(bf16 - fp32).max() < 0.05 * max(1.0, np.abs(fp32).max())


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
