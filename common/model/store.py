"""Model directories and the ``Generator`` that samples from them.

A model directory holds:

- ``model.pt``: the EDM model's ``state_dict`` (EMA weights), loaded with ``weights_only=True``;
- ``config.json``: ``{"format": "fedsynth-edm/2", "n_codes": D, "codes_modelled": [j, ...] or
  null, "model": ModelConfig fields, "extra": {...}}``. ``codes_modelled``: the vocabulary
  columns the network models (sorted indices; null = all D); the other codes are never
  emitted by the network. The non-private trainer models the codes seen in training, a private
  one the codes whose private count clears its test (``privacy.counts.estimate``). ``tail``
  (optional): ``{"codes": [j, ...], "prevalence": [p_j, ...]}``, codes outside the modelled ones
  that ``Generator.sample`` draws independently, each at its prevalence (a private model's
  shrunk estimate of the codes too rare to model). ``extra``: training report, privacy figures.
  Format 1 (no ``codes_modelled``; EHRDiff's parameterisation) still loads;
- ``vocabulary.json``: the code vocabulary (column order of every sample);
- ``output_step.json``: how continuous samples become 0/1 codes (see ``common.model.output``):
  ``{"kind": "threshold", "threshold": t}`` or ``{"kind": "per_code", "thresholds": [...]}``
  plus ``info`` saying how it was chosen. Missing file -> scalar ``ModelConfig.threshold``.
  A private trainer overwrites it with ``set_output_step(dir, step)`` from private estimates.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsynth.common.atomic import atomic_path, write_json
from fedsynth.common.config import Config, ModelConfig
from fedsynth.common.device import flush_denormals, resolve_device
from fedsynth.common.errors import InputError
from fedsynth.common.model.binary import BinaryPosterior
from fedsynth.common.model.ema import EMA, _unwrap
from fedsynth.common.model.guidance import sampling_scale
from fedsynth.common.model.output import OutputStep
from fedsynth.common.model.sampler import edm_sigmas, heun_sample
from fedsynth.common.model.train import ProgressBar, build_model
from fedsynth.common.vocabulary import Vocabulary

log = logging.getLogger(__name__)

FORMAT = "fedsynth-edm/2"
READABLE = ("fedsynth-edm/1", FORMAT)
WEIGHTS = "model.pt"
CONFIG = "config.json"
VOCAB = "vocabulary.json"
OUTPUT = "output_step.json"
NOISE_CHUNK = 1000
TAIL_STREAM = 0x7A11  # the tail's random stream, apart from the sampler's noise


def save_model(
    directory: str | Path,
    model_or_state: nn.Module | EMA | dict[str, torch.Tensor],
    cfg: ModelConfig,
    vocab: Vocabulary,
    extra: dict[str, Any] | None = None,
    output_step: OutputStep | None = None,
    modelled: np.ndarray | list[int] | None = None,
    tail: np.ndarray | None = None,
    outcome: Any = None,
) -> Path:
    """Write weights, config, vocabulary (and the output step when given) into ``directory``.

    ``modelled``: the vocabulary columns the network's codes are (None: all of them).
    ``tail``: (V,) prevalence of the codes sampled independently (``Generator.tail``).
    ``outcome``: a records model's ``common.model.outcome.OutcomeModel`` (its file, when
    given)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model_or_state, EMA):
        state = model_or_state.state_dict()
    elif isinstance(model_or_state, nn.Module):
        state = _unwrap(model_or_state).state_dict()
    else:
        state = model_or_state
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    # the modelled codes: the binary prior's length (its network may add ordinal columns)
    n_net = int(state["prior_logit" if "prior_logit" in state else "net.out.weight"].shape[0])
    cols = None if modelled is None else [int(j) for j in modelled]
    if cols is not None:
        _check_modelled(cols, len(vocab), "modelled")
    if n_net != (len(vocab) if cols is None else len(cols)):
        raise ValueError(f"model has {n_net} codes, vocabulary {len(vocab)}, "
                         f"modelled {'all' if cols is None else len(cols)}")
    with atomic_path(out / WEIGHTS) as tmp:
        torch.save(state, tmp)
    doc = _tail_doc(_check_tail(tail, len(vocab), cols, "tail"))
    write_json(out / CONFIG, {"format": FORMAT, "n_codes": len(vocab), "codes_modelled": cols,
                              "tail": doc, "model": dataclasses.asdict(cfg), "extra": extra or {}})
    vocab.save(out / VOCAB)
    if output_step is not None:
        set_output_step(out, output_step)
    if outcome is not None:
        from fedsynth.common.model.outcome import FILE as OUTCOME

        write_json(out / OUTCOME, outcome.to_dict())
    return out


