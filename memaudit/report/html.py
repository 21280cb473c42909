"""The audit report as one self-contained HTML file.

``render_html(report, flagged)`` renders the ``report.json`` dict (schema ``memaudit-report``
1.x: every minor version, each adding optional fields it shows when present; see
``memaudit.report.build.SCHEMA_VERSION``) as a single HTML page that works offline: inline
CSS, plots as inline SVG (their raster parts as ``data:`` URIs), no scripts, no external
fonts, stylesheets or images, no network addresses at all. Record texts are untrusted data:
every one of them is HTML-escaped, and when the report is redacted no text is shown (ids and
text hashes instead).

Plots are drawn on local ``matplotlib.figure.Figure`` objects (no pyplot, no backend switch);
matplotlib settings are changed only inside ``rc_context`` blocks, which restore them.
"""

from __future__ import annotations

import difflib
import html
import io
import math
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from memaudit.modality import MODALITIES, TEXT
from memaudit.store.io import finite_or_none as _num

MAX_CLUSTER_PANELS = 20
MAX_UNIQUE_RECORDS = 25
MAX_LINKS_PER_CLUSTER = 30
MAX_TEXT_WORDS = 400  # longer texts are cut in the tables
MAX_TICK_LABELS = 40  # record ids as heatmap tick labels up to this many flagged records
ID_LABEL_CHARS = 24
LOG_MIN_SPAN = 4.0  # margins spanning less than this factor get a linear axis
MIN_DIFF_SIMILARITY = 0.3  # word-level similarity below which a member is shown without a diff

COLOR_CLUSTERED = "#D55E00"  # Okabe-Ito vermillion
COLOR_UNIQUE = "#0072B2"  # Okabe-Ito blue
NOT_COMPUTED = "extractability not computed"

# Matplotlib settings for every figure: vector text (small, selectable), no mathtext (record
# ids are untrusted and may contain "$"), a quiet style.
_RC = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial", "Liberation Sans"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#555555",
    "axes.labelcolor": "#222222",
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.frameon": False,
    "legend.fontsize": 8,
    "image.interpolation": "none",
}


# --------------------------------------------------------------------------------------------
# small helpers


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    if v is None:
        return "—"
    if v == 0:
        return "0"
    # Down to 1e-4 as a plain decimal (0.00073, its scale at a glance; issue #19).
    if abs(v) < 1e-4 or abs(v) >= 1e5:
        return f"{v:.{max(digits - 1, 1)}e}"
    if abs(v) >= 10**digits:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def _fmt_bleu(x: Any) -> str:
    """A score in [0, 1] (BLEU, AUC) with three decimals; a smaller nonzero value (a BLEU gain
    of 0.0004) with significant digits instead of 0.000."""
    v = _num(x)
    if v is not None and 0 < abs(v) < 1e-3:
        return _fmt(v, 2)
    return "—" if v is None else f"{v:.3f}"


def _fmt_pm(value: Any, se: Any) -> str:
    if _num(value) is None:
        return "—"
    if _num(se) is None:
        return _fmt(value)
    return f"{_fmt(value)} <span class='pm'>± {_fmt(se, 2)}</span>"


