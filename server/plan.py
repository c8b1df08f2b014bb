"""The coordinator's side of the site plan and of what it checks of every site (no Flower).

``site_plan`` is the one place a round's ``federation.protocol.SitePlan`` is built. A site's
reply is used only when ``site_problem`` finds nothing: its signed ledger head verifies and is
not behind the last one seen (``privacy.witness``; the key pinned to the enrolled one when the
run has certificates), and its delta is at most the run's. ``common_vocabulary`` and
``fedavg_weights`` are the query's and the aggregation's checks of what sites sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsynth.federation.protocol import SitePlan
from fedsynth.privacy.witness import Witness, WitnessError
from fedsynth.server.settings import RunSettings

# the largest site delta accepted when the run sets none (--delta): the release is
# (max eps, max delta) over sites, so one site's loose delta would loosen the whole release
DEFAULT_MAX_DELTA = 1e-5


def site_plan(settings: RunSettings, rnd: int, kept: list[int] | None,
              refusal: str = "") -> SitePlan:
    """The round's plan as a site receives it; ``refusal``: why the coordinator refuses it."""
    s = settings
    return SitePlan(round=rnd, rounds=s.rounds, run_id=s.run_id, target_epsilon=s.epsilon,
                    config=s.model_config(), delta=s.delta, seed=s.seed, kept=kept,
                    refusal=refusal)


def max_delta(settings: RunSettings) -> float:
    """The largest delta a site may report: the run's ``--delta``, else ``DEFAULT_MAX_DELTA``."""
    return float(settings.delta) if settings.delta else DEFAULT_MAX_DELTA


def pinned_key(cert_dir: str, site: str) -> str | None:
    """The site's enrolled public key (``CERTS/sites/<site>.pub``) when the run has
    certificates (``cert_dir``); None: trust on first use."""
    if not cert_dir:
        return None
    from fedsynth.server.certs import enrolled_dir, load_public_key

    path = enrolled_dir(cert_dir) / f"{site}.pub"
    if not path.exists():
        raise WitnessError(f"site {site}: not enrolled ({path} missing); refused")
    return load_public_key(path).decode()


def site_problem(witness: Witness, settings: RunSettings, site: str,
                 signed_head: dict[str, Any], privacy: dict[str, Any], status: str) -> str:
    """"" when the site's reply may be used, else why not (one line): its signed ledger head
    does not verify or is behind the last one ``witness`` saw (the witness records an accepted
    head), or its delta is not in (0, ``max_delta``]."""
    if signed_head or status == "ok":
        try:
            witness.accept(signed_head, pinned_key(settings.cert_dir, site), site=site)
        except WitnessError as err:
            return str(err)
    limit = max_delta(settings)
    delta = privacy.get("delta") if isinstance(privacy, dict) else None
    if status == "ok" and not (
            isinstance(delta, int | float) and 0 < delta <= limit * (1 + 1e-9)):
        return (f"site {site}: its delta {delta} exceeds the run's {limit:g} "
                "(ehr-server --delta); refused")
    return ""


def common_vocabulary(vocabs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The vocabulary ({name, codes}) every site uses; RuntimeError when none answered or one
    uses another code list."""
    if not vocabs:
        raise RuntimeError("no site answered the query")
    first = next(iter(vocabs.values()))
    for site, v in vocabs.items():
        if v["codes"] != first["codes"]:
            raise RuntimeError(f"site {site} uses another vocabulary ({v.get('name')}, "
                               f"{len(v['codes'])} codes) than {first.get('name')}")
        if v.get("schema") != first.get("schema"):
            raise RuntimeError(f"site {site} uses another record schema than the others")
    return first


def record_groups(vocab: Mapping[str, Any]) -> tuple[int, ...]:
    """The one-hot groups of a whole-records vocabulary (its public schema's token layout,
    ``common.data.record_tokens``); () for codes only."""
    return record_columns(vocab)[0]


def record_columns(vocab: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(``ModelConfig.one_hot_groups``, ``ModelConfig.ordinal_values``) of a whole-records
    vocabulary, from its public schema alone; ((), ()) for codes only."""
    if not vocab.get("schema"):
        return (), ()
    from fedsynth.common.data.record_tokens import model_columns
    from fedsynth.common.data.schema import schema_from_dict

    groups, ordinal = model_columns(schema_from_dict(vocab["schema"], "the sites' schema"))
    if len(vocab["codes"]) < sum(groups):
        raise RuntimeError("the sites' vocabulary is shorter than their schema's tokens")
    return groups, ordinal


def fedavg_weights(sizes: Mapping[str, float], sites: list[str]) -> list[float]:
    """FedAvg weights from what the coordinator can check: each site's noisy size from its
    DP counts release (at least 1) when every site has one, else equal weights. Never a
    number from the train reply (``server.aggregation`` caps them)."""
    if sites and all(s in sizes for s in sites):
        return [max(1.0, sizes[s]) for s in sites]
    return [1.0] * len(sites)