def set_output_step(directory: str | Path, step: OutputStep) -> None:
    """(Re)write the output step of a model directory."""
    write_json(Path(directory) / OUTPUT, step.to_dict())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = "Is this a model directory written by ehr-train?"
        raise InputError(path, "not found", hint) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def load_model(directory: str | Path, device: str = "auto") -> Generator:
    """Read a model directory written by ``save_model``; returns a ``Generator``."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(d, "model directory not found")
    conf = _read_json(d / CONFIG)

    def weights() -> Any:
        try:
            return torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise InputError(d / WEIGHTS, "weights file not found") from None
        except Exception as err:  # corrupted or foreign pickle
            raise InputError(d / WEIGHTS, f"cannot load weights ({type(err).__name__})") from None

    step = _read_json(d / OUTPUT) if (d / OUTPUT).exists() else None
    gen = assemble(conf, weights, step, lambda: Vocabulary.load(d / VOCAB), device,
                   sources=(d / CONFIG, d / VOCAB, d / WEIGHTS, d / OUTPUT))
    gen.outcome = _read_outcome(d, gen)
    return gen


def _read_outcome(d: Path, gen: Generator) -> Any:
    """The model folder's ``OutcomeModel`` (None without its file); InputError when it does
    not fit the model's groups."""
    from fedsynth.common.model.outcome import FILE as OUTCOME
    from fedsynth.common.model.outcome import OutcomeModel

    path = d / OUTCOME
    if not path.exists():
        return None
    try:
        model = OutcomeModel.from_dict(_read_json(path))
        sizes = gen.cfg.one_hot_groups
        ok = 0 <= model.outcome < len(sizes) and len(model.prior) == sizes[model.outcome] and \
            len(model.theta) == len(model.columns) and all(
                np.asarray(t, dtype=np.float64).shape == (sizes[c], sizes[model.outcome])
                for c, t in zip(model.columns, model.theta, strict=True))
    except (KeyError, TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        raise InputError(path, "does not match the model's columns (an outcome file of "
                         "another model?)")
    return model


def model_parts(gen: Generator) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(config.json document, state dict, output step document) of a Generator: what a model
    directory holds besides the vocabulary; ``assemble`` turns them back into a Generator."""
    conf = {"format": FORMAT, "n_codes": gen.n_codes,
            "codes_modelled": None if gen.modelled is None else [int(j) for j in gen.modelled],
            "tail": _tail_doc(gen.tail), "model": dataclasses.asdict(gen.cfg), "extra": {}}
    state = {k: v.detach().cpu().contiguous() for k, v in gen.model.state_dict().items()}
    return conf, state, gen.output_step.to_dict()


def assemble(conf: Any, state: Any, step_doc: Any, vocab: Any, device: str = "auto",
             sources: tuple[object, object, object, object] = ("config", "vocabulary",
                                                               "weights", "output step"),
             ) -> Generator:
    """A Generator from a model's parts, every part checked: a damaged or hostile config,
    weights or output step is an ``InputError`` (naming ``sources``), never a crash, a huge
    allocation or code execution. ``state`` and ``vocab`` may be callables (read after the
    config is checked)."""
    src_conf, src_vocab, src_weights, src_step = sources
    if not isinstance(conf, dict) or conf.get("format") not in READABLE:
        raise InputError(src_conf, f"not a {FORMAT} model config")
    try:
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        mc = {k: v for k, v in conf["model"].items() if k in fields}
        mc.setdefault("parameterization", "edm")  # format 1 predates the binary model
        if "hidden" in mc:
            mc["hidden"] = tuple(int(h) for h in mc["hidden"])
        cfg = Config.from_dict({"model": mc}, source=src_conf).model
        n_codes = int(conf["n_codes"])
        modelled = conf.get("codes_modelled")
        if modelled is not None:
            modelled = [int(j) for j in modelled]
            _check_modelled(modelled, n_codes, src_conf)
        n_net = n_codes if modelled is None else len(modelled)
        tail = _read_tail(conf.get("tail"), n_codes, modelled, src_conf)
        with torch.device("meta"):  # shapes only: no memory, whatever the config claims
            shapes = {k: tuple(v.shape) for k, v in build_model(n_net, cfg).state_dict().items()}
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - KeyError, TypeError, ValueError, AttributeError...
        raise InputError(src_conf, f"invalid model config ({type(err).__name__})") from None
    vocab = vocab() if callable(vocab) else vocab
    if len(vocab) != n_codes:
        raise InputError(src_vocab, f"{len(vocab)} codes, but the model has {n_codes}")
    state = state() if callable(state) else state
    if not isinstance(state, dict) or {
        k: tuple(getattr(v, "shape", ())) for k, v in state.items()
    } != shapes or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(src_weights, "weights do not match config.json (tensor names/shapes)")
    model = build_model(n_net, cfg)
    model.load_state_dict(state)
    if step_doc is not None:
        try:
            step = OutputStep.from_dict(step_doc)
            if step.kind == "per_code" and len(step.thresholds) != n_codes:  # type: ignore[arg-type]
                raise ValueError("one threshold per code expected")
        except Exception as err:  # noqa: BLE001 - any malformed field
            raise InputError(src_step, f"invalid output step ({type(err).__name__})") from None
    else:
        step = OutputStep("threshold", cfg.threshold, info={"source": "ModelConfig.threshold"})
    extra = conf.get("extra", {})
    return Generator(model, cfg, vocab, step, resolve_device(device),
                     extra if isinstance(extra, dict) else {}, modelled, tail)


def _tail_doc(tail: np.ndarray | None) -> dict[str, list] | None:
    if tail is None:
        return None
    codes = np.flatnonzero(tail > 0)
    return {"codes": [int(j) for j in codes], "prevalence": [float(tail[j]) for j in codes]}


def _read_tail(doc: Any, n_codes: int, modelled: list[int] | None,
               source: object) -> np.ndarray | None:
    """config.json's ``tail`` as a (V,) prevalence vector (None when absent)."""
    if doc is None:
        return None
    codes, prev = doc["codes"], doc["prevalence"]
    if not isinstance(codes, list) or not isinstance(prev, list) or len(codes) != len(prev) \
            or len(codes) > n_codes:
        raise InputError(source, "tail must hold equally long lists 'codes' and 'prevalence'")
    idx = [int(j) for j in codes]
    if any(a >= b for a, b in zip(idx, idx[1:], strict=False)) or \
            (idx and (idx[0] < 0 or idx[-1] >= n_codes)):
        raise InputError(source, f"tail codes must be sorted distinct indices in [0, {n_codes})")
    tail = np.zeros(n_codes)
    tail[idx] = np.asarray(prev, dtype=np.float64)
    return _check_tail(tail, n_codes, modelled, source)


def _check_tail(tail: np.ndarray | None, n_codes: int, modelled: list[int] | None,
                source: object) -> np.ndarray | None:
    """A (V,) vector of probabilities in [0, 1], zero on the modelled codes (None: no tail)."""
    if tail is None:
        return None
    tail = np.asarray(tail, dtype=np.float64)
    if tail.shape != (n_codes,) or not np.all(np.isfinite(tail)) or \
            np.any(tail < 0) or np.any(tail > 1):
        raise InputError(source, f"tail must be {n_codes} prevalences in [0, 1]")
    if modelled is None and np.any(tail > 0) or \
            modelled is not None and np.any(tail[np.asarray(modelled, dtype=np.int64)] > 0):
        raise InputError(source, "tail codes must not be modelled codes")
    return tail if np.any(tail > 0) else None


def _check_modelled(cols: list[int], n_codes: int, source: object) -> None:
    """Sorted, distinct, in-range column indices, at least one."""
    ok = len(cols) >= 1 and all(0 <= a < b for a, b in zip(cols, cols[1:], strict=False)) \
        and cols[0] >= 0 and cols[-1] < n_codes
    if not ok:
        raise InputError(source,
                         f"codes_modelled must be sorted distinct indices in [0, {n_codes})")


class Generator:
    """Samples synthetic patients from a trained EDM model (deterministic Heun + output step)."""

    def __init__(self, model: nn.Module, cfg: ModelConfig, vocab: Vocabulary,
                 output_step: OutputStep, device: torch.device | str = "cpu",
                 extra: dict[str, Any] | None = None,
                 modelled: np.ndarray | list[int] | None = None,
                 tail: np.ndarray | None = None) -> None:
        self.device = torch.device(device)
        self.model = _unwrap(model).to(self.device).eval()
        self.cfg, self.vocab, self.output_step = cfg, vocab, output_step
        self.extra = extra or {}
        self.modelled = None if modelled is None else np.asarray(modelled, dtype=np.int64)
        self.tail = _check_tail(tail, len(vocab), None if modelled is None else list(
            self.modelled), "tail")  # (V,) prevalence of independently drawn codes, or None
        self._denoise: Any = None
        # whole records with an outcome column: how a sample's outcome is redrawn
        # (``common.model.outcome``; None: as the network drew it)
        self.outcome: Any = None

    @property
    def n_codes(self) -> int:
        return len(self.vocab)

    def reset(self) -> None:
        """Forget derived state (the bf16 copy) after the model's weights or buffers change."""
        self._denoise = None

    @property
    def n_modelled(self) -> int:
        return self.n_codes if self.modelled is None else len(self.modelled)

    def denoiser(self) -> Any:
        """D(x; sigma) for the sampler, with the dependency scale of ``self.cfg``
        (``common.model.guidance``). On CPUs with fast bfloat16 matrix units (picked by a
        30 ms micro-benchmark, ``ModelConfig.sample_precision="auto"``) the inner network runs
        in bfloat16 while the preconditioning and the ODE state stay float32."""
        if self._denoise is None:
            model = self.model
            if _use_bf16(self.cfg.sample_precision, self.device, self.cfg.hidden[0]):
                model = copy.deepcopy(self.model)
                model.net.to(torch.bfloat16)  # the wrapper casts the net's input and output
            w = sampling_scale(self.cfg)
            if w != 1.0:
                if not isinstance(self.model, BinaryPosterior):
                    raise InputError("model.dependency_scale",
                                     "needs the binary parameterisation (1 or 0 for edm)")
                model = functools.partial(model, dependency_scale=w)
            self._denoise = model
        return self._denoise

    def sample_continuous(self, n: int, seed: int = 0, batch: int = 1000,
                          steps: int | None = None, progress: bool = False) -> np.ndarray:
        """(n, n_codes) float32 sampler outputs before the output step (0 in the columns that are
        not modelled); batch-size independent for a given seed (each batch draws its noise from
        its own seeded generator)."""
        steps = int(steps or self.cfg.sample_steps)
        sigmas = edm_sigmas(steps, self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.rho)
        cols = self.modelled
        out = np.zeros((n, self.n_codes), dtype=np.float32)
        chunk = NOISE_CHUNK  # noise is drawn per chunk, so results don't depend on ``batch``
        batch = max(chunk, int(batch) // chunk * chunk)
        with ProgressBar(progress, n, "sampling") as advance, torch.inference_mode(), \
                flush_denormals():
            for start in range(0, n, batch):
                stop = min(n, start + batch)
                z = torch.cat([self._noise(seed, c, min(stop, c + chunk) - c)
                               for c in range(start, stop, chunk)])
                x = heun_sample(self.denoiser(), z.to(self.device), sigmas)
                x = x.float().cpu().numpy()
                if cols is None:
                    out[start:stop] = x
                else:
                    out[start:stop, cols] = x
                advance(stop - start)
        return out

    def _noise(self, seed: int, chunk_start: int, rows: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + chunk_start)
        return torch.randn(rows, self.n_modelled, generator=g)

    def sample(
        self, n: int, seed: int = 0, batch: int = 1000, progress: bool = False
    ) -> np.ndarray:
        """(n, n_codes) uint8 0/1 synthetic patients: the network's codes through the output
        step, then each tail code drawn independently at its prevalence (batch-independent)."""
        return self.finish(self.sample_continuous(n, seed, batch, progress=progress), seed)

    def finish(self, continuous: np.ndarray, seed: int = 0) -> np.ndarray:
        """``sample``'s 0/1 patients from ``sample_continuous``' output of the same seed."""
        X = self.output_step.apply(continuous)
        n = X.shape[0]
        if self.tail is not None:
            cols = np.flatnonzero(self.tail > 0)
            for start in range(0, n, NOISE_CHUNK):
                rows = min(n, start + NOISE_CHUNK) - start
                rng = np.random.default_rng([int(seed) % 2**63, start, TAIL_STREAM])
                X[start:start + rows, cols] |= (rng.random((rows, len(cols)))
                                                < self.tail[cols]).astype(X.dtype)
        return X


def _use_bf16(precision: str, device: torch.device, width: int) -> bool:
    if precision == "fp32" or device.type != "cpu":
        return False
    if precision == "bf16":
        return True
    return _bf16_is_faster(width)


@functools.lru_cache(maxsize=8)
def _bf16_is_faster(width: int, rows: int = 1000, cols: int = 2090) -> bool:
    """Time the dominant matrix product in float32 and bfloat16; bf16 only if >= 1.5x faster."""
    a, w = torch.randn(rows, cols), torch.randn(cols, width)
    best = {}
    for dt in (torch.float32, torch.bfloat16):
        A, W = a.to(dt), w.to(dt)
        A @ W
        t = time.perf_counter()
        for _ in range(3):
            A @ W
        best[dt] = time.perf_counter() - t
    fast = best[torch.bfloat16] * 1.5 < best[torch.float32]
    log.info("sampler precision: %s (fp32 %.1f ms, bf16 %.1f ms)", "bf16" if fast else "fp32",
             best[torch.float32] * 333, best[torch.bfloat16] * 333)
    return fast
