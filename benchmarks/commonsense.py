"""Commonsense reasoning in the LLM setting: DoMIX against LoRA and DoRA on one causal LM, one command that resumes.

    python benchmarks/commonsense.py configs/commonsense.yaml          # --dry-run lists the steps and their state

The comparison of LLM-Adapters, DoRA and the DoMIX paper's LLM experiments, scaled to a small model and a
sample of the data (the config says what is scaled and why). Steps, each skipped when its output is already
finished, so rerunning the same command goes on where it stopped (a step finished with other settings is refused;
``--overwrite`` does it again, and what depends on it):

1. Seeded samples (``OUT/data/``): ``mixture.json``, ``train_sample`` records of the training sets in proportion
   to their sizes (what every row trains on); ``adapter-<name>.json``, ``adapter_sample`` records of each adapter's
   training sets (drawn after the mixture's records, so no record is in both); ``test-<bench>.json``,
   ``test_sample`` records of each test set (all of a smaller one). A sample already on disk that differs from the
   one these settings draw is refused: it would no longer match the runs trained on it.
2. Adapters (``OUT/adapters/<name>``): ``domix instruct --method lora --lora-rank RANK`` on each adapter sample; the
   PEFT adapter it writes to ``OUT/adapters/<name>/model`` is copied to ``OUT/modules/<name>`` (its two adapter files),
   so that the bridge names its blocks after the adapters.
3. Rows (``OUT/rows/<row>``), each ``domix instruct`` on the mixture sample with the same lr, epochs, batch size and
   max length: ``lora`` and ``dora`` of rank RANK x (adapters + 1), the rank DoMIX composes; ``domix``: every
   adapter (``--adapter``) and a fresh block of RANK first in the bridge (``--new-rank``), as the published DoMIX
   LLM code composes; ``domix_paper``: the same with the published bridge (P = I/sum r at 10x the lr, no weight
   decay); ``cat``: the adapters with the bridge frozen at P = I; ``lora_fa``: LoRA of the same rank with A
   frozen (DoMIX's trainable shape without the adapters); ``mode``: MoDE, a gate over domain experts trained first
   (``OUT/stores/mode``: ``domix pretrain --method mode`` with each adapter's sample as a domain's text, settings
   ``pretrain``); ``full``: every weight, at 2e-5 (full fine-tuning, what MoDE's retention is measured against);
   ``base``: the model zero-shot, untrained.
4. ``domix eval-choice`` of every row on every test sample in the chosen protocols (``OUT/eval/<row>.json``).
5. ``OUT/results.json`` and ``OUT/report.md``: accuracy per benchmark and on average per protocol and metric;
   trainable parameters, peak memory and time per training step of every row, and as a ratio to DoRA's
   measured in the same run; what the adapters cost to train.

Every training and evaluation runs as its own ``python -m domix ...`` process (each peak memory its own), with
its settings in ``OUT/configs/`` and its output in ``OUT/logs/``, as ``domix compare`` runs its jobs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domix import atomic
from domix.comparison.progress import Board
from domix.cli import guarded
from domix.comparison.run import TIMES_FILE, Job, progress_file, reusable, run_job
from domix.errors import DomixError
from domix.llm.config import FIELDS as INSTRUCT_FIELDS
from domix.llm.config import PROTOCOLS, InstructConfig
from domix.settings import check, coerce, read_yaml_mapping, with_recipe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import commonsense_data  # noqa: E402  (the samples, one copy: benchmarks/commonsense_data.py)
import commonsense_reading  # noqa: E402  (the training-prior floor, one copy)
DATA = ROOT.parent / "shared" / "data" / "commonsense"
# row -> (domix instruct --method, composes the adapters, its own settings, the domix pretrain --method whose store it
# composes: trained on the adapters' samples as domains); "base" is the model untrained
ROWS: dict[str, tuple[str, bool, dict, str | None]] = {
    "lora": ("lora", False, {}, None),
    "dora": ("dora", False, {}, None),
    "lora_fa": ("lora_fa", False, {}, None),  # LoRA with A frozen: DoMIX's trainable shape without the adapters
    "cat": ("cat", True, {}, None),  # the bridge frozen at P = I
    "domix": ("domix", True, {}, None),  # domix's default bridge (since 2026-12-03 the published LLM code's, below)
    # the published DoMIX LLM bridge (finetune_sepLR.py): P = I/sum r, P at 10x the run's lr, weight decay 0, B at the lr;
    # spelled out so that the row keeps its meaning whatever domix's default becomes
    "domix_paper": ("domix", True, {"p_init": "scaled_identity", "p_lr": "10x", "p_weight_decay": 0.0, "b_lr": None}, None),
    "mode": ("mode", False, {}, "mode"),  # MoDE: the gates over each adapter sample's experts train on the mixture
    # every weight trained: what MoDE's paper measures its retention against; at Alpaca's full fine-tuning rate, since
    # the adapters' 2e-4 moves every weight of a small model far (row_settings cannot set lr: the config owns it)
    "full": ("full", False, {"lr": 2e-5, "lora_rank": None}, None),
}
BASE = "base"
# settings the config sets itself; the free-form ones (instruct, row_settings) may not
RESERVED = {"train", "out", "method", "model", "modules", "domains", "adapters", "lora_rank", "new_rank", "lr", "epochs",
            "batch_size", "max_length", "seed"}
STORE_RESERVED = {"model", "domains", "out", "method", "seed", "general"}  # what the config sets of a stage-1 store
METRICS = {"loglikelihood": ("acc", "acc_norm"), "generate": ("acc", "unanswered")}


@dataclass
class CommonsenseConfig:
    model: str = ".cache/smollm2-135m"
    out: str = "runs/commonsense"
    data: str = str(DATA)  # NAME/train.json and NAME/test.json as LLM-Adapters distributes them
    train_sets: list[str] = field(default_factory=lambda: ["boolq", "arc_e", "arc_c", "obqa"])  # the mixture's sets
    adapters: dict[str, list[str]] = field(default_factory=lambda: {"boolq": ["boolq"], "arc": ["arc_e", "arc_c"], "obqa": ["obqa"]})
    benchmarks: list[str] = field(default_factory=lambda: ["boolq", "piqa", "arc_e", "arc_c", "obqa"])
    train_sample: int = 1000  # records of the mixture, over train_sets in proportion to their sizes
    adapter_sample: int = 300  # records of each adapter's sets (in proportion), none of them in the mixture sample
    test_sample: int = 200  # records of each test set (all of a smaller one)
    rank: int = 16  # each adapter's rank and DoMIX's fresh block; lora/dora get rank x (adapters + 1)
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 16
    max_length: int = 256
    seed: int = 0  # the samples and every run's seed
    rows: list[str] = field(default_factory=lambda: [BASE, "lora", "dora", "domix"])
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    num_beams: int = 1  # generate: 1 is greedy; the published evaluation uses 4
    max_new_tokens: int = 32
    eval_batch_size: int = 8
    instruct: dict[str, Any] = field(default_factory=dict)  # other domix instruct settings of every run (adapters too)
    row_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # a row's own domix instruct settings
    pretrain: dict[str, Any] = field(default_factory=dict)  # domix pretrain settings of a row's store (mode's experts)

    @classmethod
    def from_yaml(cls, path: str | Path, out: str | None = None) -> "CommonsenseConfig":
        data = read_yaml_mapping(path, {f.name for f in dataclasses.fields(cls)}, what="commonsense config")
        hints = typing.get_type_hints(cls)
        data = {k: coerce(k, v, hints[k], f" in {path}") for k, v in data.items()}
        if out:
            data["out"] = out
        return cls(**data).validate()

    @property
    def composed_rank(self) -> int:
        return self.rank * (len(self.adapters) + 1)

    def validate(self) -> "CommonsenseConfig":
        for row in self.rows:
            if row != BASE and row not in ROWS:
                raise DomixError(f"unknown row {row!r}; choose from {', '.join([BASE, *ROWS])}")
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        check([
            (len(set(self.rows)) == len(self.rows) and bool(self.rows), "rows must name each row once, and at least one"),
            (not unknown and bool(self.protocols) and len(set(self.protocols)) == len(self.protocols),
             f"protocols must be {' and/or '.join(PROTOCOLS)}, each once; got {self.protocols}"),
            (bool(self.train_sets) and len(set(self.train_sets)) == len(self.train_sets), "train_sets must name each training set once"),
            (bool(self.benchmarks) and len(set(self.benchmarks)) == len(self.benchmarks), "benchmarks must name each test set once"),
            (all(isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in self.adapters.values()),
             "adapters must map each adapter's name to a list of training sets, e.g. {arc: [arc_e, arc_c]}"),
            (self.train_sample >= 2, "train_sample must be at least 2 (instruct holds a dev slice out of it)"),
            (self.adapter_sample >= 2, "adapter_sample must be at least 2"),
            (self.test_sample >= 1, "test_sample must be at least 1"),
            (self.rank >= 1, "rank must be at least 1"),
            (self.num_beams >= 1, "num_beams must be at least 1"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.eval_batch_size >= 1, "eval_batch_size must be at least 1"),
        ])
        if any(ROWS[r][1] for r in self.rows if r in ROWS) and not self.adapters:
            raise DomixError("the rows that compose adapters (domix, domix_paper, cat) need at least one adapter in adapters")
        _instruct_keys("instruct", self.instruct)
        from domix.pretraining.config import FIELDS as PRETRAIN_FIELDS

        wrong = sorted(set(self.pretrain) - (PRETRAIN_FIELDS - STORE_RESERVED))
        if wrong:
            raise DomixError(f"pretrain has reserved or unknown domix pretrain settings {wrong}; the config sets "
                             f"{sorted(STORE_RESERVED)} itself")
        if any(ROWS[r][3] for r in self.rows if r in ROWS) and not self.adapters:
            raise DomixError("the rows that train a store on the adapters' samples (mode) need at least one adapter in adapters")
        for row, settings in self.row_settings.items():
            if row not in self.rows or row == BASE:
                raise DomixError(f"row_settings names {row!r}, which is not a trained row of rows {self.rows}")
            _instruct_keys(f"row_settings.{row}", settings)
        data = Path(self.data)
        if not data.is_dir():
            raise DomixError(f"data folder {data} does not exist; set data: to the commonsense folder of the data pack "
                             "(NAME/train.json and NAME/test.json)")
        needed = {data / s / "train.json" for s in [*self.train_sets, *(s for v in self.adapters.values() for s in v)]}
        needed |= {data / b / "test.json" for b in self.benchmarks}
        missing = sorted(str(p) for p in needed if not p.is_file())
        if missing:
            raise DomixError(f"{len(missing)} data file(s) missing, e.g. {missing[0]}; data: must hold NAME/train.json for "
                             "train_sets and adapters, and NAME/test.json for benchmarks")
        return self


def _instruct_keys(where: str, settings: Any) -> None:
    if not isinstance(settings, dict):
        raise DomixError(f"{where} must be a mapping of domix instruct settings, not {settings!r}")
    allowed = INSTRUCT_FIELDS - RESERVED
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise DomixError(f"{where} has unknown or reserved keys {unknown}; the config sets {sorted(RESERVED)} itself, "
                         f"and allows {sorted(allowed)}")
    hints = typing.get_type_hints(InstructConfig)
    for key, value in settings.items():
        coerce(key, value, hints[key], f" in {where}")


# ---------------------------------------------------------------- step 1: the samples


def draw_samples(cfg: CommonsenseConfig) -> dict[str, dict]:
    """Every sample as {file name: {"records": [...], "from": {set: [taken, of]}}}; deterministic in the settings
    (commonsense_data.draw_samples, which the shipped samples of data/commonsense/ come from)."""
    return commonsense_data.draw_samples(Path(cfg.data), cfg.train_sets, cfg.adapters, cfg.benchmarks, cfg.train_sample,
                                         cfg.adapter_sample, cfg.test_sample, cfg.seed)


def write_samples(cfg: CommonsenseConfig, samples: dict[str, dict]) -> int:
    """Write the samples not on disk yet (returns how many); refuse one that differs from what is there."""
    return len(commonsense_data.write_samples(Path(cfg.out) / "data", samples))


# ---------------------------------------------------------------- steps 2-4: the jobs


class InstructJob(Job):
    """A ``domix instruct`` job of the comparison's runner (domix/comparison/run.py)."""

    def config(self) -> InstructConfig:
        return InstructConfig(**with_recipe(InstructConfig, self.settings)).validate()


