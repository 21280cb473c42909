"""Greedy decoding for extractability: memaudit's lean decoder against ``generate``.

One trained tiny GPT-Neo member (the demo's settings, on half of fixtures/demo/nq_demo.jsonl)
decodes every record's continuation three ways, alternating within each repeat so that load
from other processes hits all of them: ``greedy_continuations`` with its lean loop, the same
batches through ``model.generate`` (the previous implementation), and ``generate`` record by
record (``engine.usual_decode``, on the stock model). Reports the best and median seconds per
300 records per batch size, and how many continuations equal the per-record ones.

    python benchmarks/decode.py [--repeats 7]     # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from common import describe, machine
from engine import CPU, DATA, MODEL, OUT, usual_decode

from memaudit.config import ModelConfig, TrainConfig
from memaudit.data.records import RecordFormat, load_records
from memaudit.data.tokens import tokenize_records
from memaudit.ensemble import extract
from memaudit.ensemble.extract import extraction_targets, greedy_continuations
from memaudit.ensemble.models import MemberFactory, load_base_model, load_tokenizer
from memaudit.ensemble.train import train_member


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 300])
    opts = ap.parse_args()
    torch.set_num_threads(1)
    records = load_records(DATA, RecordFormat(preset="nq"))
    tok = load_tokenizer(str(MODEL))
    tokens = tokenize_records(records, tok, 64, "full", str(DATA))
    targets = extraction_targets(tokens, tok, 32)
    model = MemberFactory(load_base_model(ModelConfig(str(MODEL), "full"), CPU, torch.float32))
    model = model.fresh()
    cfg = TrainConfig(epochs=15, lr=3e-3, batch_size=16, max_length=64)  # demo.toml
    train_member(model, tokens, np.arange(0, len(records), 2), cfg, seed=0, device=CPU)
    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    stock.load_state_dict(model.state_dict())

    usual = usual_decode(stock, targets, tok)
    greedy_continuations(model, targets, tok, 64, CPU)  # verifies the lean path once
    split = extract._LEAN[model]
    assert split is not None, "the lean path was not taken"

    def run(lean: bool, bs: int) -> list[str]:
        extract._LEAN[model] = split if lean else None
        return greedy_continuations(model, targets, tok, bs, CPU)

    times: dict[str, list[float]] = {}
    same: dict[str, int] = {}
    for _ in range(opts.repeats):
        for name, fn in [
            *((f"lean bs={b}", lambda b=b: run(True, b)) for b in opts.batch_sizes),
            *((f"generate bs={b}", lambda b=b: run(False, b)) for b in opts.batch_sizes),
            ("usual per record", lambda: usual_decode(stock, targets, tok)),
        ]:
            t0 = time.perf_counter()
            got = fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
            same[name] = sum(a == b for a, b in zip(got, usual, strict=True))
    extract._LEAN[model] = split
    base = min(times["usual per record"])
    result = {
        "machine": machine(),
        "settings": {
            "records": len(records),
            "repeats": opts.repeats,
            "torch_threads": 1,
            "load_average_at_end": os.getloadavg(),
        },
        "paths": {
            name: {
                "best_seconds": min(ts),
                "median_seconds": statistics.median(ts),
                "usual_over_this_best": base / min(ts),
                "identical_to_usual": same[name],
            }
            for name, ts in times.items()
        },
    }
    lines = [
        "# Greedy decoding: lean loop against `generate`",
        "",
        f"`python benchmarks/decode.py --repeats {opts.repeats}`: the tiny GPT-Neo trained with "
        "the demo settings on half of the demo records decodes every record's continuation; "
        '"generate" is the previous implementation (the same batches, by continuation length, '
        'through `model.generate`), "usual" is `generate` record by record on the stock model. '
        f"One thread, best and median of {opts.repeats} alternating repeats, seconds per "
        f"{len(records)} records.",
        "",
        "| path | best s | median s | usual / this (best) | identical to usual |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {v['best_seconds']:.3f} | {v['median_seconds']:.3f} | "
            f"{v['usual_over_this_best']:.1f}x | {v['identical_to_usual']}/{len(records)} |"
            for name, v in result["paths"].items()
        ),
        "",
        describe(result["machine"], result["settings"]["load_average_at_end"]),
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "decode.json").write_text(json.dumps(result, indent=1))
    (OUT / "decode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
