"""``domix compare``: every chosen method on the same tasks, seeds and domain orders, one report.

The comparison is planned as jobs, each an ordinary ``domix pretrain`` or ``domix finetune``
command with its settings written to ``OUT/configs/<job>.yaml``, run in its own process (so
each peak memory is its own) with its output in ``OUT/logs/<job>.log``:

    OUT/pretrain/domix                 one module per domain (shared by domix, cat, lora_module, ...)
    OUT/pretrain/ncl_lora-<order>      one LoRA through the domains in that order
    OUT/pretrain/ncl_full-<order>      the full model through the domains in that order
    OUT/pretrain/joint_lora            one LoRA on all corpora mixed
    OUT/adapters/<task>_task           with task_adapters: an instruction task's own LoRA adapter (domix instruct), or
    OUT/adapters/<task>/<name>         one per instruction file the task's adapters: name
    OUT/finetune/<method>/<task>/seed<s>[-<order>]
    OUT/search/<method>/<task>/<configuration>/seed<s>[-<order>]   with a search: the selection runs (no test)

With a ``search`` section (comparison/search.py) the fine-tuning comes in two phases: every method's
configurations at the selection seeds, scored on dev only (those runs never read the test split), then
each method's chosen configuration per task at the comparison's own, fresh seeds, the only runs that
score test. ``stores`` names a finished pre-training to use instead of running it.

With ``jobs: N`` in the config, N jobs run at once (the pre-training ones first), each with its share of the
CPU cores (on GPUs, give each process its device with CUDA_VISIBLE_DEVICES as usual); every job
is still its own process, so each peak memory stays its own.

Finished jobs are reused, so rerunning the command resumes an interrupted comparison; a job
finished with other settings is refused unless ``--overwrite``. At the end the results of all
runs go to ``OUT/results.json`` and the report to ``OUT/report.md`` and ``OUT/report.html``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from domix import atomic
from domix.comparison.config import METHODS, CompareConfig, ComparedTask
from domix.comparison.progress import Board
from domix.comparison.search import choose, point_label
from domix.errors import DomixError
from domix.finetuning.config import FinetuneConfig
from domix.llm.config import InstructConfig
from domix.methods.registry import STAGE1, STAGE2
from domix.pretraining.config import PretrainConfig
from domix.engine.progress import PROGRESS_FILE_ENV
from domix.engine.runfolder import MODEL_DIR, RESULT_FILE, RUN_FILE, changed_settings, refuse_other_kind, refuse_own_inputs
from domix.settings import with_recipe
from domix.sources import looks_like_dataset_name
from domix.store import store_wall_time
from domix.system import THREADS_ENV, cores_given

TIMES_FILE = "job_times.json"  # wall seconds of each job's command over all its attempts, as the comparison measured it
# what some records add: DoMIX's bridge usage, MixDA's and MoDE's gate weights, retention, the majority-class scores
# and each test example's prediction (paired statistics), where the phases of a run's time went
OPTIONAL_RECORD_KEYS = ("bridge_usage", "gate_weights", "retention", "majority", "test_predictions", "time_s", "test_generate")
CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "instruct": InstructConfig}  # a job's kind: its command's settings


@dataclass
class Job:
    kind: str  # pretrain, finetune or instruct: its command
    name: str  # also its path under OUT/configs and OUT/logs
    settings: dict  # the command's settings (PretrainConfig, FinetuneConfig or InstructConfig fields)
    info: dict  # method, task, seed, order: how the results table files it

    @property
    def out(self) -> Path:
        return Path(self.settings["out"])

    @property
    def role(self) -> str:
        """What it is to the comparison: pretrain and adapter (run first: the rows start from them), selection (a
        search's dev-only run) or test (a row's run that the results report)."""
        if self.kind == "pretrain":
            return "pretrain"
        return "adapter" if "adapter" in self.info else "selection" if self.info.get("selection") else "test"

    @property
    def given(self) -> bool:
        """A pre-training the config's ``stores`` names: used as it is, never run."""
        return bool(self.info.get("given"))

    def config(self):
        cls = CONFIGS[self.kind]
        return cls(**with_recipe(cls, self.settings))  # as the job's command builds it from its YAML

    def finished(self) -> bool:
        run = self.out / RUN_FILE
        return run.is_file() and atomic.read_json(run).get("status") == "finished"


def slug(order: list[str]) -> str:
    return "-".join(order)