@dataclass
class EvalJob:
    name: str  # eval/<row>
    row: str
    model: str  # a model folder of a row, or the base model
    tasks: dict[str, str]
    file: Path  # OUT/eval/<row>.json
    after: InstructJob | None  # the training it scores

    def finished(self) -> bool:
        return self.file.is_file()


def _instruct_settings(cfg: CommonsenseConfig, **settings) -> dict:
    return {**cfg.instruct, "model": cfg.model, "lr": cfg.lr, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
            "max_length": cfg.max_length, "seed": cfg.seed, **settings}


def plan(cfg: CommonsenseConfig) -> list[Job | EvalJob]:
    """Adapters and stores first, then the base's evaluation, then each row's training and evaluation."""
    out = Path(cfg.out)
    data = out / "data"
    jobs: list[Job | EvalJob] = []
    composing = any(ROWS[r][1] for r in cfg.rows if r in ROWS)
    for adapter in cfg.adapters if composing else []:  # only for rows that compose them
        settings = _instruct_settings(cfg, train=str(data / f"adapter-{adapter}.json"), out=str(out / "adapters" / adapter),
                                      method="lora", lora_rank=cfg.rank)
        jobs.append(InstructJob("instruct", f"adapters/{adapter}", settings, {"adapter": adapter}))
    for store in dict.fromkeys(ROWS[r][3] for r in cfg.rows if r in ROWS and ROWS[r][3]):
        settings = {**cfg.pretrain, "model": cfg.model, "domains": {a: str(data / f"domain-{a}.txt") for a in cfg.adapters},
                    "out": str(out / "stores" / store), "method": store, "seed": cfg.seed}
        jobs.append(Job("pretrain", f"stores/{store}", settings, {"store": store}))
    tasks = {bench: str(data / f"test-{bench}.json") for bench in cfg.benchmarks}
    for row in cfg.rows:
        if row == BASE:
            jobs.append(EvalJob(f"eval/{row}", row, cfg.model, tasks, out / "eval" / f"{row}.json", None))
            continue
        method, composes, own, store = ROWS[row]
        settings = _instruct_settings(cfg, train=str(data / "mixture.json"), out=str(out / "rows" / row), method=method, **own)
        if composes:
            settings.update(adapters=[str(out / "modules" / a) for a in cfg.adapters], new_rank=cfg.rank)
        elif store:
            settings["modules"] = str(out / "stores" / store)
        else:  # the composed rank, unless the row's own settings say otherwise (full has no rank)
            settings.setdefault("lora_rank", cfg.composed_rank)
        settings.update(cfg.row_settings.get(row, {}))
        train = InstructJob("instruct", f"rows/{row}", settings, {"row": row})
        jobs += [train, EvalJob(f"eval/{row}", row, str(train.out / "model"), tasks, out / "eval" / f"{row}.json", train)]
    return jobs


