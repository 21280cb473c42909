"""The cost plan (``memaudit run --plan``) against the measured time of the first models.

    PYTHONPATH=. python benchmarks/plan_accuracy.py [--clock cpu]   # about 3 min on 2 idle cores

For two models, in one process: the plan (memaudit.ensemble.plan.plan_run), then the first
models trained by the run itself (api.Audit.train, one worker, one torch thread, as planned).
Compares the projected seconds per model (training + evaluation) with the mean measured in
the models' metadata, and the projected total with the training's wall-clock:

- ``tiny``: the bundled tiny GPT-Neo, the demo's settings (full fine-tuning, 15 epochs) on
  the first 120 demo records, 3 models, 2 of them decoding for extractability;
- ``125m``: a GPT-Neo-125M-shaped model with random weights (LoRA r 8), saved with the tiny
  model's tokenizer, 32 records, 1 epoch of batch 8, 2 models, none decoding.

Writes results/plan_accuracy_wall.* (or _cpu.* with ``--clock cpu``: every timer reads the
process's CPU time, the idle-core wall-clock, for a machine shared with other work).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check  # noqa: E402
from common import describe, machine  # noqa: E402

from memaudit.api import Audit  # noqa: E402
from memaudit.config import EnsembleConfig, ExtractConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from memaudit.ensemble.executors import ExecutorConfig  # noqa: E402
from memaudit.ensemble.plan import plan_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"


def case(name: str, cfg: RunConfig, tmp: Path) -> dict:
    ecfg = ExecutorConfig(workers=1, threads=1)
    t0 = time.perf_counter()
    plan = plan_run(cfg, ecfg)
    plan_s = time.perf_counter() - t0
    audit = Audit(cfg, tmp / name, executor=ecfg)
    prepared = audit.prepare()
    t0 = time.perf_counter()
    audit.train(prepared)
    train_wall = time.perf_counter() - t0
    metas = [json.loads(p.read_text()) for p in sorted((tmp / name / "models").glob("*[0-9].json"))]
    per_model = sum(m["train_seconds"] + m["eval_seconds"] for m in metas) / len(metas)
    projected = plan["train_seconds_per_model"] + plan["eval_seconds_per_model"]
    return {
        "case": name,
        "records": plan["records"],
        "models": len(metas),
        "steps_per_model": plan["steps_per_model"],
        "plan_seconds": round(plan_s, 1),
        "projected_seconds_per_model": round(projected, 2),
        "measured_seconds_per_model": round(per_model, 2),
        "ratio_per_model": round(projected / per_model, 3),
        "projected_total_seconds": plan["total"]["seconds"],
        "measured_training_wall_seconds": round(train_wall, 1),
        "ratio_total": round(plan["total"]["seconds"] / train_wall, 3),
    }


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: every timer (the plan's, the models' metadata) reads this process's CPU time "
        "instead, which is the wall-clock of one thread on an idle core; for a shared machine",
    )
    clock = ap.parse_args().clock
    if clock == "cpu":
        time.perf_counter = time.process_time  # one process, one thread: CPU time = idle wall
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "tiny.jsonl"
        demo = gpu_check.DEMO.read_text(encoding="utf-8").splitlines(True)
        data.write_text("".join(demo[:120]), encoding="utf-8")
        tiny = RunConfig(
            data=str(data),
            model=ModelConfig(str(ROOT / "fixtures" / "tiny-gpt-neo"), finetune="full"),
            preset="nq",
            train=TrainConfig(epochs=15, lr=3e-3, batch_size=16, max_length=64),
            ensemble=EnsembleConfig(models=3),
            extract=ExtractConfig(models=2),
        )
        rows.append(case("tiny", tiny, tmp))
        print(json.dumps(rows[-1]), flush=True)
        small = tmp / "small.jsonl"
        small.write_text("".join(demo[:32]), encoding="utf-8")
        model = gpu_check.save_random_125m(tmp / "gpt-neo-125M-shaped", smoke=False)
        big = RunConfig(
            data=str(small),
            model=ModelConfig(str(model), finetune="lora"),
            preset="nq",
            train=TrainConfig(epochs=1, batch_size=8, max_length=64),
            ensemble=EnsembleConfig(models=2),
            extract=ExtractConfig(models=0),
        )
        rows.append(case("125m", big, tmp))
        print(json.dumps(rows[-1]), flush=True)
    result = {
        "machine": machine(),
        "clock": clock,
        "cases": rows,
        "load_average": os.getloadavg(),
    }
    lines = [
        "# The cost plan against the first models (CPU, one worker, one torch thread)",
        "",
        f"`python benchmarks/plan_accuracy.py --clock {clock}`: seconds are "
        + (
            "wall-clock."
            if clock == "wall"
            else "this process's CPU time (every timer, the plan's and the models' metadata), "
            "the wall-clock of one thread on an idle core."
        ),
        "",
        "| case | records | models | steps/model | projected s/model | measured s/model | "
        "ratio | projected total s | measured training s | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['case']} | {r['records']} | {r['models']} | {r['steps_per_model']} | "
            f"{r['projected_seconds_per_model']} | {r['measured_seconds_per_model']} | "
            f"{r['ratio_per_model']} | {r['projected_total_seconds']} | "
            f"{r['measured_training_wall_seconds']} | {r['ratio_total']} |"
            for r in rows
        ),
        "",
        describe(result["machine"], result["load_average"]),
        "",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"plan_accuracy_{clock}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
