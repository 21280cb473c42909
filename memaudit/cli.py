"""The command line: a thin layer over :mod:`memaudit.api`.

Every user error ends as one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

import click

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from memaudit.config import CLI_OPTIONS, OPTIONS, Option, shown_value
from memaudit.errors import MemauditError


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"memaudit: error: {message}", err=True)
    sys.exit(code)


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--config FILE``: TOML whose keys are option names (dashes or underscores); options on the
    command line win. Relative paths in it resolve against the file's folder when they exist.
    Each value must have the option's type (``epochs = 1.7`` is refused, as ``--epochs 1.7``
    is, never truncated); its range is checked with the command line's values."""
    if value is None:
        return
    path = Path(value)
    if not path.is_file():
        raise MemauditError(f"--config: {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError, or an int too long
        raise MemauditError(f"--config: {path}: invalid TOML: {exc}") from None
    # Keys are option names as typed (--max-length -> max_length or max-length).
    known = {
        flag.lstrip("-").replace("-", "_"): p
        for p in ctx.command.params
        if isinstance(p, click.Option) and p.name != "config"
        for flag in p.opts
        if flag.startswith("--")
    }
    defaults = {}
    for key, val in data.items():
        option = known.get(key.replace("-", "_"))
        if option is None:
            raise MemauditError(f"--config: {path}: unknown option '{key}'")
        wrong = _toml_type_error(option, val)
        if wrong:
            raise MemauditError(f"--config: {path}: {key}: {wrong}")
        relative = option.name in ("model", "chat_template") and isinstance(val, str)
        if relative and not Path(val).is_absolute():
            # A model folder or template file relative to the config file, so the file works
            # from any folder.
            candidate = path.parent / val
            if candidate.is_dir() if option.name == "model" else candidate.is_file():
                val = os.path.normpath(candidate)
        defaults[option.name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


# Text options that take a count or a word (models = 64 or "auto"; pack; workers).
_COUNT_OR_WORD = ("models", "pack", "workers")


def _toml_type_error(param: click.Option, value) -> str | None:
    """Why a TOML value cannot stand for ``param`` on the command line, or None. TOML has
    integers, floats, booleans and strings as the command line has; click would convert a float
    to an integer option by truncating it, so the types are held to the option's here."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if param.is_flag:
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(param.type, click.types.IntParamType):
        ok, want = number and isinstance(value, int), "an integer"
    elif isinstance(param.type, click.types.FloatParamType):
        ok, want = number, "a number"
    elif param.name in _COUNT_OR_WORD:
        ok = isinstance(value, str) or number and isinstance(value, int)
        want = "an integer or a word"
    else:
        ok, want = isinstance(value, str), "a string"
    return None if ok else f"must be {want}, got {shown_value(value)}"


def _given(ctx: click.Context, values: dict) -> dict:
    """The values given on the command line or in --config; the rest take their defaults in
    memaudit.config.build_run_config (the one place that knows them)."""
    default = click.core.ParameterSource.DEFAULT
    return {k: v for k, v in values.items() if ctx.get_parameter_source(k) is not default}


# Threshold options whose default `memaudit run --help` states in brackets (and `memaudit
# report` overrides with the run's own value).
_BRACKETED = ("findings", "convergence")


def config_option(option: Option, override: str | None = None):
    """The click option of a config option (memaudit.config.OPTIONS): flag, type, choices, help
    and default all come from the field. ``override``: an option that changes a saved run's
    value (``memaudit report --link-z``); not given, it keeps the run's, which the help says."""
    check = option.check
    kind: object = {int: int, float: float, str: str}.get(check.kind)
    if check.choices is not None:
        kind = click.Choice(list(check.choices))
    elif check.kind is Path:
        kind = click.Path(path_type=Path)
    attrs: dict = {"type": kind, "help": option.help}
    flags = [option.flag]
    if option.required:
        attrs["required"] = True
    elif override is not None:
        attrs["default"] = None
        attrs["help"] = f"{option.help} [default: {override}]".strip()
    elif option.image_default is not None or option.shown or option.section in _BRACKETED:
        attrs["default"] = None  # the default depends on the run (text or images)
        attrs["help"] = f"{option.help} [{option.shown_default()}]".strip()
    elif check.kind is bool:
        attrs.pop("type")
        if option.default:
            flags = [f"{option.flag}/--no-{option.flag[2:]}"]
            attrs.update(default=True, show_default=True)
        else:
            attrs.update(is_flag=True, default=False)
    else:
        default = option.default
        attrs["default"] = str(default) if kind is str and default is not None else default
        attrs["show_default"] = default is not None
    return click.option(*flags, option.key, **attrs)


def config_options(keys, override: str | None = None):
    """Decorator: the click options of ``keys`` (memaudit.config.OPTIONS), in that order."""
    return _apply([config_option(OPTIONS[key], override) for key in keys])


FINDINGS_KEYS = tuple(k for k, o in CLI_OPTIONS.items() if o.section == "findings")
FORMAT_KEYS = ("preset", "template")
IMAGE_KEYS = ("dataset", "data_root", "resize")


executor_options = [
    click.option(
        "--executor",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help='Where members train: this process, or Ray tasks (pip install "memaudit[ray]").',
    ),
    click.option(
        "--ray-address",
        default=None,
        help="A running Ray cluster ('auto', 'ray://HOST:10001') [default: start a local one].",
    ),
    click.option(
        "--cpus-per-model", type=float, default=1.0, show_default=True, help="Ray: CPUs per member."
    ),
    click.option(
        "--gpus-per-model", type=float, default=0.0, show_default=True, help="Ray: GPUs per member."
    ),
    click.option(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per member [local: 1 with --workers auto, else torch's default; "
        "ray: --cpus-per-model]; "
        "CPU results are bit-identical for the same count.",
    ),
    click.option(
        "--workers",
        default="auto",
        show_default=True,
        help="CPU: worker processes training members side by side (auto: one per core, one "
        "torch thread each unless --threads); 1: this process only.",
    ),
    click.option(
        "--retries",
        type=int,
        default=2,
        show_default=True,
        help="Extra attempts for a member that fails (an error, a lost worker).",
    ),
]


EXECUTOR_KEYS = (
    "executor",
    "ray_address",
    "cpus_per_model",
    "gpus_per_model",
    "threads",
    "workers",
    "retries",
)


def _executor_config(
    executor, ray_address, cpus_per_model, gpus_per_model, threads, workers, retries
):
    from memaudit.ensemble.executors import ExecutorConfig

    if ray_address and executor != "ray":
        raise MemauditError("--ray-address: needs --executor ray")
    for flag, value in (("--cpus-per-model", cpus_per_model), ("--gpus-per-model", gpus_per_model)):
        if not math.isfinite(value):
            raise MemauditError(f"{flag}: must be a finite number, got {value}")
    if workers == "auto":
        workers = None
    elif not str(workers).isdigit() or int(workers) < 1:
        raise MemauditError(f"--workers: expected auto or a positive integer, got '{workers}'")
    else:
        workers = int(workers)
    return ExecutorConfig(
        kind=executor,
        address=ray_address,
        cpus=cpus_per_model,
        gpus=gpus_per_model,
        threads=threads,
        workers=workers,
        retries=retries,
    )


def _gathered(options, keys: tuple[str, ...], name: str):
    """Add ``options`` to a command; their values reach it as one dict argument, ``name``."""

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            given = {k: kwargs.pop(k) for k in keys}
            return f(*args, **{name: given}, **kwargs)

        return _apply(options)(wrapper)

    return deco


def _apply(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="memaudit")
def cli() -> None:
    """memaudit: measure what a model memorizes from its training data."""


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option(
    "--config",
    "config",
    callback=_load_config_file,
    is_eager=True,
    expose_value=False,
    help="TOML file of option values (options given here win); every option below is a key, "
    "named alike with underscores (max_length = 64).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory [default: memaudit-runs/<data>-<model>]. Rerun to resume.",
)
@config_options(CLI_OPTIONS)
@_gathered(executor_options, EXECUTOR_KEYS, "executor_given")
@click.option(
    "--plan",
    "plan_only",
    is_flag=True,
    default=False,
    help="Measure a few training and evaluation steps of one member, print what the run will "
    "cost (time, memory, disk) and write RUN/plan.json; trains nothing.",
)
@click.option(
    "--prepare-only",
    is_flag=True,
    default=False,
    help="Create the run directory and stop: train it with `memaudit train RUN --shard I/K`.",
)
def run(
    data: Path | None, out: Path | None, executor_given, plan_only, prepare_only, **options
) -> None:
    """Train an ensemble on random halves of DATA and estimate the influence matrix.

    DATA is JSON Lines for a language model, or for an image model (--model resnet-tiny, ...)
    an image folder (one subfolder per class) or an .npz with images and labels; or give
    --dataset cifar10 --data-root PATH instead. Rerunning the same command resumes: finished
    models are never retrained.
    """
    from memaudit import api
    from memaudit.config import build_run_config
    from memaudit.data.formats import chat_defaults

    given = _given(click.get_current_context(), options)
    model = given.pop("model")
    given = chat_defaults(data, given)
    cfg = build_run_config(data, model, **given)
    ecfg = _executor_config(**executor_given)
    if prepare_only and cfg.ensemble.auto:
        raise MemauditError("--prepare-only: needs a fixed --models (shards train a fixed M)")
    out = out or api.default_out(data if data is not None else cfg.image.dataset, cfg.model.name)
    if plan_only or _full_mode_start(cfg, out, prepare_only):
        _print_plan(cfg, out, ecfg)
        if plan_only:
            return
    audit = api.Audit(cfg, out, executor=ecfg)
    if prepare_only:
        audit.prepare()
        click.echo(
            f"prepared {out}: {cfg.ensemble.models} models; train them with "
            f"`memaudit train {out} --shard I/K` (I = 1..K), then `memaudit report {out}`"
        )
        return
    audit.run(progress=True)


def _full_mode_start(cfg, out: Path, prepare_only: bool) -> bool:
    """A new text run of 1,000 models or more: it shows its cost plan before it starts."""
    new = not (out / "config.json").exists()
    return (
        new
        and not (prepare_only or cfg.is_image or cfg.ensemble.auto)
        and (cfg.ensemble.models >= 1000)
    )


def _print_plan(cfg, out: Path, ecfg) -> None:
    """Measure and print the cost plan (memaudit.ensemble.plan); write it to RUN/plan.json."""
    from memaudit.ensemble.plan import describe, plan_run, write_plan
    from memaudit.store.rundir import RunDir

    plan = plan_run(cfg, ecfg)
    write_plan(RunDir(out), plan)
    for line in describe(plan):
        click.echo(line)
    click.echo(f"wrote {out / 'plan.json'}")


def _shard(value: str | None) -> tuple[int, int]:
    if value is None:
        return 1, 1
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise MemauditError(f"--shard: expected I/K (e.g. 2/8), got '{value}'") from None
    if not 1 <= index <= count:
        raise MemauditError(f"--shard: I must be between 1 and K, got '{value}'")
    return index, count


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--shard",
    default=None,
    help="I/K: train members j with j % K == I - 1 (I = 1..K), e.g. from a Slurm array; "
    "shards of one K run side by side [default: all members].",
)
@_gathered(executor_options, EXECUTOR_KEYS, "executor_given")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    default=False,
    help="Allow the model repository's code to run in this process (a run directory's own "
    "setting is never trusted).",
)
def train(
    run_dir: Path,
    shard,
    executor_given,
    trust_remote_code: bool,
) -> None:
    """Train the members RUN_DIR lacks (or one shard of them), without estimating.

    RUN_DIR is made by `memaudit run ... --prepare-only`; `memaudit report RUN_DIR` (or the
    same `memaudit run`) merges what the shards wrote and says what is missing.
    """
    from memaudit import api
    from memaudit.report.terminal import print_status

    index, count = _shard(shard)
    ecfg = _executor_config(**executor_given)
    audit = api.Audit.open(run_dir, executor=ecfg, trust_remote_code=trust_remote_code)
    trained = audit.train_shard(index, count, progress=True)
    status = audit.status()
    click.echo(
        f"shard {index}/{count}: trained {len(trained)} models; the run has "
        f"{len(status['ok'])} of {status['models']} models done"
    )
    print_status(status, audit.run_dir)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@config_options(("top_k", "estimator"), override="the run's")
def analyze(run_dir: Path, top_k: int | None, estimator: str | None) -> None:
    """Recompute the influence estimates of RUN_DIR from its saved losses (no training)."""
    from memaudit import api

    api.Audit.open(run_dir).analyze(top_k=top_k, estimator=estimator, show=True)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--format",
    "formats",
    type=click.Choice(["terminal", "json", "html", "all"]),
    multiple=True,
    default=("all",),
    show_default=True,
    help="Which reports to render (repeatable).",
)
@click.option(
    "--redact",
    is_flag=True,
    default=False,
    help="Replace record texts by ids and sha256 hashes in every output "
    "(written as report.redacted.*).",
)
@config_options(FINDINGS_KEYS, override="the run's")
def report(run_dir: Path, formats, redact, **thresholds) -> None:
    """Re-render the reports of RUN_DIR from what it holds, without training."""
    from dataclasses import replace

    from memaudit import api

    given = _given(click.get_current_context(), thresholds)
    audit = api.Audit.open(run_dir)
    chosen = {"terminal", "json", "html"} if "all" in formats else set(formats)
    findings = replace(audit.config.findings, **{OPTIONS[k].field: v for k, v in given.items()})
    audit.report(
        formats=tuple(chosen - {"terminal"}),
        redact=redact,
        findings=findings,
        show="terminal" in chosen,
    )
    from memaudit.report.terminal import print_status

    print_status(audit.status(), audit.run_dir)


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@config_options(FORMAT_KEYS + IMAGE_KEYS)
@click.option("--groups", type=int, required=True, help="How many records get near-duplicates.")
@click.option(
    "--copies",
    default="5",
    show_default=True,
    help="Group size: the original plus copies-1 edited copies; a range such as 2-5 draws it "
    "per group.",
)
@click.option(
    "--edits",
    default="1",
    show_default=True,
    help="Tokens replaced in each copy; a range such as 1-3 draws it per copy.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--tokenizer",
    default=None,
    help="Replace a tokenizer token (as the paper did) instead of a whole word.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def plant(
    data: Path,
    preset,
    template,
    dataset,
    data_root,
    resize,
    groups,
    copies,
    edits,
    seed,
    tokenizer,
    out,
) -> None:
    """Make near-duplicate groups in DATA: each copy replaces one random token of the completion.

    Writes OUT in DATA's format with an `id` on every record and a `group` on planted ones.
    Image data (a folder, an .npz or --dataset) gets edited copies instead (crop and shift,
    flip, brightness, contrast, JPEG re-encoding), written to OUT as an .npz.
    """
    from memaudit.data import plant as planting
    from memaudit.data.images import is_image_source
    from memaudit.data.records import RecordFormat

    if is_image_source(data, dataset):
        from memaudit.data.images import load_images, npz_bytes
        from memaudit.data.plant_images import plant_images
        from memaudit.store.io import atomic_write_bytes

        if out.suffix.lower() != ".npz":
            raise MemauditError(f"--out: image data is planted into an .npz, not {out}")
        if data is not None and planting.same_file(data, out):
            raise MemauditError(f"--out: {out} is the input itself; plant into a new file")
        lo, hi = _int_range(copies, "--copies")
        if lo != hi:
            raise MemauditError("--copies: image planting takes one group size, not a range")
        if edits != "1":
            raise MemauditError("--edits: counts replaced tokens; image copies get every edit")
        planted = plant_images(load_images(data, dataset, data_root, resize), groups, lo, seed=seed)
        atomic_write_bytes(out, npz_bytes(planted))
        click.echo(f"wrote {out}: {len(planted)} images, {groups} groups of {copies}")
        return
    if data is None:
        raise MemauditError("missing DATA (a JSON Lines file, an image folder or .npz)")

    fmt = RecordFormat(preset=preset, template=template)
    tok = None
    if tokenizer is not None:
        from memaudit.ensemble.models import load_tokenizer

        tok = load_tokenizer(tokenizer)
    copies_range = _int_range(copies, "--copies")
    edits_range = _int_range(edits, "--edits")
    objects = planting.plant(
        data, fmt, groups=groups, copies=copies_range, seed=seed, tokenizer=tok, edits=edits_range
    )
    planting.write_jsonl(objects, out)
    click.echo(f"wrote {out}: {len(objects)} records, {groups} planted groups of {copies}")


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@config_options(FORMAT_KEYS + IMAGE_KEYS)
@click.option(
    "--threshold",
    type=float,
    default=0.8,
    show_default=True,
    help="Text: MinHash LSH Jaccard threshold over the shingles.",
)
@click.option("--ngram", type=int, default=5, show_default=True, help="Text: shingle length.")
@click.option(
    "--unit",
    type=click.Choice(["char", "word"]),
    default="char",
    show_default=True,
    help="Text: shingles of characters (short records) or words.",
)
@click.option(
    "--max-distance",
    type=int,
    default=10,
    show_default=True,
    help="Images: the most differing bits of the 64-bit perceptual hash.",
)
@click.option("--show", type=int, default=10, show_default=True, help="Groups printed.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the groups as JSON here.",
)
def dedup(
    data,
    preset,
    template,
    dataset,
    data_root,
    resize,
    threshold,
    ngram,
    unit,
    max_distance,
    show,
    out,
) -> None:
    """Only the deduplicator's pass (no training, seconds): near-duplicate groups of DATA by
    MinHash LSH over shingles (text) or a perceptual hash (images), to compare with an audit."""
    from memaudit.data.images import is_image_source, load_images
    from memaudit.data.records import RecordFormat, load_records
    from memaudit.findings import dedup as dd
    from memaudit.findings.ground_truth import score_against_groups
    from memaudit.store.io import atomic_write_json

    if not 0.0 < threshold <= 1.0:
        raise MemauditError(f"--threshold: must be in (0, 1], got {threshold}")
    if ngram < 1:
        raise MemauditError(f"--ngram: must be a positive integer, got {ngram}")
    if not 0 <= max_distance <= 64:
        raise MemauditError(f"--max-distance: must be in 0..64, got {max_distance}")
    if data is None and dataset is None:
        raise MemauditError("missing DATA (a JSON Lines file, an image folder or .npz)")
    if is_image_source(data, dataset):
        images = load_images(data, dataset, data_root, resize)
        result = dd.image_groups(images.images, max_distance=max_distance)
        ids, texts = list(images.ids), [None] * len(images.ids)
        groups = list(images.groups) if images.groups is not None else []
    else:
        records = load_records(data, RecordFormat(preset, template))
        texts = [r.text for r in records]
        result = dd.text_groups(texts, threshold=threshold, ngram=ngram, unit=unit)
        ids, groups = [r.id for r in records], [r.group for r in records]

    def printable(text: str, n: int = 90) -> str:
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
        return text[:n] + ("…" if len(text) > n else "")

    n_in = int((result.group_of >= 0).sum())
    click.echo(
        f"{result.method}: {len(ids)} records, {len(result.groups)} near-duplicate groups "
        f"holding {n_in} records, {len(result.pairs)} linked pairs "
        f"({', '.join(f'{k} {v}' for k, v in result.params.items())})"
    )
    gt = score_against_groups(result.group_of, groups) if any(groups) else None
    if gt:
        click.echo(
            f"against the planted groups: pair precision {gt['pair_precision']}, pair recall "
            f"{gt['pair_recall']}, {gt['groups_found']} of {gt['groups']} groups found"
        )
    for k, members in enumerate(result.groups[: max(show, 0)]):
        click.echo(f"group {k} · {len(members)} records")
        for i in members[:6]:
            label = printable(str(ids[i]), 20)
            click.echo(f"  {label:<20} {printable(texts[i]) if texts[i] is not None else ''}")
        if len(members) > 6:
            click.echo(f"  … {len(members) - 6} more")
    if out is not None:
        atomic_write_json(
            out,
            {
                "method": result.method,
                "params": result.params,
                "records": len(ids),
                "groups": [
                    {"members": [{"index": i, "id": ids[i], "text": texts[i]} for i in m]}
                    for m in result.groups
                ],
                "pairs": [
                    {"a": int(a), "b": int(b), "similarity": float(v)}
                    for (a, b), v in zip(result.pairs, result.similarity, strict=True)
                ],
                "ground_truth": gt,
            },
        )
        click.echo(f"wrote {out}")