def _export_adapter(job: InstructJob, out: Path, again: bool = False) -> Path:
    """OUT/modules/<adapter>: the trained PEFT adapter's files, in a folder named after the adapter (``again``: replace it)."""
    target = out / "modules" / job.info["adapter"]
    if again or not (target / "adapter_model.safetensors").is_file():
        def fill(tmp: Path) -> None:
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy2(job.out / "model" / name, tmp / name)

        atomic.replace_dir(target, fill)
    return target


def _eval_command(cfg: CommonsenseConfig, job: EvalJob) -> list[str]:
    protocol = cfg.protocols[0] if len(cfg.protocols) == 1 else "both"
    command = [sys.executable, "-m", "domix", "eval-choice", job.model]
    for bench, path in job.tasks.items():
        command += ["--task", f"{bench}={path}"]
    return command + ["--protocol", protocol, "--out", str(job.file), "--details", str(job.file.with_suffix(".details.json")),
                      "--batch-size", str(cfg.eval_batch_size), "--max-new-tokens", str(cfg.max_new_tokens),
                      "--num-beams", str(cfg.num_beams)]


def _scored_as_asked(cfg: CommonsenseConfig, job: EvalJob, overwrite: bool = False) -> bool:
    """Whether a finished evaluation scored what the settings ask for; if not, refused unless ``overwrite``."""
    try:
        _check_eval(cfg, job)
    except DomixError:
        if not overwrite:
            raise
        return False
    return True


def _check_eval(cfg: CommonsenseConfig, job: EvalJob) -> None:
    """A finished evaluation must have scored what the settings ask for."""
    report = atomic.read_json(job.file)
    scored = {(r["task"], r["protocol"]) for r in report.get("results", [])}
    wanted = {(b, p) for b in cfg.benchmarks for p in cfg.protocols}
    generation = report.get("generation") or {}
    if scored != wanted or ("generate" in cfg.protocols and (generation.get("num_beams"), generation.get("max_new_tokens"))
                            != (cfg.num_beams, cfg.max_new_tokens)):
        raise DomixError(f"{job.file} was scored with other settings (benchmarks, protocols, num_beams or max_new_tokens); "
                         "pass --overwrite to score again, or choose another out folder")


def _evaluate(cfg: CommonsenseConfig, job: EvalJob, out: Path, in_process: bool) -> float:
    started = time.perf_counter()
    if in_process:
        from domix.llm.choice import evaluate_choice

        evaluate_choice(job.model, job.tasks, tuple(cfg.protocols), str(job.file), None, cfg.eval_batch_size,
                        max_new_tokens=cfg.max_new_tokens, details=str(job.file.with_suffix(".details.json")), num_beams=cfg.num_beams)
        return round(time.perf_counter() - started, 2)
    log = out / "logs" / f"{job.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = _eval_command(cfg, job)
    with open(log, "a") as sink:
        sink.write("$ " + " ".join(command) + "\n")
        sink.flush()
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
        raise DomixError(f"job {job.name} failed (exit {code}); its log is {log}:\n{tail}\n"
                         "fix the cause and rerun the same command to go on from there")
    return round(time.perf_counter() - started, 2)


