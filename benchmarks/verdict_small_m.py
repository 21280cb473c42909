"""How close do few models come to the verdict of the largest ensemble, on data nobody tuned to?

    python benchmarks/verdict_small_m.py                  # build, train what is missing, score
    python benchmarks/verdict_small_m.py --evaluate-only  # trains nothing: re-score the cache

Issue #14, item 4. Two tasks, each built reproducibly here from read-only files into
benchmarks/cache/verdict/data/ (git-ignored), the ground truth kept beside the data, never in it
(ids are renamed r0000.. and the order shuffled, so the audit is blind):

- ``nq``: held-out NQ-open dev questions (../shared/data/nq_open, none of the demo's by question
  text): 240 unique; 20 groups of 2-5 copies made by ``memaudit.data.plant`` (whitespace-word
  edits of the answer, 1-3 per copy); 20 groups of one question with each of its distinct valid
  answers (questions with >= 2, group size min(#answers, 5)). Preset nq.
- ``sms``: ../shared/data/sms_spam: 240 unique messages, 20 of its natural duplicate groups
  (messages equal after lower-casing and collapsing every run of non-alphanumerics to one space;
  at most 5 copies kept per group), and 20 planted groups of 2-5 copies (word edits, 1-3 per
  copy). Records ``{"id", "text"}``.

Seeds 0, 1, 2 per task: the seed draws the records, the planting and the run (``--seed``).
Settings: ``strong`` = the bundled demo's (fixtures/demo/demo.toml: full fine-tuning of
fixtures/tiny-gpt-neo, 15 epochs, lr 3e-3, batch 16, max_length 64), 64 models; ``weak`` =
memaudit's defaults (the paper's: LoRA r 8, 3 epochs, lr 2e-4) with ``--max-length 64`` (issue
#19's command), 128 models. Each (task, setting, seed) is one ``python -m memaudit run`` into
benchmarks/cache/verdict/<task>-<setting>-s<seed>, cached; a rerun resumes.

Evaluation calls the real code paths only, so it follows any change to them: ``Audit.open`` on
the run, ``audit.analyze(models=M, estimator=E)`` (the first M models, nothing written),
``memaudit.findings.build.build_findings``; scores against the ground truth with
``memaudit.findings.ground_truth.score_against_groups``; the per-record near-duplicate verdict is
``findings.near_duplicate.flag`` when Findings has it, else ``cluster_of >= 0`` (the JSON says
which). ``--models auto`` is replayed with ``memaudit.convergence.adaptive.check`` over
``round_sizes(16, MMAX)``, stopping at the first converged round; its rounds also give the
adjusted estimator's curve points (the same analysis and findings), so nothing is built twice.

Writes benchmarks/results/verdict_small_m.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import describe, machine
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
CACHE = HERE / "cache" / "verdict"
DATA = CACHE / "data"
RESULTS = HERE / "results"
TINY = ROOT / "fixtures" / "tiny-gpt-neo"

TASKS = ("nq", "sms")
SEEDS = (0, 1, 2)
SETTINGS = {
    # The bundled demo's settings, spelled out (demo.toml's preset does not fit sms).
    "strong": {
        "models": 64,
        "args": [
            "--finetune",
            "full",
            "--epochs",
            "15",
            "--lr",
            "3e-3",
            "--batch-size",
            "16",
            "--max-length",
            "64",
        ],
    },  # fmt: skip
    # memaudit's defaults (the paper's) with issue #19's --max-length.
    "weak": {"models": 128, "args": ["--max-length", "64"]},
}
GRID = (16, 32, 64, 128)
ESTIMATORS = ("plain", "adjusted")
N_UNIQUE, N_PLANTED, N_NATURAL = 240, 20, 20
COPIES, EDITS, MAX_NATURAL = (2, 5), (1, 3), 5


# -- datasets ---------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _qkey(q: str) -> str:
    return " ".join(q.lower().split())


def _plant(objects: list[dict], preset: str | None, seed: int) -> list[dict]:
    """memaudit.data.plant on ``objects`` (the first N_PLANTED ... chosen by plant's own seed):
    returns plant's output, each planted record carrying its ``group``."""
    from memaudit.data import plant
    from memaudit.data.records import RecordFormat

    DATA.mkdir(parents=True, exist_ok=True)
    src = DATA / f"_plant_source_{preset or 'text'}_{seed}.jsonl"
    src.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects))
    try:
        return list(
            plant.plant(src, RecordFormat(preset), groups=N_PLANTED, copies=COPIES, seed=seed,
                        edits=EDITS)
        )  # fmt: skip
    finally:
        src.unlink()