def order_label(order: list[str] | None) -> str | None:
    """How results and reports name a domain order."""
    return ">".join(order) if order else None


def plan(cfg: CompareConfig) -> list[Job]:
    """Every pre-training job the chosen methods need (once each), then every fine-tuning job; with a search,
    the fine-tuning jobs are the selection runs (the test runs follow the choice: :func:`plan_tests`)."""
    out = Path(cfg.out)
    methods = [METHODS[m] for m in cfg.methods]
    pretrain_jobs: dict[tuple[str, str | None], Job] = {}

    def pretrain_job(method: str, order: list[str] | None) -> Job:
        key = (method, slug(order) if order else None)
        if key not in pretrain_jobs:
            name = f"pretrain/{method}" + (f"-{key[1]}" if order else "")
            domains = {d: cfg.domains[d] for d in (order or cfg.domains)}
            given = cfg.stores.get(method) if not order else None
            settings = {**cfg.pretrain, **cfg.pretrain_method_settings.get(method, {}),
                        "model": cfg.model, "domains": domains, "out": given or str(out / name), "method": method}
            if STAGE1[method].needs_general:
                settings["general"] = cfg.general
            users = [n for n in cfg.methods if METHODS[n].pretrain == method]
            info = {"method": method, "order": order_label(order), "used_by": users, **({"given": given} if given else {})}
            pretrain_jobs[key] = Job("pretrain", name, settings, info)
        return pretrain_jobs[key]

    # an instruction task's own adapters, for the rows that compose them or train on their records
    composing = [n for n in cfg.methods if METHODS[n].task_adapter or METHODS[n].adapter_records]
    adapters = {t.name: _adapter_jobs(cfg, t, composing) for t in cfg.adapter_tasks()} if composing else {}
    jobs = []
    for name, method in zip(cfg.methods, methods):
        orders = cfg.orders[:cfg.method_orders.get(name, len(cfg.orders))] if method.ordered else [None]
        for task in cfg.tasks:
            for order in orders:
                source = None
                if method.pretrain is not None:
                    # a sequential pre-training depends on the order; the domix modules do not
                    source = pretrain_job(method.pretrain, order if STAGE1[method.pretrain].ordered else None)
                own = adapters.get(task.name, [])
                if cfg.search is None:
                    jobs += [_finetune_job(cfg, name, task, seed, order, source, adapters=own)
                             for seed in cfg.method_seeds.get(name, cfg.seeds)]
                else:
                    jobs += [_finetune_job(cfg, name, task, seed, order, source, point, selection=True, adapters=own)
                             for point in cfg.search.points(name) for seed in cfg.search.seeds]
    return list(pretrain_jobs.values()) + [a for own in adapters.values() for a in own] + jobs


def _adapter_jobs(cfg: CompareConfig, task: ComparedTask, used_by: list[str]) -> list[Job]:
    """``task``'s own LoRA adapters (domix instruct --method lora), at the store's rank unless task_adapters says otherwise:
    one per file of the task's ``adapters`` (each trained on its whole file), else one on ``task_adapters.train_limit``
    records that follow the rows' in the seeded order (train_skip), so that no row trains on them, except the equal-data
    row, which trains on both. Its dev score picks its epoch; it never reads test."""
    common = {**cfg.instruct, **task.instruct, "lora_rank": _module_rank(cfg), "seed": 0, **cfg.task_adapters,
              "model": cfg.model, "method": "lora", "score_test": False, "save_model": True}
    out = Path(cfg.out) / "adapters"
    if task.adapters:
        return [Job("instruct", f"adapters/{task.name}/{name}", {**common, "train": path, "train_limit": None,
                                                                 "out": str(out / task.name / name)},
                    {"adapter": name, "task": task.name, "used_by": used_by}) for name, path in task.adapters.items()]
    settings = {**common, task.data_key: task.path, "train_skip": cfg.rows_train_limit(task), "out": str(out / f"{task.name}_task")}
    return [Job("instruct", f"adapters/{task.name}", settings, {"adapter": task.name, "task": task.name, "used_by": used_by})]


def _module_rank(cfg: CompareConfig) -> int:
    """The rank of each module the comparison pre-trains."""
    return cfg.pretrain.get("lora_rank", PretrainConfig.lora_rank)


