"""What a person sees in the terminal: training progress with ETA, and a short summary.

Fuller findings and reports build on the same run directory elsewhere; this module only reads an
:class:`~memaudit.analysis.Analysis`. Record texts are not printed here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from memaudit.analysis import Analysis
from memaudit.config import RunConfig
from memaudit.ensemble import EnsembleProgress

console = Console(stderr=True, width=None)


@contextlib.contextmanager
def ensemble_progress(enabled: bool, config: RunConfig, prepared) -> Iterator[EnsembleProgress]:
    if not enabled:
        yield EnsembleProgress()
        return
    n = len(prepared.records)
    factory = prepared.factory
    console.print(
        f"[bold]memaudit[/] {n} records, {prepared.inclusion.shape[1]} models, "
        f"{config.model.name} ({config.model.finetune}, {factory.n_trainable:,} of "
        f"{factory.n_params:,} parameters trained), {prepared.device}/"
        f"{str(prepared.dtype).removeprefix('torch.')}"
    )
    if prepared.tokens.truncated:
        console.print(
            f"[yellow]note:[/] {prepared.tokens.truncated} records truncated to "
            f"--max-length {config.train.max_length} tokens"
        )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        state: dict = {}

        def on_start(todo: int, done: int) -> None:
            if done:
                console.print(f"resuming: {done} models already trained, {todo} to go")
            state["models"] = bar.add_task("models", total=todo + done, completed=done, info="")
            state["steps"] = bar.add_task("  steps", total=1, info="", visible=todo > 0)
            state["t0"] = time.perf_counter()

        def on_step(step: int, total: int, loss: float) -> None:
            if step == 1:
                bar.reset(state["steps"], total=total)
            bar.update(state["steps"], completed=step, info=f"loss {loss:.3f}")

        def on_model(j: int, meta: dict) -> None:
            info = (
                f"model {j}: train loss {meta['train_loss']:.3f}"
                if meta.get("status") == "ok"
                else f"model {j}: {meta.get('status')}"
            )
            bar.update(state["models"], advance=1, info=info)

        yield EnsembleProgress(on_start, on_step, on_model)


def _fmt(stats: dict, key: str = "mean") -> str:
    if not stats or stats.get("n", 0) == 0:
        return "n/a"
    std = stats.get("std")
    text = f"{stats['mean']:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    return f"{text}  (median {stats['median']:.2f})"


def print_summary(
    analysis: Analysis, run_dir, config: RunConfig, out: Console | None = None
) -> None:
    out = out or console
    s = analysis.summary
    res = analysis.result
    n_ok = int(analysis.valid.sum())
    out.print(
        f"\n[bold]Influence[/] ({res.estimator}) from {n_ok} of {analysis.n_models} models on "
        f"{len(analysis.records)} records; in/out models per record: "
        f"{int(res.n_in.min())}-{int(res.n_in.max())} / {int(res.n_out.min())}-"
        f"{int(res.n_out.max())}"
    )
    if n_ok < analysis.n_models:
        out.print(
            f"[yellow]warning:[/] {analysis.n_models - n_ok} models excluded "
            "(diverged or missing); see influence.json"
        )
    table = Table(title=None, show_edge=False)
    table.add_column("")
    groups = [("all records", s["all"])]
    if "near_duplicated" in s:
        groups = [
            (f"unique ({s['unique']['records']})", s["unique"]),
            (f"near-duplicated ({s['near_duplicated']['records']})", s["near_duplicated"]),
        ]
    for name, _ in groups:
        table.add_column(name, justify="right")
    table.add_row("self-influence", *[_fmt(g["self_influence"]) for _, g in groups])
    table.add_row("top-1 margin", *[_fmt(g["margin"]) for _, g in groups])
    table.add_row("margin undefined", *[str(g["margin_undefined"]) for _, g in groups])
    table.add_row(
        "top influencer is itself", *[f"{100 * g['top1_is_self']:.0f}%" for _, g in groups]
    )
    out.print(table)
    if "near_duplicated" in s:
        nd = s["near_duplicated"]
        line = (
            f"planted groups: top other influencer in own group for "
            f"{100 * nd['top_other_in_group']:.0f}% of near-duplicated records; group recall "
            f"{100 * nd['group_recall_at_size']:.0f}%"
        )
        if "auc_margin" in s:
            line += (
                f"; AUC near-dup vs unique: margin {s['auc_margin']:.2f}, "
                f"self-influence {s['auc_self_influence']:.2f}"
            )
        out.print(line)
    order = np.argsort(-np.nan_to_num(res.self_influence, nan=-np.inf))[:5]
    top = Table(title="highest self-influence", show_edge=False, title_justify="left")
    for col in ("id", "self-infl.", "± se", "margin", "group"):
        top.add_column(col, justify="left" if col in ("id", "group") else "right")
    for t in order:
        r = analysis.records[t]
        margin = f"{res.margin[t]:.2f}" if res.margin_defined[t] else "undef."
        top.add_row(
            r.id, f"{res.self_influence[t]:.3f}", f"{res.self_se[t]:.3f}", margin, r.group or ""
        )
    out.print(top)
    if n_ok < 64:
        out.print(
            f"[dim]note: with {n_ok} models the margin's denominator is a noise maximum; "
            "margins are comparable only at equal model counts.[/]"
        )
    out.print(f"results: {run_dir.path}/influence.json")
