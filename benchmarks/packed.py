"""Packed training (memaudit.ensemble.member_packs) against one member at a time: models per second.

    PYTHONPATH=. python3 benchmarks/packed.py [--device cuda] [--quick]

Two cases, each timed both ways in the same process on the same synthetic records (random
tokens, lengths uniform in [seq/2, seq]), members on Bernoulli(1/2) subsets with the ensemble's
seeds, the same TrainConfig (AdamW, linear decay):

- ``full``: the bundled tiny GPT-Neo (fixtures/tiny-gpt-neo, 1M parameters), fully fine-tuned;
- ``lora``: LoRA (r 8, q_proj and v_proj, peft's default for GPT-Neo) on a GPT-Neo-125M-shaped
  model built from its config with random weights (hidden 768, 12 layers, 12 heads, vocab
  50257), the frozen base shared by the K packed adapters; also greedy extraction decoding
  by min(K, 16) members, one at a time against mixed-adapter batches.

One-at-a-time is ``train.train_member`` per member (the unpacked path of every run); packed is
``packed.train_packed`` on all K at once; evaluation (every record's loss) likewise:
``evaluate.record_losses`` per member against ``packed.packed_losses``. On CUDA the script
also times a bf16 matrix product (8192^3) as the machine's peak and reports the training FLOP/s
each way as a fraction of it (FLOPs: 6 per weight per trained token for full fine-tuning, 4 for
LoRA, whose frozen base needs no weight gradients, plus the causal attention products; padding
not counted). Writes results/packed.json and packed.md (CUDA), packed_cpu.* (CPU) or
packed_quick.* (--quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # memaudit from this checkout, installed or not

from memaudit.config import ExtractConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from memaudit.data.partition import model_seed  # noqa: E402
from memaudit.data.tokens import TokenizedRecords  # noqa: E402
from memaudit.ensemble.evaluate import record_losses  # noqa: E402
from memaudit.ensemble.extract import ExtractionTargets, greedy_continuations  # noqa: E402
from memaudit.ensemble.member_packs import (  # noqa: E402
    choose_pack,
    packed_continuations,
    packed_losses,
    train_packed,
)
from memaudit.ensemble.models import MemberFactory, _wrap_lora  # noqa: E402
from memaudit.ensemble.train import train_member  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TINY = ROOT / "fixtures" / "tiny-gpt-neo"

# name: (members K, records, seq, batch, epochs, packed micro-batch, LoRA layers)
DEFAULTS = {
    "cuda": {"full": (32, 512, 64, 50, 1, None, None), "lora": (32, 512, 128, 50, 1, 10, 12)},
    "cpu": {"full": (8, 128, 64, 16, 1, None, None), "lora": (4, 48, 32, 8, 1, None, 12)},
    "quick": {"full": (3, 24, 32, 8, 1, None, None), "lora": (3, 24, 16, 8, 1, None, 2)},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def records(n: int, seq: int, vocab: int, seed: int = 0) -> TokenizedRecords:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, vocab, rng.integers(max(2, seq // 2), seq + 1)) for _ in range(n)]
    return TokenizedRecords(
        [x.astype(np.int64) for x in ids], np.ones(n, np.int64), np.full(n, -1), 0, 0
    )


def build(case: str, device: torch.device, dtype: torch.dtype, layers: int | None, quick: bool):
    from transformers import AutoModelForCausalLM, GPTNeoConfig, GPTNeoForCausalLM

    if case == "full":
        model = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=dtype, use_safetensors=True)
        return model.to(device)
    small = dict(hidden_size=128, num_heads=4, vocab_size=1024) if quick else {}
    # GPT-Neo's tokenizer ids (50256), inside the smaller quick vocabulary too.
    special = {"bos_token_id": 0, "eos_token_id": 0} if quick else {}
    conf = GPTNeoConfig(
        **{"hidden_size": 768, "num_heads": 12, "vocab_size": 50257, **small},
        num_layers=layers,
        attention_types=[[["global", "local"], layers // 2]],
        max_position_embeddings=2048,
        window_size=256,
        embed_dropout=0.0,
        attention_dropout=0.0,
        resid_dropout=0.0,
        **special,
    )
    torch.manual_seed(0)
    model = GPTNeoForCausalLM(conf).to(device=device, dtype=dtype)
    return _wrap_lora(model, ModelConfig("gpt-neo-125M-shaped", finetune="lora"))


def flops_per_token(model, case: str, mean_len: float) -> float:
    """Training FLOPs per trained token (see the module docstring)."""
    conf = model.config
    h, layers, vocab = conf.hidden_size, conf.num_layers, conf.vocab_size
    # Weights that take part in matrix products: everything but the two embeddings, plus the
    # (tied) output projection.
    embed = sum(
        p.numel() for n, p in model.named_parameters() if n.endswith(("wte.weight", "wpe.weight"))
    )
    dense = sum(p.numel() for p in model.parameters()) - embed + vocab * h
    forward = 2 * dense + 2 * layers * mean_len * h  # causal QK^T and AV: T/2 keys on average
    return forward * (3 if case == "full" else 2)


def trainable(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_case(
    case, sizes: tuple, device: torch.device, dtype: torch.dtype, quick: bool, repeat: int
):
    k, n, seq, batch, epochs, micro, layers = sizes
    model = build(case, device, dtype, layers, quick)
    factory = MemberFactory(model)
    vocab = model.config.vocab_size
    toks = records(n, seq, vocab)
    rng = np.random.default_rng(1)
    subsets = [np.flatnonzero(rng.random(n) < 0.5) for _ in range(k)]
    seeds = [model_seed(0, j) for j in range(k)]
    cfg = TrainConfig(
        epochs=epochs, lr=2e-4 if case == "lora" else 1e-3, batch_size=batch, max_length=seq
    )
    packed_cfg = dataclasses.replace(cfg, micro_batch_size=micro)
    # What --pack auto would choose here for a 1,000-member ensemble (said, not used).
    run_cfg = RunConfig(data="-", model=ModelConfig("-"), train=packed_cfg, pack="auto")
    auto_k, auto_why = choose_pack(run_cfg, model, device, 1000)
    # Warm-up (allocator, kernels, cuBLAS heuristics), both ways, on two members' first batches.
    warm = [s[:batch] for s in subsets[:2]]
    train_member(factory.fresh(), toks, warm[0], cfg, seeds[0], device)
    factory.fresh()
    train_packed(factory.model, toks, warm, packed_cfg, seeds[:2], device)
    sync(device)

    loop_s = packed_s = math.inf
    first = pack = None
    for _ in range(repeat):  # alternating, best of each: a shared machine's load evens out
        t0 = time.perf_counter()
        for i, (subset, seed) in enumerate(zip(subsets, seeds, strict=True)):
            train_member(factory.fresh(), toks, subset, cfg, seed, device)
            if i == 0:
                first = trainable(factory.model)
        sync(device)
        loop_s = min(loop_s, time.perf_counter() - t0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        factory.fresh()
        pack = None
        t0 = time.perf_counter()
        pack, _ = train_packed(factory.model, toks, subsets, packed_cfg, seeds, device)
        sync(device)
        packed_s = min(packed_s, time.perf_counter() - t0)
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    factory.fresh()
    pack.load(0)
    diff = max((p - first[name]).abs().max().item() for name, p in trainable(factory.model).items())
    # Evaluation (every record's loss): one member by record_losses, or all K in one pass.
    record_losses(factory.model, toks, 64, device)
    sync(device)
    t0 = time.perf_counter()
    record_losses(factory.model, toks, 64, device)
    sync(device)
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    packed_losses(pack, toks, packed_cfg.micro_batch_size or batch, device)
    sync(device)
    packed_eval_s = time.perf_counter() - t0

    decode = decode_both_ways(pack, factory, toks, device) if case == "lora" else {}

    tokens = sum(epochs * (toks.lengths[s] - 1).sum() for s in subsets)
    mean_len = float(toks.lengths.mean())
    flops = float(tokens) * flops_per_token(model, case, mean_len)
    out = {
        "case": case,
        "members": k,
        "records": n,
        "seq": seq,
        "batch_size": batch,
        "packed_micro_batch": micro,
        "epochs": epochs,
        "dtype": str(dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_per_member": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "trained_tokens": int(tokens),
        "loop_seconds": round(loop_s, 3),
        "packed_seconds": round(packed_s, 3),
        "loop_models_per_s": round(k / loop_s, 3),
        "packed_models_per_s": round(k / packed_s, 3),
        "speedup": round(loop_s / packed_s, 2),
        "eval_seconds_one_member": round(eval_s, 3),
        "packed_eval_seconds_all": round(packed_eval_s, 3),
        "eval_speedup": round(k * eval_s / packed_eval_s, 2),
        "end_to_end_speedup": round((loop_s + k * eval_s) / (packed_s + packed_eval_s), 2),
        "member0_max_param_diff": diff,
        "auto_pack": auto_k,
        "auto_pack_reason": auto_why,
        "loop_tflops": round(flops / loop_s / 1e12, 3),
        "packed_tflops": round(flops / packed_s / 1e12, 3),
    }
    out.update(decode)
    if peak_gb is not None:
        out["packed_peak_memory_gb"] = round(peak_gb, 1)
    del pack, factory, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


class _IdTokenizer:
    """Texts that are the token ids: enough to compare continuations of random tokens."""

    pad_token_id = 0

    def __init__(self, eos: int | None) -> None:
        self.eos_token_id = eos

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, r)) for r in rows]


def decode_both_ways(pack, factory, toks: TokenizedRecords, device: torch.device) -> dict:
    """Greedy extraction decoding by the first min(K, extract.models) LoRA members: one member
    at a time (extract.greedy_continuations) against all of them in mixed-adapter batches
    (packed.packed_continuations); each record's first half is the prompt, up to 16 tokens
    of its rest the continuation."""
    eos = factory.model.generation_config.eos_token_id
    tok = _IdTokenizer(eos if isinstance(eos, int) else None)
    half = [len(x) // 2 for x in toks.ids]
    targets = ExtractionTargets(
        [x[:h] for x, h in zip(toks.ids, half, strict=True)],
        [""] * len(toks),
        np.array([min(16, len(x) - h) for x, h in zip(toks.ids, half, strict=True)]),
    )
    members = list(range(min(pack.k, ExtractConfig().models)))
    batch = ExtractConfig().batch_size
    pack.load(0)
    greedy_continuations(factory.model, targets, tok, batch, device)  # warm-up, lean check
    sync(device)
    t0 = time.perf_counter()
    alone = []
    for i in members:
        pack.load(i)
        alone.append(greedy_continuations(factory.model, targets, tok, batch, device))
    sync(device)
    alone_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = packed_continuations(pack, members, targets, tok, batch, device)
    sync(device)
    together_s = time.perf_counter() - t0
    same = None
    if together is not None:
        pairs = [
            (a, b) for x, y in zip(alone, together, strict=True) for a, b in zip(x, y, strict=True)
        ]
        same = float(np.mean([a == b for a, b in pairs]))
    return {
        "decode_members": len(members),
        "decode_seconds_one_at_a_time": round(alone_s, 3),
        "decode_seconds_mixed": round(together_s, 3),
        "decode_speedup": round(alone_s / together_s, 2),
        "decode_mixed_used": together is not None,  # False: it fell back (then no speedup)
        "decode_agreement": same,
    }


def matmul_peak(device: torch.device, size: int = 8192, reps: int = 20) -> float:
    """bf16 matrix-product TFLOP/s on this device, measured now."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test (CPU)")
    ap.add_argument("--cases", default="full,lora", help="comma-separated: full, lora")
    ap.add_argument("--members", type=int, help="K, packed members (both cases)")
    ap.add_argument("--records", type=int)
    ap.add_argument("--seq", type=int, help="maximum record length in tokens (full: <= 64)")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--micro-batch", type=int, help="packed micro-batch per member (memory)")
    ap.add_argument("--lora-layers", type=int, help="layers of the 125M-shaped model")
    ap.add_argument("--repeat", type=int, default=2, help="timings per way; the best is kept")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    ap.add_argument("--out", help="path stem of .json and .md [results/packed, _cpu, _quick]")
    args = ap.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    preset = "quick" if args.quick else device.type
    started = time.perf_counter()
    rows = []
    for case in args.cases.split(","):
        k, n, seq, batch, epochs, micro, layers = DEFAULTS[preset][case]
        sizes = (
            args.members or k,
            args.records or n,
            min(args.seq or seq, 64) if case == "full" else (args.seq or seq),
            args.batch_size or batch,
            args.epochs or epochs,
            args.micro_batch or micro,
            args.lora_layers or layers,
        )
        try:
            row = run_case(case, sizes, device, dtype, args.quick, args.repeat)
        except Exception as exc:  # noqa: BLE001 - keep the other case's numbers
            row = {"case": case, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"machine": machine(), "device": str(device), "preset": preset, "cases": rows}
    if device.type == "cuda":
        peak = matmul_peak(device)
        result["bf16_matmul_peak_tflops"] = round(peak, 1)
        for row in (r for r in rows if "error" not in r):
            row["loop_fraction_of_peak"] = round(row["loop_tflops"] / peak, 4)
            row["packed_fraction_of_peak"] = round(row["packed_tflops"] / peak, 4)
    result["seconds"] = round(time.perf_counter() - started, 1)
    suffix = "_quick" if args.quick else "" if device.type == "cuda" else "_cpu"
    stem = Path(args.out or RESULTS / f"packed{suffix}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    m = result["machine"]
    where = m.get("gpu") or f"{m['processor']}, {m['torch_threads']} torch threads"
    lines = [
        f"# Packed training vs one member at a time ({result['device']}, {where})",
        "",
        f"torch {m['torch']}; preset {result['preset']}; {result['seconds']} s in all."
        + (
            f" bf16 matmul peak measured in the same run: {result['bf16_matmul_peak_tflops']} "
            "TFLOP/s."
            if "bf16_matmul_peak_tflops" in result
            else ""
        ),
        "",
        "| case | K | records | seq | batch | dtype | one at a time (models/s) | packed "
        "(models/s) | speedup | evaluation speedup | with evaluation | TFLOP/s loop / packed "
        "| member 0 max param diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["cases"]:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {r['error']} |")
            continue
        frac = ""
        if "packed_fraction_of_peak" in r:
            frac = (
                f" ({100 * r['loop_fraction_of_peak']:.1f}% / "
                f"{100 * r['packed_fraction_of_peak']:.1f}% of peak)"
            )
        lines.append(
            f"| {r['case']} | {r['members']} | {r['records']} | {r['seq']} | {r['batch_size']} | "
            f"{r['dtype']} | {r['loop_models_per_s']} | {r['packed_models_per_s']} | "
            f"{r['speedup']}x | {r['eval_speedup']}x | {r['end_to_end_speedup']}x | "
            f"{r['loop_tflops']} / {r['packed_tflops']}{frac} | "
            f"{r['member0_max_param_diff']:.2g} |"
        )
    lines += [
        "",
        "full: the bundled tiny GPT-Neo, fully fine-tuned (vmap over stacked weights); lora: "
        "r 8 adapters on q_proj, v_proj of a GPT-Neo-125M-shaped model with random weights "
        "(one frozen base, K stacked adapters). The same members, data order and seeds both "
        "ways; the best of --repeat alternating timings. Speedup: training; evaluation "
        "speedup: every record's loss under all K members, packed (packed.packed_losses) vs "
        "one member at a time (evaluate.record_losses); with evaluation: both together.",
        "",
    ]
    for r in (r for r in result["cases"] if "decode_speedup" in r):
        how = (
            f"{r['decode_speedup']}x ({r['decode_seconds_one_at_a_time']} s one member at a "
            f"time, {r['decode_seconds_mixed']} s mixed), the continuations identical on "
            f"{100 * r['decode_agreement']:.1f}% of the member-records"
            if r["decode_mixed_used"]
            else "not used: the routed first batch differed from the member alone"
        )
        lines += [
            f"Greedy extraction decoding by {r['decode_members']} {r['case']} members in "
            f"mixed-adapter batches (packed.packed_continuations) against one member at a time "
            f"(extract.greedy_continuations), prompts the first half of each record, up to 16 "
            f"tokens decoded: {how}.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