def plan_tests(cfg: CompareConfig, jobs: list[Job], choices: dict[tuple[str, str], dict]) -> list[Job]:
    """The test runs of a search: each method's chosen configuration per task (``choices``) at the comparison's seeds."""
    sources = {(j.info["method"], j.info["order"]): j for j in jobs if j.role == "pretrain"}
    adapters: dict[str, list[Job]] = {}
    for job in jobs:
        if job.role == "adapter":
            adapters.setdefault(job.info["task"], []).append(job)
    tests = []
    for name in cfg.methods:
        method = METHODS[name]
        orders = cfg.orders[:cfg.method_orders.get(name, len(cfg.orders))] if method.ordered else [None]
        for task in cfg.tasks:
            point = choices[(name, task.name)]["point"]
            for order in orders:
                source = None
                if method.pretrain is not None:
                    source = sources[(method.pretrain, order_label(order) if STAGE1[method.pretrain].ordered else None)]
                tests += [_finetune_job(cfg, name, task, seed, order, source, point, adapters=adapters.get(task.name, []))
                          for seed in cfg.method_seeds.get(name, cfg.seeds)]
    return tests


def choices_of(cfg: CompareConfig, jobs: list[Job]) -> dict[tuple[str, str], dict]:
    """Per (method, task), the configuration chosen on the selection runs' dev scores (mean over their seeds and
    orders); the selection runs must have finished."""
    runs: dict[tuple[str, str], dict[str, dict]] = {}
    for job in jobs:
        if job.role != "selection":
            continue
        record = atomic.read_json(job.out / RESULT_FILE)
        candidates = runs.setdefault((job.info["method"], job.info["task"]), {})
        entry = candidates.setdefault(job.info["point"], {"label": job.info["point"], "point": job.info["settings_point"], "dev": [],
                                                          "seeds": [], "best_epoch": []})
        entry["dev"].append(record["dev"][cfg.search.metric])
        entry["seeds"].append(job.info["seed"])
        entry["best_epoch"].append(record["best_epoch"])
    return {key: choose(list(candidates.values()), cfg.search.metric) for key, candidates in runs.items()}


def _finetune_job(cfg: CompareConfig, name: str, task: ComparedTask, seed: int, order: list[str] | None, source: Job | None,
                  point: dict | None = None, selection: bool = False, adapters: list[Job] = ()) -> Job:
    """A task's job (domix finetune, or instruct for an instruction task): a test run (``selection`` False; with a
    search, of the chosen ``point``) or a selection run of ``point``, which never reads the test split. ``adapters``:
    the task's own adapter jobs (task_adapters), which rows compose or train on the records of, as the registry says."""
    method = METHODS[name]
    label = point_label(point) if point is not None else None
    where = f"search/{name}/{task.name}/{label}" if selection else f"finetune/{name}/{task.name}"
    folder = f"{where}/seed{seed}" + (f"-{slug(order)}" if order else "")
    # the comparison's settings, then the task's own, then the row's own and its method_settings, then the searched point
    # (the most particular wins); a row's settings reach the runs of the commands that have them
    own = {k: v for k, v in {**method.settings, **cfg.method_settings.get(name, {})}.items() if k in task.fields}
    settings = {"save_model": False, **({"recipe": method.recipe} if method.recipe else {}), **getattr(cfg, task.command),
                **task.settings, **own, **(point or {}), **task.data, task.data_key: task.path,
                "out": str(Path(cfg.out) / folder), "method": method.finetune, "seed": seed}
    if selection:
        settings["score_test"] = False
    adapter_rank = sum(a.settings["lora_rank"] for a in adapters)
    if source is None:
        settings["model"] = cfg.model
        if STAGE2[method.finetune].lora_rank:  # the same total rank as the composed modules (and adapter), or one module's
            rank = _module_rank(cfg)
            settings.setdefault("lora_rank", rank if method.one_module_rank else rank * len(cfg.domains) + adapter_rank)
    elif STAGE1[method.pretrain].gives_model:
        settings["model"] = str(source.out / STAGE1[method.pretrain].output)
    else:
        settings["modules"] = str(source.out)
        if method.init == "task_domain":
            settings["init_module"] = task.domain
        elif method.init == "output":
            settings["init_module"] = STAGE1[method.pretrain].output
        else:
            settings["domains"] = order
    if adapters and method.task_adapter:
        settings["adapters"] = [str(a.out / MODEL_DIR) for a in adapters]
    if adapters and method.adapter_records:  # the rows' records and the adapters': the task's file and theirs, or the first
        if task.adapters:                    # records of one seeded order
            settings["train"] = [task.path, *task.adapters.values()]
        else:
            settings["train_limit"] = cfg.rows_train_limit(task) + adapters[0].settings["train_limit"]
    info = {"method": name, "task": task.name, "seed": seed, "order": order_label(order)}
    if point is not None:
        info.update(point=label, settings_point=point)
    if selection:
        info["selection"] = True
    return Job(task.command, folder, settings, info)


