"""ehr-server / ehr-simulate plan flags reach the settings the sites actually use."""

from __future__ import annotations

import argparse

import pytest

from client.site_training import SitePlan, sample_rate
from common.errors import InputError
from server.options import add_plan_args, build_config


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


def test_bad_plan_values_are_input_errors() -> None:
    with pytest.raises(InputError, match="--rounds"):
        build_config(_args("--rounds", "0"))
    with pytest.raises(InputError, match="--epsilon"):
        build_config(_args("--epsilon", "-1"))
