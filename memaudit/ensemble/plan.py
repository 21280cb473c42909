"""The cost plan: what a run will take, measured before the ensemble trains.

:func:`make_plan` loads the data, tokenizer and model as the run would, times a few real steps
of one member (training on its share of records, evaluating a sample of records, greedy
decoding a sample for extractability) on the run's device, dtype and torch threads, and
projects them onto the run: seconds per model, the total for the chosen M and for
``--models auto``'s range, peak memory per member, the pack size ``--pack auto`` picks on a GPU,
and the run directory's size. Nothing is trained for the ensemble and nothing but
``RUN/plan.json`` is written.

A member's time is modelled as ``fresh + fixed + steps * step + N * eval_per_record``:
steps per member is ``epochs * ceil(N/2 / batch_size)`` (a Bernoulli half), and the first
``extract.models`` members add ``N * decode_per_record``. Steps are timed after one warm-up
step, on randomly drawn records (training batches are random too), so their lengths are the
run's; a member's fixed cost (optimizer, first-batch checks) is the intercept of two training
lengths.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any

import numpy as np
import torch

from memaudit.config import RunConfig
from memaudit.data.tokens import TokenizedRecords
from memaudit.store.io import atomic_write_json

DAY = 86400.0
TIMED_STEPS = 4  # training steps timed after the warm-up step
SAMPLE_RECORDS = 128  # records evaluated (and decoded) to time evaluation (and extraction)
GPU_FREE_GIB = 80.0  # the GPU the CPU plan projects --pack auto onto (an 80 GiB card)


def _subset(tokens: TokenizedRecords, idx: np.ndarray) -> TokenizedRecords:
    return dataclasses.replace(
        tokens,
        ids=[tokens.ids[i] for i in idx],
        score_from=tokens.score_from[idx],
        completion_start=tokens.completion_start[idx],
        also_scored=None if tokens.also_scored is None else [tokens.also_scored[i] for i in idx],
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def measure_member(cfg: RunConfig, ctx, threads: int | None = None) -> dict[str, float]:
    """Seconds of one member's parts, measured on ``ctx`` (a memaudit.ensemble.member
    MemberContext): a fresh copy of the weights, one training step, one record's evaluation and,
    when the run extracts, one record's greedy decoding."""
    from memaudit.ensemble.evaluate import record_losses
    from memaudit.ensemble.executors import torch_threads
    from memaudit.ensemble.extract import extract_member, extraction_targets
    from memaudit.ensemble.train import train_member

    tokens, factory, device = ctx.tokens, ctx.factory, ctx.device
    n = len(tokens)
    rng = np.random.default_rng(cfg.ensemble.seed)
    batch = cfg.train.batch_size
    one_epoch = dataclasses.replace(cfg.train, epochs=1, warmup_steps=0)
    sample = rng.choice(n, size=min(n, SAMPLE_RECORDS), replace=False)
    sub = _subset(tokens, np.sort(sample))
    out: dict[str, float] = {}
    with torch_threads(threads):
        warm = rng.choice(n, size=min(n, batch), replace=False)
        train_member(factory.fresh(), tokens, warm, one_epoch, 0, device)  # warm-up step
        record_losses(factory.model, _subset(tokens, warm), cfg.eval_batch_size, device)
        out["fresh_seconds"] = _timed(factory.fresh, device)
        # Two lengths of training, 2 and 2 + TIMED_STEPS steps: their difference is the time
        # of a step, the rest a member's fixed cost (optimizer, first-batch checks).
        runs = []
        for k in (2, 2 + TIMED_STEPS):
            chosen = rng.choice(n, size=min(n, k * batch), replace=False)
            runs.append(train_member(factory.fresh(), tokens, chosen, one_epoch, 1, device))
        (short, long) = runs
        step = (long.seconds - short.seconds) / max(1, long.steps - short.steps)
        if long.steps <= short.steps or step <= 0:  # too few records (or noise): no split
            step, fixed = long.seconds / max(1, long.steps), 0.0
        else:
            fixed = max(0.0, short.seconds - short.steps * step)
        out["step_seconds"] = step
        out["member_fixed_seconds"] = fixed
        out["timed_steps"] = long.steps
        t = _timed(lambda: record_losses(factory.model, sub, cfg.eval_batch_size, device), device)
        out["eval_seconds_per_record"] = t / len(sub)
        if ctx.n_extract:
            targets = extraction_targets(sub, ctx.tokenizer, cfg.extract.prefix_tokens)
            found: dict = {}

            def decode() -> None:
                found.update(
                    extract_member(
                        factory.model, targets, ctx.tokenizer, cfg.extract.batch_size, device
                    )
                )

            out["decode_seconds_per_record"] = _timed(decode, device) / len(sub)
            saved = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in found.items()}
            out["extraction_bytes_per_record"] = len(json.dumps(saved)) / len(sub)
    return out


