"""What a person sees in the terminal: training progress with ETA, and a short summary.

Fuller findings and reports build on the same run directory elsewhere; this module only reads an
:class:`~memaudit.estimate.analysis.Analysis`. Record texts are not printed here.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Iterator

import numpy as np
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from memaudit.config import RunConfig
from memaudit.ensemble.driver import EnsembleProgress
from memaudit.errors import escape_controls
from memaudit.estimate.analysis import Analysis
from memaudit.modality import MODALITIES, TEXT
from memaudit.report.numbers import mean_std, sig

console = Console(stderr=True, width=None)


def safe_text(value: object) -> Text:
    """Data (an id, a record text, a group, a class name) as a rich Text: control characters
    escaped, and never read as markup (``[/x]`` in an id neither crashes nor restyles)."""
    return Text(escape_controls(value))


def _m(value: object) -> str:
    """Data to put inside a markup string: control characters and markup escaped."""
    return escape_markup(escape_controls(value))


@contextlib.contextmanager
def ensemble_progress(enabled: bool, config: RunConfig, prepared) -> Iterator[EnsembleProgress]:
    if not enabled:
        yield EnsembleProgress()
        return
    n = len(prepared.records)
    modality = prepared.modality
    if not modality.pretrained:  # trained from scratch: the task holds the model
        console.print(
            f"[bold]memaudit[/] {n} {modality.unit}, {prepared.inclusion.shape[1]} models, "
            f"{_m(config.model.name)} ({prepared.task.n_params:,} parameters, from scratch), "
            f"{prepared.device}/float32"
        )
    else:
        factory = prepared.factory
        console.print(
            f"[bold]memaudit[/] {n} records, {prepared.inclusion.shape[1]} models, "
            f"{_m(config.model.name)} ({config.model.finetune}, {factory.n_trainable:,} of "
            f"{factory.n_params:,} parameters trained), {prepared.device}/"
            f"{str(prepared.dtype).removeprefix('torch.')}"
        )
    if prepared.tokens is not None and prepared.tokens.truncated:
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
            # Shown once steps are reported (this process trains; Ray workers report none).
            state["steps"] = bar.add_task("  steps", total=1, info="", visible=False)
            state["t0"] = time.perf_counter()

        def on_step(step: int, total: int, loss: float) -> None:
            if step == 1:
                bar.reset(state["steps"], total=total, visible=True)
            bar.update(state["steps"], completed=step, info=f"loss {loss:.3f}")

        def on_model(j: int, meta: dict) -> None:
            if meta.get("status") != "ok":
                info = f"model {j}: {_m(meta.get('status'))}"
            elif meta.get("train_loss") is None:
                info = f"model {j}: untrained (empty half)"
            else:
                info = f"model {j}: train loss {meta['train_loss']:.3f}"
            bar.update(state["models"], advance=1, info=info)

        def on_failure(j: int, attempt: int, error: str) -> None:
            console.print(f"[yellow]model {j} failed[/] (attempt {attempt}): {_m(error)}")

        def on_note(text: str) -> None:
            console.print(safe_text(text))

        yield EnsembleProgress(on_start, on_step, on_model, on_failure, on_note)


def _indices(js) -> str:
    js = list(js)
    return ", ".join(map(str, js[:12])) + (f", ... ({len(js)} in all)" if len(js) > 12 else "")


def print_status(status: dict, run_dir, out: Console | None = None) -> None:
    """Say which models the estimates lack: diverged, failed on every attempt, not trained."""
    out = out or console
    if status["diverged"]:
        out.print(
            f"[yellow]warning:[/] {len(status['diverged'])} models diverged and are excluded: "
            f"{_indices(status['diverged'])}"
        )
    for j, error in status["failed"].items():
        out.print(f"[yellow]warning:[/] model {j} failed on every attempt ({_m(error)})")
    pending = [*status["failed"], *status["missing"]]
    if pending:
        out.print(
            f"[yellow]warning:[/] {len(pending)} of {status['models']} models have no result "
            f"({_indices(sorted(pending))}); the estimates use the other "
            f"{len(status['ok'])}. Train them with `memaudit train {_m(run_dir.path)}` (or its "
            "shards) or rerun the same `memaudit run`, then `memaudit report` again"
        )


def _fmt(stats: dict, key: str = "mean") -> str:
    if not stats or stats.get("n", 0) == 0:
        return "n/a"
    return f"{mean_std(stats['mean'], stats.get('std'), 3)}  (median {sig(stats['median'])})"


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
            safe_text(r.id),
            sig(res.self_influence[t], 3),
            sig(res.self_se[t], 3),
            margin,
            safe_text(r.group or ""),
        )
    out.print(top)
    if n_ok < 64:
        out.print(
            f"[dim]note: with {n_ok} models the margin's denominator is a noise maximum; "
            "margins are comparable only at equal model counts.[/]"
        )
    out.print(f"results: {_m(run_dir.path)}/influence.json")


# -- the full report -----------------------------------------------------------------------------


def _ms(stats: dict | None, digits: int = 2) -> str:
    if not stats or not stats.get("n"):
        return "n/a"
    return mean_std(stats["mean"], stats.get("std"), digits)


def _diff_text(base: str, text: str, width: int) -> Text:
    """``text`` with the whitespace tokens that differ from ``base`` highlighted, cut to
    ``width`` characters around the first difference."""
    a, b = escape_controls(base).split(), escape_controls(text).split()
    out = Text()
    first_diff = None
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    for tag, _, _, j1, j2 in ops:
        chunk = " ".join(b[j1:j2])
        if not chunk:
            continue
        if out.plain:
            out.append(" ")
        if tag != "equal" and first_diff is None:
            first_diff = len(out.plain)
        out.append(chunk, style="bold black on yellow" if tag != "equal" else "")
    if len(out.plain) <= width:
        return out
    start = 0 if first_diff is None else max(0, min(first_diff - width // 2, len(out) - width))
    cut = out[start : start + width - 1]
    if start:
        cut = Text("…") + cut[1:]
    return cut + Text("…") if start + width - 1 < len(out.plain) else cut


def _label(rec: dict) -> str:
    return (
        escape_controls(rec["text"])
        if rec["text"] is not None
        else f"sha256:{rec['text_sha256'][:12]}"
    )


def _f(x: float | None, digits: int = 2) -> str:
    return sig(x, digits)


# -- each flagged record's influence distribution, in one line ----------------------------------

_BARS = "▁▂▃▄▅▆▇█"
_ASCII_BARS = ".:-=+*#@"


def _ascii_only(out: Console) -> bool:
    """Block characters need a Unicode console encoding; anything else gets ASCII."""
    return not (out.encoding or "").lower().replace("_", "-").startswith("utf")


def _strip_bins(width: int) -> int:
    """Sparkline bins for a console this wide: none on a narrow one (numbers only)."""
    return 12 if width >= 70 else 0


def distribution_strip(rec: dict, bins: int = 12, ascii_only: bool = False) -> Text:
    """One line for a record: a sparkline of its influence row (log counts of I[t, i], i != t,
    from the report's histogram; the bin holding the self-influence marked ◆ / *), then the
    self share and the number of significant others. Empty when the report has neither."""
    d = rec.get("distribution") or {}
    out = Text(no_wrap=True, overflow="ellipsis")
    h = d.get("histogram") or {}
    counts = np.asarray(h.get("counts") or [], dtype=float)
    if bins and counts.size and h.get("lo") is not None:
        lo, hi = float(h["lo"]), float(h["hi"])
        k = max(1, int(np.ceil(counts.size / bins)))
        merged = np.add.reduceat(counts, np.arange(0, counts.size, k))
        levels = np.log1p(merged) / np.log1p(max(merged.max(), 1.0))
        ramp = _ASCII_BARS if ascii_only else _BARS
        self_val = rec.get("self_influence")
        self_bin = None
        if self_val is not None and hi > lo:
            pos = int((float(self_val) - lo) / (hi - lo) * merged.size)
            self_bin = min(max(pos, 0), merged.size - 1)
        for b, (c, lvl) in enumerate(zip(merged, levels, strict=True)):
            if b == self_bin:
                out.append("*" if ascii_only else "◆", style="bold blue")
            elif c == 0:
                out.append(" ")
            else:
                out.append(ramp[min(len(ramp) - 1, int(lvl * (len(ramp) - 1) + 0.5))])
        out.append(" ")
    share, n_sig = d.get("self_share"), d.get("n_significant")
    parts = []
    if share is not None:
        parts.append(f"self {100 * share:.0f}%")
    if n_sig is not None:
        parts.append(f"{n_sig} significant")
    out.append(", ".join(parts), style="dim")
    return out


def print_report(report: dict, out: Console | None = None, clusters: int = 5) -> None:
    """The terminal view of a report dict: fits a 100-column terminal."""
    out = out or Console(width=100)
    ens, cfg = report["ensemble"], report["config"]
    records = report["records"]
    extraction = ens["extract_models"]
    modality = MODALITIES.get(report.get("modality"), TEXT)
    head = (
        f"[bold]memaudit report[/]  {ens['n_records']} records · {ens['n_models_used']}/"
        f"{ens['n_models']} models · {_m(ens['estimator'])} · {_m(cfg['model']['name'])} "
        + (
            "(from scratch) · extractability does not apply to images"
            if not modality.decodes
            else f"({cfg['model']['finetune']}) · "
            + (f"extraction by {extraction} models" if extraction else "no extraction")
        )
    )
    if report["redacted"]:
        head += " · [reverse] REDACTED [/]"
    out.print(head)
    _print_headline(report.get("headline"), out)

    table = Table(
        title="records in near-duplicate clusters vs unique records (mean ± std)",
        title_justify="left",
        show_edge=False,
    )
    t = report["table"]
    table.add_column("")
    table.add_column(f"in clusters ({t['in_clusters']['records']})", justify="right")
    table.add_column(f"unique ({t['unique']['records']})", justify="right")
    rows = [("self-influence", "self_influence"), ("top-1 margin", "margin")]
    if extraction:
        rows += [("BLEU, trained on", "bleu"), ("BLEU gain vs held out", "bleu_gain")]
    rows.append(("membership AUC", "mia_auc"))
    if "fz_memorization" in t["unique"]:
        rows.append(("accuracy in - out (F&Z)", "fz_memorization"))
    for name, key in rows:
        table.add_row(name, _ms(t["in_clusters"].get(key)), _ms(t["unique"].get(key)))
    out.print(table)
    gt = report["ground_truth"]
    if gt:
        out.print(
            f"planted ground truth: pair precision {_f(gt['pair_precision'])}, pair recall "
            f"{_f(gt['pair_recall'])}; of {gt['groups']} planted groups "
            f"{gt.get('groups_found', '–')} found, {gt['groups_majority']} by majority, "
            f"{gt['groups_exact']} exactly; {gt.get('clusters_pure', '–')} of {gt['clusters']} "
            "clusters pure"
        )
        pt = gt["planted_table"]
        nd, un = pt["near_duplicated"], pt["unique"]
        line = (
            f"by ground truth, near-duplicated ({nd['records']}) vs unique ({un['records']}):"
            f" self-influence {_ms(nd['self_influence'])} vs {_ms(un['self_influence'])}, "
            f"margin {_ms(nd['margin'])} vs {_ms(un['margin'])}"
        )
        if nd.get("bleu"):
            line += f", BLEU {_ms(nd['bleu'])} vs {_ms(un['bleu'])}"
        out.print(line)

    # A one-line influence distribution under each flagged record's text (reports from before
    # 1.4 have none); the sparkline only where the console is wide enough.
    strips = any(r.get("distribution") for r in records)
    bins, ascii_only = _strip_bins(out.width), _ascii_only(out)
    # The members' text gets what the other columns leave (56 at 100 columns, as before).
    text_width = min(56, max(20, out.width - 44))
    by_id = {c["id"]: c for c in report["clusters"]}
    shown = report["findings"]["clusters"][:clusters]
    if shown:
        out.print(f"\n[bold]Top near-duplicate clusters[/] ({len(report['clusters'])} found)")
    for cid in shown:
        c = by_id[cid]
        out.print(
            f"[bold]cluster {_m(cid)}[/] · {len(c['members'])} records · {_m(c['kind'])} · "
            + _m("; ".join(c["reasons"]))
        )
        members = Table(show_edge=False, box=None, pad_edge=False)
        for col, just in (
            ("id", "left"),
            ("text", "left"),
            ("self", "right"),
            ("margin", "right"),
            ("BLEU in/out", "right"),
        ):
            members.add_column(col, justify=just, no_wrap=True)
        base = records[c["members"][0]]
        for m in c["members"][:8]:
            r = records[m]
            text = (
                _diff_text(base["text"], r["text"], text_width)
                if r["text"] is not None
                else safe_text(_label(r))
            )
            if strips:  # on a line of its own under the text: the columns keep their room
                text = Text("\n").join([text, distribution_strip(r, bins, ascii_only)])
            members.add_row(
                safe_text(r["id"][:16]),
                text,
                _f(r["self_influence"]),
                _f(r["margin"]),
                f"{_f(r['bleu_in'])}/{_f(r['bleu_out'])}" if extraction else "–",
            )
        if len(c["members"]) > 8:
            members.add_row("…", f"{len(c['members']) - 8} more", "", "", "")
        out.print(members)

    _print_influence_clusters(report.get("influence_clusters"), records, out)
    _print_near_duplicates(report.get("near_duplicates"), report, out)
    if report.get("lowest_margin"):
        _print_lowest_margin(report["lowest_margin"], out, report["ground_truth"] is not None)

    risky = report["findings"]["records"]
    if risky:
        out.print("\n[bold]Top-risk unique records[/]")
        rt = Table(show_edge=False, box=None, pad_edge=False)
        for col, just in (("id", "left"), ("text", "left"), ("why", "left")):
            rt.add_column(col, justify=just, overflow="fold")
        for f in risky:
            r = records[f["index"]]
            label = _label(r)
            text = safe_text(label[:40] + ("…" if len(label) > 40 else ""))
            if strips:
                text = Text("\n").join([text, distribution_strip(r, bins, ascii_only)])
            rt.add_row(safe_text(r["id"][:16]), text, safe_text("; ".join(f["reasons"])))
        out.print(rt)
    print_lira(report.get("lira"), out)
    print_dedup(report.get("dedup"), report["records"], out)
    print_convergence(report.get("convergence"), out)
    for note in report["notes"]:
        out.print(f"[dim]note: {_m(note)}[/]")


def _print_headline(headline: dict | None, out: Console) -> None:
    """The signal-strength verdict (#19), first: how much memorization the ensemble measures
    and whether clusters are resolvable. Reports from before it have none."""
    if not headline:
        return
    style = {"strong": "green", "weak": "yellow", "none": "red"}.get(headline.get("strength"), "")
    for k, line in enumerate(headline.get("text") or []):
        out.print(Text(escape_controls(line), style=style if k else "bold"))


def _print_influence_clusters(groups: list[dict] | None, records: list[dict], out: Console) -> None:
    """Records linked by influence that do not look alike (report 1.5): not near-duplicates,
    so shown apart, a few members each."""
    if not groups:
        return
    out.print(
        f"\n[bold]Records that influence each other without looking alike[/] ({len(groups)} "
        "groups; not near-duplicates: a style, template or topic the model learns from each)"
    )
    for g in groups[:3]:
        stats = [lk.get("statistic") for lk in g["links"] if lk.get("statistic") is not None]
        strongest = f", strongest link z {max(stats):.1f}" if stats else ""
        names = []
        for m in g["members"][:4]:
            label = _label(records[m])
            names.append(f"{records[m]['id'][:16]} ({label[:28]}{'…' if len(label) > 28 else ''})")
        more = f" and {len(g['members']) - 4} more" if len(g["members"]) > 4 else ""
        out.print(
            safe_text(f"  {len(g['members'])} records{strongest}: " + "; ".join(names) + more)
        )


def _print_near_duplicates(near: dict | None, report: dict, out: Console, shown: int = 6) -> None:
    """The per-record verdict (#14): how many records have near-duplicates, on what basis,
    how many may still flip, and the flagged records no cluster holds yet with their likely
    partners. Reports from before it have none."""
    if not near:
        return
    line = (
        f"\n[bold]Records with near-duplicates[/] (per-record verdict, false discovery rate "
        f"{near['level']:g}): {near['n_flagged']} of {near['n_records']}; "
        f"{near.get('n_in_clusters', 0)} in clusters, {near.get('n_by_margin', 0)} by the "
        f"Top-1 margin; {near['n_unsettled']} unsettled (may flip with more models)"
    )
    out.print(line)
    gt = (report.get("ground_truth") or {}).get("near_duplicate_records")
    if gt:
        out.print(
            f"planted ground truth, per record: precision {_f(gt['precision'])}, recall "
            f"{_f(gt['recall'])} ({gt['correct']} of {gt['near_duplicated']} planted copies)"
        )
    if near.get("note"):
        out.print(f"[dim]note: {_m(near['note'])}[/]")
    records = report["records"]
    alone = [r for r in near["records"] if r["has_near_duplicates"] and r.get("basis") == "margin"]
    if not alone:
        return
    alone.sort(key=lambda r: (r["margin"] is None, r["margin"] or 0.0))
    out.print(
        "not yet in a cluster (their partners need more models), lowest margin first; "
        "'looks like': flagged records that look like it, not yet confirmed by influence:"
    )
    table = Table(show_edge=False, box=None, pad_edge=False)
    for col, just in (("id", "left"), ("text", "left"), ("margin", "right")):
        table.add_column(col, justify=just, no_wrap=True)
    table.add_column("P(repeat)", justify="right", no_wrap=True)
    table.add_column("likely partners", justify="left", overflow="fold")
    for r in alone[:shown]:
        label = _label(records[r["index"]])
        table.add_row(
            safe_text(r["id"][:16]),
            safe_text(label[:36] + ("…" if len(label) > 36 else "")),
            _f(r["margin"]),
            _f(r["probability"]),
            _partners_cell(r),
        )
    if len(alone) > shown:
        table.add_row("…", f"{len(alone) - shown} more in report.json", "", "", "")
    out.print(table)


def _partners_cell(row: dict) -> str:
    """Influence partners, then the look-alikes (flagged records that look like it, named by
    similarity alone: unconfirmed)."""
    partners = ", ".join(p[:16] for p in row["partners"])
    looks = ", ".join(p[:16] for p in row.get("look_alike") or [])
    if looks:
        partners = (partners + "; " if partners else "") + f"looks like {looks}"
    return safe_text(partners or "–")


def _print_lowest_margin(lowest: list[dict], out: Console, planted: bool) -> None:
    """The paper's image view: targets by lowest Top-1 margin, beside their top influencer;
    with planted ground truth, whether the two are a planted pair."""
    out.print(
        "\n[bold]Lowest-margin targets[/] and their most influential other image: centred "
        "margin (the run's margin), the other's influence with the target's own inclusion "
        "held fixed, pixel similarity"
    )
    table = Table(show_edge=False, box=None, pad_edge=False, padding=(0, 1))
    cols = [
        ("target", "left", 26),
        ("top influencer", "left", 26),
        ("labels", "left", 15),
        ("margin", "right", None),
        ("infl.", "right", None),
        ("pixel", "right", None),
    ]
    if planted:
        cols.append(("planted", "right", None))
    for name, just, width in cols:
        table.add_column(name, justify=just, no_wrap=True, max_width=width, overflow="ellipsis")
    for e in lowest:
        top = e["top_influencer"] or {}
        labels = e["label"]
        if top.get("label") not in (None, e["label"]):
            labels += f"/{top['label']}"  # a top influencer of another class
        cells = [
            safe_text(e["id"]),
            safe_text(top.get("id", "–")),
            safe_text(labels),
            f"{_f(e['centred_margin'])} ({_f(e['margin'])})",
            _f(top.get("centred_influence")),
            _f(top.get("pixel_similarity")),
        ]
        if planted:
            cells.append("yes" if top.get("same_group") else "no")
        table.add_row(*cells)
    out.print(table)


# -- convergence -------------------------------------------------------------------------------


def _criteria_line(criteria: list[dict]) -> str:
    parts = []
    for c in criteria:
        if c.get("value") is None:
            parts.append(f"{_m(c['name'])} not evaluated")
            continue
        mark = "[green]ok[/]" if c["met"] else "[red]no[/]"
        if not c.get("required", True):
            mark += " (not required)"
        moved = f", moved {c['change']:+.3f}" if c.get("change") is not None else ""
        parts.append(f"{_m(c['name'])} {c['value']:.3f} (needs {c['threshold']}) {mark}{moved}")
    return "; ".join(parts)


def print_round(diag, out: Console | None = None) -> None:
    """One line per training round of --models auto."""
    out = out or console
    state = "[green]converged[/]" if diag.converged else "not converged"
    out.print(f"round at {diag.n_models} models: {state}: {_criteria_line(diag.criteria)}")


def print_convergence(conv: dict | None, out: Console) -> None:
    if not conv or not conv.get("rounds"):
        return
    last = conv["rounds"][-1]
    out.print(f"\n[bold]Convergence[/] ({len(conv['rounds'])} round(s)): {_m(conv['stopped_by'])}")
    out.print(_criteria_line(last["criteria"]))
    evaluated = [c for c in last["criteria"] if c.get("value") is not None]
    if any(not c["met"] for c in evaluated):
        out.print(
            f"[yellow]warning:[/] with {last['n_models']} models the diagnostics say the "
            "estimates have not settled; more models (--models, or --models auto) would "
            "change the findings."
        )
    n_pairs = last.get("n_indistinguishable") or len(last.get("indistinguishable") or [])
    if n_pairs:
        out.print(
            f"[yellow]warning:[/] {n_pairs} record pairs have (nearly) the same inclusion "
            "pattern, so no estimator can tell their influences apart; see report.json."
        )


def _pct_ci(m: dict, key: str) -> str:
    value = m.get(key)
    if value is None:
        return "–"
    ci = (m.get("ci") or {}).get(key)
    return f"{100 * value:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def print_lira(lira: dict | None, out: Console) -> None:
    """LiRA as the field reports it: AUC and TPR at 0.1% and 1% FPR over (record, model) pairs,
    with 95% intervals over target models."""
    if not lira:
        return
    table = Table(
        title=f"LiRA membership inference from the ensemble ({lira['variance']} variance, "
        "leave-one-model-out; 95% intervals over models)",
        title_justify="left",
        show_edge=False,
    )
    for col in ("variant", "records", "AUC", "TPR at 0.1% FPR", "TPR at 1% FPR"):
        table.add_column(col, justify="left" if col in ("variant", "records") else "right")
    names = {"overall": "all", "in_clusters": "in clusters", "unique": "unique"}
    for variant, groups in lira["variants"].items():
        for group, m in groups.items():
            auc = m.get("auc")
            ci = (m.get("ci") or {}).get("auc")
            auc_text = "–" if auc is None else f"{auc:.3f}"
            if auc is not None and ci:
                auc_text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            table.add_row(
                _m(variant),
                _m(names.get(group, str(group))),
                auc_text,
                _pct_ci(m, "tpr_at_0.1%"),
                _pct_ci(m, "tpr_at_1%"),
            )
    out.print()
    out.print(table)


def print_dedup(dedup: dict | None, records: list[dict], out: Console) -> None:
    """The deduplicator beside the influence clusters: the three-way table by record pairs."""
    if not dedup:
        return
    params = dedup.get("params", {})
    how = (
        f"MinHash LSH, {params.get('shingle', '?')}, Jaccard >= {params.get('threshold', '?')}"
        if dedup["method"] == "minhash"
        else f"perceptual hash, Hamming <= {params.get('max_distance', '?')} of 64 bits"
    )
    out.print(
        f"\n[bold]Beside a deduplicator[/] ({_m(how)}): {dedup['dedup_groups']} groups, "
        f"{dedup['dedup_pairs']} pairs; influence clusters: {dedup['cluster_pairs']} pairs"
    )
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("kind")
    table.add_column("pairs", justify="right")
    table.add_column("example", overflow="fold")

    def label(i: int) -> str:
        return _m(str(records[i]["id"])[:20])

    def example(kind: dict) -> str:
        for ex in kind.get("examples", [])[:1]:
            members = ex.get("pair") or ex.get("members") or []
            line = " | ".join(label(i) for i in members[:2])
            if ex.get("fraction_of_self") is not None:
                line += f" (influence {100 * ex['fraction_of_self']:.0f}% of self)"
            return line
        return "–"

    rows = (
        ("confirmed: also linked by influence", dedup["confirmed"]),
        ("deduplicator only: not linked by influence", dedup["dedup_only"]),
        ("influence only: a deduplicator misses", dedup["influence_only"]),
    )
    for name, kind in rows:
        table.add_row(name, str(kind["pairs"]), example(kind))
    out.print(table)
    ev = dedup["dedup_only"].get("evidence")
    if ev and ev.get("median_fraction_of_self") is not None:
        out.print(
            f"deduplicator-only pairs ({ev['pairs']} read): influence on each other "
            f"{100 * ev['median_fraction_of_self']:.0f}% of self-influence (median; chance "
            f"{100 * (ev.get('chance_median_fraction') or 0):.0f}%, its 90th percentile "
            f"{100 * (ev.get('chance_p90_fraction') or 0):.0f}%): "
            + (
                "they do influence each other, below the link rule at this number of models"
                if ev["median_fraction_of_self"] > (ev.get("chance_p90_fraction") or 0)
                else "no more than chance: the models did not learn them jointly"
            )
        )
    gt = dedup.get("ground_truth")
    if gt:
        d, c = gt["dedup"], gt["clusters"]
        out.print(
            f"against the planted groups: deduplicator pair precision {_f(d['pair_precision'])}, "
            f"recall {_f(d['pair_recall'])}; influence clusters {_f(c['pair_precision'])}, "
            f"{_f(c['pair_recall'])}"
        )
