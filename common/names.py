"""The one site-name check: every entry point (ehr-client, ehr-certs, the ledger) calls it.

A site name becomes a file name (``ledger-<site>.jsonl``, ``<site>.key``) and a key in the
coordinator's records, so it is matched *in full* with ``re.fullmatch``: ``^...$`` with
``re.match`` accepts ``"A\\n"`` (``$`` matches before a trailing newline), which would open a
second, empty ledger for the same site.
"""

from __future__ import annotations

import re

from fedsynth.common.errors import InputError

SITE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class SiteNameError(InputError, ValueError):
    """An invalid site name: an ``InputError`` for CLIs (exit 2), a ``ValueError`` for code."""


def check_site_name(name: object, source: str = "--site") -> str:
    """Return ``name`` if it is 1-64 letters, digits, '.', '_' or '-' starting with a letter or
    digit; otherwise raise ``SiteNameError`` (one line, naming ``source``)."""
    if not isinstance(name, str) or SITE_PATTERN.fullmatch(name) is None:
        raise SiteNameError(
            source, f"{name!r} is not a valid site name",
            "Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name