def _train(job: Job, out: Path, in_process: bool, overwrite: bool = False) -> float:
    """Run one training; ``overwrite`` replaces a run finished with other settings (an unfinished one resumes)."""
    overwrite = overwrite and job.finished()
    if not in_process:
        return run_job(job, out, overwrite, False)  # domix compare's runner: OUT/configs, OUT/logs, the progress file
    import yaml

    from domix.llm.train import instruct
    from domix.pretraining.run import pretrain

    config_file = out / "configs" / f"{job.name}.yaml"
    atomic.write_text(config_file, yaml.safe_dump(job.settings, sort_keys=False))
    started = time.perf_counter()
    (pretrain if job.kind == "pretrain" else instruct)(job.config(), overwrite=overwrite)
    return round(time.perf_counter() - started, 2)


def run(cfg: CommonsenseConfig, dry_run: bool = False, in_process: bool = False, command: str | None = None,
        overwrite: bool = False) -> dict | None:
    """Every step not finished yet, then results.json and report.md; returns the results.

    A run or evaluation finished with other settings is refused, or with ``overwrite`` done again (with what
    depends on it). Samples are never overwritten: the runs trained on them would not know.

    ``in_process`` runs the trainings and evaluations in this process (tests: no process start-ups), so its peak
    memory figures accumulate over the runs.
    """
    out = Path(cfg.out)
    jobs = plan(cfg)
    trainings = [j for j in jobs if isinstance(j, Job)]
    for job in trainings:  # every run's settings are checked before anything runs
        job.config().validate()
    samples = draw_samples(cfg)
    done = {j.name: reusable(j, overwrite) for j in trainings}  # finished with other settings: refused, or rerun with overwrite
    composed = [j.name for j in trainings if "adapter" in j.info]
    stores = {str(j.out): j.name for j in trainings if "store" in j.info}
    for job in trainings:  # a row that composes an adapter or a store to be trained again trains again too
        needs = composed if job.settings.get("adapters") else [stores[job.settings["modules"]]] if job.settings.get("modules") in stores else []
        if needs and done[job.name] and not all(done[name] for name in needs):
            if not overwrite:
                raise DomixError(f"{job.out} was trained on adapters or a store that are to be trained again; pass --overwrite "
                                 "to train it again too, or choose another out folder")
            done[job.name] = False
    for job in jobs:
        if isinstance(job, EvalJob):
            done[job.name] = (job.finished() and (job.after is None or done[job.after.name])
                              and _scored_as_asked(cfg, job, overwrite))
    pending = [j for j in jobs if not done[j.name]]
    if dry_run:
        data_done = all((out / "data" / name).is_file() for name in samples)
        print(f"{'finished' if data_done else 'to run':9} samples in {out / 'data'}")
        for job in jobs:
            state = "to run" if job in pending else "finished"
            print(f"{state:9} {job.name}" + (f" (domix {job.kind} --method {job.settings['method']})" if isinstance(job, Job)
                                              else f" (domix eval-choice {job.model})"))
        return None
    written = write_samples(cfg, samples)
    finished = len(jobs) - len(pending) + (not written)  # the samples are one step
    print(f"commonsense: {len(jobs) + 1} steps, {finished} already finished"
          + (f"; wrote {written} sample file(s) to {out / 'data'}" if written else ""))
    times = atomic.read_json(out / TIMES_FILE) if (out / TIMES_FILE).is_file() else {}
    if in_process:
        from domix.console import quiet_third_party

        quiet_third_party()
    for job in trainings:  # an adapter trained before its copy was made (an interrupted run)
        if "adapter" in job.info and done[job.name]:
            _export_adapter(job, out)
    board = Board(len(pending))
    with board:
        for number, job in enumerate(pending, 1):
            board.start(number, job.name, progress_file(out, job))  # an evaluation writes none: "starting"
            try:
                if isinstance(job, Job):
                    seconds = _train(job, out, in_process, overwrite)
                else:
                    job.file.unlink(missing_ok=True)  # scored before its row was trained (again)
                    seconds = _evaluate(cfg, job, out, in_process)
                    _check_eval(cfg, job)
            except BaseException:
                board.end(job.name, ok=False)
                raise
            board.end(job.name, ok=True)
            times[job.name] = seconds
            atomic.write_json(out / TIMES_FILE, times)
            if isinstance(job, InstructJob) and "adapter" in job.info:
                _export_adapter(job, out, again=True)
    if pending:
        print(board.summary())
    results = collect(cfg, jobs, samples, times, command)
    atomic.write_json(out / "results.json", results)
    atomic.write_text(out / "report.md", report(results))
    print(tables(results))
    print(f"commonsense: wrote {out / 'results.json'} and {out / 'report.md'}")
    return results


# ---------------------------------------------------------------- step 5: results and report


def _cost(record: dict, seconds: float | None) -> dict:
    steps = record["steps"]
    return {"method": record["method"], "trainable_parameters": record["trainable_parameters"],
            "trainable_percent": record["trainable_percent"], "total_parameters": record["total_parameters"],
            "lora_rank": record.get("lora_rank"), "steps": steps, "train_time_s": record["train_time_s"],
            "time_per_step_s": round(record["train_time_s"] / steps, 4) if steps else None,
            "wall_time_s": record["wall_time_s"], "job_wall_s": seconds, "peak_memory_mb": record["peak_memory_mb"],
            "examples": record["examples"], "dev_loss_before": record["dev_loss_before"], "dev_loss": record["dev_loss"],
            "best_epoch": record["best_epoch"], "retention": record.get("retention")}


REFERENCE = "dora"  # the row every other is compared with, question by question
WITHOUT_ADAPTERS = "lora_fa"  # the rows that compose the adapters against their trainable shape without them
RESAMPLES = 2000


def _correct(details: list[dict], metric: str) -> list[int]:
    key = "prediction_norm" if metric == "acc_norm" else "prediction"
    return [int(d[key] == d["label"]) for d in details]