def build_nq(seed: int) -> tuple[list[dict], list[str | None]]:
    rng = np.random.default_rng(seed)
    seen = {
        _qkey(o["question"])
        for name in ("nq_source.jsonl", "nq_demo.jsonl")
        for o in _read_jsonl(ROOT / "fixtures" / "demo" / name)
    }
    pool, taken = [], set()
    for o in _read_jsonl(SHARED / "nq_open" / "NQ-open.dev.jsonl"):
        k = _qkey(o["question"])
        if k in seen or k in taken:  # held out, and each question once
            continue
        taken.add(k)
        answers = list(dict.fromkeys(a.strip() for a in o["answer"] if a.strip()))
        pool.append({"question": o["question"], "answer": answers})
    order = rng.permutation(len(pool))
    multi = [pool[i] for i in order if len(pool[i]["answer"]) >= 2][:N_NATURAL]
    multi_q = {_qkey(o["question"]) for o in multi}
    rest = [pool[i] for i in order if _qkey(pool[i]["question"]) not in multi_q]
    base = [{"question": o["question"], "answer": o["answer"][:1]} for o in rest]
    base = base[: N_UNIQUE + N_PLANTED]
    records, groups = [], []
    for o in _plant(base, "nq", seed):
        groups.append(None if "group" not in o else "p" + o["group"])
        records.append({"question": o["question"], "answer": o["answer"]})
    for g, o in enumerate(multi):
        for a in o["answer"][:MAX_NATURAL]:
            records.append({"question": o["question"], "answer": [a]})
            groups.append(f"a{g:03d}")
    return _finish(records, groups, rng, "nq")


def _smskey(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _shingles(text: str, k: int = 4) -> set[str]:
    t = _smskey(text)
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))}


def build_sms(seed: int) -> tuple[list[dict], list[str | None]]:
    rng = np.random.default_rng(seed)
    lines = (SHARED / "sms_spam" / "SMSSpamCollection").read_text(encoding="utf-8").splitlines()
    texts = [line.split("\t", 1)[1] for line in lines if line.strip()]
    assert len(texts) == 5574, len(texts)
    by_key: dict[str, list[str]] = {}
    for t in texts:
        by_key.setdefault(_smskey(t), []).append(t)
    # Natural groups: texts equal after normalisation, each with at least 3 words.
    natural = sorted(k for k, v in by_key.items() if len(v) >= 2 and len(k.split()) >= 3)
    chosen_nat = [natural[i] for i in rng.permutation(len(natural))[:N_NATURAL]]
    # Unique candidates: once in the whole file, 4+ words, and no close textual neighbour among
    # the chosen records (spam campaigns vary a prize or a code: not "unique" in truth).
    singles = [v[0] for k, v in by_key.items() if len(v) == 1 and len(k.split()) >= 4]
    picked: list[str] = []
    kept = [_shingles(by_key[k][0]) for k in chosen_nat]
    for i in rng.permutation(len(singles)):
        sh = _shingles(singles[i])
        if any(len(sh & o) / len(sh | o) > 0.5 for o in kept):
            continue
        picked.append(singles[i])
        kept.append(sh)
        if len(picked) == N_UNIQUE + N_PLANTED:
            break
    records, groups = [], []
    for o in _plant([{"text": t} for t in picked], None, seed):
        records.append({"text": o["text"]})
        groups.append(None if "group" not in o else "p" + o["group"])
    for g, k in enumerate(chosen_nat):
        for t in by_key[k][:MAX_NATURAL]:
            records.append({"text": t})
            groups.append(f"n{g:03d}")
    return _finish(records, groups, rng, "sms")


