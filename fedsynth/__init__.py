"""fedsynth: federated, differentially private synthetic EHR.

The installed package maps the repository's parts to one namespace: ``fedsynth.common``,
``fedsynth.federation``, ``fedsynth.privacy``, ``fedsynth.client``, ``fedsynth.server`` and
``fedsynth.simulations``.
"""

__version__ = "0.1.0"