def paired(details: dict[str, dict], reference: str, benchmarks: list[str], protocols: list[str]) -> dict:
    """Each row against ``reference`` on the same questions: the difference of the average accuracy (the mean over the
    benchmarks of each one's accuracy), its 95% interval from a paired bootstrap (the questions of each benchmark
    resampled, the same draws for both rows, seeded), and how many questions only one of the two answers right.

    ``details``: {row: the ``--details`` file of its evaluation, {"bench/protocol": [per question]}}.
    """
    import numpy as np

    out: dict = {}
    if reference not in details:
        return out
    rng = np.random.default_rng(0)
    for row, own in details.items():
        if row == reference:
            continue
        for protocol in protocols:
            for metric in (m for m in METRICS[protocol] if m != "unanswered"):
                diffs, draws = [], []
                better = worse = 0
                for bench in benchmarks:
                    mine = np.array(_correct(own[f"{bench}/{protocol}"], metric))
                    theirs = np.array(_correct(details[reference][f"{bench}/{protocol}"], metric))
                    d = mine - theirs
                    better, worse = better + int((d > 0).sum()), worse + int((d < 0).sum())
                    diffs.append(d.mean())
                    picks = rng.integers(0, len(d), size=(RESAMPLES, len(d)))
                    draws.append(d[picks].mean(axis=1))
                spread = np.mean(draws, axis=0)
                out.setdefault(row, {}).setdefault(protocol, {})[metric] = {
                    "difference": round(float(np.mean(diffs)), 6),
                    "ci95": [round(float(np.percentile(spread, 2.5)), 6), round(float(np.percentile(spread, 97.5)), 6)],
                    "only_this_right": better, "only_reference_right": worse}
    return out


def majority(samples: dict, benchmarks: list[str]) -> dict[str, float]:
    """The accuracy of always giving each test sample's most frequent answer: the floor a trained row must clear."""
    shares = {}
    for bench in benchmarks:
        answers = [r["answer"] for r in samples[f"test-{bench}.json"]["records"]]
        shares[bench] = max(answers.count(a) for a in set(answers)) / len(answers)
    return {**shares, "average": sum(shares.values()) / len(shares)}


APART = "boolq"  # these files hold BoolQ's question without its passage: a row's score is the share of one answer it gives
SIGNIFICANCE = commonsense_reading.SIGNIFICANCE


def prior_floor(samples: dict, benchmarks: list[str]) -> dict[str, dict]:
    """Per benchmark, what answering the training prior scores: the answer most frequent among the training sample's
    records of that set, given to every test question (its accuracy); a benchmark with no training records has no
    prior, so chance (1 / its number of answers) stands in. Unlike ``majority`` it never reads the test labels."""
    mixture, at, by_set = samples["mixture.json"], 0, {}
    for name, (taken, _) in mixture["from"].items():  # the mixture's records come set by set, in this order
        by_set[name] = mixture["records"][at : at + taken]
        at += taken
    return commonsense_reading.floor_of(by_set, {bench: samples[f"test-{bench}.json"]["records"] for bench in benchmarks})


def signal(details: dict[str, dict], benchmarks: list[str], protocols: list[str], floor: dict[str, dict]) -> dict:
    """Per row, protocol and metric, over the benchmarks but BoolQ: the mean accuracy, the training-prior floor, and the
    shuffle test (comparison.stats.shuffle_test: the row's answers permuted within each benchmark); the reading is
    "no signal" where the answers score no better than their distribution alone (p >= 0.05), else how it stands to
    the floor. BoolQ apart: its accuracy and the share of questions the row answered with each keyword."""
    from domix.comparison.stats import shuffle_test

    kept = [b for b in benchmarks if b != APART]
    out: dict = {}
    for row, own in details.items():
        for protocol in protocols:
            for metric in (m for m in METRICS[protocol] if m != "unanswered"):
                key = "prediction_norm" if metric == "acc_norm" else "prediction"
                groups = [([d[key] for d in own[f"{b}/{protocol}"]], [d["label"] for d in own[f"{b}/{protocol}"]]) for b in kept]
                test = shuffle_test(groups)
                floor_mean = sum(floor[b]["accuracy"] for b in kept) / len(kept)
                reading = ("no signal" if test["p"] >= SIGNIFICANCE else
                           "above its answer distribution, " + ("above" if test["observed"] > floor_mean else "not above") + " the floor")
                entry = {**test, "floor": floor_mean, "reading": reading}
                if APART in benchmarks:
                    answers = [d[key] for d in own[f"{APART}/{protocol}"]]
                    entry[APART] = {"accuracy": sum(a == d["label"] for a, d in zip(answers, own[f"{APART}/{protocol}"])) / len(answers),
                                    "answers": {str(a): answers.count(a) / len(answers) for a in sorted(set(answers), key=str)}}
                out.setdefault(row, {}).setdefault(protocol, {})[metric] = entry
    return out


def _finished(job: Job | EvalJob) -> bool:
    """A training finished, or an evaluation finished after the training it scores."""
    after = getattr(job, "after", None)
    return job.finished() and (after is None or after.finished())