def _int_range(value: str, option: str) -> tuple[int, int]:
    """'3' -> (3, 3); '2-5' -> (2, 5)."""
    lo, sep, hi = value.partition("-")
    try:
        low, high = int(lo), int(hi if sep else lo)
    except ValueError:
        raise MemauditError(
            f"{option}: expected a number or a range like 2-5, got {value!r}"
        ) from None
    if high < low:
        raise MemauditError(f"{option}: the range {value!r} is empty")
    return low, high


def main() -> None:
    import warnings

    from memaudit.errors import escape_controls

    # peft reads transformers 5's deprecated alias once per trained member: a warning on every
    # run that the user cannot act on (the forked workers inherit the filter).
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    if not getattr(warnings.showwarning, "_memaudit", False):
        # A library's warning can quote the data (matplotlib names a glyph it cannot draw,
        # ESC included): shown escaped, like everything else that reaches the terminal.
        shown = warnings.showwarning

        def show_escaped(message, category, filename, lineno, file=None, line=None):
            shown(escape_controls(message), category, filename, lineno, file, line)

        show_escaped._memaudit = True  # type: ignore[attr-defined]
        warnings.showwarning = show_escaped
    try:
        cli.main(standalone_mode=False)
    except MemauditError as exc:
        _fail(escape_controls(exc), exc.exit_code)
    except click.UsageError as exc:
        # click prints usage plus the error over several lines; keep it to one.
        where = f" ({exc.ctx.command_path})" if exc.ctx else ""
        _fail(escape_controls(f"{exc.format_message()}{where}"))
    except click.ClickException as exc:
        _fail(escape_controls(exc.format_message()))
    except click.Abort:
        _fail("aborted; rerun the same command to resume", 130)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume", 130)
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, never a traceback
        _fail(_unexpected(exc), 1)


def _unexpected(exc: Exception) -> str:
    """One line for an error nobody foresaw: its type and message, escaped, and the file that
    holds the traceback (for a bug report)."""
    import tempfile
    import traceback

    from memaudit.errors import escape_controls

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    where = "not logged"
    try:
        fd, log = tempfile.mkstemp(prefix="memaudit-error-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"memaudit {' '.join(sys.argv[1:])}\n")
            f.write("".join(traceback.format_exception(exc)))
        where = f"details in {log}"
    except OSError:
        pass
    return escape_controls(f"unexpected {type(exc).__name__}: {first} ({where})")
