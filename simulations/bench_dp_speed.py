"""DP-SGD vs non-private training speed, side by side, same model, data and batches.

    python -m fedsynth.simulations.bench_dp_speed [--data FILE --format F] [--rows 4000] [--steps 6]

Modes: non-private (Adam on the mean loss), and Opacus DP-SGD with per-sample gradients by
hooks, functorch, and ghost clipping (norms only). Every mode uses the same noise multiplicity
K (each example's loss averaged over K draws). Prints examples/s and the slowdown against
non-private; target: DP at most 3x slower. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np
import torch

from fedsynth.common.atomic import write_json
from fedsynth.common.config import Config, ModelConfig, PrivacyConfig
from fedsynth.common.errors import cli_errors
from fedsynth.common.model import build_model, per_example_loss

log = logging.getLogger(__name__)
MODES = ("non-private", "ghost", "functorch", "hooks")


def load_rows(data: str | None, fmt: str, rows: int, seed: int) -> np.ndarray:
    """Rows of the real data (only its non-empty columns) or of the demo cohort."""
    if data:
        from fedsynth.common.data import load_codes

        X = load_codes(data, format=fmt).X
    else:
        from fedsynth.common.data import demo_cohort

        X = demo_cohort(n_sites=1, patients_per_site=rows, seed=seed).X
    X = X[:, X.sum(axis=0) > 0]
    rng = np.random.default_rng(seed)
    return X[rng.choice(len(X), min(rows, len(X)), replace=False)]


def time_mode(mode: str, X: np.ndarray, cfg: ModelConfig, pc: PrivacyConfig, batch: int,
              steps: int, seed: int) -> dict[str, Any]:
    from fedsynth.client.dp_training import dp_step, make_private

    torch.manual_seed(seed)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    model = build_model(X.shape[1], cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    k = pc.noise_multiplicity
    gen = torch.Generator().manual_seed(seed)
    batches = [Xt[torch.randperm(len(Xt), generator=gen)[:batch]] for _ in range(steps + 1)]

    def loss_fn(m: torch.nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return per_example_loss(m, xb, cfg, multiplicity=k)

    if mode == "non-private":
        def step(xb: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(model, xb).mean().backward()
            opt.step()
    else:
        parts = make_private(model, opt, noise_multiplier=1.0, max_grad_norm=pc.max_grad_norm,
                             sample_rate=batch / len(X), n_rows=len(X), mode=mode)

        def step(xb: torch.Tensor) -> None:
            dp_step(parts, loss_fn, xb)

    step(batches[0])  # warm-up (hooks, allocations)
    t0 = time.perf_counter()
    for xb in batches[1:]:
        step(xb)
    seconds = time.perf_counter() - t0
    return {"mode": mode, "examples_per_s": steps * batch / seconds,
            "seconds_per_step": seconds / steps}


@cli_errors
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="data file (default: the demo cohort)")
    ap.add_argument("--format", default="auto")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pc = PrivacyConfig()
    cfg = Config().private_model()
    X = load_rows(args.data, args.format, args.rows, args.seed)
    n_params = sum(p.numel() for p in build_model(X.shape[1], cfg).parameters())
    results = []
    for mode in args.modes:
        r = time_mode(mode, X, cfg, pc, args.batch, args.steps, args.seed)
        results.append(r)
        log.info("%-11s %8.0f examples/s", mode, r["examples_per_s"])
    base = next((r["examples_per_s"] for r in results if r["mode"] == "non-private"), None)
    print(f"{len(X)} rows x {X.shape[1]} codes, {n_params} parameters, batch {args.batch}, "
          f"K={pc.noise_multiplicity}, {torch.get_num_threads()} threads")
    print(f"{'mode':<12}{'examples/s':>12}{'slowdown':>10}")
    for r in results:
        r["slowdown"] = base / r["examples_per_s"] if base else None
        slow = f"{r['slowdown']:.2f}x" if base else "-"
        print(f"{r['mode']:<12}{r['examples_per_s']:>12.0f}{slow:>10}")
    if args.json:
        write_json(args.json, {"rows": len(X), "codes": int(X.shape[1]), "parameters": n_params,
                               "batch": args.batch, "K": pc.noise_multiplicity,
                               "threads": torch.get_num_threads(), "results": results})


if __name__ == "__main__":
    main()
