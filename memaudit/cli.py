"""The command line: a thin layer over :mod:`memaudit.api`.

Every user error ends as one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import tomllib

from memaudit.data.records import PRESETS, RecordFormat
from memaudit.errors import MemauditError


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"memaudit: error: {message}", err=True)
    sys.exit(code)


def _load_config_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--config FILE``: TOML whose keys are option names (dashes or underscores); options on the
    command line win. Relative paths in it resolve against the file's folder when they exist."""
    if value is None:
        return
    path = Path(value)
    if not path.is_file():
        raise MemauditError(f"--config: {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MemauditError(f"--config: {path}: invalid TOML: {exc}") from None
    # Keys are option names as typed (--max-length -> max_length or max-length).
    known = {
        flag.lstrip("-").replace("-", "_"): p.name
        for p in ctx.command.params
        if isinstance(p, click.Option) and p.name != "config"
        for flag in p.opts
        if flag.startswith("--")
    }
    defaults = {}
    for key, val in data.items():
        name = known.get(key.replace("-", "_"))
        if name is None:
            raise MemauditError(f"--config: {path}: unknown option '{key}'")
        if name == "model" and isinstance(val, str) and not Path(val).is_absolute():
            # A model folder relative to the config file, so the file works from any folder.
            candidate = path.parent / val
            if candidate.is_dir():
                val = os.path.normpath(candidate)
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _record_format(preset: str | None, template: str | None) -> RecordFormat:
    return RecordFormat(preset=preset, template=template)


format_options = [
    click.option(
        "--preset",
        type=click.Choice(sorted(PRESETS)),
        default=None,
        help="A known dataset format: nq = NQ-open {question, answer: [..]}.",
    ),
    click.option(
        "--template",
        default=None,
        help='Record text from arbitrary fields, e.g. "Q: {question} A: {answer}"; '
        "the completion is the part from the last field on.",
    ),
]


findings_options = [
    click.option(
        "--link-z",
        type=float,
        default=None,
        help="Near-duplicate link: influence / standard error at least this [4.0].",
    ),
    click.option(
        "--link-fraction",
        type=float,
        default=None,
        help="... and at least this fraction of the target's largest influence [0.5].",
    ),
    click.option(
        "--mutual-fraction",
        type=float,
        default=None,
        help="Mutual low-margin link: the larger share of either record's largest influence "
        "at least this [0 for text, 0.6 for images].",
    ),
    click.option(
        "--lexical-threshold",
        type=float,
        default=None,
        help="Character n-gram cosine at which a link counts as textual [0.5].",
    ),
    click.option(
        "--bleu-gain",
        type=float,
        default=None,
        help="Flag a unique record whose BLEU gain (in - out) reaches this [0.3].",
    ),
    click.option(
        "--mia-auc",
        type=float,
        default=None,
        help="Flag a unique record whose membership AUC reaches this [0.9].",
    ),
]


FINDINGS_KEYS = (
    "link_z",
    "link_fraction",
    "mutual_fraction",
    "lexical_threshold",
    "bleu_gain",
    "mia_auc",
)


def _gathered(options, keys: tuple[str, ...], name: str):
    """Add ``options`` to a command; their values reach it as one dict argument, ``name``."""
    import functools

    def deco(f):
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            given = {k: kwargs.pop(k) for k in keys}
            return f(*args, **{name: given}, **kwargs)

        return _apply(options)(wrapper)

    return deco


def _findings_config(base, **given):
    """Thresholds from the options given, the rest from ``base`` (saved with the run)."""
    from dataclasses import replace

    from memaudit.config import FindingsConfig

    given = {k: v for k, v in given.items() if v is not None}
    try:
        return replace(base or FindingsConfig(), **given)
    except ValueError as exc:
        raise MemauditError(f"--{str(exc).split()[0].replace('_', '-')}: {exc}") from None


def _ensemble_config(models, max_models, first_round, design, seed):
    from memaudit.config import EnsembleConfig

    text = str(models).strip().lower()
    if text == "auto":
        return EnsembleConfig(
            models=first_round, design=design, seed=seed, auto=True, max_models=max_models
        )
    try:
        count = int(text)
    except ValueError:
        raise MemauditError(f"--models: expected a number or 'auto', got '{models}'") from None
    return EnsembleConfig(models=count, design=design, seed=seed)


def _convergence_config(min_reliability, max_flag_change):
    from memaudit.config import ConvergenceConfig

    given = {
        k: v
        for k, v in (("min_reliability", min_reliability), ("max_flag_change", max_flag_change))
        if v is not None
    }
    for key, value in given.items():
        if not 0.0 <= value <= 1.0:
            raise MemauditError(f"--{key.replace('_', '-')}: must be between 0 and 1")
    return ConvergenceConfig(**given)


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


image_options = [
    click.option(
        "--dataset",
        type=click.Choice(["cifar10", "cifar100"]),
        default=None,
        help="Images: torchvision's CIFAR-10/100 training set from --data-root (no DATA; "
        "never downloads).",
    ),
    click.option(
        "--data-root",
        type=click.Path(path_type=Path),
        default=None,
        help="Images: the folder holding --dataset's files.",
    ),
    click.option(
        "--resize",
        type=int,
        default=None,
        help="Images: resize every image to S x S (needed when sizes differ).",
    ),
]


@cli.command()
@click.argument("data", type=click.Path(path_type=Path), required=False)
@click.option(
    "--config",
    "config",
    callback=_load_config_file,
    is_eager=True,
    expose_value=False,
    help="TOML file of option values (options given here win).",
)
@click.option(
    "--model",
    required=True,
    help="Hub id, local directory, or alias (gpt-neo-1.3B, gpt-neo-125M); for images "
    "resnet-tiny, resnet20 or resnet18.",
)
@_apply(format_options)
@_apply(image_options)
@click.option(
    "--crop-padding",
    type=int,
    default=4,
    show_default=True,
    help="Images: random-crop augmentation from a zero-padded image (0: none).",
)
@click.option(
    "--flip/--no-flip",
    default=True,
    show_default=True,
    help="Images: random horizontal flip augmentation.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory [default: memaudit-runs/<data>-<model>]. Rerun to resume.",
)
@click.option(
    "--models",
    "n_models",
    default="1000",
    show_default=True,
    help="Ensemble size M (the paper's full mode is 1,000), or 'auto': train in rounds of "
    "16, 32, 64, ... until the convergence diagnostics agree.",
)
@click.option(
    "--max-models",
    type=int,
    default=1000,
    show_default=True,
    help="With --models auto: the most models to train.",
)
@click.option(
    "--first-round",
    type=int,
    default=16,
    show_default=True,
    help="With --models auto: the first round's models.",
)
@click.option(
    "--min-reliability",
    type=float,
    default=None,
    help="Convergence: split-half reliability of self-influence and margin [0.9].",
)
@click.option(
    "--max-flag-change",
    type=float,
    default=None,
    help="Convergence: most change (1 - Jaccard) of the flagged set per round [0.15].",
)
@click.option(
    "--design",
    type=click.Choice(["bernoulli", "complementary"]),
    default="bernoulli",
    show_default=True,
    help="Inclusion design: iid halves, or complementary pairs.",
)
@click.option("--finetune", type=click.Choice(["lora", "full"]), default="lora", show_default=True)
@click.option("--lora-r", type=int, default=8, show_default=True)
@click.option("--lora-alpha", type=int, default=16, show_default=True)
@click.option("--lora-dropout", type=float, default=0.0, show_default=True)
@click.option(
    "--lora-targets",
    default=None,
    help="Comma-separated module names for LoRA [default: peft's for the model].",
)
@click.option("--epochs", type=int, default=None, help="[text: 3, images: 30]")
@click.option("--lr", type=float, default=None, help="[text: 2e-4 (AdamW), images: 0.05 (SGD)]")
@click.option("--batch-size", type=int, default=None, help="[text: 50, images: 64]")
@click.option(
    "--micro-batch-size",
    type=int,
    default=None,
    help="Split each batch for gradient accumulation (same result, less memory).",
)
@click.option(
    "--max-length",
    type=int,
    default=100,
    show_default=True,
    help="Tokens per record; longer records are truncated.",
)
@click.option("--weight-decay", type=float, default=None, help="[text: 0, images: 5e-4]")
@click.option("--warmup-steps", type=int, default=0, show_default=True)
@click.option(
    "--loss-on",
    type=click.Choice(["full", "completion"]),
    default=None,
    help="Measure each record's loss on all tokens or its completion [chat records: "
    "completion, the last assistant turn; else full].",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="auto: bfloat16 on CUDA, else float32.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--top-k", type=int, default=10, show_default=True, help="Top influencers kept per target."
)
@click.option(
    "--estimator",
    type=click.Choice(["adjusted", "plain"]),
    default="adjusted",
    show_default=True,
    help="adjusted: difference of means after regressing out each target's own inclusion and "
    "its strongest influencers (far less noise at small M); plain: the paper's difference of "
    "means.",
)
@click.option(
    "--covariates",
    type=int,
    default=4,
    show_default=True,
    help="Influencers per target the adjusted estimator regresses out (at most M/4 - 1).",
)
@click.option("--eval-batch-size", type=int, default=64, show_default=True)
@click.option(
    "--pack",
    default="auto",
    show_default=True,
    help="Ensemble members trained at once (text models): auto (CUDA: as many as fit in "
    "memory; CPU: one at a time, measured faster there), off, or a number.",
)
@click.option(
    "--extract-models",
    type=int,
    default=16,
    show_default=True,
    help="Members that decode every record for extractability (0: none).",
)
@click.option(
    "--prefix-tokens",
    type=int,
    default=32,
    show_default=True,
    help="Plain-text records: prompt with this many tokens, score the rest.",
)
@_gathered(findings_options, FINDINGS_KEYS, "findings_given")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    default=False,
    help="Allow model code from the model's repository to run (off by default).",
)
@_gathered(executor_options, EXECUTOR_KEYS, "executor_given")
@click.option(
    "--id-field",
    default=None,
    help="The field (column) holding each record's id, required in every record "
    "[default: 'id' where present, else line<N> / row<N>].",
)
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
    data: Path,
    model: str,
    preset,
    template,
    dataset,
    data_root,
    resize,
    crop_padding,
    flip,
    out,
    n_models,
    max_models,
    first_round,
    min_reliability,
    max_flag_change,
    design,
    finetune,
    lora_r,
    lora_alpha,
    lora_dropout,
    lora_targets,
    epochs,
    lr,
    batch_size,
    micro_batch_size,
    max_length,
    weight_decay,
    warmup_steps,
    loss_on,
    dtype,
    device,
    seed,
    top_k,
    estimator,
    covariates,
    eval_batch_size,
    pack,
    extract_models,
    prefix_tokens,
    findings_given,
    trust_remote_code,
    executor_given,
    id_field,
    plan_only,
    prepare_only,
) -> None:
    """Train an ensemble on random halves of DATA and estimate the influence matrix.

    DATA is JSON Lines for a language model, or for an image model (--model resnet-tiny, ...)
    an image folder (one subfolder per class) or an .npz with images and labels; or give
    --dataset cifar10 --data-root PATH instead. Rerunning the same command resumes: finished
    models are never retrained.
    """
    from memaudit import api
    from memaudit.config import (
        AnalysisConfig,
        ExtractConfig,
        ImageConfig,
        ModelConfig,
        RunConfig,
        TrainConfig,
        resolve_model_name,
    )
    from memaudit.data.images import is_image_source
    from memaudit.ensemble.vision import IMAGE_TRAIN_DEFAULTS, VISION_MODELS, is_vision_model

    images = is_vision_model(model)
    if images:
        if data is not None and dataset is not None:
            raise MemauditError("give DATA or --dataset, not both")
        if data is None and dataset is None:
            raise MemauditError(
                f"--model {model}: give DATA (an image folder or .npz) or --dataset"
            )
        if data is not None and not is_image_source(data, None):
            raise MemauditError(
                f"--model {model} is an image model: DATA must be an image folder or an .npz, "
                f"not {data}"
            )
        if dataset is not None and data_root is None:
            raise MemauditError(f"--dataset {dataset}: give --data-root, the folder with its files")
    else:
        if data is None:
            raise MemauditError("missing DATA (a JSON Lines file)")
        if dataset is not None or is_image_source(data, None) and data.suffix == ".npz":
            raise MemauditError(f"image data needs an image --model ({', '.join(VISION_MODELS)})")
    given = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay}
    train_opts = {k: v for k, v in given.items() if v is not None}
    if images:
        train_opts = {**IMAGE_TRAIN_DEFAULTS, **train_opts}
        finetune, extract_models = "full", 0  # trained from scratch; nothing to decode

    targets = (
        tuple(t.strip() for t in lora_targets.split(",") if t.strip()) if lora_targets else None
    )
    _record_format(preset, template)
    if loss_on is None:
        from memaudit.data.formats import is_chat_source

        chat = not images and template is None and preset is None and is_chat_source(data)
        loss_on = "completion" if chat else "full"
    cfg = RunConfig(
        data=str(data if data is not None else data_root),
        model=ModelConfig(
            name=resolve_model_name(model),
            finetune=finetune,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            lora_targets=targets,
            trust_remote_code=trust_remote_code,
        ),
        preset=preset,
        template=template,
        train=TrainConfig(
            **train_opts,
            micro_batch_size=micro_batch_size,
            max_length=max_length,
            warmup_steps=warmup_steps,
            loss_on=loss_on,
            dtype=dtype,
        ),
        ensemble=_ensemble_config(n_models, max_models, first_round, design, seed),
        convergence=_convergence_config(min_reliability, max_flag_change),
        analysis=AnalysisConfig(top_k=top_k, estimator=estimator, covariates=covariates),
        extract=ExtractConfig(models=extract_models, prefix_tokens=prefix_tokens),
        findings=_findings_config(None, **findings_given),
        device=device,
        eval_batch_size=eval_batch_size,
        pack=pack,
        id_field=id_field,
        image=ImageConfig(
            dataset=dataset,
            data_root=None if data_root is None else str(data_root),
            resize=resize,
            crop_padding=crop_padding,
            flip=flip,
        )
        if images
        else None,
    )
    out = out or api.default_out(data if data is not None else dataset, cfg.model.name)
    ecfg = _executor_config(**executor_given)
    if plan_only or _full_mode_start(cfg, out, prepare_only):
        _print_plan(cfg, out, ecfg)
        if plan_only:
            return
    audit = api.Audit(cfg, out, executor=ecfg)
    if prepare_only:
        if cfg.ensemble.auto:
            raise MemauditError("--prepare-only: needs a fixed --models (shards train a fixed M)")
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
def train(
    run_dir: Path,
    shard,
    executor_given,
) -> None:
    """Train the members RUN_DIR lacks (or one shard of them), without estimating.

    RUN_DIR is made by `memaudit run ... --prepare-only`; `memaudit report RUN_DIR` (or the
    same `memaudit run`) merges what the shards wrote and says what is missing.
    """
    from memaudit import api
    from memaudit.report.terminal import print_status

    index, count = _shard(shard)
    ecfg = _executor_config(**executor_given)
    audit = api.Audit.open(run_dir, executor=ecfg)
    trained = audit.train_shard(index, count, progress=True)
    status = audit.status()
    click.echo(
        f"shard {index}/{count}: trained {len(trained)} models; the run has "
        f"{len(status['ok'])} of {status['models']} models done"
    )
    print_status(status, audit.run_dir)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--top-k", type=int, default=None, help="Top influencers kept per target.")