def collect(cfg: CommonsenseConfig, jobs: list, samples: dict, times: dict, command: str | None = None) -> dict:
    """The finished steps' figures: samples, adapters, rows (cost and scores per protocol), ratios to DoRA."""
    from domix.llm.choice import PROTOCOL_NOTES

    adapters, rows, stores, details = {}, {}, {}, {}
    for job in jobs:
        if not _finished(job):  # not finished yet (``--records`` of a run under way): not in the tables yet
            continue
        if isinstance(job, Job) and job.kind == "pretrain":
            files = sorted(job.out.glob("*/domix_manifest.json"))
            manifests = [atomic.read_json(p) for p in files]
            stores[job.info["store"]] = {"folder": str(job.out), "domains": [p.parent.name for p in files],
                                         "train_time_s": round(sum(m.get("train_time_s", 0) for m in manifests), 2),
                                         "steps": sum(m.get("training", {}).get("steps", 0) for m in manifests),
                                         "peak_memory_mb": max((m.get("peak_memory_mb", 0) for m in manifests), default=None),
                                         "job_wall_s": times.get(job.name)}
            continue
        if isinstance(job, InstructJob):
            record = atomic.read_json(job.out / "result.json")
            if "adapter" in job.info:
                adapters[job.info["adapter"]] = {"sets": cfg.adapters[job.info["adapter"]], "folder": str(job.out / "model"),
                                                 **_cost(record, times.get(job.name))}
            else:
                rows[job.info["row"]] = {"trained": True, **_cost(record, times.get(job.name)),
                                         **({"bridge_usage": record["bridge_usage"]} if record.get("bridge_usage") else {})}
            continue
        report = atomic.read_json(job.file)
        if job.file.with_suffix(".details.json").is_file():
            details[job.row] = atomic.read_json(job.file.with_suffix(".details.json"))
        scores: dict[str, dict[str, dict[str, float]]] = {}
        n = {}
        for r in report["results"]:
            scores.setdefault(r["protocol"], {}).setdefault(r["metric"], {})[r["task"]] = r["value"]
            n[r["task"]] = r["n"]
        for by_metric in scores.values():
            for values in by_metric.values():
                values["average"] = sum(values[b] for b in cfg.benchmarks) / len(cfg.benchmarks)
        entry = rows.setdefault(job.row, {"trained": False, "method": None})
        entry.update(eval=scores, n=n, generation=report.get("generation"), template=report.get("template"),
                     eval_wall_s=times.get(job.name))
    dora = rows.get("dora")
    for row in rows.values():
        if row["trained"] and dora:
            row["vs_dora"] = {"peak_memory": round(row["peak_memory_mb"] / dora["peak_memory_mb"], 3),
                              "time_per_step": round(row["time_per_step_s"] / dora["time_per_step_s"], 3)}
    settings = dataclasses.asdict(cfg)
    settings["command"] = command
    return {
        "settings": settings,
        "unfinished": [j.name for j in jobs if not _finished(j)],
        "rows": {r: rows[r] for r in cfg.rows if r in rows},
        "adapters": adapters,
        "adapters_total": {"train_time_s": round(sum(a["train_time_s"] for a in adapters.values()), 2),
                           "steps": sum(a["steps"] for a in adapters.values()),
                           "trainable_parameters": sum(a["trainable_parameters"] for a in adapters.values()),
                           "peak_memory_mb": max((a["peak_memory_mb"] for a in adapters.values()), default=None)},
        "stores": stores,
        "paired": {"reference": REFERENCE, "resamples": RESAMPLES,
                   "rows": paired(details, REFERENCE, cfg.benchmarks, cfg.protocols)},
        "paired_adapters": {"reference": WITHOUT_ADAPTERS, "resamples": RESAMPLES,
                            "rows": paired({r: d for r, d in details.items() if r == WITHOUT_ADAPTERS or (r in ROWS and ROWS[r][1])},
                                           WITHOUT_ADAPTERS, cfg.benchmarks, cfg.protocols)},
        "majority": majority(samples, cfg.benchmarks),
        "prior_floor": (floor := prior_floor(samples, cfg.benchmarks)),
        "signal": signal(details, cfg.benchmarks, cfg.protocols, floor),
        "samples": {name: {"records": len(s["records"]), "from": s["from"]} for name, s in samples.items()},
        "protocols": {p: PROTOCOL_NOTES[p] for p in cfg.protocols},
    }


