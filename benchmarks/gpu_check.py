"""The GPU check: what memaudit runs on a GPU, run once, timed and checked, in one command.

    PYTHONPATH=. python benchmarks/gpu_check.py            # one GPU: under 8 minutes on an H200
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke    # CPU, tiny sizes: CI runs this

Sections (each timed; one that fails is recorded and the others still run):

- ``peak``: a bf16 matrix product (8192^3) as the machine's peak TFLOP/s, measured now
  (smoke: float32, 512^3);
- ``packed``: LoRA members of a GPT-Neo-125M-shaped model with random weights in bf16, packed
  against one at a time (``packed.run_case``): models/s, training TFLOP/s and their fraction of
  the peak, peak memory, the K that ``--pack auto`` would choose for 1,000 members; and greedy
  extraction decoding in mixed-adapter batches against member by member (agreement);
- ``exactness``: K members trained one at a time and packed, every record's loss compared
  (bf16: within 3% of the mean loss, 8 units of bf16's precision; float32: 1e-4), and packed
  evaluation against each member's own; training must move the losses by twice that;
- ``end_to_end``: ``memaudit run`` (LoRA, bf16, ``--pack auto``, 32 models, the 300 demo
  records) on the 125M-shaped model saved with the tiny model's tokenizer: wall-clock and the
  pack size the run used;
- ``resnet18``: image members (ResNet-18, CIFAR-shaped fixtures/images/cifar10_demo.npz) one
  at a time: models/s, peak memory, training accuracy.

Writes ``gpu_check.json`` and ``gpu_check.md`` (``gpu_check_smoke.*`` with ``--smoke``) into
``--out`` [benchmarks/results]. Exits 1 when a section fails or a check does not hold, so the
smoke in CI keeps the script working.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, packed
import packed  # noqa: E402
from common import describe, machine  # noqa: E402

from memaudit.config import ImageConfig, TrainConfig  # noqa: E402
from memaudit.data.partition import model_seed  # noqa: E402
from memaudit.ensemble.evaluate import record_losses  # noqa: E402
from memaudit.ensemble.member_packs import packed_losses, train_packed  # noqa: E402
from memaudit.ensemble.models import MemberFactory  # noqa: E402
from memaudit.ensemble.train import train_member  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo" / "nq_demo.jsonl"
CIFAR = ROOT / "fixtures" / "images" / "cifar10_demo.npz"

# Sizes: the full check on one GPU, and the CPU smoke (CI, 2 cores, well under 2 minutes).
SIZES = {
    "gpu": {
        # packed.run_case: (K, records, seq, batch, epochs, packed micro-batch, layers)
        "packed": (32, 512, 128, 50, 1, 10, 12),
        "exact": dict(k=4, records=64, seq=64, batch=8, layers=12),
        "e2e": dict(models=32, records=300, extra=[]),
        "vision": dict(model="resnet18", members=8, images=300, epochs=5, resize=None),
        "matmul": 8192,
    },
    "smoke": {
        "packed": (3, 24, 16, 8, 1, None, 2),
        "exact": dict(k=3, records=16, seq=16, batch=4, layers=2),
        "e2e": dict(
            models=4, records=24, extra=["--epochs", "1", "--extract-models", "2", "--workers", "1"]
        ),
        "vision": dict(model="resnet-tiny", members=2, images=48, epochs=1, resize=16),
        "matmul": 512,
    },
}


def peak_memory_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> dict:
    """Matrix-product TFLOP/s of this device in ``dtype``, measured now."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    packed.sync(device)
    reps = 20 if device.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    packed.sync(device)
    tflops = 2 * size**3 * reps / (time.perf_counter() - t0) / 1e12
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "tflops": round(tflops, 3)}


def packed_vs_loop(device: torch.device, dtype: torch.dtype, smoke: bool, peak: float | None):
    """packed.run_case on LoRA members (also mixed-adapter decoding against member by member)."""
    reset_peak(device)
    sizes = SIZES[_mode(smoke)]["packed"]
    row = packed.run_case("lora", sizes, device, dtype, smoke, repeat=1 if smoke else 2)
    if peak:
        row["loop_fraction_of_peak"] = round(row["loop_tflops"] / peak, 4)
        row["packed_fraction_of_peak"] = round(row["packed_tflops"] / peak, 4)
    row["checks"] = {
        # Mixed-adapter decoding must be used and agree with member-by-member decoding (greedy
        # argmax ties under bf16 rounding may flip a rare token: 95%).
        "mixed_decoding_used": bool(row["decode_mixed_used"]),
        "mixed_decoding_agrees": (row["decode_agreement"] or 0.0)
        >= (1.0 if dtype == torch.float32 else 0.95),
    }
    return row