def compare(cfg: CompareConfig, overwrite: bool = False, dry_run: bool = False, command: str | None = None,
            in_process: bool = False, write: bool = True) -> dict | None:
    """Run (or resume) every job of the comparison, then write results.json and the report.

    ``in_process`` runs the jobs in this process instead of one process each: faster to start
    (tests use it), but peak memory then accumulates over the jobs. ``write`` False (a part of a
    comparison, ``CompareConfig.narrowed``): print the part's table, leave results.json and the report.
    """
    jobs = plan(cfg)
    out = Path(cfg.out)
    refuse_own_inputs(out, cfg.inputs())
    _check(jobs)  # every job's settings and output folder are checked before anything runs
    for job in jobs:
        if job.given and not job.finished():
            raise DomixError(f"stores.{job.info['method']} is {job.out}, which holds no finished domix pretrain run; "
                             "name the --out folder of a finished one, or drop it from stores to pre-train here")
    selection = [j for j in jobs if j.role == "selection"]
    tests = plan_tests(cfg, jobs, choices_of(cfg, jobs)) if selection and all(j.finished() for j in selection) else []
    retrain = stores_to_retrain(jobs, tests, overwrite)
    if dry_run:
        for job in jobs + tests:
            if job.given:
                print(f"{'given':9} {job.out} (stores.{job.info['method']}: a finished domix pretrain, used as it is)")
                continue
            differing = _changed_settings(job)
            state = ("to run" if differing is None else
                     f"finished with other {', '.join(differing)} (--overwrite reruns it)" if differing else
                     "finished, without its weights: trains again" if job in retrain else
                     "finished")
            print(f"{state:9} domix {job.kind} --config {out / 'configs' / (job.name + '.yaml')}")
        if selection and not tests:
            print(f"then the test runs: each method's configuration chosen on dev per task at seeds {cfg.seeds}, planned once the "
                  f"{len(selection)} selection runs have finished")
        return None
    times = atomic.read_json(out / TIMES_FILE) if (out / TIMES_FILE).is_file() else {}
    for job in retrain:
        print(f"domix: {job.out} holds a finished {job.name} but not its weights (a store kept out of git, say), and jobs "
              "not yet run start from it: it trains again")
    pending = [j for j in jobs if not j.given and (not reusable(j, overwrite) or j in retrain)]
    print(f"domix: comparison of {len(cfg.methods)} methods on {len(cfg.tasks)} tasks: {len(jobs)} jobs, "
          f"{len(jobs) - len(pending)} already finished" + (f"; {cfg.jobs} at a time" if cfg.jobs > 1 else "")
          + (f"; {len(selection)} of them selection runs (dev only), then "
             f"{len(cfg.tasks) * sum(len(cfg.method_seeds.get(m, cfg.seeds)) for m in cfg.methods)} test runs" if selection else ""))
    lock, numbers = threading.Lock(), itertools.count(1)
    board = Board(len(pending))

    def run(job: Job) -> None:
        with lock:
            number = next(numbers)
        board.start(number, job.name, progress_file(out, job))
        try:
            seconds = run_job(job, out, overwrite or job in retrain, in_process, threads=_threads(cfg.jobs))
        except BaseException:
            board.end(job.name, ok=False)
            raise
        board.end(job.name, ok=True)
        times.update(record_time(out, job.name, seconds))

    def run_all(batch: list[Job]) -> None:
        if cfg.jobs == 1 or in_process:
            for job in batch:
                run(job)
        else:
            with ThreadPoolExecutor(cfg.jobs) as pool:
                list(pool.map(run, batch))  # list(): re-raises a failed job's error

    # the pre-training runs (and task adapters) are independent of each other; fine-tuning needs them all finished; a
    # search's test runs need its selection runs finished (the choice)
    choices = None
    with board:
        run_all([j for j in pending if j.role in ("pretrain", "adapter")])
        run_all([j for j in pending if j.role in ("selection", "test")])
        if selection:
            choices = choices_of(cfg, jobs)
            tests = plan_tests(cfg, jobs, choices)
            _check(tests)
            pending_tests = [j for j in tests if not reusable(j, overwrite)]
            board.total += len(pending_tests)
            pending += pending_tests
            run_all(pending_tests)
            jobs = jobs + tests
    if pending:
        print(board.summary())
    results = collect(cfg, jobs, times, command, choices)
    from domix.comparison.report import write_report
    from domix.comparison.summary import format_table, summarise

    print(format_table(summarise(results), cfg.result_tasks()))
    if not write:
        print("domix: a part of the comparison: results.json and the report are left as they are (the full run writes them)")
        return results
    atomic.write_json(out / "results.json", results)
    written = write_report(results, out)
    print(f"domix: wrote {out / 'results.json'}, " + ", ".join(str(p) for p in written.values() if p.suffix in (".md", ".html")))
    return results