def steps_per_member(cfg: RunConfig, n_records: int) -> int:
    """Optimizer steps of one member on a Bernoulli half of ``n_records``."""
    return cfg.train.epochs * max(1, math.ceil(n_records / 2 / cfg.train.batch_size))


def project(cfg: RunConfig, n_records: int, parts: dict[str, float], workers: int = 1) -> dict:
    """Seconds per model and totals from measured ``parts`` (see :func:`measure_member`);
    ``workers`` members train side by side (the local executor's worker processes)."""
    steps = steps_per_member(cfg, n_records)
    fixed = parts["fresh_seconds"] + parts.get("member_fixed_seconds", 0.0)
    train_s = fixed + steps * parts["step_seconds"]
    eval_s = n_records * parts["eval_seconds_per_record"]
    per_model = train_s + eval_s
    decode_s = n_records * parts.get("decode_seconds_per_record", 0.0)

    def total(m: int) -> float:
        return (m * per_model + min(m, cfg.extract.models) * decode_s) / max(1, workers)

    ens = cfg.ensemble
    chosen = {"models": ens.models, "seconds": round(total(ens.models), 1)}
    auto_lo = ens.models if ens.auto else 16
    auto_hi = ens.max_models
    return {
        "steps_per_model": steps,
        "train_seconds_per_model": round(train_s, 3),
        "eval_seconds_per_model": round(eval_s, 3),
        "seconds_per_model": round(per_model, 3),
        "extract_seconds_per_model": round(decode_s, 3),
        "extract_models": cfg.extract.models,
        "workers": workers,
        "total": None if ens.auto else chosen,
        "auto": {
            "min_models": auto_lo,
            "max_models": auto_hi,
            "min_seconds": round(total(auto_lo), 1),
            "max_seconds": round(total(auto_hi), 1),
        },
    }


def disk_bytes(cfg: RunConfig, n_records: int, m: int, records_bytes: int, parts: dict) -> int:
    """The run directory's size for ``m`` models, an estimate: the records, P, each model's
    losses (float64 .npy) and metadata, the first extract models' continuations, and the
    analysis and reports (PER_RECORD_OUTPUTS, measured on the demo)."""
    losses = 128 + 8 * n_records
    meta = 900  # a model's JSON metadata (epoch losses, checksums, timings)
    extraction = parts.get("extraction_bytes_per_record", 0.0) * n_records
    inclusion = 128 + n_records * m
    outputs = PER_RECORD_OUTPUTS * n_records + 8 * n_records * m  # + the collected L (N x M)
    if n_records <= cfg.analysis.dense_max:
        outputs += 4 * n_records**2  # influence_dense.npy, float32, written for small N only
    return int(
        records_bytes
        + inclusion
        + m * (losses + meta)
        + min(m, cfg.extract.models) * extraction
        + outputs
    )


# Analysis, findings and report files per record (influence.json and .npz, convergence.json,
# report.json, report.html): 1.53 MB for the demo's 300 records at 4 models, measured.
PER_RECORD_OUTPUTS = 5200


