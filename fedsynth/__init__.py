"""fedsynth: federated, differentially private synthetic EHR.

The installed package maps the repository's parts to one namespace: ``fedsynth.common``,
``fedsynth.federation``, ``fedsynth.privacy``, ``fedsynth.client``, ``fedsynth.server`` and
``fedsynth.simulations``.

For notebooks, the command-line tools as functions (``fedsynth.api``)::

    import fedsynth
    data = fedsynth.load("DIAGNOSES_ICD.csv")       # records where PATIENTS/ADMISSIONS sit beside
    gen = fedsynth.train(data, epsilon=3.0)         # DP: composes in the data set's ledger
    synthetic = gen.sample(1000, seed=0)             # DataFrame: schema columns, 0/1 per code
    fedsynth.evaluate(held_out, synthetic)           # ehr-evaluate's figures
    gen.save("model/"); fedsynth.load_generator("model/")
    fedsynth.simulate("demo", "runs/sim", sites=3)   # ehr-simulate

The names are exported lazily (module ``__getattr__``): every CLI imports ``fedsynth.<part>``,
which runs this file first, and must not pay for torch, Opacus or Flower here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Generator", "Simulation", "evaluate", "load", "load_generator", "simulate",
           "train", "__version__"]

if TYPE_CHECKING:
    from fedsynth.api import Generator, Simulation, evaluate, load, load_generator, simulate, train


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        from fedsynth import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedsynth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