def rewrite_report(cfg: CompareConfig) -> list[Path]:
    """Write the report of a finished comparison again from its results.json; returns the report files."""
    from domix.comparison.report import write_report

    results_file = Path(cfg.out) / "results.json"
    if not results_file.is_file():
        raise DomixError(f"{results_file} does not exist: run the comparison first (without --report-only)")
    written = write_report(atomic.read_json(results_file), Path(cfg.out))
    return [written["report.md"], written["report.html"], Path(cfg.out) / "plots"]


def record_time(out: Path, name: str, seconds: float) -> dict[str, float]:
    """Merge one job's wall time into OUT/job_times.json as the file is now, under a lock file: another comparison
    of the same folder (other --methods, another process) writes it too. Returns the file's new content."""
    from filelock import FileLock

    path = out / TIMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        times = atomic.read_json(path) if path.is_file() else {}
        times[name] = seconds
        atomic.write_json(path, times)
    return times


def weights_missing(folder: Path) -> bool:
    """A pre-training's folder whose domains (each folder with a domix manifest) hold no weights file: its records were
    kept (committed) and its weights not, as for MoDE's expert copies, too large for a repository."""
    return any(not any(m.parent.glob("*.safetensors")) for m in folder.glob("**/domix_manifest.json"))


def stores_to_retrain(jobs: list[Job], tests: list[Job], overwrite: bool) -> list[Job]:
    """The finished pre-trainings (not given ones) without their weights that a job yet to run starts from: a fine-tuning
    job of ``jobs`` or of the planned ``tests`` not finished, or, while a search has not chosen (``tests`` still empty),
    any of its selection runs' (their test runs will start from the same store)."""
    stores = [j for j in jobs if j.role == "pretrain" and not j.given and j.finished() and weights_missing(j.out)]
    if not stores:
        return []
    later = [j for j in jobs + tests if j.role != "pretrain" and (not reusable(j, overwrite) or (j.role == "selection" and not tests))]
    used = {str(Path(p).resolve()) for j in later for p in (j.settings.get("modules"), j.settings.get("model")) if p}
    return [s for s in stores if any(u == str(s.out.resolve()) or u.startswith(str(s.out.resolve()) + os.sep) for u in used)]


def _check(jobs: list[Job]) -> None:
    """Each job's settings as its command will build them, and its output folder, checked."""
    for job in jobs:
        try:
            config = job.config().validate()
        except DomixError as err:
            raise DomixError(f"job {job.name} of the comparison would get a bad setting, so nothing has run: {err}") from None
        if not job.given:
            refuse_own_inputs(job.out, config.inputs())
        general = job.settings.get("general") if job.kind == "pretrain" else None
        if general and not job.given and not job.finished() and not Path(general).exists() and not looks_like_dataset_name(general):
            raise DomixError(f"{job.name} trains on the general-domain text {general}, which does not exist, so nothing has run; "
                             "make it (make .cache/general.txt writes the one the shipped configs name) or fix general: in the "
                             "comparison config")
        if (job.out / RUN_FILE).is_file():
            refuse_other_kind(job.out, atomic.read_json(job.out / RUN_FILE), job.kind)


def _changed_settings(job: Job) -> list[str] | None:
    """The settings a finished job ran with other values of; None if it has not finished."""
    if not job.finished():
        return None
    return changed_settings(atomic.read_json(job.out / RUN_FILE).get("config", {}), job.config())


