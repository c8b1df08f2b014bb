"""Numeric record columns as ordered tokens (issue 16): each token's public value on the
schema's [-1, 1] scale, the expected value the network reads and the tilt it writes
(common.model.binary), and the plumbing that keeps them the public schema's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsynth.client.site_training import SiteData, _columns_refusal
from fedsynth.common.config import Config, ModelConfig
from fedsynth.common.data.record_tokens import model_layout, ordinal_values, token_layout
from fedsynth.common.data.schema import schema_for
from fedsynth.common.errors import InputError
from fedsynth.common.model.binary import (
    BinaryPosterior,
    network_width,
    ordinal_groups,
    prior_logit,
)
from fedsynth.common.model.train import build_model
from fedsynth.federation.protocol import SitePlan


def test_token_values_are_bin_midpoints_on_the_schema_scale() -> None:
    schema = schema_for("diabetes130")
    layout = token_layout(schema)
    values = ordinal_values(layout, schema)
    assert len(values) == layout.n_tokens
    columns = {c.name: c for c in schema.columns}
    for g in layout.groups:
        got = values[g.start:g.stop]
        if g.bounds is None:
            assert got == (0.0,) * len(g.labels), g.name
            continue
        col = columns[g.name]
        f = math.log1p if col.transform == "log1p" else float
        lo, hi = f(col.low), f(col.high)
        for (a, b), v in zip(g.bounds, got, strict=True):
            assert v == pytest.approx(2 * (f((a + b) / 2) - lo) / (hi - lo) - 1, abs=1e-6)
        assert got[0] == pytest.approx(-1.0) and list(got) == sorted(got)
    # the column where it matters most: 3 earlier inpatient stays sit between 2 and 4
    inp = next(g for g in layout.groups if g.name == "number_inpatient")
    v = values[inp.start:inp.stop]
    assert v[2] < v[3] < v[4]


def test_numeric_groups_are_those_of_two_tokens_or_more_with_a_value() -> None:
    # a one-token group with a value, a numeric group, a group of zeros, a numeric group
    slot, value, J = ordinal_groups((1, 3, 2, 2), (0.5, -1, 0, 1, 0, 0, -1, 1))
    assert J == 2
    assert slot.tolist() == [2, 0, 0, 0, 2, 2, 1, 1]  # slot J: dropped
    assert value.tolist() == [0, -1, 0, 1, 0, 0, -1, 1]
    assert ordinal_groups((3, 2), ())[2] == 0
    with pytest.raises(ValueError, match="ordinal values"):
        ordinal_groups((3, 2), (0.0, 1.0))


class _Fixed(nn.Module):
    """A stand-in network: records its input and returns a fixed output."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))  # run_net reads the dtype from a parameter
        self.fixed, self.seen = out, torch.empty(0)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        self.seen = x.detach().clone()
        return self.fixed.expand(x.shape[0], -1)


@pytest.mark.parametrize("trained", [False, True], ids=["sampling", "training"])
def test_network_reads_expected_values_and_tilts_numeric_groups(trained: bool) -> None:
    # "training": the network's output carries a gradient (the out-of-place path of forward);
    # "sampling": it does not (the in-place path); both against the same independent numbers
    groups = (3, 4, 2)  # a category, then two numeric columns; then 2 codes
    values = (0.0, 0.0, 0.0, -1.0, -1 / 3, 1 / 3, 1.0, -1.0, 1.0)
    n = 11
    rng = np.random.default_rng(0)
    h = torch.as_tensor(rng.normal(size=(1, n + 2)), dtype=torch.float32).requires_grad_(trained)
    net = _Fixed(h)
    prior = prior_logit(np.full(n, 0.3), n, groups)
    model = BinaryPosterior(net, prior, groups, values)
    x = torch.as_tensor(rng.normal(0.4, 0.6, size=(5, n)), dtype=torch.float32)
    sigma = torch.full((5, 1), 0.7)
    z = model(x, sigma, logits=True)
    assert z.requires_grad == trained

    # independently: the evidence, each group's softmax, the expected values
    ev = prior.numpy() + (x.numpy() - 0.5) / 0.7**2
    p = np.empty_like(ev)
    for a, b in ((0, 3), (3, 7), (7, 9)):
        e = np.exp(ev[:, a:b] - ev[:, a:b].max(axis=1, keepdims=True))
        p[:, a:b] = e / e.sum(axis=1, keepdims=True)
    p[:, 9:] = 1 / (1 + np.exp(-ev[:, 9:]))
    v = np.asarray(values)
    means = np.stack([(p[:, 3:7] * v[3:7]).sum(1), (p[:, 7:9] * v[7:9]).sum(1)], axis=1)
    np.testing.assert_allclose(net.seen.numpy(), np.hstack([p, means]), rtol=1e-5, atol=1e-6)
    # the output: the network's first n outputs, plus tilt_j * v_k on numeric group j's tokens
    hn = h.detach().numpy()[0]
    tilt = np.zeros(n)
    tilt[3:7] = hn[n] * v[3:7]
    tilt[7:9] = hn[n + 1] * v[7:9]
    np.testing.assert_allclose(z.detach().numpy(), ev + hn[:n] + tilt, rtol=1e-5, atol=1e-5)


def test_untrained_model_with_ordinal_inputs_is_the_prior_model() -> None:
    groups, values = (3, 4), (0.0, 0.0, 0.0, -1.0, -0.2, 0.4, 1.0)
    plain = ModelConfig(hidden=(16,), time_dim=8, one_hot_groups=groups)
    ordinal = ModelConfig(hidden=(16,), time_dim=8, one_hot_groups=groups, ordinal_values=values)
    assert network_width(10, plain) == 10 and network_width(10, ordinal) == 11
    prev = np.full(10, 0.2)
    a, b = build_model(10, plain, prev), build_model(10, ordinal, prev)
    assert b.net.layers[0].in_features == 11 and b.net.out.out_features == 11
    x, s = torch.rand(6, 10), torch.full((6, 1), 0.9)
    torch.testing.assert_close(a(x, s), b(x, s))  # last layer at zero: no tilt, no dependence


def test_config_reads_ordinal_values_and_refuses_bad_ones() -> None:
    cfg = Config.from_dict({"model": {"ordinal_values": [0, -1, 0.5, 1]}})
    assert cfg.model.ordinal_values == (0.0, -1.0, 0.5, 1.0)
    assert Config.from_dict(cfg.to_dict()).model.ordinal_values == cfg.model.ordinal_values
    for bad in ([2.0], ["a"], [True], 0.5):
        with pytest.raises(InputError, match="ordinal_values"):
            Config.from_dict({"model": {"ordinal_values": bad}})


def test_site_refuses_a_plan_whose_ordinal_values_are_not_its_schemas() -> None:
    schema = schema_for("mimic3")
    layout = model_layout(schema)
    groups, values = layout.group_sizes(), ordinal_values(layout, schema)
    data = SiteData("A", np.zeros((2, 1)), np.zeros((1, 1)), None, schema=schema.to_dict())
    assert data.model_columns == (groups, values)

    def plan(vals: tuple[float, ...]) -> SitePlan:
        cfg = Config()
        cfg.model.one_hot_groups, cfg.model.ordinal_values = groups, vals
        return SitePlan.from_json(SitePlan(1, 2, "r", 3.0, cfg).to_json())  # as sent

    assert _columns_refusal(plan(values), data) == ""
    assert _columns_refusal(plan(()), data) == ""  # a plan without them: the plain model
    assert any(values)
    tampered = tuple(-v for v in values)
    assert "differ from this site's schema" in _columns_refusal(plan(tampered), data)