@click.option(
    "--estimator",
    type=click.Choice(["adjusted", "plain"]),
    default=None,
    help="Override the run's estimator for this analysis.",
)
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
@_gathered(findings_options, FINDINGS_KEYS, "findings_given")
def report(run_dir: Path, formats, redact, findings_given) -> None:
    """Re-render the reports of RUN_DIR from what it holds, without training."""
    from memaudit import api

    audit = api.Audit.open(run_dir)
    chosen = {"terminal", "json", "html"} if "all" in formats else set(formats)
    findings = _findings_config(audit.config.findings, **findings_given)
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
@_apply(format_options)
@_apply(image_options)
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

    if is_image_source(data, dataset):
        from memaudit.data.images import load_images, npz_bytes
        from memaudit.data.plant_images import plant_images
        from memaudit.store.io import atomic_write_bytes

        if out.suffix.lower() != ".npz":
            raise MemauditError(f"--out: image data is planted into an .npz, not {out}")
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

    fmt = _record_format(preset, template)
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
    try:
        cli.main(standalone_mode=False)
    except MemauditError as exc:
        _fail(str(exc), exc.exit_code)
    except click.UsageError as exc:
        # click prints usage plus the error over several lines; keep it to one.
        where = f" ({exc.ctx.command_path})" if exc.ctx else ""
        _fail(f"{exc.format_message()}{where}")
    except click.ClickException as exc:
        _fail(exc.format_message())
    except click.Abort:
        _fail("aborted; rerun the same command to resume", 130)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume", 130)