def loss_tolerance(dtype: torch.dtype, losses: np.ndarray) -> float:
    """Absolute tolerance on a record's mean loss: in bf16 8 units of its 2^-8 relative
    precision at the losses' mean size (3%: packed and alone run different matrix shapes, so
    round differently, and AdamW amplifies that over the steps); in float32 1e-4 (the unit
    tests' float32 comparison, 1e-5, with room for other kernels)."""
    if dtype == torch.bfloat16:
        return float(8 * 2.0**-8 * np.abs(losses).mean())
    return 1e-4


def exactness(device: torch.device, dtype: torch.dtype, smoke: bool) -> dict:
    """K LoRA members trained one at a time and packed: every record's loss both ways; and the
    packed evaluation of each member against its own (record_losses after pack.load)."""
    s = SIZES[_mode(smoke)]["exact"]
    model = packed.build("lora", device, dtype, s["layers"], smoke)
    factory = MemberFactory(model)
    # Tokens from a 64-token sub-vocabulary: something to learn (a unigram distribution) for a
    # random-weight model, so that training moves the losses well beyond the tolerance.
    toks = packed.records(s["records"], s["seq"], 64, seed=3)
    rng = np.random.default_rng(4)
    subsets = [np.flatnonzero(rng.random(s["records"]) < 0.5) for _ in range(s["k"])]
    seeds = [model_seed(0, j) for j in range(s["k"])]
    # A learning rate that moves the adapters visibly in a few steps.
    cfg = TrainConfig(epochs=2, lr=5e-3, batch_size=s["batch"], max_length=s["seq"])
    alone = []
    for subset, seed in zip(subsets, seeds, strict=True):
        train_member(factory.fresh(), toks, subset, cfg, seed, device)
        alone.append(record_losses(factory.model, toks, 16, device))
    untrained = record_losses(factory.fresh(), toks, 16, device)
    pack, _ = train_packed(factory.model, toks, subsets, cfg, seeds, device)
    together = packed_losses(pack, toks, 8, device)
    loaded = []
    for i in range(s["k"]):
        factory.fresh()
        pack.load(i)
        loaded.append(record_losses(factory.model, toks, 16, device))
    alone, loaded = np.array(alone), np.array(loaded)
    tol = loss_tolerance(dtype, alone)
    train_diff = float(np.abs(alone - loaded).max())
    eval_diff = float(np.abs(together - loaded).max())
    moved = float(np.abs(alone - untrained).max())
    return {
        "members": s["k"],
        "records": s["records"],
        "dtype": str(dtype).removeprefix("torch."),
        "mean_loss": round(float(alone.mean()), 4),
        "training_moved_losses_by": moved,
        "trained_alone_vs_packed_max_diff": train_diff,
        "packed_eval_vs_own_eval_max_diff": eval_diff,
        "tolerance": tol,
        "checks": {
            "training_changed_the_losses": moved > 2 * tol,  # else the comparison says nothing
            "packed_training_equals_alone": train_diff <= tol,
            "packed_evaluation_equals_own": eval_diff <= tol,
        },
    }


