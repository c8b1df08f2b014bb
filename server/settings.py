"""What one federated run is asked to do: written by ``ehr-server``/``ehr-simulate`` to
``OUT/run.json`` and read by the ServerApp (its path is the run config's ``run-file``)."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.atomic import write_json
from fedsynth.common.config import Config
from fedsynth.common.errors import InputError

RUN_FILE = "run.json"


def config_dict(cfg: Config) -> dict[str, Any]:
    """``cfg.to_dict()`` without None values (None means "the default" and Config.from_dict
    takes the default for a missing key)."""
    return {section: {k: v for k, v in values.items() if v is not None}
            for section, values in cfg.to_dict().items()}


@dataclass
class RunSettings:
    out_dir: str
    rounds: int = 5
    min_sites: int = 2
    epsilon: float = 3.0  # target epsilon of the plan, per site
    delta: float | None = None  # None: each site's own (at most plan.DEFAULT_MAX_DELTA)
    samples: int = 10_000
    round_timeout: float = 600.0
    wait_sites_timeout: float = 300.0  # how long to wait for min_sites at the start
    max_round_attempts: int = 3
    norm_factor: float = 10.0
    resume: bool = False
    seed: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    mode: str = "deployment"  # deployment | simulation
    audit: bool = False  # every site audits the released model (privacy.audit) at evaluation
    launch_id: str = ""  # new for every ehr-server/ehr-simulate start; echoed in status.json
    # ``ehr-certs`` folder of a run with certificates: the witness pins each site's enrolled
    # key (CERTS/sites/<site>.pub); "": trust the first key a site signs with
    cert_dir: str = ""
    # what the federation trains: "ehrdiff" (DP-SGD rounds of the diffusion model) or "mst"
    # (federated MST: each site's noisy one- and two-way marginals, ``server.mst``)
    generator: str = "ehrdiff"
    config: dict[str, Any] = field(default_factory=lambda: config_dict(Config()))

    def model_config(self) -> Config:
        return Config.from_dict(self.config, source="run settings")

    def save(self, path: str | Path | None = None) -> Path:
        target = Path(path) if path else Path(self.out_dir) / RUN_FILE
        write_json(target, asdict(self))
        return target

    @classmethod
    def load(cls, path: str | Path) -> RunSettings:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(**data)
        except FileNotFoundError:
            raise InputError(path, "run settings not found") from None
        except (ValueError, TypeError) as err:
            raise InputError(path, f"bad run settings ({err})") from None

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        """Settings for a ServerApp started by ``flwr run`` directly: ``run-file`` if set,
        else defaults with ``num-server-rounds`` and an output folder under
        ``$FLWR_HOME/fedsynth-runs``."""
        run_file = str(run_config.get("run-file", "") or "")
        if run_file:
            return cls.load(run_file)
        run_id = uuid.uuid4().hex[:12]
        cfg = Config()
        cfg.model = cfg.private_model(federated=True)
        cfg.federation.rounds = int(run_config.get("num-server-rounds", cfg.federation.rounds))
        root = Path(os.environ.get("FLWR_HOME", tempfile.gettempdir())) / "fedsynth-runs"
        return cls(out_dir=str(root / run_id), rounds=cfg.federation.rounds,
                   min_sites=1, epsilon=float(run_config.get("epsilon", 3.0)), run_id=run_id,
                   mode="simulation", config=config_dict(cfg))