def _pct(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{100 * v:.1f}%"


def _short_id(value: Any, n: int = ID_LABEL_CHARS) -> str:
    s = "" if value is None else str(value)
    return s if len(s) <= n else s[: n - 1] + "…"


def _has_text(rec: dict[str, Any] | None, redacted: bool) -> bool:
    return not redacted and rec is not None and isinstance(rec.get("text"), str)


def _values(records: Iterable[dict[str, Any]], key: str) -> np.ndarray:
    vals = [_num(r.get(key)) for r in records]
    return np.array([v for v in vals if v is not None], dtype=float)


def _parse_time(value: Any) -> str:
    if not value:
        return "—"
    try:
        t = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if t.utcoffset() is not None and t.utcoffset().total_seconds() == 0:
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return t.strftime("%Y-%m-%d %H:%M %z").strip()


# --------------------------------------------------------------------------------------------
# figures


def _svg(fig: Any, salt: str) -> str:
    """The figure as an inline <svg> element: no XML prolog, DOCTYPE, namespaces or metadata
    (HTML puts <svg> in the SVG namespace itself), ids unique per figure and deterministic."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": f"memaudit-{salt}"}):
        fig.savefig(
            buf,
            format="svg",
            bbox_inches="tight",
            pad_inches=0.08,
            metadata={"Date": None, "Creator": None, "Format": None, "Type": None},
        )
    s = buf.getvalue()
    s = s[s.index("<svg") :]
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s)
    s = re.sub(r'<style type="text/css">.*?</style>', "", s, flags=re.S)
    s = re.sub(r'\s+id="[A-Za-z.]+_\d+"', "", s)  # figure_1, axes_1, ...: never referenced
    # Scale with the page, never beyond the drawn size.
    m = re.match(r'<svg\s+width="([\d.]+)pt"\s+height="([\d.]+)pt"', s)
    if m:
        w = float(m.group(1))
        s = (
            f'<svg role="img" style="width:100%;max-width:{w * 4 / 3:.0f}px;height:auto"'
            + s[m.end() :]
        )
    return s.strip()


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _heatmap_svg(report: dict[str, Any], flagged: dict[str, Any]) -> str:
    import matplotlib
    import matplotlib.patches

    by_index = {r.get("index"): r for r in report.get("records") or []}
    indices = [int(i) for i in flagged["indices"]]
    mat = np.asarray(flagged["matrix"], dtype=float)
    n = len(indices)
    clusters = [(by_index.get(i) or {}).get("cluster") for i in indices]
    # Blocks of consecutive records of the same cluster.
    blocks: list[tuple[int, int, Any]] = []
    start = 0
    for k in range(1, n + 1):
        if k == n or clusters[k] != clusters[start]:
            blocks.append((start, k, clusters[start]))
            start = k

    finite = mat[np.isfinite(mat)]
    vmax = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
    vmax = vmax if vmax > 0 else 1.0

    side = min(9.0, max(5.0, 3.2 + 0.13 * n)) if n <= MAX_TICK_LABELS else 7.5
    with matplotlib.rc_context(_RC):
        fig = _new_figure(side + 1.4, side)
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
        im = ax.imshow(
            np.ma.masked_invalid(mat),
            cmap=cmap,
            vmin=-vmax,
            vmax=vmax,
            interpolation="none",
            aspect="equal",
        )
        # Boundaries across the whole matrix; faint when there are many clusters, so that the
        # boxes around the diagonal blocks stay readable.
        line = (
            {"color": "#222222", "lw": 0.8}
            if len(blocks) <= 12
            else {"color": "#9a9a9a", "lw": 0.3}
        )
        for _a, b, _ in blocks[:-1]:
            ax.axhline(b - 0.5, **line)
            ax.axvline(b - 0.5, **line)
        for a, b, c in blocks:
            if c is not None:
                ax.add_patch(
                    matplotlib.patches.Rectangle(
                        (a - 0.5, a - 0.5), b - a, b - a, fill=False, ec="#000000", lw=1.6
                    )
                )
        for spine in ax.spines.values():
            spine.set_visible(True)
        if n <= MAX_TICK_LABELS:
            labels = [
                _short_id((by_index.get(i) or {}).get("id", i), ID_LABEL_CHARS) for i in indices
            ]
            ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(n), labels, fontsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        # Cluster labels on top, skipping any that would overlap the previous one.
        pos, names, last = [], [], -math.inf
        for a, b, c in blocks:
            centre = (a + b - 1) / 2
            if centre - last >= max(n / 28, 1.0):
                pos.append(centre)
                names.append("unique" if c is None else f"C{c}")
                last = centre
        top = ax.secondary_xaxis("top")
        top.set_xticks(pos, names, fontsize=7)
        top.tick_params(length=0)
        ax.set_xlabel("training record i (source)")
        ax.set_ylabel("target record t")
        cb = fig.colorbar(im, ax=ax, shrink=0.75, extend="both")
        cb.set_label("influence I[t, i]")
        return _svg(fig, "heatmap")


def _plain_log_axis(axis: Any) -> None:
    """Log scale ticks at 1, 2, 5 x 10^k labelled as plain numbers (no mathtext)."""
    from matplotlib import ticker

    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _use_log(lo: float, hi: float) -> bool:
    """A log axis only when the values span enough for log ticks to label it."""
    return lo > 0 and hi / lo >= LOG_MIN_SPAN


def _hist_panel(ax: Any, groups: Sequence[tuple[str, np.ndarray, str]], log: bool) -> None:
    data = [v for _, v, _ in groups if v.size]
    allv = np.concatenate(data)
    lo, hi = float(allv.min()), float(allv.max())
    if log and _use_log(lo, hi):
        bins = np.geomspace(lo, hi, 31)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_xlabel(ax.get_xlabel() + ", log scale")
    elif hi > lo:
        bins = np.linspace(lo, hi, 31)
    else:
        bins = np.linspace(lo - 0.5, hi + 0.5, 3)
    top = 0.0
    notes = []
    for label, v, color in groups:
        if not v.size:
            continue
        ax.hist(v, bins=bins, density=True, histtype="stepfilled", alpha=0.28, color=color)
        heights, _, _ = ax.hist(v, bins=bins, density=True, histtype="step", lw=1.4, color=color)
        top = max(top, float(np.max(heights)))
        ax.axvline(float(np.median(v)), color=color, ls="--", lw=1)
        notes.append((f"{label}: median {_fmt(np.median(v))}, n={v.size}", color))
    for k, (note, color) in enumerate(notes):
        ax.text(
            0.99,
            0.98 - 0.075 * k,
            note,
            ha="right",
            va="top",
            fontsize=7.5,
            color=color,
            transform=ax.transAxes,
            bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1},
        )
    ax.set_ylim(0, top * 1.3 if top > 0 else 1)
    ax.set_ylabel("density")
    ax.set_yticks([])


def _distributions_svg(records: list[dict[str, Any]], bleu_key: str | None) -> str:
    import matplotlib

    clustered = [r for r in records if r.get("cluster") is not None]
    unique = [r for r in records if r.get("cluster") is None]
    panels: list[tuple[str, str, bool]] = [
        ("self_influence", "self-influence I[t, t]", False),
        ("margin", "Top-1 influence margin (defined only)", True),
    ]
    if bleu_key:
        panels.append((bleu_key, _BLEU_LABELS[bleu_key], False))
    with matplotlib.rc_context(_RC):
        fig = _new_figure(3.9 * len(panels), 3.2)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        from matplotlib.patches import Patch

        fig.legend(
            handles=[
                Patch(
                    fc=COLOR_CLUSTERED, ec=COLOR_CLUSTERED, alpha=0.5, label="records in clusters"
                ),
                Patch(fc=COLOR_UNIQUE, ec=COLOR_UNIQUE, alpha=0.5, label="unique records"),
            ],
            loc="outside upper center",
            ncol=2,
            fontsize=8.5,
        )
        for ax, (key, label, log) in zip(axes, panels, strict=True):
            groups = [
                ("in clusters", _values(clustered, key), COLOR_CLUSTERED),
                ("unique", _values(unique, key), COLOR_UNIQUE),
            ]
            ax.set_xlabel(label)
            if not any(v.size for _, v, _ in groups):
                ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
                ax.set_yticks([])
                continue
            _hist_panel(ax, groups, log)
        return _svg(fig, "distributions")


def _scatter_svg(records: list[dict[str, Any]]) -> tuple[str, int]:
    """Margin vs self-influence; records with an undefined margin in a strip below."""
    import matplotlib

    def split(rs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, xu = [], [], []
        for r in rs:
            s = _num(r.get("self_influence"))
            if s is None:
                continue
            m = _num(r.get("margin"))
            if r.get("margin_defined", m is not None) and m is not None and m > 0:
                x.append(s)
                y.append(m)
            else:
                xu.append(s)
        return np.array(x), np.array(y), np.array(xu)

    groups = [
        ("in clusters", [r for r in records if r.get("cluster") is not None], COLOR_CLUSTERED),
        ("unique", [r for r in records if r.get("cluster") is None], COLOR_UNIQUE),
    ]
    n_undefined = 0
    with matplotlib.rc_context(_RC):
        fig = _new_figure(7.6, 4.6)
        ax, strip = fig.subplots(2, 1, sharex=True, height_ratios=[6, 1])
        rng = np.random.default_rng(0)
        for label, rs, color in groups:
            x, y, xu = split(rs)
            n_undefined += xu.size
            ax.scatter(
                x, y, s=16, alpha=0.7, color=color, edgecolors="none", label=f"{label} ({x.size})"
            )
            if xu.size:
                strip.scatter(
                    xu,
                    rng.uniform(-0.3, 0.3, xu.size),
                    s=16,
                    alpha=0.8,
                    color=color,
                    marker="x",
                    lw=1,
                )
        defined = [_num(r.get("margin")) for r in records if r.get("margin_defined", True)]
        defined = [m for m in defined if m is not None and m > 0]
        if defined and _use_log(min(defined), max(defined)):
            ax.set_yscale("log")
            _plain_log_axis(ax.yaxis)
            ax.set_ylabel("Top-1 influence margin (log scale)")
        else:
            ax.set_ylabel("Top-1 influence margin")
        ax.axhline(1.0, color="#999999", lw=0.8, ls=":")
        ax.legend(
            loc="lower left",
            bbox_to_anchor=(0.0, 1.0),
            ncol=2,
            scatterpoints=1,
            markerscale=1.6,
            fontsize=8.5,
        )
        ax.tick_params(labelbottom=False)
        strip.set_ylim(-0.6, 0.6)
        strip.set_yticks([0], ["undefined\nmargin"])
        strip.spines["left"].set_visible(False)
        strip.tick_params(axis="y", length=0)
        strip.set_facecolor("#f4f4f4")
        strip.set_xlabel("self-influence I[t, t]")
        strip.text(
            0.995,
            0.5,
            f"{n_undefined} record{'s' if n_undefined != 1 else ''}",
            ha="right",
            va="center",
            fontsize=8,
            color="#555555",
            transform=strip.transAxes,
        )
        return _svg(fig, "scatter"), n_undefined


_BLEU_LABELS = {
    "bleu_in": "BLEU, models trained on the record",
    "bleu_gain": "BLEU gain (trained on it − not)",
}


# --------------------------------------------------------------------------------------------
# text and diffs


def _words(text: str) -> list[str]:
    return text.split()


def _truncate_words(text: str) -> tuple[list[str], int]:
    """Display parts (words and the whitespace between them), cut after MAX_TEXT_WORDS words;
    returns the parts and the number of words left out."""
    parts = re.findall(r"\S+|\s+", text)
    kept, nwords = [], 0
    for p in parts:
        if not p.isspace():
            nwords += 1
            if nwords > MAX_TEXT_WORDS:
                continue
        if nwords <= MAX_TEXT_WORDS:
            kept.append(p)
    return kept, max(0, nwords - MAX_TEXT_WORDS)


def _render_text(text: str) -> str:
    parts, cut = _truncate_words(text)
    out = _esc("".join(parts))
    if cut:
        out += f" <span class='cut'>… {cut} more words</span>"
    return out


def _render_diff(base: str, text: str) -> str:
    """`text` with the words that differ from `base` marked: difflib over whitespace tokens;
    replaced or inserted words in <mark>, words of `base` missing here in <del>."""
    a, b = _words(base), _words(text)
    changed: set[int] = set()
    replaced: dict[int, str] = {}  # first word of a replacement -> the words it replaces
    deleted_before: dict[int, str] = {}  # word position -> base words deleted before it
    sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if a and b and sm.ratio() < MIN_DIFF_SIMILARITY:  # a diff would mark nearly every word
        return (
            _render_text(text) + " <span class='cut'>(little text in common with the "
            "reference: not diffed)</span>"
        )
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag in ("replace", "insert"):
            changed.update(range(j1, j2))
            if tag == "replace":
                replaced[j1] = " ".join(a[i1:i2])
        elif tag == "delete":
            deleted_before[j1] = deleted_before.get(j1, "") + " ".join(a[i1:i2])

    parts, cut = _truncate_words(text)
    out: list[str] = []
    w = 0
    for p in parts:
        if p.isspace():
            out.append(_esc(p))
            continue
        if w in deleted_before:
            out.append(f"<del>{_esc(deleted_before[w])}</del> ")
        if w in changed:
            title = f' title="was: {_esc(replaced[w])}"' if w in replaced else ""
            out.append(f"<mark{title}>{_esc(p)}</mark>")
        else:
            out.append(_esc(p))
        w += 1
    if not cut and len(b) in deleted_before:
        out.append(f" <del>{_esc(deleted_before[len(b)])}</del>")
    if cut:
        out.append(f" <span class='cut'>… {cut} more words</span>")
    return "".join(out)


def _redacted_text(rec: dict[str, Any]) -> str:
    sha = rec.get("text_sha256") or ""
    return (
        f"<span class='redacted'>text redacted · sha256 <code>{_esc(str(sha)[:12])}</code></span>"
    )


# --------------------------------------------------------------------------------------------
# sections


def _header(report: dict[str, Any]) -> str:
    cfg = report.get("config") or {}
    model = cfg.get("model") or {}
    train = cfg.get("train") or {}
    ens_cfg = cfg.get("ensemble") or {}
    ds = report.get("dataset") or {}
    ens = report.get("ensemble") or {}
    versions = report.get("versions") or {}

    finetune = model.get("finetune")
    if finetune == "lora":
        lora = [f"{k}={model[f'lora_{k}']}" for k in ("r", "alpha") if model.get(f"lora_{k}")]
        finetune = "LoRA" + (f" ({', '.join(lora)})" if lora else "")
    train_bits = [
        f"{train['epochs']} epochs" if train.get("epochs") is not None else None,
        f"lr {train['lr']}" if train.get("lr") is not None else None,
        f"batch {train['batch_size']}" if train.get("batch_size") is not None else None,
        f"loss on {train['loss_on']}" if train.get("loss_on") else None,
    ]
    used, total = ens.get("n_models_used"), ens.get("n_models")
    excluded = ens.get("excluded_models") or []
    ens_text = f"{_esc(used)} of {_esc(total)} models used"
    if excluded:
        shown = ", ".join(str(j) for j in excluded[:12]) + (" …" if len(excluded) > 12 else "")
        ens_text += f" <span class='muted'>(excluded: {_esc(shown)})</span>"
    design = ens_cfg.get("design")
    if design:
        ens_text += (
            f" <span class='muted'>· {_esc(design)} design, seed {_esc(ens_cfg.get('seed'))}</span>"
        )

    rows = [
        (
            "Dataset",
            f"<code>{_esc(ds.get('path'))}</code> · {_esc(ds.get('records'))} records"
            + (
                f" <span class='muted'>· sha256 {_esc(str(ds.get('sha256'))[:12])}</span>"
                if ds.get("sha256")
                else ""
            ),
        ),
        ("Model", f"<code>{_esc(model.get('name'))}</code>"),
        (
            "Fine-tuning",
            _esc(finetune or "—")
            + (
                " <span class='muted'>· " + _esc(", ".join(b for b in train_bits if b)) + "</span>"
                if any(train_bits)
                else ""
            ),
        ),
        ("Ensemble", ens_text),
        (
            "Estimator",
            _esc(ens.get("estimator") or "—")
            + (
                " <span class='muted'>· extractability measured on "
                f"{_esc(ens.get('extract_models'))} models</span>"
                if ens.get("extract_models") is not None
                else ""
            ),
        ),
        (
            "Generated",
            _esc(_parse_time(report.get("generated")))
            + (
                f" <span class='muted'>· memaudit {_esc(versions.get('memaudit'))}</span>"
                if versions.get("memaudit")
                else ""
            ),
        ),
    ]
    meta = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    banner = ""
    if report.get("redacted"):
        banner = (
            "<div class='banner'><strong>Redacted report.</strong> Record texts were removed "
            "before this report was written; records are shown by id and the first 12 hex "
            "digits of the SHA-256 of their text.</div>"
        )
    name = str(ds.get("path") or "dataset").replace("\\", "/").rsplit("/", 1)[-1]
    return (
        "<header>"
        "<div class='brand'>memaudit · memorization audit</div>"
        f"<h1>Memorization report: {_esc(name)}</h1>"
        f"{banner}<table class='meta'>{meta}</table>"
        "</header>"
    )


def _link_rule(link: dict[str, Any]) -> str:
    """Which rule made a link and its evidence (#19): "mutual: pooled z 4.1 >= 3.52"."""
    rule = _esc(link.get("basis") or "evidence")
    stat, bar = _num(link.get("statistic")), _num(link.get("threshold"))
    if stat is None:
        return rule
    name = "z" if rule == "evidence" else "pooled z"
    return f"{rule}: {name} {stat:.2f}" + (f" &ge; {bar:.2f}" if bar is not None else "")


def _influence_clusters_section(report: dict[str, Any]) -> str:
    """Records linked by influence that do not look alike (report 1.5), apart from the
    near-duplicate clusters: each group's records (escaped; ids only when redacted) and
    links with their rule and statistic."""
    groups = report.get("influence_clusters")
    if not isinstance(groups, list) or not groups:
        return ""
    records = report.get("records") or []

    def label(m: Any) -> str:
        r = records[m] if isinstance(m, int) and 0 <= m < len(records) else {}
        text = r.get("text")
        return f"{r.get('id', m)}" + (f": {str(text)[:120]}" if text else "")

    items = []
    for g in groups:
        members = "".join(f"<li>{_esc(label(m))}</li>" for m in g.get("members") or [])
        links = ", ".join(
            f"{_esc(lk.get('target'))}&larr;{_esc(lk.get('source'))} "
            f"({_esc(lk.get('basis'))}, {_fmt(lk.get('statistic'), 2)})"
            for lk in g.get("links") or []
        )
        items.append(
            f"<details><summary>{len(g.get('members') or [])} records</summary>"
            f"<ul>{members}</ul><p>links: {links}</p></details>"
        )
    return (
        "<section id='influence-clusters'><h2>Records that influence each other without "
        f"looking alike</h2><p>{len(groups)} groups linked by calibrated influence whose texts "
        "(or pixels) are not alike: not near-duplicates, but a style, template or topic the "
        "model learns from each. Listed apart from the near-duplicate clusters.</p>"
        f"{''.join(items)}</section>"
    )


def _near_duplicates_section(report: dict[str, Any]) -> str:
    """The per-record verdict (#14): counts, and every flagged or unsettled record with its
    margin, q-value, chance to repeat and likely partners (ids only: redacted reports too)."""
    near = report.get("near_duplicates")
    if not isinstance(near, dict):
        return ""
    gt = (report.get("ground_truth") or {}).get("near_duplicate_records")
    truth = (
        f"<p>Planted ground truth, per record: precision {_fmt(gt.get('precision'), 2)}, "
        f"recall {_fmt(gt.get('recall'), 2)}.</p>"
        if isinstance(gt, dict)
        else ""
    )
    rows = "".join(
        "<tr>"
        f"<td>{_esc(r.get('id'))}</td>"
        f"<td>{'yes' if r.get('has_near_duplicates') else 'no'}</td>"
        f"<td>{_esc(r.get('basis') or '–')}</td>"
        f"<td class='num'>{_fmt(r.get('margin'))}</td>"
        f"<td class='num'>{_fmt(r.get('q'))}</td>"
        f"<td class='num'>{_fmt(r.get('probability'), 2)}</td>"
        f"<td>{_esc(', '.join(str(p) for p in r.get('partners') or []) or '–')}</td>"
        f"<td>{_esc(', '.join(str(p) for p in r.get('look_alike') or []) or '–')}</td>"
        "</tr>"
        for r in near.get("records") or []
    )
    note = f"<p class='note'>{_esc(near['note'])}</p>" if near.get("note") else ""
    return (
        "<section id='near-duplicates'><h2>Records with near-duplicates</h2>"
        f"<p>{_esc(near.get('n_flagged'))} of {_esc(near.get('n_records'))} records have "
        f"near-duplicates at a false discovery rate of {_esc(near.get('level'))}: "
        f"{_esc(near.get('n_in_clusters', 0))} in clusters (pairwise evidence), "
        f"{_esc(near.get('n_by_margin', 0))} by their Top-1 margin, which is low for copies "
        "long before their partners can be named. "
        f"{_esc(near.get('n_unsettled'))} records are unsettled: less than a "
        f"{_esc(near.get('settled_at'))} chance that an ensemble of the same size repeats "
        f"their verdict. <em>Looks like</em>: flagged records that look like it, one of the "
        "two in no cluster; each has the signature on its own evidence, but which records belong "
        f"together is named by similarity alone until pairwise influence confirms it.</p>"
        f"{truth}{note}"
        "<details><summary>flagged and unsettled records</summary><table><thead><tr>"
        "<th>id</th><th>near-duplicates</th><th>basis</th><th>margin</th><th>q</th>"
        "<th>P(repeat)</th><th>likely partners</th><th>looks like (unconfirmed)</th></tr>"
        "</thead>"
        f"<tbody>{rows}</tbody></table></details></section>"
    )


def _headline_section(report: dict[str, Any]) -> str:
    """The signal-strength verdict (#19) above everything else; '' for reports without one."""
    headline = report.get("headline")
    if not isinstance(headline, dict) or not headline.get("text"):
        return ""
    kind = {"strong": "ok", "weak": "warn", "none": "warn"}.get(headline.get("strength"), "")
    lines = "".join(f"<p>{_esc(t)}</p>" for t in headline["text"])
    return f"<section class='headline {kind}' id='headline'><h2>Verdict</h2>{lines}</section>"


def _summary_cards(report: dict[str, Any]) -> str:
    records = report.get("records") or []
    clusters = report.get("clusters") or []
    findings = report.get("findings") or {}
    n_clustered = sum(1 for r in records if r.get("cluster") is not None)
    n_undef = sum(1 for r in records if not r.get("margin_defined", True))
    flagged_unique = sum(
        1
        for f in findings.get("records") or []
        if (_record_map(report).get(f.get("index")) or {}).get("cluster") is None
    )
    cards = [
        (str(len(records)), "records audited"),
        (str(len(findings.get("clusters") or [c.get("id") for c in clusters])), "flagged clusters"),
        (str(n_clustered), "records in clusters"),
        (str(flagged_unique), "flagged unique records"),
        (str(n_undef), "undefined margins"),
    ]
    return "<div class='cards'>" + "".join(_card(_esc(v), k) for v, k in cards) + "</div>"


def _card(value_html: str, label: str) -> str:
    return (
        f"<div class='card'><div class='big'>{value_html}</div>"
        f"<div class='label'>{_esc(label)}</div></div>"
    )


def _stats_cell(stats: Any, not_computed: str = "—") -> str:
    if not isinstance(stats, dict):
        return f"<span class='muted'>{_esc(not_computed)}</span>"
    if not stats.get("n") or _num(stats.get("mean")) is None:
        return "<span class='muted'>no values</span>"
    s = _fmt(stats.get("mean"))
    if _num(stats.get("std")) is not None:
        s += f" <span class='pm'>± {_fmt(stats.get('std'))}</span>"
    extra = f"median {_fmt(stats.get('median'))}, n={_esc(stats.get('n'))}"
    return f"{s}<div class='sub'>{extra}</div>"


def _table_section(report: dict[str, Any], has_bleu: bool) -> str:
    table = report.get("table") or {}
    ic, un = table.get("in_clusters") or {}, table.get("unique") or {}
    rows = [
        ("Self-influence", "self_influence", "—"),
        ("Top-1 influence margin", "margin", "—"),
        ("BLEU (extractability)", "bleu", NOT_COMPUTED),
        ("BLEU gain (in − out)", "bleu_gain", NOT_COMPUTED),
    ]
    if any(isinstance(g.get("mia_auc"), dict) and g["mia_auc"].get("n") for g in (ic, un)):
        rows.append(("Membership-inference AUC", "mia_auc", "—"))
    if not has_bleu:  # never show BLEU statistics the records do not back
        ic = {k: v for k, v in ic.items() if k not in ("bleu", "bleu_gain")}
        un = {k: v for k, v in un.items() if k not in ("bleu", "bleu_gain")}
    body = "".join(
        f"<tr><th>{label}</th><td>{_stats_cell(ic.get(key), nc)}</td>"
        f"<td>{_stats_cell(un.get(key), nc)}</td></tr>"
        for label, key, nc in rows
    )
    head = (
        "<tr><th>metric (mean ± std)</th>"
        f"<th>records in clusters <span class='muted'>({_esc(ic.get('records', '—'))})</span></th>"
        f"<th>unique records <span class='muted'>({_esc(un.get('records', '—'))})</span></th></tr>"
    )
    out = [
        "<section id='summary'><h2>Summary</h2>",
        _summary_cards(report),
        "<p class='lead'>The paper's comparison: records that the audit placed in a cluster "
        "(near-duplicates or records that influence each other) against unique records. "
        "Near-duplicates typically have <em>lower</em> self-influence but a margin near 1 and "
        "higher extractability: self-influence alone underestimates their risk.</p>",
        f"<table class='data summary'><thead>{head}</thead><tbody>{body}</tbody></table>",
    ]
    if not has_bleu:
        out.append(
            "<p class='muted'>Extractability not computed for this run: the BLEU rows and "
            "plots are left out (no zeros are shown in their place).</p>"
        )
    gt = report.get("ground_truth")
    if isinstance(gt, dict):
        known = [
            ("pair_precision", "pair precision", _pct),
            ("pair_recall", "pair recall", _pct),
            ("cluster_purity", "clusters pure", _pct),
            ("share_found", "groups found", _pct),
            ("groups_recovered_exactly", "groups recovered exactly", _pct),
            ("groups", "planted groups", lambda v: _esc(v)),
        ]
        cells = [(lab, f(gt.get(k))) for k, lab, f in known if k in gt]
        others = [
            f"{_esc(k.replace('_', ' '))} <strong>{_fmt(v)}</strong>"
            for k, v in gt.items()
            if k not in {x[0] for x in known} and _num(v) is not None
        ]
        out.append(
            "<h3>Against the planted ground truth</h3><div class='cards small'>"
            + "".join(_card(v, lab) for lab, v in cells)
            + "</div>"
            + (f"<p class='sub'>{' · '.join(others)}</p>" if others else "")
        )
    notes = [n for n in report.get("notes") or [] if n]
    if notes:
        out.append(
            "<div class='callout'><div class='callout-title'>Caveats</div><ul>"
            + "".join(f"<li>{_esc(n)}</li>" for n in notes)
            + "</ul></div>"
        )
    out.append("</section>")
    return "".join(out)


def _convergence_section(report: dict[str, Any]) -> str:
    """Each training round's diagnostics: what stopped the run and how much each criterion
    moved (schema 1.1; absent in older reports)."""
    conv = report.get("convergence")
    if not conv or not conv.get("rounds"):
        return ""
    names = [c["name"] for c in conv["rounds"][-1]["criteria"]]
    head = "".join(f"<th>{_esc(n.replace('_', ' '))}</th>" for n in names)
    rows = []
    for r in conv["rounds"]:
        cells = []
        for c in r["criteria"]:
            if c.get("value") is None:
                cells.append("<td class='muted'>not evaluated</td>")
                continue
            ok = "ok" if c["met"] else "not met"
            cells.append(
                f"<td>{_fmt(c['value'])} <span class='muted'>(needs "
                f"{_esc(c['threshold'])}; {ok})</span></td>"
            )
        state = "converged" if r["converged"] else "not converged"
        rows.append(f"<tr><td>{_esc(r['n_models'])}</td>{''.join(cells)}<td>{state}</td></tr>")
    n_pairs = conv["rounds"][-1].get("n_indistinguishable") or 0
    pairs = (
        f"<p class='muted'>{_esc(n_pairs)} record pairs have (nearly) the same inclusion "
        "pattern; their influences cannot be told apart.</p>"
        if n_pairs
        else ""
    )
    return (
        "<section id='convergence'><h2>Convergence</h2>"
        f"<p>{_esc(conv['stopped_by'])}.</p>"
        f"<table><thead><tr><th>models</th>{head}<th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{pairs}</section>"
    )


def _plots_section(
    report: dict[str, Any], flagged: dict[str, Any] | None, bleu_key: str | None
) -> str:
    records = report.get("records") or []
    out = ["<section id='plots'><h2>Plots</h2>"]

    out.append("<h3>Influence among the flagged records</h3>")
    indices = list((flagged or {}).get("indices") or [])
    matrix = None if flagged is None else flagged.get("matrix")
    if flagged is None or matrix is None:
        out.append(
            "<p class='muted placeholder'>Influence matrix not available for this report "
            "(the dense matrix was not stored or not passed to the renderer).</p>"
        )
    elif not indices:
        out.append("<p class='muted placeholder'>No records were flagged: no matrix to show.</p>")
    elif np.asarray(matrix).shape != (len(indices), len(indices)):
        out.append(
            "<p class='muted placeholder'>Influence matrix not shown: its shape "
            f"{_esc(np.asarray(matrix).shape)} does not match the {len(indices)} flagged "
            "records.</p>"
        )
    else:
        out.append(
            "<p class='caption'>Rows are targets t, columns training records i, ordered by "
            "cluster; boxes mark clusters (labels on top). Red: including record i lowers the "
            "loss on t. The diagonal is each record's self-influence. Colour scale clipped at the "
            "99th percentile of |I|.</p>"
        )
        out.append(f"<figure class='plot'>{_heatmap_svg(report, flagged)}</figure>")

    out.append("<h3>Distributions: records in clusters vs unique records</h3>")
    if records:
        out.append(f"<figure class='plot'>{_distributions_svg(records, bleu_key)}</figure>")
        if bleu_key is None:
            out.append(
                "<p class='placeholder muted'>BLEU distribution: extractability not computed "
                "for this run.</p>"
            )
        out.append(
            "<p class='caption'>Histograms normalised per group; dashed lines are medians.</p>"
        )
    else:
        out.append("<p class='muted placeholder'>No records in the report.</p>")

    out.append("<h3>Margin vs self-influence</h3>")
    if records:
        svg, n_undef = _scatter_svg(records)
        out.append(f"<figure class='plot'>{svg}</figure>")
        note = (
            f"{n_undef} record{'s' if n_undef != 1 else ''} with undefined margin "
            "(second-largest influence ≤ 0) shown in the grey strip at the bottom, at their "
            "self-influence."
            if n_undef
            else "Every record has a defined margin."
        )
        out.append(
            "<p class='caption'>A margin near 1 (dotted line) means other records influence the "
            f"target as much as itself, typical of near-duplicates. {note}</p>"
        )
    out.append("</section>")
    return "".join(out)


def _record_map(report: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {r.get("index"): r for r in report.get("records") or []}


def _rec_label(rec: dict[str, Any] | None, index: Any) -> str:
    if rec is None:
        return f"#{_esc(index)}"
    return f"<code>{_esc(rec.get('id'))}</code>"


def _kind_badge(kind: Any) -> str:
    k = str(kind or "unknown")
    cls = k if k in ("textual", "visual", "influence", "mixed") else "unknown"
    return f"<span class='badge {cls}'>{_esc(k)}</span>"


def _cluster_order(report: dict[str, Any]) -> list[dict[str, Any]]:
    clusters = report.get("clusters") or []
    by_id = {c.get("id"): c for c in clusters}
    order = (report.get("findings") or {}).get("clusters")
    if order is None:
        return list(clusters)
    return [by_id[c] for c in order if c in by_id]


def _metric_cells(rec: dict[str, Any], has_bleu: bool) -> str:
    margin = (
        _fmt(rec.get("margin"))
        if rec.get("margin_defined", True) and _num(rec.get("margin")) is not None
        else "<span class='warn' title='second-largest influence ≤ 0'>undefined</span>"
    )
    cells = [
        f"<td class='num'>{_fmt_pm(rec.get('self_influence'), rec.get('self_influence_se'))}</td>",
        f"<td class='num'>{margin}</td>",
    ]
    if has_bleu:
        b_in, b_out = _fmt_bleu(rec.get("bleu_in")), _fmt_bleu(rec.get("bleu_out"))
        cells.append(f"<td class='num'>{b_in} / {b_out}</td>")
    return "".join(cells)


def _metric_heads(has_bleu: bool) -> str:
    heads = "<th>self-influence</th><th>margin</th>"
    if has_bleu:
        heads += "<th>BLEU in / out</th>"
    return heads


def _link_similarity(link: dict[str, Any]) -> Any:
    pixel = link.get("pixel_similarity")
    return pixel if pixel is not None else link.get("lexical_similarity")


def _thumb(thumbs: dict, idx: Any, cls: str = "") -> str:
    uri = thumbs.get(idx)
    if not isinstance(uri, str) or not uri.startswith("data:image/png;base64,"):
        return ""
    return f"<img class='{cls}' alt='image {_esc(idx)}' src='{_esc(uri)}'>"


def _influence_row_svg(row: np.ndarray, t: int, top: Any, salt: str) -> str:
    """A target's influence from every training record (histogram, log counts), with its own
    (self-influence) and its top influencer's marked: near-duplicates stand apart from the
    bulk."""
    import matplotlib

    vals = np.asarray(row, dtype=float)
    finite = vals[np.isfinite(vals)]
    if finite.size == 0:
        return ""
    with matplotlib.rc_context(_RC):
        fig = _new_figure(3.4, 1.2)
        ax = fig.add_subplot(1, 1, 1)
        ax.hist(finite, bins=40, color="#999999", log=True)
        if 0 <= t < len(vals) and np.isfinite(vals[t]):
            ax.axvline(vals[t], color=COLOR_UNIQUE, lw=1.5, label="self")
        if isinstance(top, int) and 0 <= top < len(vals) and np.isfinite(vals[top]):
            ax.axvline(vals[top], color=COLOR_CLUSTERED, lw=1.5, ls="--", label="top other")
        ax.set_xlabel("influence I[t, i] on this target (nats)")
        ax.set_yticks([])
        ax.legend(loc="upper right")
        return _svg(fig, salt)


# --------------------------------------------------------------------------------------------
# each flagged record's influence distribution (report.json "distribution", schema 1.4)

TOP_MARKED = 5  # top influencers marked and named on a record's histogram


def _marks(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Self, then the record's strongest other influencers (ids only: never text)."""
    t = rec.get("index")
    out = []
    if _num(rec.get("self_influence")) is not None:
        out.append({"id": rec.get("id"), "influence": _num(rec["self_influence"]), "self": True})
    for e in rec.get("top_influencers") or []:
        if e.get("index") != t and _num(e.get("influence")) is not None:
            out.append({"id": e.get("id"), "influence": _num(e["influence"]), "self": False})
        if len(out) > TOP_MARKED:
            break
    return out


def _hist_svg(
    hist: dict[str, Any], marks: list[dict[str, Any]], width: int, height: int, named: int
) -> str:
    """A hand-drawn SVG histogram of log counts with vertical marks (self solid blue, others
    dashed vermillion), self and the first ``named`` others labelled by id, one label per line
    above the bars. Every label is escaped."""
    counts = [int(c) for c in hist.get("counts") or []]
    lo, hi = _num(hist.get("lo")), _num(hist.get("hi"))
    if not counts or lo is None or hi is None or hi <= lo:
        return ""
    labelled = [m for m in marks if m["self"]][:1] + [m for m in marks if not m["self"]][:named]
    top_pad = 10 * len(labelled) + 2
    axis = 12
    plot_h = height - top_pad - axis
    peak = math.log1p(max(max(counts), 1))
    bw = width / len(counts)
    step = (hi - lo) / len(counts)
    parts = [
        f"<svg class='dist' role='img' viewBox='0 0 {width} {height}' width='{width}' "
        f"height='{height}'><title>influence on this record from every other record "
        "(log counts)</title>"
    ]
    for k, c in enumerate(counts):
        if c:
            h = max(1.0, plot_h * math.log1p(c) / peak)
            parts.append(
                f"<rect x='{k * bw:.2f}' y='{top_pad + plot_h - h:.2f}' "
                f"width='{max(bw - 0.5, 0.5):.2f}' height='{h:.2f}' fill='#9a9a9a'><title>"
                f"{c} record{'s' if c != 1 else ''}: {_esc(_fmt(lo + k * step))} to "
                f"{_esc(_fmt(lo + (k + 1) * step))}</title></rect>"
            )
    for m in marks:
        x = min(max((m["influence"] - lo) / (hi - lo) * width, 0.75), width - 0.75)
        color = COLOR_UNIQUE if m["self"] else COLOR_CLUSTERED
        dash = "" if m["self"] else " stroke-dasharray='3 2'"
        who = "self" if m["self"] else _short_id(m["id"], 18)
        line = next((i for i, e in enumerate(labelled) if e is m), None)
        y1 = top_pad - 2 if line is None else 10 * line + 11
        parts.append(
            f"<line x1='{x:.2f}' x2='{x:.2f}' y1='{y1}' y2='{top_pad + plot_h}' "
            f"stroke='{color}' stroke-width='1.5'{dash}><title>{_esc(who)}: "
            f"{_esc(_fmt(m['influence']))}</title></line>"
        )
        if line is not None:
            anchor = "end" if x > width * 0.6 else "start"
            nudge = -2 if anchor == "end" else 2
            parts.append(
                f"<text x='{x + nudge:.2f}' y='{10 * line + 9}' font-size='9' "
                f"text-anchor='{anchor}' fill='{color}'>{_esc(who)} {_esc(_fmt(m['influence']))}"
                "</text>"
            )
    base = top_pad + plot_h
    parts.append(
        f"<line x1='0' x2='{width}' y1='{base}' y2='{base}' stroke='#555' stroke-width='0.6'/>"
        f"<text x='0' y='{height - 2}' font-size='9' fill='#444'>{_esc(_fmt(lo))}</text>"
        f"<text x='{width}' y='{height - 2}' font-size='9' text-anchor='end' fill='#444'>"
        f"{_esc(_fmt(hi))}</text>"
    )
    if lo < 0 < hi and 0.1 < -lo / (hi - lo) < 0.9:
        parts.append(
            f"<text x='{-lo / (hi - lo) * width:.2f}' y='{height - 2}' font-size='9' "
            "text-anchor='middle' fill='#444'>0</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _dist_data(rec: dict[str, Any]) -> str:
    """The histogram and its marks as an escaped data-* attribute value: the drawing's data,
    embedded in the page for whoever wants the numbers (no script reads it)."""
    import json

    d = rec.get("distribution") or {}
    h = d.get("histogram") or {}
    payload = {
        "index": rec.get("index"),
        "lo": h.get("lo"),
        "hi": h.get("hi"),
        "counts": h.get("counts") or [],
        "marks": _marks(rec),
    }
    return _esc(json.dumps(payload, separators=(",", ":"), allow_nan=False))


def _dist_cell(rec: dict[str, Any]) -> str:
    """The small histogram beside a flagged record, with self and its top influencer named."""
    d = rec.get("distribution") or {}
    if not d.get("histogram"):
        return "<td class='muted'>—</td>"
    marks = _marks(rec)
    svg = _hist_svg(d["histogram"], marks, 190, 58, named=1)
    others = [m for m in marks if not m["self"]]
    sub = []
    if _num(d.get("self_share")) is not None:
        sub.append(f"self {_pct(d['self_share'])}")
    if d.get("n_significant") is not None:
        sub.append(
            f"{_esc(d['n_significant'])} significant other{'s' if d['n_significant'] != 1 else ''}"
        )
    if others:
        sub.append(f"top other <code>{_esc(_short_id(others[0]['id'], 18))}</code>")
    return (
        f"<td class='distcell'><div class='dist' data-hist='{_dist_data(rec)}'>{svg}</div>"
        f"<div class='sub'>{' · '.join(sub)}</div></td>"
    )


def _dist_details(rec: dict[str, Any], colspan: int) -> str:
    """A full-width row that opens on demand: the record's whole distribution (wide histogram,
    top influencers named), its quantiles and shares, and the top influencers with z."""
    d = rec.get("distribution") or {}
    if not d.get("histogram"):
        return ""
    marks = _marks(rec)
    svg = _hist_svg(d["histogram"], marks, 640, 170, named=TOP_MARKED)
    qs = d.get("quantiles") or {}
    qhead = "".join(f"<th>{_esc(k.replace('q', '', 1))}%</th>" for k in qs)
    qrow = "".join(f"<td class='num'>{_fmt(v)}</td>" for v in qs.values())
    facts = [
        ("others with a defined influence", _esc(d.get("n_others"))),
        ("significantly positive others", _esc(d.get("n_significant", "—"))),
        ("self share of the positive influence", _pct(d.get("self_share"))),
        ("top-1 other's share", _pct(d.get("top1_share"))),
        ("top-5 others' share", _pct(d.get("top5_share"))),
        ("margin", _fmt(d.get("margin"))),
        ("mean ± std of the others", f"{_fmt(d.get('mean'))} ± {_fmt(d.get('std'))}"),
        ("min / max of the others", f"{_fmt(d.get('min'))} / {_fmt(d.get('max'))}"),
    ]
    kv = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    t = rec.get("index")
    tops = []
    for e in rec.get("top_influencers") or []:
        v, se = _num(e.get("influence")), _num(e.get("se"))
        z = _fmt(v / se, 3) if v is not None and se else "—"
        who = "self" if e.get("index") == t else ""
        tops.append(
            f"<tr><td><code>{_esc(e.get('id'))}</code> {who}</td>"
            f"<td class='num'>{_fmt_pm(v, se)}</td><td class='num'>{z}</td></tr>"
        )
    return (
        f"<tr class='distrow'><td colspan='{colspan}'><details class='dist'><summary>Influence "
        f"distribution of <code>{_esc(rec.get('id'))}</code></summary>"
        f"<div class='distfull'><div>{svg}<p class='sub'>Counts (log scale) of I[t, i] over the "
        "other records i; self (solid blue) and the strongest other influencers (dashed) are "
        "marked and named.</p>"
        f"<table class='data quant'><thead><tr><th>quantile</th>{qhead}</tr></thead><tbody>"
        f"<tr><th>I[t, i]</th>{qrow}</tr></tbody></table></div>"
        f"<div><table class='kv'>{kv}</table><table class='data'><thead><tr><th>top "
        "influencer</th><th>influence</th><th>z</th></tr></thead>"
        f"<tbody>{''.join(tops)}</tbody></table></div></div></details></td></tr>"
    )


def _lowest_margin_section(report: dict[str, Any], flagged: dict | None) -> str:
    """Image runs: the lowest-margin targets beside their top influencer (the paper's figure),
    each with the distribution of the influences on it."""
    lowest = report.get("lowest_margin") or []
    if not lowest:
        return ""
    side = (flagged or {}).get("image") or {}
    thumbs = side.get("thumbnails") or {}
    rows = side.get("lowest_rows") or []
    out = [
        "<section id='lowest-margin'><h2>Lowest-margin targets</h2><p class='lead'>Targets "
        "with the lowest Top-1 influence margin (self-influence / the largest influence of "
        "another image, that one measured with the target's own inclusion held fixed so that "
        "chance overlap of inclusion patterns does not pass for influence; the run's margin "
        "in brackets): their own inclusion no longer dominates, usually because a "
        "near-duplicate competes. Each is shown beside that most influential other image."
        + (" Images are not shown in a redacted report." if report.get("redacted") else "")
        + "</p>"
    ]
    for k, e in enumerate(lowest):
        top = e.get("top_influencer") or {}
        t, o = e.get("index"), top.get("index")
        planted = ""
        if e.get("group") is not None:
            planted = (
                " · <strong>planted pair</strong>" if top.get("same_group") else " · not its group"
            )
        svg = (
            _influence_row_svg(rows[k], t, o, f"lm{k}")
            if k < len(rows) and rows[k] is not None
            else ""
        )
        out.append(
            "<div class='lm'>"
            f"<figure>{_thumb(thumbs, t)}<figcaption>target<br>{_esc(e.get('label'))}"
            "</figcaption></figure>"
            f"<figure>{_thumb(thumbs, o)}<figcaption>top influencer<br>"
            f"{_esc(top.get('label', '—'))}</figcaption></figure>"
            f"<div><strong>{_esc(e.get('id'))}</strong> ← {_esc(top.get('id', '—'))}<br>"
            f"margin {_fmt(e.get('centred_margin'))} (run's margin {_fmt(e.get('margin'))}) · "
            f"influence {_fmt_pm(top.get('centred_influence'), top.get('centred_se'))} · "
            "self-influence "
            f"{_fmt(e.get('self_influence'))} · pixel similarity "
            f"{_fmt(top.get('pixel_similarity'))}{planted}</div>"
            f"<div>{svg}</div></div>"
        )
    out.append("</section>")
    return "".join(out)


def _clusters_section(report: dict[str, Any], has_bleu: bool, flagged: dict | None = None) -> str:
    recs = _record_map(report)
    modality = MODALITIES.get(report.get("modality"), TEXT)
    thumbs = ((flagged or {}).get("image") or {}).get("thumbnails") or {}
    redacted = bool(report.get("redacted"))
    dists = any((r.get("distribution") or {}).get("histogram") for r in recs.values())
    ordered = _cluster_order(report)
    out = ["<section id='clusters'><h2>Flagged clusters</h2>"]
    if not ordered:
        out.append("<p class='muted'>No cluster was flagged.</p></section>")
        return "".join(out)
    shown = ordered[:MAX_CLUSTER_PANELS]
    out.append(
        "<p class='lead'>Riskiest first. <em>textual</em> (<em>visual</em>, for images): the "
        "members are near-duplicate texts (images); "
        "<em>influence</em>: the members influence each other without similar text; "
        "<em>mixed</em>: both. Differences are highlighted against the cluster's first member"
        + ("." if not redacted else " (not in a redacted report).")
        + "</p>"
    )
    # Overview.
    gain_col = "<th>max BLEU gain</th>" if has_bleu else ""
    rows = []
    for rank, c in enumerate(shown, 1):
        gain = f"<td class='num'>{_fmt(c.get('max_bleu_gain'))}</td>" if has_bleu else ""
        rows.append(
            f"<tr><td class='num'>{rank}</td>"
            f"<td><a href='#cluster-{_esc(c.get('id'))}'>C{_esc(c.get('id'))}</a></td>"
            f"<td>{_kind_badge(c.get('kind'))}</td>"
            f"<td class='num'>{len(c.get('members') or [])}</td>"
            f"<td class='num'>{_fmt(c.get('min_margin'))}</td>{gain}"
            f"<td class='num'><strong>{_fmt(c.get('risk_score'))}</strong></td></tr>"
        )
    out.append(
        "<table class='data overview'><thead><tr><th>#</th><th>cluster</th><th>kind</th>"
        f"<th>size</th><th>min margin</th>{gain_col}<th>risk score</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    if len(ordered) > len(shown):
        out.append(
            f"<p class='muted'>{len(ordered) - len(shown)} more clusters are in report.json; "
            f"the {len(shown)} riskiest are shown.</p>"
        )

    for rank, c in enumerate(shown, 1):
        members = list(c.get("members") or [])
        cid = _esc(c.get("id"))
        out.append(f"<article class='cluster' id='cluster-{cid}'>")
        out.append(
            f"<div class='cluster-head'><h3>#{rank} · cluster C{cid}</h3>"
            f"{_kind_badge(c.get('kind'))}"
            f"<span class='muted'>{len(members)} records · min margin {_fmt(c.get('min_margin'))}"
            + (f" · max BLEU gain {_fmt(c.get('max_bleu_gain'))}" if has_bleu else "")
            + f"</span><span class='risk'>risk {_fmt(c.get('risk_score'))}</span></div>"
        )
        reasons = [r for r in c.get("reasons") or [] if r]
        if reasons:
            out.append(
                "<ul class='reasons'>" + "".join(f"<li>{_esc(r)}</li>" for r in reasons) + "</ul>"
            )
        base_rec = recs.get(members[0]) if members else None
        base_text = base_rec.get("text") if _has_text(base_rec, redacted) else None
        body = []
        for k, idx in enumerate(members):
            rec = recs.get(idx)
            if rec is None:
                body.append(
                    f"<tr><td>#{_esc(idx)}</td>"
                    "<td colspan='5' class='muted'>not in report</td></tr>"
                )
                continue
            if not _has_text(rec, redacted):
                text = _redacted_text(rec)
            elif modality.stores_pixels:
                text = _thumb(thumbs, idx, "member-thumb") + _esc(rec["text"])
            elif k == 0 or base_text is None:
                text = _render_text(rec["text"])
            else:
                text = _render_diff(base_text, rec["text"])
            ref = (
                " <span class='ref'>reference</span>"
                if k == 0 and len(members) > 1 and base_text is not None
                else ""
            )
            body.append(
                f"<tr><td class='rid'>{_rec_label(rec, idx)}"
                f"<div class='sub'>index {_esc(idx)}</div>{ref}</td>"
                f"<td class='text'>{text}</td>{_metric_cells(rec, has_bleu)}"
                f"<td>{_esc(rec.get('group') or '—')}</td>"
                + (_dist_cell(rec) if dists else "")
                + "</tr>"
                + (_dist_details(rec, 6 + has_bleu) if dists else "")
            )
        out.append(
            "<table class='data members'><thead><tr><th>record</th><th>text</th>"
            f"{_metric_heads(has_bleu)}<th>group</th>"
            + ("<th>influence on it</th>" if dists else "")
            + f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
        )
        links = list(c.get("links") or [])
        if links:
            lrows = []
            for ln in links[:MAX_LINKS_PER_CLUSTER]:
                s, t = ln.get("source"), ln.get("target")
                lrows.append(
                    f"<tr><td>{_rec_label(recs.get(s), s)} <span class='arrow'>→</span> "
                    f"{_rec_label(recs.get(t), t)}</td>"
                    f"<td class='num'>{_fmt_pm(ln.get('influence'), ln.get('se'))}</td>"
                    f"<td class='num'>{_fmt(ln.get('z'))}</td>"
                    f"<td class='num'>{_fmt(_link_similarity(ln))}</td>"
                    f"<td>{_link_rule(ln)}</td></tr>"
                )
            more = (
                f"<p class='muted'>{len(links) - MAX_LINKS_PER_CLUSTER} more links in "
                "report.json.</p>"
                if len(links) > MAX_LINKS_PER_CLUSTER
                else ""
            )
            out.append(
                "<details class='links' open><summary>Influence links "
                f"({len(links)})</summary><table class='data'><thead><tr>"
                "<th>source → target</th><th>influence I[t, i]</th><th>z</th>"
                f"<th>{modality.similarity} similarity</th><th>rule</th></tr></thead>"
                f"<tbody>{''.join(lrows)}</tbody></table>{more}</details>"
            )
        out.append("</article>")
    out.append("</section>")
    return "".join(out)


def _unique_section(report: dict[str, Any], has_bleu: bool) -> str:
    recs = _record_map(report)
    redacted = bool(report.get("redacted"))
    flagged = [
        f
        for f in (report.get("findings") or {}).get("records") or []
        if (recs.get(f.get("index")) or {}).get("cluster") is None
    ]
    out = ["<section id='unique'><h2>Top-risk unique records</h2>"]
    if not flagged:
        out.append("<p class='muted'>No unique record was flagged.</p></section>")
        return "".join(out)
    shown = flagged[:MAX_UNIQUE_RECORDS]
    dists = any((recs.get(f.get("index")) or {}).get("distribution") for f in shown)
    out.append(
        "<p class='lead'>Records outside every cluster that the audit still flags: for a high, "
        "significant self-influence (the model memorises them on their own), for becoming "
        "extractable when trained on (BLEU gain), or for a high membership-inference AUC.</p>"
    )
    extra_heads = "<th>BLEU gain</th>" if has_bleu else ""
    mia = any(_num((recs.get(f.get("index")) or {}).get("mia_auc")) is not None for f in shown)
    if mia:
        extra_heads += "<th>MIA AUC</th>"
    body = []
    for rank, f in enumerate(shown, 1):
        idx = f.get("index")
        rec = recs.get(idx) or {"index": idx}
        text = _render_text(rec["text"]) if _has_text(rec, redacted) else _redacted_text(rec)
        reasons = "".join(f"<li>{_esc(r)}</li>" for r in f.get("reasons") or [])
        others = [t for t in rec.get("top_influencers") or [] if t.get("index") != idx][:1]
        top = (
            "<div class='sub'>strongest other influencer: "
            f"<code>{_esc(others[0].get('id'))}</code> "
            f"({_fmt(others[0].get('influence'))})</div>"
            if others
            else ""
        )
        extra = f"<td class='num'>{_fmt(rec.get('bleu_gain'))}</td>" if has_bleu else ""
        if mia:
            extra += f"<td class='num'>{_fmt_bleu(rec.get('mia_auc'))}</td>"
        body.append(
            f"<tr><td class='num'>{rank}</td>"
            f"<td class='rid'>{_rec_label(rec, idx)}<div class='sub'>index {_esc(idx)}</div></td>"
            f"<td class='text'>{text}<ul class='reasons'>{reasons}</ul>{top}</td>"
            f"<td class='num'><strong>{_fmt(f.get('risk_score'))}</strong></td>"
            f"{_metric_cells(rec, has_bleu)}{extra}"
            + (_dist_cell(rec) if dists else "")
            + "</tr>"
            + (_dist_details(rec, 7 + 2 * has_bleu + mia) if dists else "")
        )
    out.append(
        "<table class='data unique'><thead><tr><th>#</th><th>record</th><th>text and reasons</th>"
        f"<th>risk</th>{_metric_heads(has_bleu)}{extra_heads}"
        + ("<th>influence on it</th>" if dists else "")
        + f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
    if len(flagged) > len(shown):
        out.append(
            f"<p class='muted'>{len(flagged) - len(shown)} more flagged unique records are in "
            "report.json.</p>"
        )
    out.append("</section>")
    return "".join(out)


def _config_section(report: dict[str, Any]) -> str:
    def rows(d: Any, prefix: str = "") -> list[str]:
        out = []
        if isinstance(d, dict):
            for k, v in d.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(v, dict):
                    out.extend(rows(v, key))
                else:
                    out.append(
                        f"<tr><th><code>{_esc(key)}</code></th><td>{_esc(_plain(v))}</td></tr>"
                    )
        return out

    def _plain(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, (list, tuple)):
            return ", ".join(str(x) for x in v) or "—"
        return str(v)

    parts = []
    for title, key in (
        ("Run configuration", "config"),
        ("Finding thresholds", "thresholds"),
        ("Versions", "versions"),
    ):
        r = rows(report.get(key))
        if r:
            parts.append(
                f"<details><summary>{title}</summary>"
                f"<table class='kv'>{''.join(r)}</table></details>"
            )
    if not parts:
        return ""
    return "<section id='config'><h2>Configuration</h2>" + "".join(parts) + "</section>"


_CSS = """
:root{--fg:#1f2328;--muted:#656d76;--line:#d8dee4;--bg:#ffffff;--soft:#f6f8fa;
--accent:#0b5cad;--clu:#D55E00;--uni:#0072B2;--mark:#ffe08a}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:#eef1f4;color:var(--fg);line-height:1.45;
font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,
"Noto Sans","DejaVu Sans",sans-serif}
main{max-width:1180px;margin:24px auto;background:var(--bg);padding:28px 36px 40px;
border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:26px;margin:4px 0 14px;font-weight:650}
h2{font-size:20px;margin:34px 0 10px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:16px;margin:22px 0 8px}
code{font:12.5px/1.3 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
background:var(--soft);padding:1px 4px;border-radius:4px;word-break:break-all}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.brand{font-size:12px;letter-spacing:.08em;text-transform:uppercase;color:var(--muted)}
.muted{color:var(--muted)}
.sub{font-size:12px;color:var(--muted)}
.lead{max-width:900px}
.caption{font-size:13px;color:var(--muted);max-width:900px;margin:4px 0 10px}
nav.toc{font-size:13px;margin:8px 0 0;color:var(--muted)}
nav.toc a{margin-right:14px}
table.meta{border-collapse:collapse;margin:6px 0 4px}
table.meta th{text-align:left;font-weight:600;color:var(--muted);padding:3px 18px 3px 0;
vertical-align:top;white-space:nowrap}
table.meta td{padding:3px 0}
.headline{border:1px solid var(--line);border-left:6px solid #1a7f37;padding:4px 14px;
margin:12px 0}.headline.warn{border-left-color:#e08a00;background:#fff8ee}
.banner{background:#fff4e5;border:1px solid #f0b45b;border-left:6px solid #e08a00;
padding:10px 14px;border-radius:6px;margin:10px 0 14px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0 16px}
.card{flex:1 1 150px;background:var(--soft);border:1px solid var(--line);border-radius:8px;
padding:10px 14px}
.card .big{font-size:24px;font-weight:650}
.card .label{font-size:12px;color:var(--muted)}
.cards.small .big{font-size:20px}
table.data{border-collapse:collapse;width:100%;margin:8px 0 14px;font-size:13px}
table.data th,table.data td{border-bottom:1px solid var(--line);padding:6px 8px;
vertical-align:top;text-align:left}
table.data thead th{background:var(--soft);font-weight:600;white-space:nowrap;
border-bottom:2px solid var(--line)}
table.data tbody tr:nth-child(even){background:#fbfcfd}
table.summary{width:auto;min-width:640px}
table.summary td,table.summary tbody th{padding:8px 16px 8px 8px}
table.overview{width:auto;min-width:560px}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.rid{max-width:190px;word-break:break-all}
td.text{min-width:320px;word-break:break-word;white-space:pre-wrap}
td.text ul.reasons{white-space:normal}
.pm{color:var(--muted);font-size:12px}
.warn{color:#9a6700;font-weight:600}
mark{background:var(--mark);color:inherit;padding:0 2px;border-radius:3px;
box-shadow:inset 0 -1px 0 #e0b000}
del{color:#a40e26;background:#ffebe9;text-decoration:line-through;padding:0 2px;border-radius:3px}
.redacted{color:var(--muted);font-style:italic}
.cut{color:var(--muted);font-style:italic}
.ref{display:inline-block;margin-top:3px;font-size:11px;color:var(--muted);
border:1px solid var(--line);border-radius:10px;padding:0 6px}
.callout{background:#f1f8ff;border:1px solid #c8e1ff;border-left:6px solid var(--accent);
padding:10px 16px;border-radius:6px;margin:14px 0}
.callout-title{font-weight:650;margin-bottom:4px}
.callout ul{margin:4px 0 0;padding-left:20px}
figure.plot{margin:8px 0 4px;padding:8px;border:1px solid var(--line);border-radius:8px;
background:#fff;text-align:center;overflow-x:auto}
figure.plot svg{display:inline-block}
svg *{stroke-linejoin:round;stroke-linecap:butt}
.placeholder{background:var(--soft);border:1px dashed var(--line);border-radius:8px;
padding:14px 16px}
article.cluster{border:1px solid var(--line);border-radius:10px;padding:4px 18px 10px;
margin:18px 0;background:#fff}
.cluster-head{display:flex;flex-wrap:wrap;align-items:center;gap:10px;padding-top:10px}
.cluster-head h3{margin:0}
.risk{margin-left:auto;font-weight:650;background:#fdecea;color:#8a1c0e;border-radius:12px;
padding:2px 10px;font-size:13px}
.badge{display:inline-block;font-size:11.5px;font-weight:600;border-radius:10px;padding:1px 9px;
text-transform:uppercase;letter-spacing:.04em}
.badge.textual,.badge.visual{background:#fde7da;color:#8a3b00}
.lm{display:grid;grid-template-columns:auto auto 1fr minmax(220px,320px);gap:6px 14px;
align-items:center;border-top:1px solid var(--soft);padding:8px 0}
.lm figure{margin:0;text-align:center;font-size:11.5px}
.lm img{width:64px;height:64px;image-rendering:pixelated;border:1px solid #ccc}
.member-thumb{width:32px;height:32px;image-rendering:pixelated;vertical-align:middle;
margin-right:6px;border:1px solid #ccc}
.badge.influence{background:#dcebf8;color:#0b4f8a}
.badge.mixed{background:#ece2f7;color:#5b2a8c}
.badge.unknown{background:var(--soft);color:var(--muted)}
ul.reasons{margin:6px 0 8px;padding-left:20px;font-size:13px}
ul.reasons li{margin:1px 0}
details{margin:6px 0}
td.distcell{min-width:190px}
tr.distrow td{padding:0 8px 6px;background:#fff}
tr.distrow details{margin:0}
tr.distrow details>summary{font-weight:normal;font-size:12.5px}
.distfull{display:flex;flex-wrap:wrap;gap:14px 28px;align-items:flex-start;padding:6px 0}
svg.dist{max-width:100%;height:auto;display:block}
table.quant{width:auto}
details>summary{cursor:pointer;font-weight:600;color:var(--accent)}
table.kv{border-collapse:collapse;font-size:13px;margin:6px 0 10px}
table.kv th{text-align:left;font-weight:normal;padding:2px 18px 2px 0;color:var(--muted)}
table.kv td{padding:2px 0}
.arrow{color:var(--muted)}
footer{margin-top:36px;font-size:12px;color:var(--muted);border-top:1px solid var(--line);
padding-top:10px}
@media print{body{background:#fff}main{box-shadow:none;margin:0;max-width:none;padding:0}
article.cluster,figure.plot{break-inside:avoid}}
"""


def render_html(report: dict, flagged: dict | None = None) -> str:
    """Render the report dict (schema "memaudit-report" 1.x) as one self-contained HTML page.

    report: the report.json dict. flagged: {"indices": [record indices ordered by cluster],
    "matrix": array (len x len), influence I[t, i] among them (rows targets)}, or None when not
    available. Returns the page as a string (UTF-8 text; write it with encoding="utf-8").
    """
    report = report or {}
    records = report.get("records") or []
    if any(_num(r.get("bleu_in")) is not None for r in records):
        bleu_key: str | None = "bleu_in"
    elif any(_num(r.get("bleu_gain")) is not None for r in records):
        bleu_key = "bleu_gain"
    else:
        bleu_key = None
    has_bleu = bleu_key is not None

    ds = report.get("dataset") or {}
    name = str(ds.get("path") or "dataset").replace("\\", "/").rsplit("/", 1)[-1]
    toc = (
        "<nav class='toc'><a href='#summary'>Summary</a>"
        + ("<a href='#lira'>LiRA</a>" if report.get("lira") else "")
        + ("<a href='#dedup'>Deduplicator</a>" if report.get("dedup") else "")
        + "<a href='#plots'>Plots</a>"
        + ("<a href='#lowest-margin'>Lowest margins</a>" if report.get("lowest_margin") else "")
        + ("<a href='#near-duplicates'>Per record</a>" if report.get("near_duplicates") else "")
        + "<a href='#clusters'>Clusters</a><a href='#unique'>Unique records</a>"
        "<a href='#config'>Configuration</a></nav>"
    )
    schema = f"{report.get('schema', 'memaudit-report')} {report.get('schema_version', '')}"
    body = [
        _header(report),
        _headline_section(report),
        toc,
        _table_section(report, has_bleu),
        _near_duplicates_section(report),
        _influence_clusters_section(report),
        _convergence_section(report),
        _lira_section(report),
        _dedup_section(report),
        _plots_section(report, flagged, bleu_key),
        _lowest_margin_section(report, flagged),
        _clusters_section(report, has_bleu, flagged),
        _unique_section(report, has_bleu),
        _config_section(report),
        f"<footer>Generated by memaudit from {_esc(schema.strip())}. Influence I[t, i] is the "
        "mean loss on target t over models trained without record i minus the mean over models "
        "trained with it (Meeus et al., 2025). This file is self-contained and works "
        "offline.</footer>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>memaudit report · {_esc(name)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Measured the way the field measures: LiRA and a deduplicator (report 1.4, optional)

_LIRA_GROUPS = {"overall": "all records", "in_clusters": "in clusters", "unique": "unique"}


def _lira_roc_svg(lira: dict[str, Any]) -> str:
    """ROC over (record, model) pairs with a log FPR axis, as the field draws it."""
    import matplotlib

    styles = {
        ("online", "overall"): ("#000000", "-"),
        ("offline", "overall"): ("#000000", ":"),
        ("online", "in_clusters"): (COLOR_CLUSTERED, "-"),
        ("online", "unique"): (COLOR_UNIQUE, "-"),
    }
    with matplotlib.rc_context(_RC):
        fig = _new_figure(5.2, 3.6)
        ax = fig.add_subplot()
        lo = 1.0
        for (variant, group), (color, ls) in styles.items():
            m = ((lira.get("variants") or {}).get(variant) or {}).get(group) or {}
            curve = m.get("curve")
            if not curve or not curve.get("fpr"):
                continue
            fpr = np.asarray(curve["fpr"], dtype=float)
            tpr = np.asarray(curve["tpr"], dtype=float)
            lo = min(lo, float(fpr.min()))
            auc = _num(m.get("auc"))
            label = f"{variant}, {_LIRA_GROUPS.get(group, group)}" + (
                f" (AUC {auc:.3f})" if auc is not None else ""
            )
            ax.step(fpr, tpr, where="post", color=color, ls=ls, lw=1.4, label=label)
        grid = np.geomspace(max(lo, 1e-6), 1.0, 50)
        ax.plot(grid, grid, color="#999999", lw=0.8, ls="--", label="chance")
        from matplotlib import ticker

        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # decades only: 1, 2, 5 crowd a 5-decade axis
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,)))
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlim(max(lo, 1e-6), 1.0)
        ax.set_ylim(max(lo, 1e-6), 1.02)
        for a in (0.001, 0.01):
            ax.axvline(a, color="#cccccc", lw=0.8)
        ax.set_xlabel("false-positive rate (log scale)")
        ax.set_ylabel("true-positive rate (log scale)")
        ax.legend(fontsize=7.5, loc="lower right")
        return _svg(fig, "lira-roc")


def _pct_ci_html(m: dict[str, Any], key: str) -> str:
    value = _num(m.get(key))
    if value is None:
        return "—"
    ci = (m.get("ci") or {}).get(key)
    tail = (
        f" <span class='muted'>[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]</span>"
        if isinstance(ci, list) and len(ci) == 2
        else ""
    )
    return f"{100 * value:.1f}%{tail}"


def _lira_section(report: dict[str, Any]) -> str:
    lira = report.get("lira")
    if not isinstance(lira, dict):
        return ""
    rows = []
    for variant, groups in (lira.get("variants") or {}).items():
        for group, m in (groups or {}).items():
            auc = _num(m.get("auc"))
            ci = (m.get("ci") or {}).get("auc")
            auc_html = "—" if auc is None else f"{auc:.3f}"
            if auc is not None and isinstance(ci, list) and len(ci) == 2:
                auc_html += f" <span class='muted'>[{ci[0]:.3f}, {ci[1]:.3f}]</span>"
            rows.append(
                f"<tr><th>{_esc(variant)}</th><td>{_esc(_LIRA_GROUPS.get(group, group))}</td>"
                f"<td>{_esc(m.get('pairs'))}</td><td>{auc_html}</td>"
                f"<td>{_pct_ci_html(m, 'tpr_at_0.1%')}</td>"
                f"<td>{_pct_ci_html(m, 'tpr_at_1%')}</td></tr>"
            )
    fpr = _num(lira.get("fpr"))
    return (
        "<section id='lira'><h2>Membership inference as the field measures it (LiRA)</h2>"
        "<p class='lead'>Each model of the ensemble is taken in turn as the target; a record's "
        "in- and out-distributions of the statistic "
        f"<code>{_esc(lira.get('statistic'))}</code> are fitted on the <em>other</em> models "
        f"({_esc(lira.get('variance'))} variance), and every (record, model) pair is scored by "
        "the likelihood ratio (online) or against the out-distribution alone (offline). "
        "Privacy audits read the true-positive rate at a low false-positive rate; brackets: "
        "95% intervals over target models.</p>"
        + _lira_roc_svg(lira)
        + "<table class='data'><thead><tr><th>variant</th><th>records</th><th>pairs</th>"
        "<th>AUC</th><th>TPR at 0.1% FPR</th><th>TPR at 1% FPR</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + (
            f"<p class='sub'>Record level: <code>lira_tpr</code> is the share of the models "
            f"that trained on a record in which an attacker at {100 * fpr:g}% FPR over the "
            "whole dataset calls it a member; unique records flagged for membership use it.</p>"
            if fpr is not None
            else ""
        )
        + "</section>"
    )


def _dedup_section(report: dict[str, Any]) -> str:
    dedup = report.get("dedup")
    if not isinstance(dedup, dict):
        return ""
    recs = _record_map(report)
    redacted = bool(report.get("redacted"))

    def show(i: Any) -> str:
        rec = recs.get(i)
        label = _rec_label(rec, i)
        if _has_text(rec, redacted):
            text = str(rec.get("text"))
            label += " " + _esc(text[:80] + ("…" if len(text) > 80 else ""))
        return label

    def examples(kind: dict[str, Any]) -> str:
        items = []
        for ex in (kind.get("examples") or [])[:3]:
            members = ex.get("pair") or ex.get("members") or []
            line = "<br>".join(show(i) for i in members[:4])
            frac = _num(ex.get("fraction_of_self"))
            if frac is not None:
                line += (
                    f"<br><span class='muted'>influence between them: {100 * frac:.0f}% of the "
                    "larger self-influence</span>"
                )
            items.append(f"<li>{line}</li>")
        return f"<ul>{''.join(items)}</ul>" if items else "—"

    kinds = (
        ("confirmed", "Near-duplicates that also influence each other (confirmed)", "groups"),
        (
            "dedup_only",
            "Near-duplicates by content only: a deduplicator removes them, but the "
            "ensemble did not link them at this number of models (influence evidence below)",
            "groups",
        ),
        (
            "influence_only",
            "Influence clusters the deduplicator does not group (below its similarity threshold): "
            "what a deduplicator misses",
            "clusters",
        ),
    )
    body = "".join(
        f"<tr><th>{_esc(label)}</th><td>{_esc((dedup.get(key) or {}).get('pairs'))}</td>"
        f"<td>{_esc((dedup.get(key) or {}).get(unit, '—'))} {unit}</td>"
        f"<td>{examples(dedup.get(key) or {})}</td></tr>"
        for key, label, unit in kinds
    )
    ev = (dedup.get("dedup_only") or {}).get("evidence") or {}
    ev_html = ""
    if _num(ev.get("median_fraction_of_self")) is not None:
        ev_html = (
            f"<p class='sub'>Influence evidence for the deduplicator-only pairs "
            f"({_esc(ev.get('pairs'))} read): the larger of I[a, b] and I[b, a] is a median "
            f"{_pct(ev.get('median_fraction_of_self'))} of the larger self-influence (10th-90th "
            f"percentile {_pct(ev.get('p10_fraction_of_self'))}-"
            f"{_pct(ev.get('p90_fraction_of_self'))}), against "
            f"{_pct(ev.get('chance_median_fraction'))} for the same records beside a random "
            f"record (90th percentile {_pct(ev.get('chance_p90_fraction'))}).</p>"
        )
    params = dedup.get("params") or {}
    how = ", ".join(f"{k} {v}" for k, v in params.items())
    gt = dedup.get("ground_truth")
    gt_html = ""
    if isinstance(gt, dict):
        d, c = gt.get("dedup") or {}, gt.get("clusters") or {}
        gt_html = (
            "<table class='data'><thead><tr><th>against the planted groups</th>"
            "<th>pair precision</th><th>pair recall</th><th>groups found</th></tr></thead><tbody>"
            f"<tr><th>deduplicator</th><td>{_pct(d.get('pair_precision'))}</td>"
            f"<td>{_pct(d.get('pair_recall'))}</td><td>{_esc(d.get('groups_found'))} of "
            f"{_esc(d.get('groups'))}</td></tr>"
            f"<tr><th>influence clusters</th><td>{_pct(c.get('pair_precision'))}</td>"
            f"<td>{_pct(c.get('pair_recall'))}</td><td>{_esc(c.get('groups_found'))} of "
            f"{_esc(c.get('groups'))}</td></tr></tbody></table>"
        )
    return (
        "<section id='dedup'><h2>Beside a deduplicator</h2>"
        f"<p class='lead'>{_esc(dedup.get('method'))} ({_esc(how)}): "
        f"{_esc(dedup.get('dedup_groups'))} groups, {_esc(dedup.get('dedup_pairs'))} record "
        f"pairs; the influence clusters hold {_esc(dedup.get('cluster_pairs'))} pairs.</p>"
        "<table class='data'><thead><tr><th>kind</th><th>pairs</th><th></th><th>examples</th>"
        f"</tr></thead><tbody>{body}</tbody></table>{ev_html}{gt_html}</section>"
    )
