"""The coordinator's output files in ``OUT/`` (no Flower): each function writes one of them.

``model/`` and ``synthetic.csv`` (``write_model_and_sample``), ``privacy.json``
(``write_privacy``: ``privacy.report.release_report``, released epsilon = MAX over sites),
``rounds.jsonl`` (``write_rounds``: one line per round), ``evaluation.json``
(``write_evaluation``: where each site keeps its own evaluation; no figure), ``progress.json``
(``write_progress``: live state for the CLI) and ``status.json`` (``write_status``: written
last, completed or failed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsynth.common.atomic import atomic_open, write_json
from fedsynth.privacy.report import release_report
from fedsynth.server.settings import RunSettings

State = dict[str, np.ndarray]


def write_model_and_sample(out: Path, settings: RunSettings, vocab_doc: Mapping[str, Any],
                           kept: list[int] | None, prevalence: list[float] | None,
                           final_state: State, rounds: int,
                           stages: dict[str, float] | None = None) -> tuple[Any, np.ndarray]:
    """The global model (EMA weights) to OUT/model and OUT/synthetic.csv (whole records when the
    sites' vocabulary carries a schema: its layout in OUT/model too); returns (the released
    Generator, read back from OUT/model, and the 0/1 sample). ``stages``: seconds of each."""
    stages = {} if stages is None else stages
    from fedsynth.common.model.release import FIXED_THRESHOLD, release_generator, save_release
    from fedsynth.common.model.store import load_model
    from fedsynth.common.vocabulary import Vocabulary

    cfg = settings.model_config()
    vocab = Vocabulary(tuple(vocab_doc["codes"]), name=str(vocab_doc.get("name", "custom")))
    t0 = time.perf_counter()
    gen, _ = release_generator(  # calibration: post-processing of the sites' private counts
        final_state, cfg.model, vocab, kept, threshold_source=FIXED_THRESHOLD,
        prevalence=None if prevalence is None else np.asarray(prevalence),
        prevalence_source="empirical-Bayes estimate from the sum of the sites' "
                          "Gaussian-mechanism code counts", device="cpu", training="federated")
    model_dir = out / "model"
    save_release(model_dir, gen, extra={"federated": True, "run_id": settings.run_id,
                                        "rounds": rounds, "privacy": "see ../privacy.json"})
    generator = load_model(model_dir, device="cpu")
    t1 = time.perf_counter()
    cont = generator.sample_continuous(settings.samples, seed=settings.seed)
    synth = generator.finish(cont, seed=settings.seed)
    if vocab_doc.get("schema"):  # whole records: the schema's columns beside the codes
        from fedsynth.common.data.record_tokens import model_layout, write_layout
        from fedsynth.common.data.schema import schema_from_dict
        from fedsynth.common.data.writer import write_records
        from fedsynth.common.model.record_output import records_of

        schema = schema_from_dict(vocab_doc["schema"], "the sites' schema")
        layout = model_layout(schema)
        write_layout(model_dir, layout, schema)
        write_records(out / "synthetic.csv",
                      *records_of(generator, cont, synth, layout, schema, settings.seed))
    else:
        from fedsynth.common.data import write_matrix

        write_matrix(out / "synthetic.csv", synth, vocab)
    stages["release"] = round(t1 - t0, 2)  # build, calibrate, save the model
    stages["sample"] = round(time.perf_counter() - t1, 2)
    return generator, synth


def write_tree_and_sample(out: Path, settings: RunSettings, vocab_doc: Mapping[str, Any],
                          sampler: Any, info: Mapping[str, Any]) -> np.ndarray:
    """Federated MST's released model (``common.model.tree.TreeSampler``) to
    OUT/model/tree.json and its sample to OUT/synthetic.csv; returns the sample."""
    from fedsynth.common.data import write_matrix
    from fedsynth.common.model.tree import TREE_FILE
    from fedsynth.common.vocabulary import Vocabulary

    vocab = Vocabulary(tuple(vocab_doc["codes"]), name=str(vocab_doc.get("name", "custom")))
    (out / "model").mkdir(parents=True, exist_ok=True)
    sampler.save(out / "model" / TREE_FILE, extra={
        "generator": "mst", "federated": True, "run_id": settings.run_id,
        "vocabulary": {"name": vocab.name, "codes": list(vocab.codes)},
        "info": dict(info), "privacy": "see ../privacy.json"})
    synth = sampler.sample(settings.samples, seed=settings.seed)
    write_matrix(out / "synthetic.csv", synth, vocab)
    return synth


def write_privacy(out: Path, settings: RunSettings,
                  site_reports: Mapping[str, Mapping[str, Any]], rounds: int,
                  kept: list[int] | None, count_info: Mapping[str, Any],
                  notes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """privacy.json: ``release_report`` (every site's report and the release guarantee, max
    over sites) with what this run adds: its target, id, rounds and the notes on what reached
    the coordinator (``notes`` replace or add to them)."""
    doc = release_report(site_reports, extra={
        "target_epsilon": settings.epsilon,
        "run_id": settings.run_id,
        "rounds": rounds,
        "evaluation_note": "each site evaluates the released model on its own held-out "
                           "patients and keeps the figures (STATE/evaluation-<site>-<run>"
                           ".json); none reaches the coordinator",
        "site_size_note": "a site's size reaches the coordinator only as the noisy size of "
                          "its DP counts release (recorded in its ledger with the counts); "
                          "it weighs the site in FedAvg (capped)",
        "codes_modelled": None if kept is None else len(kept),
        "code_counts": dict(count_info),
        **dict(notes or {}),
    })
    write_json(out / "privacy.json", doc)
    return doc


def write_evaluation(out: Path, settings: RunSettings,
                     statuses: Mapping[str, str], note: str = "") -> dict[str, Any]:
    """evaluation.json: where each site keeps its own evaluation of the released model.
    No figure: nothing computed on a site's patients reaches the coordinator (``statuses``:
    each answering site's status, e.g. "kept at site")."""
    run = settings.run_id
    doc = {
        "sites": {site: {"status": status,
                         "evaluation": f"STATE/evaluation-{site}-{run}.json",
                         "audit": (f"STATE/audit-{site}-{run}/audit.html"
                                   if settings.audit else None)}
                  for site, status in sorted(statuses.items())},
        "run_id": run,
        "note": note or "each site evaluated the released model on its own held-out patients "
                "(its own sample of it, its own choice) and keeps the figures in its state "
                "folder (STATE) and on its console; nothing computed on patients left a "
                "site, so the coordinator holds no figure",
    }
    write_json(out / "evaluation.json", doc)
    return doc


def write_rounds(out: Path, rounds_log: list[dict[str, Any]]) -> None:
    """rounds.jsonl: one JSON line per round so far (rewritten whole, atomically)."""
    with atomic_open(out / "rounds.jsonl", "w", encoding="utf-8") as fh:
        for entry in rounds_log:
            fh.write(json.dumps(entry, default=float) + "\n")


def write_progress(out: Path, rounds: int, epsilon_spent: Mapping[str, float],
                   **fields: Any) -> None:
    """progress.json: live state for the CLI's progress display."""
    write_json(out / "progress.json", {
        "time": time.time(), "rounds": rounds, "epsilon_spent": dict(epsilon_spent), **fields})


def write_status(out: Path, settings: RunSettings, status: str, detail: str = "",
                 rounds_completed: int = 0, stages: Mapping[str, float] | None = None) -> None:
    """status.json: the run's end (completed or failed), for the launcher; ``stages``: seconds
    of each stage after the last round (release, sample, privacy, evaluation)."""
    write_json(out / "status.json", {"status": status, "detail": detail,
                                     "launch_id": settings.launch_id,
                                     "rounds_completed": rounds_completed,
                                     "stage_seconds": dict(stages or {}),
                                     "time": time.time()})
