"""Pick the torch device: ``auto`` uses CUDA when present, else CPU.

``flush_denormals()`` flushes denormal floats to zero on the CPU while training and sampling
run (``torch.set_flush_denormal``): the binary posterior's log-odds reach |x| / sigma^2 ~ 1e5 at
small noise, so its exp and sigmoid land in the denormal range, which x86 computes in
microcode. Measured on diabetes130 (10,240 patients, one epoch): codes 1.05 -> 0.55 s, whole
records 2.08 -> 1.00 s. Values below 1.2e-38 become 0; no result the model reports changes. It
is scoped, not global: the flag is processor state every later float computation of the thread
would inherit (hypothesis, numpy in a notebook).

The flag is per thread (the x86 MXCSR register), and torch's matrix products run on the OpenMP
pool's threads too, which copy the flag only when they are created. A pool created before the
block (by the float copy of the data, or anything a notebook ran) kept computing denormals in
microcode: training diabetes130 (16,384 patients, 2 epochs, 2 threads) took 3.52 s for codes
and 6.43 s for whole records, against 2.45 s and 3.76 s with the flag on every pool thread. So
the block also sets it on each thread of the pool (``_on_pool``: one OpenMP parallel region,
through the ``GOMP_parallel`` entry point that libgomp and LLVM's libomp both export), and
falls back to the calling thread alone where no such runtime is loaded."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

_OPENMP_NAMES = ("libgomp", "libomp", "libiomp5")
_REGION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N``, ... as torch
    spells them. ``ValueError`` (one line) for a name torch does not know or CUDA that is not
    there: the CLIs turn it into an input error, never a traceback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but CUDA is not available")
    return device


@cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded, from /proc/self/maps: one inside torch's own folder
    first (scikit-learn and others bring their own copies); None where there is none or no maps
    file (e.g. macOS or Windows)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    paths = {line.split()[-1] for line in maps if "/" in line}
    found = [p for p in paths if Path(p).name.startswith(_OPENMP_NAMES)]
    torch_dir = str(Path(torch.__file__).resolve().parent)
    for path in sorted(found, key=lambda p: not p.startswith(torch_dir)):
        try:
            lib = ctypes.CDLL(path)
            lib.GOMP_parallel.argtypes = [_REGION, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _on_pool(on: bool) -> None:
    """``torch.set_flush_denormal(on)`` on the calling thread and on every thread of the OpenMP
    team torch's parallel regions use (module docstring)."""
    torch.set_flush_denormal(on)
    lib = _openmp()
    if lib is None or torch.get_num_threads() < 2:
        return
    # ctypes releases the GIL for the call and takes it in each thread's callback
    region = _REGION(lambda _data: torch.set_flush_denormal(on))
    lib.GOMP_parallel(region, None, torch.get_num_threads(), 0)


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Denormals flushed to zero inside the block on every thread torch computes on (module
    docstring), restored after."""
    _on_pool(True)
    try:
        yield
    finally:
        _on_pool(False)
