"""Packed training: K ensemble members trained at once, in lock step, each exactly as
:func:`memaudit.ensemble.train.train_member` would train it alone.

Each member keeps its own subset, seeded data order (the same ``randperm`` per epoch), token-mean
loss per batch, AdamW state and learning-rate schedule; only the arithmetic is shared:

- full fine-tuning: the K members' weights are stacked (``torch.func.stack_module_state``) and
  one ``vmap`` of ``functional_call`` runs all K forward and backward passes as batched kernels;
- LoRA: the frozen base runs once over the K members' batches side by side, and every peft LoRA
  layer is swapped for a :class:`memaudit.ensemble.lora_batched.BatchedLoraLinear` holding K stacked
  adapters, each example routed to its member's adapter.

Evaluation is packed the same way (:func:`packed_losses`: each record through all K members),
and so is a LoRA pack's greedy decoding (:func:`packed_continuations`: mixed-adapter batches).

Members with fewer steps (Bernoulli subsets differ in size) stop early: from their last step
on they are masked out of the loss and of the optimizer update. Every member batch is padded
on the right to a common shape; padding positions and filler rows carry no loss, and causal
attention means the real tokens never see right padding, so no attention mask is needed.
Results equal one-at-a-time training up to floating-point rounding (``tests/test_packed.py``).

Dropout would need K independent random streams equal to the unpacked ones; a model with any
active dropout is never packed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from memaudit.config import RunConfig, TrainConfig
from memaudit.data.tokens import TokenizedRecords
from memaudit.ensemble.lora_batched import BatchedLora, find_lora_layers
from memaudit.ensemble.train import TrainStats, eval_mode, lr_factor, upcast
from memaudit.errors import MemauditError

MAX_AUTO_PACK = 64  # beyond this the GPU is saturated anyway and a retry loses too much


def parse_pack(value) -> int | None:
    """``"auto"`` -> None, ``"off"`` -> 1, an integer (or its string) -> that integer."""
    if value is None or value == "auto":
        return None
    if value in ("off", "no", "false"):
        return 1
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if k < 1:
        raise MemauditError(f"--pack: expected auto, off or a positive integer, got {value!r}")
    return k


def has_active_dropout(model) -> bool:
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def packable(model) -> str | None:
    """Why ``model`` cannot be packed, or None."""
    if has_active_dropout(model):
        return "the model has dropout (packed members would draw different random masks)"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = find_lora_layers(model)
    if lora is not None:
        names = {n for layer in lora for n in layer.param_names}
        if names != trainable:
            return "trainable parameters besides plain LoRA adapters (modules_to_save, DoRA)"
    elif any(hasattr(m, "lora_A") for m in model.modules()):
        return "an unsupported LoRA variant"
    return None


# -- choosing K ------------------------------------------------------------------------------
def _member_bytes(model, cfg: TrainConfig) -> tuple[int, int]:
    """(bytes of one member's trained state: weights, gradient, two AdamW moments;
    bytes of one member's activations for a full micro-batch), both estimates."""
    elt = next(model.parameters()).element_size()
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    conf = getattr(model, "config", None)
    get = lambda *keys, default=0: next(  # noqa: E731
        (getattr(conf, k) for k in keys if isinstance(getattr(conf, k, None), int)), default
    )
    h = get("hidden_size", "n_embd", "d_model", default=1024)
    layers = get("num_layers", "num_hidden_layers", "n_layer", default=24)
    heads = get("num_heads", "num_attention_heads", "n_head", default=16)
    vocab = get("vocab_size", default=50257)
    b, s = cfg.micro_batch_size or cfg.batch_size, cfg.max_length
    # Korthikanti et al. (2022): 34 s b h + 5 a s^2 b bytes per layer in 16-bit; logits in
    # the model dtype plus float32 copies: the logits, their log-softmax and its gradient.
    act = layers * (34 * s * b * h + 5 * heads * s * s * b) * elt // 2 + b * s * vocab * (elt + 12)
    return 4 * n_trainable * elt, act


def choose_pack(cfg: RunConfig, model, device: torch.device, n_members: int) -> tuple[int, str]:
    """(K, why): how many members to train at once.

    ``auto``: on CUDA as many as fit in 60% of the free memory (an estimate from the model's
    shape and the batch), at most 64; on CPU 1, since measured on CPU packing is slower per
    member than one at a time (``benchmarks/results/packed_cpu.md``). An explicit K is used as is.
    """
    requested = parse_pack(getattr(cfg, "pack", "auto"))
    if requested == 1 or n_members <= 1:
        return 1, "off" if requested == 1 else "one member"
    if requested is None and device.type != "cuda":
        return 1, "auto: not packed on CPU (measured slower per member than one at a time)"
    why_not = packable(model)
    if why_not:
        return 1, f"not packed: {why_not}"
    if requested is not None:
        return min(requested, n_members), f"--pack {requested}"
    state, act = _member_bytes(model, cfg.train)
    free, _ = torch.cuda.mem_get_info(device)
    k = max(1, min(MAX_AUTO_PACK, n_members, int(0.6 * free) // max(1, state + act)))
    return k, (
        f"auto: {k} members at once ({free / 2**30:.1f} GiB free, about "
        f"{(state + act) / 2**20:.0f} MiB per member)"
    )


# -- the lock-step trainer -------------------------------------------------------------------
@dataclass
class _Member:
    seed: int
    subset: np.ndarray
    batches: list[np.ndarray] = field(default_factory=list)  # every step's records, in order
    steps_per_epoch: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    loss_sum: float = 0.0
    tok_sum: int = 0
    diverged: str | None = None

    @property
    def total(self) -> int:
        return len(self.batches)


def _plan(subset: np.ndarray, seed: int, cfg: TrainConfig) -> _Member:
    """Member's batches over all epochs, drawn exactly as train_member draws them."""
    m = _Member(seed, subset)
    order_rng = torch.Generator().manual_seed(seed)
    m.steps_per_epoch = math.ceil(len(subset) / cfg.batch_size)
    for _ in range(cfg.epochs):
        perm = subset[torch.randperm(len(subset), generator=order_rng).numpy()]
        m.batches += [perm[s : s + cfg.batch_size] for s in range(0, len(perm), cfg.batch_size)]
    return m


class StackedAdamW:
    """torch.optim.AdamW's single-tensor update on (K, ...) stacked parameters with a learning
    rate per member and a mask of the members that step (the others are left untouched)."""

    def __init__(self, params: dict[str, torch.Tensor], weight_decay: float) -> None:
        self.params, self.wd = params, weight_decay
        self.beta1, self.beta2, self.eps = 0.9, 0.999, 1e-8  # torch's defaults, as train_member
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.step_count = 0  # members step together while active, so one count serves all

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor) -> None:
        """``lr``, ``active``: (K,) float64 and bool on the parameters' device."""
        self.step_count += 1
        b1, b2 = self.beta1, self.beta2
        bc1 = 1 - b1**self.step_count
        bc2_sqrt = (1 - b2**self.step_count) ** 0.5
        every = bool(active.all())
        for n, p in self.params.items():
            g = p.grad
            shape = (-1,) + (1,) * (p.dim() - 1)
            # At least float32, as torch's python-float lr: bf16 would round it by 0.4%.
            lr_k = lr.view(shape).to(torch.promote_types(p.dtype, torch.float32))
            m, v = self.exp_avg[n], self.exp_avg_sq[n]
            new_p = p * (1 - lr_k * self.wd) if self.wd else p.clone()
            new_m = m.lerp(g, 1 - b1)
            new_v = v * b2 + (1 - b2) * g * g
            denom = (new_v.sqrt() / bc2_sqrt).add_(self.eps)
            new_p -= (lr_k / bc1) * new_m / denom
            if every:
                p.copy_(new_p), m.copy_(new_m), v.copy_(new_v)
            else:
                mask = active.view(shape)
                p.copy_(torch.where(mask, new_p, p))
                m.copy_(torch.where(mask, new_m, m))
                v.copy_(torch.where(mask, new_v, v))


class _FullPack:
    """K stacked copies of every trainable weight, run through one vmap'ed functional_call."""

    def __init__(self, model, k: int) -> None:
        from torch.func import functional_call, stack_module_state, vmap

        self.model, self.k = model, k
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        stacked, _ = stack_module_state([model] * k)  # (K, ...) copies of every parameter
        self.params = {n: stacked[n] for n in trainable}
        self.fixed = {
            **{n: p for n, p in model.named_parameters() if not p.requires_grad},
            **dict(model.named_buffers()),
        }

        def one(p, ids):
            out = functional_call(model, ({**p, **self.fixed},), (ids,), {"use_cache": False})
            return out.logits

        self.forward_fn = vmap(one)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_fn(self.params, ids)

    @torch.no_grad()
    def load(self, i: int) -> None:
        for n, p in self.model.named_parameters():
            if n in self.params:
                p.copy_(self.params[n][i])


class _LoraPack:
    """The shared frozen base with every peft LoRA layer replaced by K stacked adapters."""

    def __init__(self, model, k: int) -> None:
        self.model, self.k = model, k
        self.lora = BatchedLora(model, find_lora_layers(model), k)
        self.params = self.lora.params

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        k, b, t = ids.shape
        with self.lora.active():
            logits = self.model(input_ids=ids.reshape(k * b, t), use_cache=False).logits
        return logits.view(k, b, t, -1)

    def load(self, i: int) -> None:
        self.lora.load(i)


def _pack_for(model, k: int):
    return _LoraPack(model, k) if find_lora_layers(model) is not None else _FullPack(model, k)


def train_packed(
    model,
    tokens: TokenizedRecords,
    subsets: list[np.ndarray],
    cfg: TrainConfig,
    seeds: list[int],
    device: torch.device,
    on_step=None,
):
    """Train len(subsets) members at once, starting from ``model``'s current weights.

    Returns (pack, stats): ``pack.load(i)`` puts member i's trained weights into ``model`` (to
    decode or evaluate it by the usual per-member code); ``stats[i]`` is its TrainStats, or the
    message of its divergence (a str). ``on_step(step, total, mean loss)`` is called per step.
    """
    start = time.perf_counter()
    k = len(subsets)
    trained = tokens.lengths - 1  # trained positions per record: every real next token
    members = [_plan(s, seed, cfg) for s, seed in zip(subsets, seeds, strict=True)]
    with eval_mode(model):  # no dropout (checked by packable); vmap refuses random ops
        pack = _pack_for(model, k)
        opt = StackedAdamW(pack.params, cfg.weight_decay)
        micro = cfg.micro_batch_size or cfg.batch_size
        n_steps = max(m.total for m in members)
        for step in range(n_steps):
            active = [m.diverged is None and step < m.total for m in members]
            if not any(active):  # the longest members diverged: nothing left to train
                break
            batches = [
                m.batches[step] if a else m.batches[0][:0]
                for m, a in zip(members, active, strict=True)
            ]
            n_tok = [int(trained[b].sum()) for b in batches]
            for p in pack.params.values():
                p.grad = None
            batch_loss = torch.zeros(k, dtype=torch.float64, device=device)
            for s in range(0, max(len(b) for b in batches), micro):
                chunks = [b[s : s + micro] for b in batches]
                ids, scored = _pad(tokens, chunks, device)
                logits = pack.forward(ids)
                # The layout train.token_nll uses, so that equal logits give equal float32 losses.
                nll = F.cross_entropy(
                    upcast(logits.flatten(0, 1)[:, :-1]).transpose(1, 2),
                    ids.flatten(0, 1)[:, 1:],
                    reduction="none",
                ).view(ids.shape[0], ids.shape[1], -1)
                denom = torch.tensor([max(n, 1) for n in n_tok], dtype=torch.float32, device=device)
                loss = (nll * scored[:, :, 1:]).sum((1, 2)) / denom
                mask = torch.tensor([bool(c.size) for c in chunks], device=device)
                # where, not a product: a diverged or idle member's NaN must not reach the others.
                torch.where(mask, loss, torch.zeros_like(loss)).sum().backward()
                batch_loss += torch.where(mask, loss.detach(), torch.zeros_like(loss)).double()
            losses = batch_loss.cpu().tolist()
            for m, a, bl in zip(members, active, losses, strict=True):
                if a and not math.isfinite(bl):
                    m.diverged = f"non-finite training loss at step {step}"
            stepping = [a and m.diverged is None for m, a in zip(members, active, strict=True)]
            lr = [cfg.lr * lr_factor(step, m.total, cfg) for m in members]
            opt.step(
                torch.tensor(lr, dtype=torch.float64, device=device),
                torch.tensor(stepping, device=device),
            )
            for m, st, bl, nt in zip(members, stepping, losses, n_tok, strict=True):
                if not st:
                    continue
                m.loss_sum += bl * nt
                m.tok_sum += nt
                if (step + 1) % m.steps_per_epoch == 0:
                    m.epoch_losses.append(m.loss_sum / m.tok_sum)
                    m.loss_sum, m.tok_sum = 0.0, 0
            if on_step is not None:
                done = [bl for bl, st in zip(losses, stepping, strict=True) if st]
                on_step(step + 1, n_steps, sum(done) / max(1, len(done)))
    seconds = time.perf_counter() - start
    stats: list[TrainStats | str] = [
        m.diverged or TrainStats(m.total, seconds / k, m.epoch_losses[-1], list(m.epoch_losses))
        for m in members
    ]
    return pack, stats


@torch.no_grad()
def packed_losses(pack, tokens: TokenizedRecords, rows: int, device: torch.device) -> np.ndarray:
    """(K, N) float64: every packed member's mean NLL of every record, as
    :func:`memaudit.ensemble.evaluate.record_losses` computes it for one member (``rows`` records
    per member in each pass, length-sorted)."""
    from memaudit.data.tokens import length_sorted_batches

    k = pack.k
    out = np.empty((k, len(tokens)), dtype=np.float64)
    for idx in length_sorted_batches(tokens.lengths, np.arange(len(tokens)), rows):
        batch = tokens.batch(idx, device)
        ids = batch["input_ids"].unsqueeze(0).expand(k, *batch["input_ids"].shape)
        logits = pack.forward(ids)
        nll = F.cross_entropy(
            upcast(logits.flatten(0, 1)[:, :-1]).transpose(1, 2),
            ids.flatten(0, 1)[:, 1:],
            reduction="none",
        ).view(k, len(idx), -1)
        # batch["positions"]: flat (B, T) indices of the positions whose next token is scored.
        scored = torch.zeros(batch["input_ids"].numel(), dtype=nll.dtype, device=nll.device)
        scored[batch["positions"]] = 1.0
        mask = scored.view(batch["input_ids"].shape)[:, :-1]
        out[:, idx] = ((nll * mask).sum(-1) / mask.sum(-1)).double().cpu().numpy()
    return out


_ROUTE_CHECK = 16  # rows of the first member decoded alone to check the routing (a few: cheap)


@torch.no_grad()
def packed_continuations(
    pack, members: list[int], targets, tokenizer, batch_size: int, device: torch.device
) -> list[list[str]] | None:
    """Greedy continuations of every record by the packed LoRA members ``members`` (indices
    into the pack) at once: each batch holds ``batch_size`` records for every one of them, each
    row routed to its member's adapter, through the lean decoder with its KV cache. The texts
    :func:`memaudit.ensemble.extract.greedy_continuations` gives member by member; None where that
    cannot be done this way (a full fine-tuning pack, a model the lean decoder cannot run, or
    routed tokens that differ from the first member's own on the first rows), and the caller
    decodes member by member."""
    from memaudit.ensemble.extract import (
        decode_texts,
        lean_greedy,
        lean_split,
        left_padded,
        prompt_order,
    )

    if not isinstance(pack, _LoraPack) or not members:
        return None
    model = pack.model
    pack.load(members[0])
    split = lean_split(model, targets, tokenizer, batch_size, device)
    if split is None:
        return None
    pad, eos, k = tokenizer.pad_token_id, tokenizer.eos_token_id, len(members)
    out = [[""] * len(targets.prompts) for _ in members]
    order = prompt_order(targets)
    adapters = torch.tensor(members, device=device)
    with eval_mode(model):
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            rows, lengths = np.tile(idx, k), np.tile(targets.lengths[idx], k)
            batch = left_padded(targets.prompts, rows, pad, device)
            with pack.lora.routed(adapters.repeat_interleave(len(idx))) as keep:
                gen = lean_greedy(*split, batch, lengths, eos, on_keep=keep)
            texts = decode_texts(tokenizer, gen, lengths, eos)
            if s == 0:  # the routing checked once: the first member's first rows decoded alone
                c = min(len(idx), _ROUTE_CHECK)
                alone = lean_greedy(*split, {n: v[:c] for n, v in batch.items()}, lengths[:c], eos)
                if decode_texts(tokenizer, alone, lengths[:c], eos) != texts[:c]:
                    return None
            for m in range(k):
                for i, text in zip(idx, texts[m * len(idx) : (m + 1) * len(idx)], strict=True):
                    out[m][i] = text
    return out


def _pad(tokens: TokenizedRecords, chunks: list[np.ndarray], device: torch.device):
    """(K, B, T) right-padded ids and the (K, B, T) mask of trained positions; rows beyond a
    member's chunk are filler (pad tokens, never scored)."""
    rows = max(1, max(len(c) for c in chunks))
    width = max(2, max((len(tokens.ids[i]) for c in chunks for i in c), default=2))
    ids = np.full((len(chunks), rows, width), tokens.pad_id, dtype=np.int64)
    scored = np.zeros((len(chunks), rows, width), dtype=bool)
    for k, c in enumerate(chunks):
        for b, i in enumerate(c):
            row = tokens.ids[i]
            ids[k, b, : len(row)] = row
            scored[k, b, : len(row)] = True  # train_member trains on every real token
    return torch.from_numpy(ids).to(device), torch.from_numpy(scored).to(device)


# -- the ensemble loop's side ----------------------------------------------------------------
def pack_size(ctx, n_members: int) -> tuple[int, str]:
    """(K, why) for ``n_members`` pending members; only a modality that packs (text) packs."""
    modality = ctx.member_task().modality
    if not modality.packs:
        return 1, f"{modality.name} models are not packed"
    k, why = choose_pack(ctx.cfg, ctx.factory.model, ctx.device, n_members)
    if k == 1 and why.startswith("not packed"):
        _announce(why)  # a model that cannot be packed: say why, once
    return k, why


def _announce(why: str) -> None:
    import sys

    if why not in _ANNOUNCED:  # once per process and decision
        _ANNOUNCED.add(why)
        print(f"memaudit: packed training: {why}", file=sys.stderr)


def compute_members(ctx, js: list[int], columns: np.ndarray, on_step=None) -> list:
    """Members ``js`` (columns of P given as ``columns``, N x len(js)) trained and evaluated at
    once, then the first ``extract.models`` decoded (a LoRA pack's in mixed-adapter batches,
    else one at a time by the usual code): the same MemberResults as
    :func:`memaudit.ensemble.member.compute_member` gives one by one, up to floating-point rounding.
    Writes nothing."""
    from memaudit.data.partition import model_seed
    from memaudit.ensemble.extract import extraction_targets
    from memaudit.ensemble.member import MemberResult, finish_member

    cfg, device = ctx.cfg, ctx.device
    if min(js) < ctx.n_extract and ctx.targets is None:
        ctx.targets = extraction_targets(ctx.tokens, ctx.tokenizer, cfg.extract.prefix_tokens)
    seeds = [model_seed(cfg.ensemble.seed, j) for j in js]
    subsets = [np.flatnonzero(columns[:, i]) for i in range(len(js))]
    task = ctx.member_task()
    model = task.fresh()
    pack, stats = train_packed(model, ctx.tokens, subsets, cfg.train, seeds, device, on_step)
    t0 = time.perf_counter()
    # Every member's loss on every record in one pass, the training batch size per member (which
    # the choice of K made room for). A diverged member's row is NaN and not used.
    all_losses = packed_losses(
        pack, ctx.tokens, cfg.train.micro_batch_size or cfg.train.batch_size, device
    )
    eval_seconds = (time.perf_counter() - t0) / len(js)
    generations, extract_seconds = _decode_together(ctx, pack, js, stats)
    results = []
    for i, j in enumerate(js):
        meta = {
            "seed": seeds[i],
            "n_train": int(len(subsets[i])),
            "device": str(device),
            "dtype": str(ctx.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "pack": len(
                js
            ),  # trained together with pack - 1 others (memaudit.ensemble.member_packs)
        }
        if isinstance(stats[i], str):
            meta.update(status="diverged", error=stats[i])
            results.append(MemberResult(j, None, meta))
            continue
        task.fresh()  # buffers and anything untrained back to the start, then member i's weights
        pack.load(i)
        losses, arrays = all_losses[i], {}
        meta.update(
            status="ok" if np.isfinite(losses).all() else "diverged",
            train_loss=stats[i].final_loss,
            epoch_losses=stats[i].epoch_losses,
            steps=stats[i].steps,
            train_seconds=round(stats[i].seconds, 3),  # the pack's time / pack
            eval_seconds=round(eval_seconds, 3),  # the pack's evaluation time / pack
        )
        if i in generations:
            meta["extract_seconds"] = extract_seconds  # the pack's decoding time / decoded
        results.append(finish_member(ctx, j, model, losses, meta, arrays, generations.get(i)))
    task.fresh()
    return results


def _decode_together(ctx, pack, js: list[int], stats: list) -> tuple[dict[int, list[str]], float]:
    """The continuations of the pack's extraction members (trained, with j < n_extract), decoded
    in mixed-adapter batches when the pack is LoRA (:func:`packed_continuations`), as
    {pack index: texts} and seconds per member; empty where they are decoded one by one. Out
    of GPU memory, the records per batch are halved while a mixed batch still holds more rows
    than one member's batch; any other failure, or memory still short, and the members are
    decoded one by one (the trained pack is kept either way)."""
    which = [i for i, j in enumerate(js) if j < ctx.n_extract and not isinstance(stats[i], str)]
    if len(which) < 2 or not isinstance(pack, _LoraPack):
        return {}, 0.0
    t0 = time.perf_counter()
    per_member = ctx.cfg.extract.batch_size
    texts = None
    while per_member * len(which) > ctx.cfg.extract.batch_size:
        try:
            texts = packed_continuations(
                pack, which, ctx.targets, ctx.tokenizer, per_member, ctx.device
            )
            break  # decoded, or None: not decodable this way
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            per_member //= 2
        except (RuntimeError, ValueError, TypeError, AttributeError):
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            break
    if texts is None:
        return {}, 0.0
    return dict(zip(which, texts, strict=True)), round((time.perf_counter() - t0) / len(which), 3)


_ANNOUNCED: set[str] = set()


def map_packed(ctx, members: list[int], inclusion: np.ndarray, k: int, why: str, on_step=None):
    """LocalExecutor.map for K > 1: members in packs of K, yielded (j, outcome) as each pack
    finishes. A pack that runs out of GPU memory is split in halves (and K halved for the
    rest); one that fails otherwise is computed one member at a time."""
    import sys

    from memaudit.ensemble.member import compute_member

    _announce(why)
    queue = [members[s : s + k] for s in range(0, len(members), k)]
    while queue:
        js = queue.pop(0)
        try:
            outcomes = compute_members(ctx, js, inclusion[:, js], on_step)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(js) > 1:
                k = max(1, len(js) // 2)
                rest = [j for pack in queue for j in pack]
                queue = [js[:k], js[k:]] + [rest[s : s + k] for s in range(0, len(rest), k)]
                print(f"memaudit: out of GPU memory, packing {k} members", file=sys.stderr)
                continue
            outcomes = [_alone(compute_member, ctx, js[0], inclusion, on_step, "out of memory")]
        except Exception as exc:  # noqa: BLE001 - fall back; the driver retries what fails
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            outcomes = [_alone(compute_member, ctx, j, inclusion, on_step, error) for j in js]
        yield from zip(js, outcomes, strict=True)


def _alone(compute_member, ctx, j, inclusion, on_step, error: str):
    """Member j trained alone after its pack failed with ``error``; an exception is returned."""
    try:
        result = compute_member(ctx, j, inclusion[:, j], on_step)
    except Exception as exc:  # noqa: BLE001 - retried by the driver
        return exc
    result.meta["pack_error"] = error
    return result