def save_random_125m(folder: Path, smoke: bool) -> Path:
    """The 125M-shaped model with random weights (smoke: the tiny model itself), saved with the
    tiny model's tokenizer (ids below 4,096; the 125M vocabulary is kept for its shape)."""
    import shutil

    if smoke:
        return packed.TINY
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    conf = GPTNeoConfig(
        hidden_size=768,
        num_heads=12,
        num_layers=12,
        vocab_size=50257,
        attention_types=[[["global", "local"], 6]],
        max_position_embeddings=2048,
        window_size=256,
        embed_dropout=0.0,
        attention_dropout=0.0,
        resid_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    GPTNeoForCausalLM(conf).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(packed.TINY / name, folder / name)
    return folder


def end_to_end(device: torch.device, dtype: torch.dtype, smoke: bool, tmp: Path) -> dict:
    """``memaudit run`` in a subprocess, as a user types it; wall-clock from start to report."""
    s = SIZES[_mode(smoke)]["e2e"]
    data = tmp / "records.jsonl"
    lines = DEMO.read_text(encoding="utf-8").splitlines()[: s["records"]]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    model = save_random_125m(tmp / "gpt-neo-125M-shaped", smoke)
    out = tmp / "run"
    cmd = [
        sys.executable,
        "-m",
        "memaudit",
        "run",
        str(data),
        "--model",
        str(model),
        "--preset",
        "nq",
        "--finetune",
        "lora",
        "--dtype",
        str(dtype).removeprefix("torch."),
        "--device",
        device.type,
        "--pack",
        "auto",
        "--models",
        str(s["models"]),
        "--max-length",
        "64",
        "--estimator",
        "plain" if smoke else "adjusted",
        "--out",
        str(out),
        *s["extra"],
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    wall = time.perf_counter() - t0
    metas = [json.loads(p.read_text()) for p in sorted((out / "models").glob("[0-9]*.json"))]
    metas = [m for m in metas if "status" in m]
    ok = [m for m in metas if m["status"] == "ok"]
    row = {
        "command": " ".join(["memaudit", *cmd[3:]])
        .replace(str(tmp), "TMP")
        .replace(str(ROOT), "."),
        "records": len(lines),
        "models": s["models"],
        "wall_seconds": round(wall, 1),
        "exit_code": proc.returncode,
        "models_ok": len(ok),
        "pack_sizes_used": sorted({m.get("pack", 1) for m in ok}),
        "train_seconds_per_model": round(
            float(np.mean([m.get("train_seconds", np.nan) for m in ok])) if ok else np.nan, 3
        ),
        "report_written": (out / "report.json").is_file(),
        "checks": {
            "run_succeeded": proc.returncode == 0,
            "every_model_ok": len(ok) == s["models"],
        },
    }
    if proc.returncode != 0:
        row["stderr_tail"] = proc.stderr[-1500:]
    return row


def vision(device: torch.device, smoke: bool) -> dict:
    """Image members one at a time (ImageTask, as `memaudit run --model resnet18` trains them)."""
    from memaudit.data.images import load_npz
    from memaudit.ensemble.vision import IMAGE_TRAIN_DEFAULTS, ImageTask

    s = SIZES[_mode(smoke)]["vision"]
    data = load_npz(CIFAR, s["resize"])
    images, labels = data.images[: s["images"]], data.labels[: s["images"]]
    cfg = TrainConfig(**{**IMAGE_TRAIN_DEFAULTS, "epochs": s["epochs"]})
    task = ImageTask(
        images, labels, len(data.class_names), s["model"], cfg, ImageConfig(), 0, device
    )
    rng = np.random.default_rng(5)
    reset_peak(device)
    task.train(task.fresh(), np.arange(8), 0)  # warm-up: cuDNN's choice of kernels
    packed.sync(device)
    t0 = time.perf_counter()
    accuracy, finite = [], True
    for j in range(s["members"]):
        subset = np.flatnonzero(rng.random(len(labels)) < 0.5)
        model = task.fresh()
        task.train(model, subset, model_seed(0, j))
        losses, arrays = task.evaluate(model)
        finite &= bool(np.isfinite(losses).all())
        accuracy.append(float(arrays["correct"][subset].mean()))
    packed.sync(device)
    seconds = time.perf_counter() - t0
    return {
        "model": s["model"],
        "params": task.n_params,
        "images": len(labels),
        "image_shape": list(images.shape[1:]),
        "members": s["members"],
        "epochs": s["epochs"],
        "seconds": round(seconds, 2),
        "models_per_s": round(s["members"] / seconds, 3),
        "peak_memory_gb": peak_memory_gb(device),
        "mean_training_accuracy": round(float(np.mean(accuracy)), 3),
        "checks": {"losses_finite": finite},
    }


def _mode(smoke: bool) -> str:
    return "smoke" if smoke else "gpu"


def run_section(name: str, fn, results: dict) -> None:
    print(f"[gpu_check] {name} ...", flush=True)
    t0 = time.perf_counter()
    try:
        row = fn()
    except Exception as exc:  # noqa: BLE001 - keep the other sections' numbers
        row = {
            "error": f"{type(exc).__name__}: {str(exc)[:500]}",
            "traceback": traceback.format_exc()[-3000:],
        }
    row["section_seconds"] = round(time.perf_counter() - t0, 1)
    results["sections"][name] = row
    print(f"[gpu_check] {name}: {json.dumps(row)[:600]}", flush=True)


def failures(results: dict) -> list[str]:
    bad = []
    for name, row in results["sections"].items():
        if "error" in row:
            bad.append(f"{name}: {row['error']}")
        bad += [f"{name}: {c} failed" for c, ok in row.get("checks", {}).items() if not ok]
    return bad


def markdown(results: dict) -> str:
    m, sec = results["machine"], results["sections"]
    where = m.get("gpu") or f"{m['processor']}, {m['torch_threads']} torch threads"
    lines = [
        f"# GPU check{' (smoke, CPU)' if results['smoke'] else ''}: {where}",
        "",
        f"`{results['command']}`, {results['seconds']} s in all; torch {m['torch']}, "
        f"{results['dtype']}. {'All checks hold.' if not results['failures'] else ''}",
        "",
        "| section | result | seconds |",
        "|---|---|---|",
    ]

    def cell(name: str, text) -> None:
        row = sec.get(name, {})
        body = f"failed: {row['error']}" if "error" in row else text(row)
        lines.append(f"| {name} | {body} | {row.get('section_seconds', '')} |")

    cell("peak", lambda r: f"{r['tflops']} TFLOP/s ({r['dtype']} matmul {r['size']}^3)")
    cell(
        "packed",
        lambda r: (
            f"K {r['members']} LoRA members, {r['records']} records of {r['seq']} tokens: one at "
            f"a time {r['loop_models_per_s']} models/s ({r['loop_tflops']} TFLOP/s"
            + (
                f", {100 * r['loop_fraction_of_peak']:.1f}% of peak"
                if "loop_fraction_of_peak" in r
                else ""
            )
            + f"), packed {r['packed_models_per_s']} models/s ({r['packed_tflops']} TFLOP/s"
            + (
                f", {100 * r['packed_fraction_of_peak']:.1f}% of peak"
                if "packed_fraction_of_peak" in r
                else ""
            )
            + f"), {r['speedup']}x; peak memory {r.get('packed_peak_memory_gb', '-')} GB; "
            f"--pack auto: {r['auto_pack']} ({r['auto_pack_reason']}); mixed-adapter decoding "
            f"{r['decode_speedup']}x vs member by member, agreement {r['decode_agreement']}"
        ),
    )
    cell(
        "exactness",
        lambda r: (
            f"{r['members']} members, {r['dtype']}: trained alone vs packed max loss diff "
            f"{r['trained_alone_vs_packed_max_diff']:.2g}, packed vs own evaluation "
            f"{r['packed_eval_vs_own_eval_max_diff']:.2g} (tolerance {r['tolerance']:.2g}; "
            f"training moved losses by {r['training_moved_losses_by']:.2g})"
        ),
    )
    cell(
        "end_to_end",
        lambda r: (
            f"`{r['command']}`: exit {r['exit_code']}, {r['wall_seconds']} s wall-clock, "
            f"{r['models_ok']}/{r['models']} models ok, pack sizes {r['pack_sizes_used']}, "
            f"{r['train_seconds_per_model']} s training per model (as recorded)"
        ),
    )
    cell(
        "resnet18" if "resnet18" in sec else "vision",
        lambda r: (
            f"{r['members']} {r['model']} members, {r['images']} images {r['image_shape']}, "
            f"{r['epochs']} epochs: {r['models_per_s']} models/s, peak memory "
            f"{r['peak_memory_gb']} GB, training accuracy {r['mean_training_accuracy']}"
        ),
    )
    lines += ["", "Checks: " + ("all hold" if not results["failures"] else "")]
    lines += [f"- FAILED {f}" for f in results["failures"]]
    lines += ["", describe(m, results["load_average"]), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--skip", default="", help="comma-separated sections not to run")
    args = ap.parse_args()
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        print("gpu_check: no CUDA device; run with --smoke for the CPU check", file=sys.stderr)
        sys.exit(2)
    skip = set(filter(None, args.skip.split(",")))
    started = time.perf_counter()
    results = {
        "command": " ".join(["python benchmarks/gpu_check.py", *sys.argv[1:]]),
        "smoke": args.smoke,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine(),
        "sections": {},
    }
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = SIZES[_mode(args.smoke)]["matmul"]
    sections = [
        ("peak", lambda: matmul_peak(device, peak_dtype, size)),
        (
            "packed",
            lambda: packed_vs_loop(
                device, dtype, args.smoke, results["sections"].get("peak", {}).get("tflops")
            ),
        ),
        ("exactness", lambda: exactness(device, dtype, args.smoke)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        sections += [
            ("end_to_end", lambda: end_to_end(device, dtype, args.smoke, Path(tmp))),
            ("resnet18" if not args.smoke else "vision", lambda: vision(device, args.smoke)),
        ]
        for name, fn in sections:
            if name not in skip:
                run_section(name, fn, results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["load_average"] = os.getloadavg()
    results["failures"] = failures(results)
    stem = args.out / ("gpu_check_smoke" if args.smoke else "gpu_check")
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    if results["failures"]:
        print("gpu_check: FAILED: " + "; ".join(results["failures"]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
