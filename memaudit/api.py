"""The Python API that the CLI wraps; a notebook can use it directly.

from memaudit import Audit, RunConfig, ModelConfig
audit = Audit(RunConfig(data="data.jsonl", model=ModelConfig("gpt-neo-125M")), "runs/x")
analysis = audit.run()                 # train what is missing, then estimate
analysis.result.self_influence         # numpy arrays, one entry per record
Audit.open("runs/x").losses()          # any stage's output, read back from the directory
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memaudit.config import FindingsConfig, RunConfig
from memaudit.data.records import Record, data_identity
from memaudit.errors import MemauditError
from memaudit.estimate.analysis import Analysis, analyze_run
from memaudit.findings.build import Findings
from memaudit.modality import TEXT, Modality, modality_of
from memaudit.store.rundir import RunDir


def default_out(data: str | Path, model: str) -> Path:
    """memaudit-runs/<data stem>-<model name>: the same command finds its run again."""
    model_part = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model.rstrip("/")).name)
    return Path("memaudit-runs") / f"{Path(data).stem}-{model_part}"


@dataclass
class Prepared:
    """Everything training needs, built before anything is written."""

    records: list[Record]
    tokenizer: Any
    tokens: Any
    factory: Any
    device: Any
    dtype: Any
    inclusion: np.ndarray
    resumed: bool
    # The member task (memaudit.ensemble.member.MemberTask): the image path's ImageTask; None:
    # the text path's TextTask over tokens and factory, made where it is needed.
    task: Any = None
    modality: Modality = TEXT


class Audit:
    def __init__(self, config: RunConfig, out: str | Path, executor=None) -> None:
        """``executor``: a memaudit.ensemble.executors.ExecutorConfig (default: in this process)."""
        self.config = config
        self.run_dir = RunDir(out)
        self.executor_config = executor
        self._executor = None  # made on first training, kept across --models auto rounds

    @classmethod
    def open(cls, out: str | Path, executor=None, trust_remote_code: bool = False) -> Audit:
        """An existing run directory, with the configuration saved in it. Remote model code
        runs only if this call says so: a stored ``trust_remote_code`` is ignored, since a run
        directory is data that can be handed around."""
        run = RunDir(out)
        cfg = run.config()
        if trust_remote_code:
            model = dataclasses.replace(cfg.model, trust_remote_code=True)
            cfg = dataclasses.replace(cfg, model=model)
        return cls(cfg, out, executor)

    # -- stages ---------------------------------------------------------------------------------
    def prepare(self) -> Prepared:
        """Validate data, model and options, then create (or reopen) the run directory.

        All checks that can fail on user input run before the directory is touched, so a bad
        input leaves nothing behind.
        """
        prepare = {"text": self._prepare_text, "image": self._prepare_images}
        return prepare[modality_of(self.config).name]()

    def _prepare_text(self) -> Prepared:
        """prepare() for a text run: records, a tokenizer and a pretrained base model."""
        from memaudit.data.partition import check_minimums, inclusion_matrix
        from memaudit.data.tokens import tokenize_records
        from memaudit.ensemble.models import (
            MemberFactory,
            load_base_model,
            load_tokenizer,
            max_positions,
            pick_device,
            pick_dtype,
        )
        from memaudit.ensemble.plan import load_run_records

        cfg = self.config
        # Chat records are rendered with the model's tokenizer, loaded first for them.
        records, tokenizer = load_run_records(cfg)
        data_sha, source = data_identity(cfg.data, cfg.split, cfg.revision)
        if cfg.chat_template is not None:  # read (and checked) by load_run_records
            from memaudit.data.formats import read_chat_template

            source["chat_template_sha256"] = read_chat_template(cfg.chat_template).sha256
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.train.dtype, device)
        tokenizer = tokenizer or load_tokenizer(cfg.model.name, cfg.model.trust_remote_code)
        limit = max_positions(cfg.model)
        if limit is not None and cfg.train.max_length > limit:
            raise MemauditError(
                f"--max-length: {cfg.train.max_length} exceeds the model's {limit} positions"
            )
        tokens = tokenize_records(
            records, tokenizer, cfg.train.max_length, cfg.train.loss_on, cfg.data
        )
        model = load_base_model(cfg.model, device, dtype)
        check_minimums(len(records), cfg.ensemble, cfg.data, self.run_dir.exists())
        # With --models auto, the first round; adaptive.run_adaptive grows it.
        inclusion = inclusion_matrix(len(records), cfg.ensemble)
        resumed = self.run_dir.check_or_create(cfg, records, data_sha, source)
        self.run_dir.check_idle()
        self.run_dir.save_inclusion(inclusion)
        return Prepared(
            records, tokenizer, tokens, MemberFactory(model), device, dtype, inclusion, resumed
        )

    def _prepare_images(self) -> Prepared:
        """prepare() for an image run: images instead of JSON Lines, an ImageTask instead of a
        tokenizer and a base model; the same checks-before-writing order."""
        import torch

        from memaudit.config import is_hub_id
        from memaudit.data.formats import dataset_identity
        from memaudit.data.images import HFColumns, load_images
        from memaudit.data.partition import check_minimums, inclusion_matrix
        from memaudit.ensemble.models import pick_device
        from memaudit.ensemble.vision import ImageTask, build_model

        cfg = self.config
        img = cfg.image
        build_model(cfg.model.name, 2)  # an unknown image model fails before anything is read
        columns = HFColumns(img.image_field, img.label_field, cfg.id_field, cfg.split, cfg.revision)
        data = load_images(cfg.data or None, img.dataset, img.data_root, img.resize, columns)
        records = data.records()
        device = pick_device(cfg.device)
        task = ImageTask(
            data.images,
            data.labels,
            len(data.class_names),
            cfg.model.name,
            cfg.train,
            img,
            init_seed=cfg.ensemble.seed,
            device=device,
            eval_batch_size=cfg.eval_batch_size,
        )
        check_minimums(len(records), cfg.ensemble, cfg.data or img.dataset, self.run_dir.exists())
        inclusion = inclusion_matrix(len(records), cfg.ensemble)
        source = {}
        if img.dataset is None and is_hub_id(cfg.data):  # the Hub id, split, revision
            source = dataset_identity(cfg.data, cfg.split, cfg.revision)[1]
        resumed = self.run_dir.check_or_create(cfg, records, data.sha256(), source)
        self.run_dir.check_idle()
        if not self.run_dir.file("images.npz").exists():
            self.run_dir.save_images(data)
        self.run_dir.save_inclusion(inclusion)
        return Prepared(
            records,
            None,
            None,
            None,
            device,
            torch.float32,
            inclusion,
            resumed,
            task=task,
            modality=task.modality,
        )

    def train(
        self,
        prepared: Prepared | None = None,
        progress: bool = False,
        members: list[int] | None = None,
    ) -> list[int]:
        """Train every member (of ``members``) the run directory lacks; return the indices
        trained now. Members that fail on every attempt are recorded and left pending."""
        from memaudit.ensemble.driver import train_ensemble
        from memaudit.report.terminal import ensemble_progress

        prepared = prepared or self.prepare()
        executor = self._get_executor(prepared)
        with ensemble_progress(enabled=progress, config=self.config, prepared=prepared) as hooks:
            return train_ensemble(
                self.run_dir,
                self.config,
                prepared.inclusion,
                prepared.tokens,
                prepared.factory,
                prepared.device,
                prepared.dtype,
                hooks,
                tokenizer=prepared.tokenizer,
                executor=executor,
                members=members,
                retries=self._executor_cfg().retries,
                task=prepared.task,
            )

    def _executor_cfg(self):
        from memaudit.ensemble.executors import ExecutorConfig

        return self.executor_config or ExecutorConfig()

    def _get_executor(self, prepared: Prepared):
        from memaudit.ensemble.executors import make_executor
        from memaudit.ensemble.member import MemberContext

        if self._executor is None:
            self._executor = make_executor(
                self._executor_cfg(),
                lambda: MemberContext(
                    self.config,
                    prepared.tokens,
                    prepared.factory,
                    prepared.device,
                    prepared.dtype,
                    prepared.tokenizer,
                    task=prepared.task,
                ),
                self.config,
                prepared.records,
            )
        return self._executor

    def close(self) -> None:
        """Stop the executor (a Ray cluster started for this audit)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def prepare_stored(self) -> Prepared:
        """Everything training needs, from the run directory alone (its records and P), as a
        shard on another machine has it: the dataset file is not needed."""
        from memaudit.ensemble.member import member_context

        modality = modality_of(self.config)
        if not modality.shards:
            raise MemauditError(
                f"memaudit train --shard: {modality.name} runs train with `memaudit run` for "
                "now (shards and Ray are text-only in this release)"
            )
        records = self.run_dir.records()
        ctx = member_context(self.config, records)
        return Prepared(
            records,
            ctx.tokenizer,
            ctx.tokens,
            ctx.factory,
            ctx.device,
            ctx.dtype,
            self.run_dir.inclusion(),
            True,
        )

    def train_shard(self, index: int = 1, count: int = 1, progress: bool = False) -> list[int]:
        """Train shard ``index`` of ``count`` (1-based): the members j with j % count ==
        index - 1 that the directory lacks. Shards of one split run side by side; a full run
        merges them (it trains only what is still missing)."""
        from memaudit.data.partition import shard_members

        members = shard_members(self.run_dir.inclusion().shape[1], index, count)
        with self.run_dir.shard_lock(index, count):
            try:
                return self.train(self.prepare_stored(), progress=progress, members=members)
            finally:
                self.close()

    def status(self) -> dict[str, Any]:
        """Models done, diverged, failed after every retry, and not trained yet."""
        return self.run_dir.status(self.inclusion().shape[1])

    def analyze(
        self,
        top_k: int | None = None,
        show: bool = False,
        estimator: str | None = None,
        models: int | None = None,
    ) -> Analysis:
        """Estimate influence from the saved losses and write the influence files; top_k and
        estimator override the run's analysis options for this call. ``models``: estimate from
        the first ``models`` models only (what a smaller run would have found); writes nothing."""
        cfg = self.config.analysis
        if top_k is not None:
            cfg = dataclasses.replace(cfg, top_k=top_k)
        if estimator is not None:
            cfg = dataclasses.replace(cfg, estimator=estimator)
        analysis = analyze_run(self.run_dir, cfg, models=models)
        if show:
            from memaudit.report.terminal import print_summary

            print_summary(analysis, self.run_dir, self.config)
        return analysis

    def report(
        self,
        formats: tuple[str, ...] = ("json", "html"),
        redact: bool = False,
        findings: FindingsConfig | None = None,
        show: bool = False,
        analysis: Analysis | None = None,
        built: Findings | None = None,
    ) -> dict[str, Any]:
        """Build the report from the run directory (no training), write the requested files
        (json, html) and, with ``show``, print the terminal view. Returns the report dict.
        ``built``: findings already built for ``analysis`` (the last round's), reused as is."""
        from memaudit.findings.build import build_findings
        from memaudit.report.build import build_report, write_reports

        analysis = analysis or self.analyze()
        if built is None:
            built = build_findings(self.run_dir, analysis, findings or self.config.findings)
        report, flagged = build_report(self.run_dir, analysis, built, redact=redact)
        written = write_reports(self.run_dir, report, flagged, set(formats))
        if show:
            from memaudit.report.terminal import print_report

            print_report(report)
            for path in written:
                print(f"wrote {path}")
        return report

    def run(self, progress: bool = False) -> dict[str, Any]:
        """Train what is missing (in rounds with ``auto``), estimate, build the findings,
        diagnose convergence and write the reports; returns the report dict. The findings are
        built once per round; the report renders the last round's."""
        from memaudit.convergence import adaptive

        on_round = None
        if progress:
            from memaudit.report.terminal import print_round

            on_round = print_round
        prepared = self.prepare()
        with self.run_dir.lock():
            try:
                if self.config.ensemble.auto:
                    _, last = adaptive.run_adaptive(self, prepared, progress, on_round)
                else:
                    self.train(prepared, progress=progress)
                    last = adaptive.check(self)
                    n = last.diagnostics.n_models
                    adaptive.write_history(self, [last.diagnostics], f"fixed --models {n}")
            finally:
                self.close()
            # The report reads convergence.json, written after the last check.
            report = self.report(show=progress, analysis=last.analysis, built=last.findings)
            if progress:
                from memaudit.report.terminal import print_status

                print_status(self.status(), self.run_dir)
            return report

    # -- reading results back -------------------------------------------------------------------
    def records(self) -> list[Record]:
        return self.run_dir.records()

    def inclusion(self) -> np.ndarray:
        return self.run_dir.inclusion()

    def losses(self) -> np.ndarray:
        """L (N x M), NaN in the columns of models without a valid result."""
        return self.run_dir.collect_losses(len(self.records()), self.inclusion().shape[1])[0]

    # -- one record's influence distribution ----------------------------------------------------
    def _target(self, t: int | str, records: list[Record]) -> int:
        """A record index, or a record id, as an index into the run's records."""
        if isinstance(t, str):
            for i, r in enumerate(records):
                if r.id == t:
                    return i
            raise MemauditError(f"record id {t!r} is not in {self.run_dir.path}")
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < len(records):
            raise MemauditError(f"record index {t!r} is out of range (0..{len(records) - 1})")
        return int(t)

    def influence_row(self, t: int | str) -> dict[str, Any]:
        """Record t's full influence row (t: an index or a record id), computed from the run
        directory by the run's estimator: {"index", "id", "estimator", "influence" (N,),
        "se" (N,)}, where influence[i] = I[t, i] (i = t: the self-influence) and se its
        standard error, as numpy arrays in record order (NaN where undefined)."""
        from memaudit.estimate.influence import InfluenceResult
        from memaudit.estimate.registry import get_estimator

        records = self.records()
        t = self._target(t, records)
        inclusion = self.inclusion()
        losses, valid = self.run_dir.collect_losses(len(records), inclusion.shape[1])
        saved = self.run_dir.file("influence.npz")
        estimator = (
            InfluenceResult.load(saved).estimator
            if saved.exists()
            else self.config.analysis.estimator
        )
        infl, se = get_estimator(estimator).rows_with_se(
            np.nan_to_num(losses),
            inclusion,
            np.array([t]),
            model_mask=valid,
            covariates=self.config.analysis.covariates,
        )
        return {
            "index": t,
            "id": records[t].id,
            "estimator": estimator,
            "influence": infl[0],
            "se": se[0],
        }

    def distribution(self, t: int | str) -> dict[str, Any]:
        """Record t's influence-distribution summaries (as in influence.json's "distribution":
        quantiles of I[t, i] over i != t, significant others, shares of the positive influence,
        margin), from influence.npz when it has them, else from :meth:`influence_row`."""
        from memaudit.estimate.analysis import significance_df
        from memaudit.estimate.distribution import summarize_block
        from memaudit.estimate.influence import InfluenceResult

        records = self.records()
        t = self._target(t, records)
        saved = self.run_dir.file("influence.npz")
        res = InfluenceResult.load(saved) if saved.exists() else None
        if res is not None and res.distribution is not None:
            margin = float(res.margin[t]) if res.margin_defined[t] else None
            return {"index": t, "id": records[t].id, **res.distribution.row(t, margin)}
        row = self.influence_row(t)
        infl, se = row["influence"], row["se"]
        ranked = np.sort(infl[np.isfinite(infl)])[::-1]
        margin = float(ranked[0] / ranked[1]) if ranked.size > 1 and ranked[1] > 0 else None
        used = int(self.run_dir.collect_losses(len(records), self.inclusion().shape[1])[1].sum())
        df = significance_df(row["estimator"], used, self.config.analysis.covariates)
        summary = summarize_block(np.array([t]), infl[None, :].copy(), se[None, :], df)
        return {"index": t, "id": records[t].id, **summary.row(0, margin)}


def run(
    data: str | Path | None, model: str, out: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """One-call audit, as ``memaudit run`` does it; returns the report.

    ``memaudit.run("data.jsonl", "gpt-neo-125M", models=64, epochs=3)``;
    ``memaudit.run("images.npz", "resnet-tiny", models="auto")`` (an image model makes an image
    run); ``memaudit.run(None, "resnet18", dataset="cifar10", data_root="cifar/")``.
    Options are ``memaudit run``'s options with underscores (``max_length=64``), plus the
    configuration fields the command line lacks (``link_fwer``, ``bootstrap``, ...): the keys of
    memaudit.config.OPTIONS, made into a RunConfig by memaudit.config.build_run_config.
    """
    from memaudit.config import build_run_config
    from memaudit.data.formats import chat_defaults

    cfg = build_run_config(data, model, **chat_defaults(data, options))
    named = data if data is not None else cfg.image.dataset
    return Audit(cfg, out or default_out(named, cfg.model.name)).run()