def pack_on_gpu(cfg: RunConfig, model, device: torch.device, n_models: int) -> dict:
    """The K that ``--pack auto`` picks: on CUDA what choose_pack says now; elsewhere what it
    would say on a GPU with GPU_FREE_GIB free (the same memory estimate)."""
    from memaudit.ensemble.member_packs import (
        MAX_AUTO_PACK,
        _member_bytes,
        choose_pack,
        packable,
    )

    state, act = _member_bytes(model, cfg.train)
    out: dict[str, Any] = {"member_memory_estimate_mib": round((state + act) / 2**20, 1)}
    if device.type == "cuda":
        k, why = choose_pack(cfg, model, device, n_models)
        out.update(k=k, why=why)
        return out
    why_not = packable(model)
    if why_not:
        out.update(k=1, why=f"not packed: {why_not}")
        return out
    free = GPU_FREE_GIB * 2**30
    k = max(1, min(MAX_AUTO_PACK, n_models, int(0.6 * free) // max(1, state + act)))
    out.update(k=k, why=f"on a GPU with {GPU_FREE_GIB:.0f} GiB free; here on CPU one at a time")
    return out


def make_plan(cfg: RunConfig, records, ctx, workers: int = 1, threads: int | None = None) -> dict:
    """The plan for ``cfg`` on ``records``, measured with ``ctx`` (a loaded MemberContext)."""
    device = ctx.device
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    parts = measure_member(cfg, ctx, threads)
    n = len(records)
    out = {
        "model": cfg.model.name,
        "records": n,
        "device": str(device),
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "threads_per_model": threads or torch.get_num_threads(),
        "measured": {k: round(v, 6) for k, v in parts.items()},
        **project(cfg, n, parts, workers),
    }
    if device.type == "cuda":
        out["peak_memory_per_member_gib"] = round(
            torch.cuda.max_memory_allocated(device) / 2**30, 2
        )
    else:
        out["peak_memory_per_member_gib"] = None  # CPU: see pack.member_memory_estimate_mib
    out["pack"] = pack_on_gpu(cfg, ctx.factory.model, device, cfg.ensemble.max_models)
    records_bytes = sum(len(json.dumps(dataclasses.asdict(r))) + 1 for r in records)
    m = cfg.ensemble.max_models if cfg.ensemble.auto else cfg.ensemble.models
    out["disk_bytes"] = disk_bytes(cfg, n, m, records_bytes, parts)
    out["disk_models"] = m
    seconds = out["total"]["seconds"] if out["total"] else out["auto"]["max_seconds"]
    out["exceeds_a_day"] = seconds > DAY
    return out


def load_run_records(cfg: RunConfig):
    """(records, tokenizer or None): a file of chat records (judged by its first record) is
    rendered with the model's tokenizer, loaded first; any other file is read (and its errors
    reported) before the model is looked at."""
    from memaudit.data.formats import is_chat_source, read_chat_template
    from memaudit.data.records import RecordFormat, load_records
    from memaudit.ensemble.models import load_tokenizer
    from memaudit.errors import MemauditError

    fmt = RecordFormat(cfg.preset, cfg.template, cfg.id_field)
    template = read_chat_template(cfg.chat_template) if cfg.chat_template else None
    tokenizer = None
    if fmt.effective_template is None and is_chat_source(cfg.data, cfg.split, cfg.revision):
        tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
    elif template is not None:
        how = "--preset/--template read them" if fmt.effective_template else "not chat records"
        raise MemauditError(
            f"--chat-template {cfg.chat_template}: renders chat records "
            f'({{"messages": [...]}}), and the records of {cfg.data} are {how}'
        )
    records = load_records(
        cfg.data,
        fmt,
        chat=tokenizer,
        split=cfg.split,
        revision=cfg.revision,
        chat_template=template,
    )
    return records, tokenizer


def plan_run(cfg: RunConfig, executor=None) -> dict:
    """Load what the run would load (records, tokenizer, model) and measure its plan; the
    executor configuration (memaudit.ensemble.executors.ExecutorConfig) sets the workers and
    torch threads per member, as the run would use them."""
    from memaudit.ensemble.executors import ExecutorConfig, plan_local
    from memaudit.ensemble.member import member_context
    from memaudit.errors import MemauditError

    if cfg.is_image:
        raise MemauditError("--plan: text models only in this release (not image models)")
    records, _ = load_run_records(cfg)
    ctx = member_context(cfg, records)
    ecfg = executor or ExecutorConfig()
    m = cfg.ensemble.max_models if cfg.ensemble.auto else cfg.ensemble.models
    if ecfg.kind == "local":
        trainable = sum(
            p.numel() * p.element_size() for p in ctx.factory.model.parameters() if p.requires_grad
        )
        local = plan_local(ecfg.workers, ecfg.threads, m, ctx.device, trainable)
        workers, threads = local.workers, local.threads
    else:
        workers, threads = 1, ecfg.threads  # Ray: per model, however many run side by side
    return make_plan(cfg, records, ctx, workers, threads)


def write_plan(run_dir, plan: dict) -> None:
    """RUN/plan.json, written atomically; the folder is made if needed (a run still accepts it)."""
    run_dir.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir.file("plan.json"), plan)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY:.1f} days"


def describe(plan: dict) -> list[str]:
    """The plan as lines for a terminal."""
    lines = [
        f"plan: {plan['records']} records, {plan['model']} on {plan['device']} "
        f"({plan['dtype']}, {plan['threads_per_model']} thread(s) per model, "
        f"{plan['workers']} worker(s))",
        f"  per model: {plan['seconds_per_model']:.2f} s ({plan['steps_per_model']} training "
        f"steps {plan['train_seconds_per_model']:.2f} s, evaluation "
        f"{plan['eval_seconds_per_model']:.2f} s); the first {plan['extract_models']} also "
        f"decode every record: {plan['extract_seconds_per_model']:.2f} s each",
    ]
    if plan["total"]:
        t = plan["total"]
        lines.append(f"  --models {t['models']}: {_duration(t['seconds'])}")
    a = plan["auto"]
    lines.append(
        f"  --models auto: {_duration(a['min_seconds'])} ({a['min_models']} models, the first "
        f"round) to {_duration(a['max_seconds'])} (--max-models {a['max_models']})"
    )
    mem = plan["peak_memory_per_member_gib"]
    pack = plan["pack"]
    lines.append(
        "  memory per member: "
        + (f"{mem} GiB peak (measured)" if mem is not None else "")
        + ("; " if mem is not None else "")
        + f"about {pack['member_memory_estimate_mib']} MiB trained state and activations; "
        f"--pack auto: {pack['k']} ({pack['why']})"
    )
    lines.append(
        f"  run directory: about {plan['disk_bytes'] / 2**20:.1f} MiB for {plan['disk_models']} "
        "models"
    )
    if plan["exceeds_a_day"]:
        lines.append(
            "  warning: more than a day on this hardware; --models auto trains in rounds and "
            "stops as soon as the estimates converge"
        )
    return lines