def _finish(records, groups, rng, task):
    """Shuffle, rename ids (plant's '-dup' ids would give the groups away), validate."""
    order = rng.permutation(len(records))
    records = [{"id": f"r{k:04d}", **records[i]} for k, i in enumerate(order)]
    groups = [groups[i] for i in order]
    text = (
        (lambda r: r["question"] + " " + r["answer"][0]) if task == "nq" else (lambda r: r["text"])
    )
    sizes: dict[str, int] = {}
    for g in groups:
        if g is not None:
            sizes[g] = sizes.get(g, 0) + 1
    kinds = {k: sum(1 for g in sizes if g[0] == k) for k in {g[0] for g in sizes}}
    assert sum(g is None for g in groups) == N_UNIQUE, "unique count"
    assert all(2 <= s <= MAX_NATURAL for s in sizes.values()), sizes
    assert kinds.get("p") == N_PLANTED, kinds
    assert kinds.get("a" if task == "nq" else "n") == N_NATURAL, kinds
    # Unique records are unique: no exact (normalised) text shared with any other record.
    keys = [_smskey(text(r)) for r in records]
    for k, g in zip(keys, groups, strict=True):
        if g is None:
            assert keys.count(k) == 1, f"unique record repeated: {k!r}"
    return records, groups


BUILDERS = {"nq": build_nq, "sms": build_sms}


def dataset(task: str, seed: int) -> tuple[Path, list[str | None]]:
    """The task's data file (built once) and its ground-truth group per record."""
    data, truth = DATA / f"{task}-s{seed}.jsonl", DATA / f"{task}-s{seed}.truth.json"
    if not (data.exists() and truth.exists()):
        records, groups = BUILDERS[task](seed)
        DATA.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        truth.write_text(json.dumps(groups) + "\n")
    return data, json.loads(truth.read_text())


# -- training ---------------------------------------------------------------------------------


def run_dir(task: str, setting: str, seed: int) -> Path:
    return CACHE / f"{task}-{setting}-s{seed}"


def n_done(path: Path, n_models: int) -> int:
    from memaudit.store.rundir import RunDir

    run = RunDir(path)
    if not (run.exists() and run.file("inclusion.npy").exists()):
        return 0
    return len(run.status(n_models)["ok"])