def _settings(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def tables(results: dict) -> str:
    """The accuracy tables (%), one per protocol and metric, in markdown."""
    benches = results["settings"]["benchmarks"]
    parts = []
    for protocol in results["settings"]["protocols"]:
        for metric in METRICS[protocol]:
            what = "share of questions with no answer keyword" if metric == "unanswered" else "accuracy"
            lines = [f"**{protocol}: {metric}** ({what}, %)", "",
                     "| row | " + " | ".join(benches) + " | average |", "|---" * (len(benches) + 2) + "|"]
            for name, row in results["rows"].items():
                values = row.get("eval", {}).get(protocol, {}).get(metric, {})
                lines.append(f"| {name} | " + " | ".join(_pct(values.get(b)) for b in [*benches, "average"]) + " |")
            if metric != "unanswered" and results.get("majority"):
                values = results["majority"]
                lines.append("| *majority answer* | " + " | ".join(_pct(values.get(b)) for b in [*benches, "average"]) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def what_it_shows(results: dict) -> list[str]:
    """The reading of the scores: each row against what its answers' distribution alone scores, BoolQ apart."""
    shown = results.get("signal") or {}
    if not shown:
        return []
    kept = [b for b in results["settings"]["benchmarks"] if b != APART]
    floor = results["prior_floor"]
    lines = ["", "## What it shows", "",
             f"Over {', '.join(kept)} (BoolQ apart, below). **Floor**: the training prior, each benchmark's answer most frequent "
             "in the training sample given to every question (" + "; ".join(f"{b}: {f['from']}" + (f" '{f['answer']}'" if f['answer'] else "")
                                                                   for b, f in floor.items() if b in kept)
             + "), averaged. **Shuffled**: the row's own answers permuted among each benchmark's questions "
             f"({RESAMPLES:,} permutations): what its answer distribution scores without knowing which question gets which. "
             f"**p**: the share of shuffles scoring at least the row's accuracy; at p >= {SIGNIFICANCE} the row shows **no "
             "signal**: nothing it answers depends on the question beyond how often it gives each answer. One seed per row: "
             "differences between rows carry no estimate of seed noise.", "",
             "| row | protocol: metric | accuracy | floor | shuffled (95% range) | p | reading |", "|---|---|---|---|---|---|---|"]
    entries = [(row, protocol, metric, e) for row, by_protocol in shown.items() for protocol, by_metric in by_protocol.items()
               for metric, e in by_metric.items()]
    for row, protocol, metric, e in entries:
        lo, hi = e["shuffled_range"]
        lines.append(f"| {row} | {protocol}: {metric} | {100 * e['observed']:.1f} | {100 * e['floor']:.1f} | "
                     f"{100 * e['shuffled']:.1f} ({100 * lo:.1f}-{100 * hi:.1f}) | {e['p']:.3f} | {e['reading']} |")
    quiet = sorted({row for row, _, _, e in entries if e["reading"] == "no signal"})
    if quiet:
        lines += ["", f"No signal in at least one protocol: {', '.join(quiet)}."]
    if any(APART in e for _, _, _, e in entries):
        lines += ["", "**BoolQ apart.** These files give BoolQ's question without the passage it asks about, so no row can "
                      "read the answer: its accuracy follows from how often it gives each answer (a row that always says the "
                      "answer most questions have scores that share). Per row: accuracy, and the share of its answers by answer "
                      "index (None: no answer keyword).", "",
                  "| row | protocol: metric | accuracy | answers given |", "|---|---|---|---|"]
        for row, protocol, metric, e in entries:
            given = ", ".join(f"{a}: {100 * share:.0f}%" for a, share in e[APART]["answers"].items())
            lines.append(f"| {row} | {protocol}: {metric} | {100 * e[APART]['accuracy']:.1f} | {given} |")
    return lines


def report(results: dict) -> str:
    s = results["settings"]
    samples = results["samples"]
    mixture = ", ".join(f"{name} {k:,} of {n:,}" for name, (k, n) in samples["mixture.json"]["from"].items())
    tests = ", ".join(f"{b} {samples[f'test-{b}.json']['from'][b][0]:,} of {samples[f'test-{b}.json']['from'][b][1]:,}"
                      for b in s["benchmarks"])
    gen = next((r.get("generation") for r in results["rows"].values() if r.get("generation")), None)
    template = next((r.get("template") for r in results["rows"].values() if r.get("template")), None)
    rank, composed = s["rank"], s["rank"] * (len(s["adapters"]) + 1)
    lines = [
        f"# Commonsense reasoning, LLM setting: {Path(s['model']).name}", "",
        f"Written by `{s.get('command') or 'python benchmarks/commonsense.py'}`.", "",
        f"- Training sample (every row): {samples['mixture.json']['records']:,} records of the training mixture, in proportion "
        f"to the sets' sizes: {mixture}; instruct holds a seeded share of it out as the dev set that picks the best epoch.",
        f"- Every row: lr {s['lr']:g}, epochs {s['epochs']}, batch {s['batch_size']}, max length {s['max_length']}, seed {s['seed']}"
        + (f", {_settings(s['instruct'])}" if s["instruct"] else "")
        + f". lora and dora: rank {composed} (= {rank} x ({len(s['adapters'])} adapters + 1)), alpha 2 x rank, on the default "
        f"layers (q, k, v, up, down); domix: the {len(s['adapters'])} adapters and a fresh block of rank {rank} in the bridge "
        f"(total rank {composed}); base: the model untrained."
        + "".join(f" {row}: {_settings(own)}." for row in s["rows"]
                  if (own := {**(ROWS[row][2] if row in ROWS else {}), **s["row_settings"].get(row, {})})),
        f"- Test samples: {tests}.",
        *([f"- **Not finished yet** ({len(results['unfinished'])} steps; rerun the command to go on): "
           + ", ".join(results["unfinished"]) + "."] if results.get("unfinished") else []),
        "- Protocols: " + "; ".join(f"**{p}**: {note}" for p, note in results["protocols"].items())
        + (f". generate: num_beams {gen['num_beams']}, max_new_tokens {gen['max_new_tokens']}, template {template}" if gen else "") + ".",
    ]
    lines += ["", "## Scores", "", tables(results)]
    lines += what_it_shows(results)
    for pairs, title in [(results["paired"], f"Against {results['paired']['reference']}, question by question"),
                         (results.get("paired_adapters", {"rows": {}}),
                          f"What the adapters add: the rows that compose them against {WITHOUT_ADAPTERS} (their trainable shape "
                          "without them), question by question")]:
        if not pairs["rows"]:
            continue
        lines += ["", f"## {title}", "",
                  f"The difference of the average accuracy (points), with its 95% interval from a paired bootstrap "
                  f"({pairs['resamples']:,} resamples of each benchmark's questions, the same for both rows), and the "
                  f"questions only one of the two answers right (of {sum(results['rows'][pairs['reference']]['n'].values()):,}). "
                  "An interval that holds 0 means the test samples cannot tell the two rows apart.", "",
                  f"| row | protocol: metric | difference | 95% interval | right only here | right only in {pairs['reference']} |",
                  "|---|---|---|---|---|---|"]
        for row, by_protocol in pairs["rows"].items():
            for protocol, by_metric in by_protocol.items():
                for metric, p in by_metric.items():
                    lo, hi = p["ci95"]
                    lines.append(f"| {row} | {protocol}: {metric} | {100 * p['difference']:+.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} "
                                 f"| {p['only_this_right']} | {p['only_reference_right']} |")
    lines += ["", "## Cost of training (on the training sample)", "",
              "Time per step: the training loop's own time over its steps (no loading, no dev loss); peak memory: the "
              "process's peak resident memory on a CPU, peak allocated memory on a GPU; each run is its own process, and "
              "the ratios to DoRA come from the same run.", "",
              "| row | trainable params | trainable % | steps | s / step | peak MB | s / step vs DoRA | peak vs DoRA "
              "| dev loss before → after | general LM loss change |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["rows"].items():
        if not row["trained"]:
            lines.append(f"| {name} | 0 | 0 | — | — | — | — | — | — | 0 |")
            continue
        ratio, kept = row.get("vs_dora") or {}, row.get("retention") or {}
        lines.append(f"| {name} | {row['trainable_parameters']:,} | {row['trainable_percent']:.2f} | {row['steps']} | "
                     f"{_num(row['time_per_step_s'], '{:.3f}')} | {_num(row['peak_memory_mb'])} | "
                     f"{_num(ratio.get('time_per_step'), '{:.2f}')} | {_num(ratio.get('peak_memory'), '{:.2f}')} | "
                     f"{row['dev_loss_before']:.4f} → {row['dev_loss']:.4f} | {_num(kept.get('change'), '{:+.4f}')} |")
    lines += ["", "## The adapters DoMIX composes (trained first, on samples apart from the training sample)", "",
              "| adapter | sets (records of each) | rank | trainable params | steps | s / step | train time s | peak MB |",
              "|---|---|---|---|---|---|---|---|"]
    for name, a in results["adapters"].items():
        taken = ", ".join(f"{k} {v[0]:,}" for k, v in samples[f"adapter-{name}.json"]["from"].items())
        lines.append(f"| {name} | {taken} | {a['lora_rank']} | {a['trainable_parameters']:,} | {a['steps']} | "
                     f"{_num(a['time_per_step_s'], '{:.3f}')} | {a['train_time_s']:.1f} | {_num(a['peak_memory_mb'])} |")
    for name, store in results.get("stores", {}).items():
        lines += ["", f"The {name} row's store (`domix pretrain --method {name}`, each adapter's sample as a domain: "
                      f"{', '.join(store['domains'])}) took {store['train_time_s']:.1f} s of training steps ({store['steps']} steps, "
                      f"peak {_num(store['peak_memory_mb'])} MB), once, on top of the row's own training."]
    total = results["adapters_total"]
    if results["adapters"]:
        lines += ["", f"Training the adapters took {total['train_time_s']:.1f} s of training steps ({total['steps']} steps); "
                      "a row that composes them costs that on top of its own training, once (the adapters are reusable).", ""]
        for name, row in results["rows"].items():
            if row["trained"] and row["method"] in ("domix", "cat"):
                lines.append(f"- {name}: {row['train_time_s']:.1f} s of training steps alone, "
                             f"{row['train_time_s'] + total['train_time_s']:.1f} s with the adapters' training.")
    return "\n".join(lines) + "\n"


def keep_records(cfg: CommonsenseConfig, folder: Path, command: str | None = None) -> list[Path]:
    """Write results.json and report.md of what has finished, and copy the run's records into ``folder``.

    The records: results, report, the step times, every step's settings and log, the evaluations (with their
    per-question details), each run's ``result.json`` and ``run.json``, each store's manifests, and the adapters the
    bridged rows compose (``OUT/modules``, their weights: the rows' inputs). No checkpoint, no row's trained weights.
    A run's ``run.json`` is kept only once it has finished (an unfinished one's checkpoint stays behind), and a
    store's only once every row built on it has finished too: otherwise its weights would be needed, so
    ``cp -r FOLDER/. OUT/`` on another machine trains it again and goes on. Returns the files copied.
    """
    out = Path(cfg.out)
    if not (out / "data").is_dir():
        raise DomixError(f"{out} holds no run of this config yet; run it first (python benchmarks/commonsense.py CONFIG)")
    jobs = plan(cfg)
    times = atomic.read_json(out / TIMES_FILE) if (out / TIMES_FILE).is_file() else {}
    results = collect(cfg, jobs, draw_samples(cfg), times, command)
    atomic.write_json(out / "results.json", results)
    atomic.write_text(out / "report.md", report(results))
    wanted = [out / "results.json", out / "report.md", out / TIMES_FILE]
    wanted += [*(out / "configs").rglob("*.yaml"), *(out / "logs").rglob("*.log"), *(out / "eval").glob("*.json")]
    wanted += [p for p in (out / "modules").rglob("*") if p.is_file()]
    trainings = [j for j in jobs if isinstance(j, Job)]
    for job in trainings:
        wanted += [job.out / "result.json"] + sorted(job.out.glob("*/domix_manifest.json"))
        built_on = [j for j in trainings if j.settings.get("modules") == str(job.out)]
        if job.finished() and all(j.finished() for j in built_on):
            wanted.append(job.out / "run.json")
    copied = []
    for path in (p for p in wanted if p.is_file()):
        target = folder / path.relative_to(out)
        if not target.is_file() or target.read_bytes() != path.read_bytes():
            atomic.copy_file(path, target)
            copied.append(target)
    return copied


def rewrite_report(cfg: CommonsenseConfig, folder: Path) -> None:
    """results.json and report.md of ``folder`` (records of a run of ``cfg``, as ``keep_records`` copies them) written
    again from its records; the samples are drawn again (they are deterministic in the settings), the command and the
    out folder stay the run's own."""
    if not (folder / "results.json").is_file():
        raise DomixError(f"{folder} holds no results.json; give a folder --records wrote")
    before = atomic.read_json(folder / "results.json")["settings"]
    cfg = dataclasses.replace(cfg, out=str(folder))
    times = atomic.read_json(folder / TIMES_FILE) if (folder / TIMES_FILE).is_file() else {}
    results = collect(cfg, plan(cfg), draw_samples(cfg), times, before.get("command"))
    run_out = before.get("out", cfg.out)  # the folders the run wrote, as its results name them
    results["settings"]["out"] = run_out
    for entry in (*results["adapters"].values(), *results["stores"].values()):
        entry["folder"] = str(Path(run_out) / Path(entry["folder"]).relative_to(folder))
    atomic.write_json(folder / "results.json", results)
    atomic.write_text(folder / "report.md", report(results))


def main(argv: list[str] | None = None, in_process: bool = False) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "commonsense.yaml"),
                        help="YAML settings (default configs/commonsense.yaml)")
    parser.add_argument("--out", help="output folder (default: the config's out)")
    parser.add_argument("--dry-run", action="store_true", help="list the steps and whether each is finished; run nothing")
    parser.add_argument("--records", metavar="DIR",
                        help="run nothing: write the results and report of what has finished, and copy the run's records "
                             "(no checkpoints, no rows' weights; the adapters the bridged rows compose) into DIR, to commit "
                             "or to carry; `cp -r DIR/. OUT/` and the same command go on from there on another machine")
    parser.add_argument("--report-only", metavar="DIR",
                        help="run nothing: write DIR's results.json and report.md again from the records in DIR (a folder "
                             "--records wrote, e.g. benchmarks/results/commonsense), after a change to the report")
    parser.add_argument("--overwrite", action="store_true",
                        help="train or score again what finished with other settings (and what depends on it)")
    args = parser.parse_args(argv)

    def command() -> None:
        cfg = CommonsenseConfig.from_yaml(args.config, args.out)
        if in_process:
            from domix.system import configure_threads

            configure_threads()
        if args.report_only:
            rewrite_report(cfg, Path(args.report_only))
            print(f"commonsense: wrote {Path(args.report_only) / 'results.json'} and report.md")
            return
        if args.records:  # the results name the command that runs the comparison, not this one
            rerun = f"python benchmarks/commonsense.py {args.config}" + (f" --out {args.out}" if args.out else "")
            copied = keep_records(cfg, Path(args.records), rerun)
            print(f"commonsense: {len(copied)} record file(s) copied to {args.records}")
            return
        run(cfg, dry_run=args.dry_run, in_process=in_process, overwrite=args.overwrite,
            command="python benchmarks/commonsense.py " + " ".join(argv if argv is not None else sys.argv[1:]))

    return guarded(command, "commonsense", interrupted="rerun the same command to go on from there")


if __name__ == "__main__":
    sys.exit(main())
