"""Privacy audits of the global sampler: membership and attribute disclosure on synthetic data,
white-box canaries, and an empirical lower bound on epsilon next to the accountant's.

Public API (see docs/design.md): ``insert_canaries``, ``score_canaries``, ``canary_audit``,
``audit_site``, ``merge_site_audits``, ``audit_federation``, ``run_audit``, ``write_audit``,
``read_run_outputs``, ``AuditConfig``. CLI: ``ehr-audit`` (``privacy.audit.cli``).
Imported lazily, so ``import fedsynth.privacy.audit.config`` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "AuditConfig": "fedsynth.privacy.audit.config",
    "canary_audit": "fedsynth.privacy.audit.canaries",
    "insert_canaries": "fedsynth.privacy.audit.canaries",
    "score_canaries": "fedsynth.privacy.audit.canaries",
    "audit_federation": "fedsynth.privacy.audit.run",
    "audit_site": "fedsynth.privacy.audit.run",
    "merge_site_audits": "fedsynth.privacy.audit.run",
    "read_run_outputs": "fedsynth.privacy.audit.run",
    "run_audit": "fedsynth.privacy.audit.run",
    "write_audit": "fedsynth.privacy.audit.run",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fedsynth.privacy.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
