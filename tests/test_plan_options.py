"""ehr-server / ehr-simulate plan flags reach the settings the sites actually use."""

from __future__ import annotations

import argparse

import pytest

from fedsynth.client.site_training import SitePlan, sample_rate
from fedsynth.common.errors import InputError
from fedsynth.server.options import add_plan_args, build_config


def _args(*flags: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_plan_args(p)
    return p.parse_args(list(flags))


def _plan(cfg) -> SitePlan:  # noqa: ANN001
    return SitePlan(round=1, rounds=cfg.federation.rounds, run_id="r", target_epsilon=3.0,
                    config=cfg)


def test_lr_flag_is_the_site_learning_rate() -> None:
    cfg = build_config(_args("--lr", "5e-4"))
    assert cfg.federation.lr == 5e-4


def test_batch_size_flag_sets_each_sites_expected_batch() -> None:
    default = build_config(_args())
    assert sample_rate(10_000, _plan(default)) == default.federation.sample_rate
    cfg = build_config(_args("--batch-size", "250"))
    assert sample_rate(10_000, _plan(cfg)) == pytest.approx(0.025)
    assert sample_rate(1_000, _plan(cfg)) == pytest.approx(0.25)


def test_whole_records_federations_sample_at_their_own_rate() -> None:
    """A records plan (one-hot groups) trains with ``records_sample_rate``; ``--batch-size``
    still gives every plan batch_size / n_k."""
    cfg = build_config(_args())
    cfg.model.one_hot_groups = (3, 4)
    assert sample_rate(10_000, _plan(cfg)) == cfg.federation.records_sample_rate
    assert cfg.federation.records_sample_rate != cfg.federation.sample_rate
    cfg = build_config(_args("--batch-size", "250"))
    cfg.model.one_hot_groups = (3, 4)
    assert sample_rate(10_000, _plan(cfg)) == pytest.approx(0.025)


def test_bad_plan_values_are_input_errors() -> None:
    with pytest.raises(InputError, match="--rounds"):
        build_config(_args("--rounds", "0"))
    with pytest.raises(InputError, match="--epsilon"):
        build_config(_args("--epsilon", "-1"))


def test_federation_trains_its_own_wider_model() -> None:
    from fedsynth.common.config import Config
    from fedsynth.server.options import federated_config

    cfg = federated_config(build_config(_args()))
    assert cfg.model.hidden == Config().federation.hidden == (512, 512)
    assert Config().private_model().hidden == Config().privacy.hidden == (256, 256)


def test_empty_federation_widths_fall_back_to_the_private_ones(tmp_path) -> None:  # noqa: ANN001
    from fedsynth.server.options import federated_config

    toml = tmp_path / "c.toml"
    toml.write_text("[privacy]\nhidden = [48, 24]\n[federation]\nhidden = []\n")
    assert federated_config(build_config(_args("--config", str(toml)))).model.hidden == (48, 24)
    toml.write_text("[federation]\nhidden = [64, 0]\n")
    with pytest.raises(InputError, match="hidden"):
        build_config(_args("--config", str(toml)))


def test_server_momentum_defaults_to_fedavgm_and_zero_is_plain_fedavg() -> None:
    import numpy as np

    from fedsynth.server.aggregation import server_optimizer

    default = server_optimizer(build_config(_args()).federation)
    assert (default.strategy, default.momentum) == ("fedavgm", 0.5)
    plain = server_optimizer(build_config(_args("--server-momentum", "0")).federation)
    assert plain.strategy == "fedavg"
    g, d = {"w": np.zeros(1, np.float32)}, {"w": np.ones(1)}
    assert default.step(default.step(g, d), d)["w"][0] == pytest.approx(1 + 1.5)
    assert plain.step(plain.step(g, d), d)["w"][0] == pytest.approx(2.0)