def reusable(job: Job, overwrite: bool) -> bool:
    """Whether ``job`` has finished with the planned settings (then it is reused, not run again); a finished run with
    other settings is refused, or with ``overwrite`` run again."""
    differing = _changed_settings(job)
    if differing is None:
        return False
    if differing and not overwrite:
        raise DomixError(f"{job.out} holds a finished {job.kind} run with other settings ({', '.join(differing)}); "
                         "pass --overwrite to rerun it, or choose another out folder")
    return not differing


def _threads(jobs: int) -> int | None:
    """Threads per job when several run at once: the cores shared out (None: torch's default)."""
    return max(1, cores_given() // jobs) if jobs > 1 else None  # the cores this process is given, not the machine's


def progress_file(out: Path, job: Job) -> Path:
    """Where a running job's progress is written (what the comparison's board shows)."""
    return out / "logs" / f"{job.name}.progress.json"


def attempt_file(out: Path, job: Job) -> Path:
    """Where a job's attempts so far are kept while it has not finished (what its wall time adds up)."""
    return out / "logs" / f"{job.name}.attempt.json"


def earlier_attempts(attempt: Path, signs_of_life: list[Path]) -> float:
    """The seconds that earlier, unfinished attempts at a job ran (stopped by a restart of the machine, Ctrl-C or a
    failure): each from its start, written in ``attempt`` when it began, to the last write of its log or progress
    file (``signs_of_life``), so a resumed job's time is its attempts' sum, not its last attempt's; 0 without one."""
    if not attempt.is_file():
        return 0.0
    record = atomic.read_json(attempt)
    last = max((p.stat().st_mtime for p in signs_of_life if p.is_file()), default=record["started"])
    return record["earlier_s"] + max(0.0, last - record["started"])


def run_job(job: Job, out: Path, overwrite: bool, in_process: bool, threads: int | None = None) -> float:
    """Run ``job`` as its command would (``domix pretrain`` or ``finetune --config OUT/configs/NAME.yaml``): in a process
    of its own, its output in OUT/logs/NAME.log, or ``in_process``; returns its wall time in seconds, the time of
    earlier attempts that stopped before the end included (:func:`earlier_attempts`)."""
    config_file = out / "configs" / f"{job.name}.yaml"
    atomic.write_text(config_file, yaml.safe_dump(job.settings, sort_keys=False))
    log, status, attempt = out / "logs" / f"{job.name}.log", progress_file(out, job), attempt_file(out, job)
    earlier = earlier_attempts(attempt, [log, status])
    atomic.write_json(attempt, {"earlier_s": earlier, "started": time.time()})
    started = time.perf_counter()
    if in_process:
        from domix.finetuning.run import finetune
        from domix.llm.train import instruct
        from domix.pretraining.run import pretrain

        {"pretrain": pretrain, "finetune": finetune, "instruct": instruct}[job.kind](job.config(), overwrite=overwrite)
        attempt.unlink()
        return round(earlier + time.perf_counter() - started, 2)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "domix", job.kind, "--config", str(config_file)] + (["--overwrite"] if overwrite else [])
    with open(log, "a") as sink:
        sink.write("$ " + " ".join(["python", *command[1:]]) + "\n")  # the log names no path of this machine
        sink.flush()
        status.unlink(missing_ok=True)  # an earlier attempt's
        env = {**os.environ, PROGRESS_FILE_ENV: str(status), **({"OMP_NUM_THREADS": str(threads), THREADS_ENV: str(threads)} if threads else {})}
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
        raise DomixError(f"job {job.name} failed (exit {code}); its log is {log}:\n{tail}\n"
                         "fix the cause and rerun the same command to go on from there")
    attempt.unlink()
    return round(earlier + time.perf_counter() - started, 2)


