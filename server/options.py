"""Command-line options shared by ``ehr-server`` and ``ehr-simulate``: the run plan and the
model/training settings (``--config TOML`` first, then individual flags override it)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fedsynth.common.config import Config
from fedsynth.common.errors import InputError
from fedsynth.server.settings import RunSettings, config_dict


def add_plan_args(p: argparse.ArgumentParser, default_rounds: int | None = None) -> None:
    g = p.add_argument_group("federation plan")
    g.add_argument("--rounds", type=int, default=default_rounds,
                   help="rounds (default: [federation] rounds of --config, else "
                        f"{Config().federation.rounds})")
    g.add_argument("--epsilon", type=float, default=3.0,
                   help="target epsilon per site for the whole run (default 3)")
    g.add_argument("--delta", type=float, default=None,
                   help="delta per site (default min(1e-5, 1/(10 n_site)))")
    g.add_argument("--samples", type=int, default=None,
                   help="synthetic patients written to OUT/synthetic.csv (default 10000)")
    g.add_argument("--round-timeout", type=float, default=None,
                   help="seconds a round waits for sites before closing with those that "
                        "answered")
    g.add_argument("--config", type=Path, help="TOML with [model] [train] [privacy] [federation]")
    g.add_argument("--local-epochs", type=float,
                   help="expected passes over a site's data per round")
    g.add_argument("--batch-size", type=int,
                   help="expected Poisson batch at every site (q_k = batch / n_k; default: "
                        "the same sample rate q at every site, [federation] sample_rate)")
    g.add_argument("--lr", type=float, help="site learning rate ([federation] lr)")
    g.add_argument("--strategy", choices=["fedavg", "fedavgm", "fedadam"],
                   help="server aggregation (default fedavg; with a server momentum above 0 "
                        "it is FedAvgM)")
    g.add_argument("--server-lr", type=float, help="server step on the mean update (default 1)")
    g.add_argument("--server-momentum", type=float,
                   help="FedAvgM momentum (default 0.5; 0: plain FedAvg; FedAdam's beta1)")
    g.add_argument("--holdout", type=float, help="share of each site's patients held out")
    g.add_argument("--generator", choices=["ehrdiff", "mst"], default="ehrdiff",
                   help="what the federation trains: ehrdiff (default: rounds of DP-SGD on "
                        "the diffusion model) or mst (federated MST: each site releases noisy "
                        "one- and two-way marginals through its ledger, the coordinator fits "
                        "MST's tree model from their sum; --rounds and the training flags "
                        "are ignored)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--audit", action="store_true",
                   help="after training, every site audits the released model against its own "
                        "members and held-out patients (membership, attribute disclosure, "
                        "empirical epsilon lower bound) and keeps the result in its state "
                        "folder (STATE/audit-<site>-<run_id>/); nothing is sent. ehr-simulate "
                        "then merges the sites' audits into OUT/audit.json + OUT/audit.html "
                        "and exits 1 if the audit refutes the accountant")

def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.from_toml(args.config) if args.config else Config()
    fed, train = cfg.federation, cfg.train
    if args.rounds is not None:
        fed.rounds = args.rounds
    if getattr(args, "batch_size", None) is not None:
        fed.sample_rate = 0.0  # q_k = batch_size / n_k (client.site_training.sample_rate)
    for name, target, attr in [("local_epochs", fed, "local_epochs"),
                               ("batch_size", train, "batch_size"), ("lr", fed, "lr"),
                               ("strategy", fed, "strategy"), ("server_lr", fed, "server_lr"),
                               ("server_momentum", fed, "server_momentum"),
                               ("holdout", fed, "holdout"), ("round_timeout", fed,
                                                             "round_timeout")]:
        value = getattr(args, name, None)
        if value is not None:
            setattr(target, attr, value)
    train.seed = args.seed
    _check(cfg, args)
    return cfg


def _check(cfg: Config, args: argparse.Namespace) -> None:
    fed = cfg.federation
    if fed.rounds < 1:
        raise InputError("--rounds", f"must be at least 1 (got {fed.rounds})")
    if not (args.epsilon > 0 and math.isfinite(args.epsilon)):
        raise InputError("--epsilon", f"must be a positive number (got {args.epsilon})")
    if args.delta is not None and not 0 < args.delta < 1:
        raise InputError("--delta", f"must be in (0, 1) (got {args.delta})")
    if not 0 < fed.holdout < 1:
        raise InputError("--holdout", f"must be in (0, 1) (got {fed.holdout})")
    if fed.local_epochs <= 0:
        raise InputError("--local-epochs", f"must be positive (got {fed.local_epochs})")
    if cfg.train.batch_size < 1:
        raise InputError("--batch-size", f"must be at least 1 (got {cfg.train.batch_size})")
    if args.samples is None:
        args.samples = 10_000
    if args.samples < 1:
        raise InputError("--samples", f"must be at least 1 (got {args.samples})")
    if fed.round_timeout <= 0:
        raise InputError("--round-timeout", f"must be positive (got {fed.round_timeout})")


def federated_config(cfg: Config) -> Config:
    """The effective config of a federated DP run: the private model
    (``Config.private_model``) at the federation's widths (``[federation] hidden``)."""
    cfg.model = cfg.private_model(federated=True)
    return cfg


def settings_from_args(args: argparse.Namespace, cfg: Config, out: Path, min_sites: int,
                       mode: str) -> RunSettings:
    cfg = federated_config(cfg)
    generator = str(getattr(args, "generator", "ehrdiff") or "ehrdiff")
    rounds = cfg.federation.rounds
    if generator == "mst":  # two releases (one-way, pairs); no code counts before them
        rounds, cfg.privacy.count_epsilon_share = 2, 0.0
    return RunSettings(
        out_dir=str(out.resolve()), rounds=rounds, min_sites=min_sites, generator=generator,
        epsilon=float(args.epsilon), delta=args.delta, samples=int(args.samples),
        round_timeout=float(cfg.federation.round_timeout), seed=int(args.seed), mode=mode,
        config=config_dict(cfg), audit=bool(getattr(args, "audit", False)),
    )