def train(task: str, setting: str, seed: int) -> Path:
    """One `python -m memaudit run` (exactly as a user runs it); a rerun resumes."""
    data, _ = dataset(task, seed)
    out = run_dir(task, setting, seed)
    mmax = SETTINGS[setting]["models"]
    if n_done(out, mmax) == mmax and out.joinpath("report.json").exists():
        return out
    cmd = [sys.executable, "-m", "memaudit", "run", str(data), "--model", str(TINY),
           "--models", str(mmax), "--seed", str(seed), "--out", str(out),
           *SETTINGS[setting]["args"]]  # fmt: skip
    if task == "nq":
        cmd += ["--preset", "nq"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.time()
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    print(f"  trained {out.name} in {time.time() - t0:.0f} s", flush=True)
    return out


# -- evaluation (trains nothing; the real code paths only) -------------------------------------


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    ok = np.isfinite(scores) | np.isposinf(scores)
    return float(roc_auc_score(labels[ok], scores[ok])) if len(set(labels[ok])) == 2 else None


def verdict_flags(findings) -> tuple[np.ndarray, str]:
    """The per-record near-duplicate verdict: ``findings.near_duplicate.flag`` once Findings
    carries it, else membership of any cluster."""
    nd = getattr(findings, "near_duplicate", None)
    if nd is not None:
        return np.asarray(nd.flag, dtype=bool), "near_duplicate.flag"
    return np.asarray(findings.cluster_of) >= 0, "cluster_of >= 0"


def score(analysis, findings, groups: list[str | None]) -> dict:
    from memaudit.findings.ground_truth import score_against_groups

    res = analysis.result
    grouped = np.array([g is not None for g in groups])
    # Unique records should have the larger margin (a near-duplicate's top influencer is close
    # to its own self-influence); undefined margins rank as unique.
    margin = np.where(res.margin_defined, res.margin, np.inf)
    s = score_against_groups(findings.cluster_of, groups)
    cof = np.asarray(findings.cluster_of)
    touched = 0  # groups with two or more records in one cluster (pure or not)
    for g in sorted({g for g in groups if g is not None}):
        c = cof[[k for k, x in enumerate(groups) if x == g]]
        c = c[c >= 0]
        touched += bool(c.size) and int(np.bincount(c).max()) >= 2
    flag, source = verdict_flags(findings)
    # The leads the per-record verdict names for flagged records no cluster holds: influence
    # partners and look-alikes (named by similarity alone); how many of the look-alikes listed
    # (over all flagged records) are planted mates.
    nd = getattr(findings, "near_duplicate", None)
    looks = getattr(nd, "look_alike", None) or [[] for _ in groups]
    alone = np.flatnonzero(flag & (cof < 0))
    listed = [(t, i) for t in np.flatnonzero(flag) for i in looks[t]]
    return {
        "auc_margin": _auc(~grouped, margin),
        "pair_precision": s["pair_precision"],
        "pair_recall": s["pair_recall"],
        "groups_touched": int(touched),
        "groups_found_pure": s["groups_found"],
        "groups": s["groups"],
        "clusters": s["clusters"],
        "clusters_pure": s["clusters_pure"],
        "flagged": int(flag.sum()),
        "verdict_vs_truth": float(np.mean(flag == grouped)),
        "verdict_source": source,
        "unclustered_flagged": len(alone),
        "unclustered_named": int(sum(bool(nd.partners[t] or looks[t]) for t in alone))
        if nd is not None
        else 0,
        "look_alikes": len(listed),
        "look_alike_mates": int(
            sum(groups[t] is not None and groups[t] == groups[i] for t, i in listed)
        ),
        "_flag": flag,
    }


def evaluate_run(task: str, setting: str, seed: int) -> dict:
    import dataclasses

    from memaudit.api import Audit
    from memaudit.convergence.adaptive import check, round_sizes
    from memaudit.findings.build import build_findings

    path = run_dir(task, setting, seed)
    _, groups = dataset(task, seed)
    audit = Audit.open(path)
    if audit.config.analysis.estimator != "adjusted":  # the default; the replay is of it
        analysis_cfg = dataclasses.replace(audit.config.analysis, estimator="adjusted")
        audit.config = dataclasses.replace(audit.config, analysis=analysis_cfg)
    records = audit.run_dir.records()
    assert len(records) == len(groups), f"{path}: {len(records)} records, {len(groups)} truths"
    mmax = int(audit.run_dir.inclusion().shape[1])
    grid = [m for m in GRID if m <= mmax]
    points: dict[tuple[str, int], dict] = {}
    builds: list[float] = []

    # --models auto, replayed with the real rule under both --auto-watch settings (the second
    # diagnoses the first's analysis and findings of the same models); its rounds are the
    # adjusted curve's points.
    watching = Audit.open(path)
    conv = dataclasses.replace(audit.config.convergence, watch="records")
    watching.config = dataclasses.replace(audit.config, convergence=conv)
    previous, auto, prev_r, auto_r = None, None, None, None
    rounds, rounds_r = [], []

    def row(m: int, d, secs: float) -> dict:
        return {"models": m, "converged": bool(d.converged), "seconds": round(secs, 1),
                "criteria": {c["name"]: {"value": c["value"], "met": bool(c["met"])}
                             for c in d.criteria}}  # fmt: skip

    for m in round_sizes(16, mmax):
        t0 = time.perf_counter()
        built = None
        if auto is None:
            now = check(audit, previous, models=m)
            rounds.append(row(m, now.diagnostics, time.perf_counter() - t0))
            previous = now
            built = (now.analysis, now.findings)
            if now.diagnostics.converged:
                auto = m
        if auto_r is None:
            t0 = time.perf_counter()
            now_r = check(watching, prev_r, models=m, built=built)
            rounds_r.append(row(m, now_r.diagnostics, time.perf_counter() - t0))
            prev_r = now_r
            built = (now_r.analysis, now_r.findings)
            if now_r.diagnostics.converged:
                auto_r = m
        points[("adjusted", m)] = score(built[0], built[1], groups)
        if auto is not None and auto_r is not None:
            break
    for est in ESTIMATORS:
        for m in sorted(set(grid) | {mmax}):
            if (est, m) in points:
                continue
            analysis = audit.analyze(models=m, estimator=est)
            t0 = time.perf_counter()
            findings = build_findings(audit.run_dir, analysis, audit.config.findings)
            builds.append(time.perf_counter() - t0)
            points[(est, m)] = score(analysis, findings, groups)
    for (est, _m), p in points.items():
        p["verdict_agreement"] = float(np.mean(p["_flag"] == points[(est, mmax)]["_flag"]))
    curves = {
        est: [{"models": m} | {k: v for k, v in points[(est, m)].items() if k != "_flag"}
              for m in sorted(set(grid) | {mmax})]
        for est in ESTIMATORS
    }  # fmt: skip
    stop = auto if auto is not None else mmax
    at_stop = {k: v for k, v in points[("adjusted", stop)].items() if k != "_flag"}
    stop_r = auto_r if auto_r is not None else mmax
    at_stop_r = {k: v for k, v in points[("adjusted", stop_r)].items() if k != "_flag"}
    return {
        "task": task,
        "setting": setting,
        "seed": seed,
        "run_dir": str(path.relative_to(ROOT)),
        "records": len(records),
        "models_max": mmax,
        "curves": curves,
        "auto": {
            "stopped_at": stop,
            "stopped_by": "converged" if auto is not None else f"cap ({mmax}) without converging",
            "rounds": rounds,
            "scores": at_stop,
        },
        "auto_records": {
            "stopped_at": stop_r,
            "stopped_by": "converged" if auto_r is not None else f"cap ({mmax}) without converging",
            "rounds": rounds_r,
            "scores": at_stop_r,
        },
        "findings_build_seconds": [round(b, 1) for b in builds],
    }


def evaluate(wanted: list[tuple[str, str, int]], reuse: bool = False) -> dict:
    doc = {
        "machine": machine(),
        "command": "python benchmarks/verdict_small_m.py",
        "settings": {k: {"models": v["models"], "args": v["args"]} for k, v in SETTINGS.items()},
        "runs": [],
        "missing": [],
    }
    RESULTS.mkdir(exist_ok=True)
    for task, setting, seed in wanted:
        mmax = SETTINGS[setting]["models"]
        saved = CACHE / "scores" / f"{task}-{setting}-s{seed}.json"
        if reuse and saved.exists():
            doc["runs"].append(json.loads(saved.read_text()))
            continue
        if n_done(run_dir(task, setting, seed), mmax) < mmax:
            doc["missing"].append(f"{task}-{setting}-s{seed}")
            continue
        t0 = time.perf_counter()
        doc["runs"].append(evaluate_run(task, setting, seed))
        doc["runs"][-1]["evaluation_seconds"] = round(time.perf_counter() - t0, 1)
        doc["runs"][-1]["code"] = code_version()
        print(f"evaluated {task}-{setting}-s{seed} in {time.perf_counter() - t0:.0f} s", flush=True)
        saved.parent.mkdir(exist_ok=True)
        saved.write_text(json.dumps(doc["runs"][-1], default=float) + "\n")
        write(doc)
    doc["complete"] = not doc["missing"]
    write(doc)
    return doc


def code_version() -> str:
    """The commit the scores were computed on (+ "-dirty" with uncommitted changes)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--", "memaudit").strip() else "")


def write(doc: dict) -> None:
    doc = dict(doc, summary=summarise(doc["runs"]), load_average=os.getloadavg())
    (RESULTS / "verdict_small_m.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (RESULTS / "verdict_small_m.md").write_text(markdown(doc))


KEYS = ("auc_margin", "pair_precision", "pair_recall", "groups_touched", "verdict_agreement")


def _stats(values: list) -> dict | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {
        "mean": float(np.mean(v)),
        "min": float(np.min(v)),
        "max": float(np.max(v)),
        "n": len(v),
    }


def summarise(runs: list[dict]) -> list[dict]:
    """Per task, setting, estimator and M: every score over seeds (mean, min, max)."""
    rows = []
    keys = sorted({(r["task"], r["setting"]) for r in runs}, key=lambda k: (k[0], k[1] != "strong"))
    for task, setting in keys:
        mine = [r for r in runs if r["task"] == task and r["setting"] == setting]
        for est in ESTIMATORS:
            for m in sorted({p["models"] for r in mine for p in r["curves"][est]}):
                pts = [p for r in mine for p in r["curves"][est] if p["models"] == m]
                rows.append(
                    {"task": task, "setting": setting, "estimator": est, "models": m,
                     "seeds": len(pts), "groups": pts[0]["groups"]}
                    | {k: _stats([p.get(k) for p in pts]) for k in KEYS}
                    | _pooled_looks(pts)
                )  # fmt: skip
        for key, label in (("auto", "auto"), ("auto_records", "auto (records)")):
            auto = [r[key] for r in mine if key in r]
            if not auto:
                continue
            rows.append(
                {"task": task, "setting": setting, "estimator": "adjusted", "models": label,
                 "seeds": len(auto), "groups": auto[0]["scores"]["groups"],
                 "stopped_at": [a["stopped_at"] for a in auto]}
                | {k: _stats([a["scores"].get(k) for a in auto]) for k in KEYS}
                | _pooled_looks([a["scores"] for a in auto])
            )  # fmt: skip
    return rows


def _pooled_looks(points: list[dict]) -> dict:
    """Look-alikes listed and how many are planted mates, summed over seeds (a share per seed
    rests on a handful of pairs)."""
    return {
        "look_alikes": sum(p.get("look_alikes", 0) for p in points),
        "look_alike_mates": sum(p.get("look_alike_mates", 0) for p in points),
    }


def _looks(r: dict) -> str:
    return f"{r['look_alike_mates']} of {r['look_alikes']}" if r.get("look_alikes") else "–"


def _cell(s: dict | None, digits: int = 3) -> str:
    if s is None:
        return "–"
    if s["min"] == s["max"]:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def markdown(doc: dict) -> str:
    runs = doc["runs"]
    source = sorted({p["verdict_source"] for r in runs for c in r["curves"].values() for p in c})
    builds = [b for r in runs for b in r["findings_build_seconds"]]
    rounds = [x["seconds"] for r in runs for x in r["auto"]["rounds"]]
    lines = [
        "# The verdict from few models (#14, item 4)",
        "",
        describe(doc["machine"], tuple(doc["load_average"])),
        f" Command: `{doc['command']}` (`--evaluate-only` re-scores the cached runs).",
        "",
    ]
    if not doc.get("complete"):
        lines += [
            "**PARTIAL RESULTS**: runs not evaluated (not trained yet): "
            + (", ".join(doc["missing"]) or "evaluation in progress")
            + ".",
            "",
        ]
    codes: dict[str, list[str]] = {}
    for r in runs:
        codes.setdefault(r.get("code", "a72337b or earlier"), []).append(
            f"{r['task']}-{r['setting']}-s{r['seed']}"
        )
    if len(codes) > 1:
        lines += [
            "Scored on different code (`--reuse-scores` kept earlier scores of runs whose "
            "training cache is gone): "
            + "; ".join(f"`{c}`: {', '.join(v)}" for c, v in sorted(codes.items()))
            + ". Fragment joining (findings.joining) landed after a72337b.",
            "",
        ]
    lines += [
        f"Per-record verdict: `{', '.join(source)}`; agreement is with the largest ensemble "
        "(64 models strong, 128 weak) of the same estimator on the same run. Groups touched: "
        "planted or natural groups with two or more records in one cluster. Cells: mean over "
        "seeds (min–max).",
        "",
    ]
    if builds:
        lines += [
            f"Cost: one `build_findings` (39-shuffle link calibration included) took median "
            f"{np.median(builds):.1f} s (min {min(builds):.1f}, max {max(builds):.1f}, "
            f"{len(builds)} builds); one replayed `--models auto` round (analysis, findings, "
            f"diagnostics) median {np.median(rounds):.1f} s, on the shared machine above.",
            "",
        ]
    for task, setting in dict.fromkeys((r["task"], r["setting"]) for r in doc["summary"]):
        rows = [r for r in doc["summary"] if r["task"] == task and r["setting"] == setting]
        lines += [
            f"## {task}, {setting} ({rows[0]['groups']} groups, {rows[0]['seeds']} seeds)",
            "",
        ]
        mine = [r for r in runs if r["task"] == task and r["setting"] == setting]
        base = {
            est: np.mean([1 - r["curves"][est][-1]["flagged"] / r["records"] for r in mine])
            for est in ESTIMATORS
        }
        lines += [
            "Flagging no record at all would agree with the largest ensemble on "
            + ", ".join(f"{base[e]:.3f} ({e})" for e in ESTIMATORS)
            + " of records: the floor for the agreement column.",
            "",
        ]
        lines += [
            "| estimator | models | margin AUC | pair precision | pair recall | groups touched "
            "| verdict agreement | look-alikes that are mates (all seeds) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            m = r["models"]
            if isinstance(m, str):
                m = f"{m}: stops at " + ", ".join(map(str, r["stopped_at"]))
            lines.append(
                f"| {r['estimator']} | {m} | {_cell(r['auc_margin'])} | "
                f"{_cell(r['pair_precision'], 2)} | {_cell(r['pair_recall'], 2)} | "
                f"{_cell(r['groups_touched'], 1)} | {_cell(r['verdict_agreement'])} | "
                f"{_looks(r)} |"
            )
        lines.append("")
    lines += [
        "## Where `--models auto` stops, per run (adjusted, rounds 16, 24, 32, 48, ...)",
        "",
        "`--auto-watch clusters` (the default: records and their partners) and "
        "`--auto-watch records` (each record's status).",
        "",
        "| run | watch | stops at | verdict change per round | expected flips per round | "
        "scores at the stop (AUC, precision, recall, touched, agreement) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        for key, watch in (("auto", "clusters"), ("auto_records", "records")):
            if key not in r:
                continue
            a = r[key]
            fc = [x["criteria"].get("flag_change", {}).get("value") for x in a["rounds"]]
            un = [
                x["criteria"].get("expected_flips", x["criteria"].get("unsettled", {})).get("value")
                for x in a["rounds"]
            ]
            s = a["scores"]
            lines.append(
                f"| {r['task']}-{r['setting']}-s{r['seed']} | {watch} | {a['stopped_at']} "
                f"({a['stopped_by']}) | "
                + ", ".join("–" if v is None else f"{v:.2f}" for v in fc)
                + " | "
                + ", ".join("–" if v is None else f"{v:.2f}" for v in un)
                + f" | {_f(s['auc_margin'])}, {_f(s['pair_precision'], 2)}, "
                f"{_f(s['pair_recall'], 2)}, {s['groups_touched']}/{s['groups']}, "
                f"{_f(s['verdict_agreement'])} |"
            )
    lines += [
        "",
        "## Per seed",
        "",
        "| run | estimator | models | margin AUC | precision | recall | touched | agreement "
        "| flagged | verdict vs truth | flagged in no cluster (named) "
        "| look-alikes that are mates |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        for est, curve in r["curves"].items():
            for p in curve:
                lines.append(
                    f"| {r['task']}-{r['setting']}-s{r['seed']} | {est} | {p['models']} | "
                    f"{_f(p['auc_margin'])} | {_f(p['pair_precision'], 2)} | "
                    f"{_f(p['pair_recall'], 2)} | {p['groups_touched']}/{p['groups']} | "
                    f"{_f(p['verdict_agreement'])} | {p['flagged']} | {_f(p['verdict_vs_truth'])} "
                    f"| {p.get('unclustered_flagged', '–')} ({p.get('unclustered_named', '–')}) "
                    f"| {_looks(p)} |"
                )
    lines.append("")
    return "\n".join(lines)


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def runs_wanted(args) -> list[tuple[str, str, int]]:
    """Weak runs first (cheap), then strong seed by seed: cut from the end when time is short."""
    out = []
    for setting in ("weak", "strong"):
        for seed in args.seeds:
            for task in args.tasks:
                if setting in args.settings:
                    out.append((task, setting, seed))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluate-only", action="store_true", help="train nothing; score the cache")
    ap.add_argument("--train-only", action="store_true", help="train what is missing; no scores")
    ap.add_argument(
        "--reuse-scores",
        action="store_true",
        help="reuse each run's scores from an earlier evaluation (benchmarks/cache/verdict/"
        "scores/), also for runs whose training cache is gone: for filling in runs as they "
        "finish; after a change to memaudit's findings code delete the scores to redo (the "
        "report names the commit each run was scored on)",
    )
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = ap.parse_args()
    wanted = runs_wanted(args)
    if not args.evaluate_only:
        for task, setting, seed in wanted:
            train(task, setting, seed)
    if not args.train_only:
        evaluate(wanted, reuse=args.reuse_scores)


if __name__ == "__main__":
    main()