def choice_runs(run: dict, record: dict) -> list[dict]:
    """A run's result per multiple-choice file it was scored on (instruct --choice-test), as a labelled task's: ``test``
    by log-likelihood (accuracy, macro-F1 over the answer indices; ``accuracy_norm``: the length-normalised choice),
    ``test_generate`` by the answer extracted from generation (no answer: wrong), each question's answers kept
    (``test_predictions``, its ``predicted_norm`` too; ``generate_predictions``)."""
    import torch

    from domix.llm.labelled import scores
    from domix.metrics import classification_scores

    out = []
    for name in dict.fromkeys(r["task"] for r in (record.get("choice_test") or {}).get("results", [])):
        loglik, generated = (record["choice_predictions"].get(f"{name}/{p}") for p in ("loglikelihood", "generate"))
        gold = torch.tensor((loglik or generated)["gold"])
        labels = 1 + max([*gold.tolist(), *(p for kept in (loglik, generated) if kept for p in kept["predicted"] if p is not None)])
        entry = {**run, "task": name, "majority": None, "test": None, "test_predictions": None, "test_generate": None}
        if loglik:
            entry["test"] = {**classification_scores(torch.tensor(loglik["predicted"]), gold, labels),
                             "accuracy_norm": float((torch.tensor(loglik["predicted_norm"]) == gold).double().mean())}
            entry["test_predictions"] = {"predicted": loglik["predicted"], "gold": loglik["gold"],
                                         "predicted_norm": loglik["predicted_norm"]}
        if generated:
            entry["test_generate"] = scores(generated["predicted"], gold, labels)
            entry["generate_predictions"] = {"predicted": generated["predicted"], "gold": generated["gold"]}
        out.append(entry)
    return out


def _total_time(jobs: list[Job], times: dict[str, float]) -> float | None:
    """The jobs' summed wall time as the comparison measured it (job_times.json); None if one is missing."""
    found = [times.get(j.name) for j in jobs]
    return round(sum(found), 2) if found and None not in found else None


def collect(cfg: CompareConfig, jobs: list[Job], times: dict[str, float], command: str | None = None,
            choices: dict[tuple[str, str], dict] | None = None) -> dict:
    """The results of finished jobs, in the schema the report reads: the test runs (``runs``), the pre-training,
    with a search its selection (each candidate's dev scores and the choice; no test score exists there), and the
    paired differences of every row from the reference row."""
    from domix.comparison.stats import paired_table, reference_row

    runs, pretraining, adapters = [], [], []
    for job in jobs:
        if job.role == "adapter":
            record = atomic.read_json(job.out / RESULT_FILE)
            adapters.append({"name": job.name, **job.info, "records": record["examples"]["train"],
                             "lora_rank": job.settings["lora_rank"], "dev": record.get("dev"), "dev_loss": record["dev_loss"],
                             "wall_time_s": times.get(job.name),
                             **{k: record[k] for k in ("trainable_percent", "peak_memory_mb", "train_time_s")}})
        elif job.role == "test":
            record = atomic.read_json(job.out / RESULT_FILE)
            info = {k: v for k, v in job.info.items() if k != "settings_point"}
            run = {**info, **{k: record.get(k) for k in ("test", "dev", "trainable_percent", "peak_memory_mb", "wall_time_s",
                                                         "train_time_s", "steps", "loss_curve")},
                   **{k: record.get(k) for k in OPTIONAL_RECORD_KEYS}}
            runs += ([run] if record.get("test") is not None else []) + choice_runs(run, record)
        elif job.kind == "pretrain":
            manifests = [atomic.read_json(p) for p in sorted(job.out.glob("*/domix_*.json"))]
            pretraining.append({
                "name": job.name, **job.info,
                "peak_memory_mb": max((m.get("peak_memory_mb", 0) for m in manifests), default=None),
                "train_time_s": round(sum(m.get("train_time_s", 0) for m in manifests), 2),
                "wall_time_s": times.get(job.name, store_wall_time(manifests)),
                "heldout": {m.get("name", "?"): m.get("heldout") for m in manifests},
            })
    settings = dataclasses.asdict(cfg)
    settings["command"] = command  # what reproduces it
    from domix.base_model import provenance

    results = {"settings": settings, "base_model": provenance(cfg.model), "methods": cfg.methods,
               "tasks": cfg.result_tasks(), "domains": list(cfg.domains), "runs": runs, "pretraining": pretraining}
    if adapters:
        results["task_adapters"] = adapters
    if choices is not None:
        selection = [j for j in jobs if j.role == "selection"]
        results["search"] = {"seeds": cfg.search.seeds, "metric": cfg.search.metric, "budget": cfg.search.budget(cfg.methods),
                             "runs": len(selection), "wall_time_s": _total_time(selection, times),
                             "choices": [{"method": m, "task": t, **choice} for (m, t), choice in choices.items()]}
    reference = reference_row(results, cfg.reference)
    if reference is not None:
        results["paired"] = paired_table(runs, reference, cfg.result_tasks(), cfg.methods)
    return results
