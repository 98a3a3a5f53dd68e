"""The stages of the main job, each declared once: its settings, the stages it depends on, the files
it writes, the `dna-deploy` commands that reproduce it, and `run(ctx)`.

Settings come from the pipeline file through dna_deploy/settings.py, and the reproduce commands are
generated from the same settings objects (`cli_args`), so they cannot drift from what ran. A stage
never keeps state on itself: what later stages need is read back from the run folder through
`RunContext`, so a skipped stage serves its successors exactly as a fresh one does.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

from dna_deploy.io import read_json, sha256_file
from dna_deploy.pipeline.config import PipelineConfig
from dna_deploy.settings import cli_args, to_mapping


@dataclass
class RunContext:
    """What stages share: the checked config, the run folder and the results of earlier stages."""

    cfg: PipelineConfig
    out: Path
    show_progress: bool = True
    log: Callable[[str], None] = print
    results: dict = field(default_factory=dict)
    stage_times: dict = field(default_factory=dict)  # name -> {"seconds", "skipped"}, for the report
    _space: object = None
    _data: object = None
    _compute: object = None

    @property
    def compute(self):
        """The device etc. every training, rating and retraining stage runs on (the `compute` section)."""
        if self._compute is None:
            from dna_deploy.compute import Compute

            self._compute = Compute.from_settings(self.cfg.compute)
        return self._compute

    def compute_args(self, *, training: bool = True) -> list[str]:
        """The `compute` section as flags (rating has no --amp, --checkpoint-every or --sync-bn: it
        runs fp32 and trains nothing)."""
        return cli_args(self.cfg.compute, skip=() if training else ("amp", "checkpoint_every", "sync_bn"))

    @property
    def space(self):
        if self._space is None:
            from dna_deploy.space import load_space

            self._space = load_space(self.cfg.space)
        return self._space

    @property
    def data(self):
        if self._data is None:
            from dna_deploy.data import load_data

            self._data = load_data(self.cfg.data, self.space.input_size)
        return self._data

    # ---------------- teacher
    @property
    def teacher_file(self) -> Path:
        return self.out / "teacher.pt"

    def teacher_args(self) -> list[str]:
        t = self.cfg.teacher
        if t is None:
            return []
        if t.checkpoint:
            return ["--teacher", t.checkpoint]
        if t.torchvision:
            return (["--teacher", f"torchvision:{t.torchvision}"] + (["--teacher-weights", t.weights] if t.weights else [])
                    + (["--taps", ",".join(t.taps)] if t.taps else []))
        return ["--teacher", str(self.teacher_file)]

    def distill_teacher_args(self) -> list[str]:
        """The teacher flags of train and rate: none for DNA++, which rates against itself."""
        return [] if self.cfg.train.method == "dna++" else self.teacher_args()

    def load_teacher(self):
        from dna_deploy.distill.teacher import load_teacher

        t = self.cfg.teacher
        if t is None:
            return None
        if t.torchvision:
            return load_teacher(f"torchvision:{t.torchvision}", self.space, weights=t.weights,
                                taps=list(t.taps) if t.taps else None)
        return load_teacher(t.checkpoint or str(self.teacher_file), self.space)

    # ---------------- tables and budgets
    def device_name(self, d) -> str:
        """A device entry names a shipped spec or a spec file; its table is named by the spec's name."""
        from dna_deploy.latency.devices import load_device

        return load_device(d.device).name

    def ordered_devices(self) -> list:
        """Devices with a budget first: `search -b` values pair with `-t` tables in order."""
        return sorted(self.cfg.devices, key=lambda d: d.budget_ms is None and d.budget_fraction is None)

    def table_path(self, device: str) -> Path:
        return self.out / "tables" / f"{device}__{self.space.name}.json"

    @property
    def tables(self) -> list:
        from dna_deploy.latency.table import LatencyTable

        return [LatencyTable.load(self.table_path(self.device_name(d))) for d in self.cfg.devices]

    def budgets(self) -> list[float | None]:
        """Per device: budget_ms, or budget_fraction of the way from the smallest to the largest network."""
        out = []
        for d, t in zip(self.cfg.devices, self.tables):
            if d.budget_ms is not None:
                out.append(float(d.budget_ms))
            elif d.budget_fraction is not None:
                lo = t.predict(self.space, self.space.smallest_arch())["predicted_ms"]
                hi = t.predict(self.space, self.space.largest_arch())["predicted_ms"]
                out.append(lo + float(d.budget_fraction) * (hi - lo))
            else:
                out.append(None)
        return out

    @property
    def arch(self) -> str:
        return read_json(self.out / "search.json", what="search result")["results"][0]["arch"]

    def common(self) -> list[str]:
        return ["--space", self.cfg.space, "--data", self.cfg.data, "--seed", str(self.cfg.seed)]


def command_line(args: list) -> str:
    return " ".join(shlex.quote(str(a)) for a in ("dna-deploy", *args))


class Stage:
    """A step of the pipeline. Subclasses set `name` and `deps` and implement the four methods."""

    name: ClassVar[str]
    deps: ClassVar[tuple[str, ...]] = ()

    def settings(self, ctx: RunContext) -> dict:
        """What the stage's fingerprint covers besides its dependencies' fingerprints."""
        return {}

    def outputs(self, ctx: RunContext) -> list[str]:
        """Files (relative to the run folder) that must exist for the stage to count as done."""
        return []

    def commands(self, ctx: RunContext) -> list[list[str]]:
        """`dna-deploy` argument lists that redo this stage by hand."""
        return []

    def run(self, ctx: RunContext) -> dict:
        raise NotImplementedError


class TeacherStage(Stage):
    name = "teacher"

    def settings(self, ctx):
        t = ctx.cfg.teacher
        if t is None:
            return {"teacher": None}
        files = [f for f in (t.checkpoint, t.weights) if f]
        # a given teacher's content is part of the fingerprint: a new teacher reruns everything after it
        return {**to_mapping(t), "sha256": [sha256_file(f) for f in files]}

    def outputs(self, ctx):
        return ["teacher.pt"] if ctx.cfg.teacher is not None and ctx.cfg.teacher.train is not None else []

    def commands(self, ctx):
        t = ctx.cfg.teacher.train if ctx.cfg.teacher is not None else None
        if t is None:
            return []
        return [["teacher", "train", *ctx.common(), "-o", ctx.teacher_file, *cli_args(t), *ctx.compute_args()]]

    def run(self, ctx):
        t = ctx.cfg.teacher
        if t is None:
            return {"teacher": None, "given": False, "why": "DNA++ needs no teacher"}
        if t.train is None:
            return {"teacher": ctx.teacher_args()[1], "given": True}
        from dna_deploy.distill.teacher import train_space_teacher

        r = train_space_teacher(ctx.space, ctx.data, ctx.teacher_file, arch=t.train.arch,
                                config=t.train.classifier(ctx.cfg.seed), show_progress=ctx.show_progress,
                                compute=ctx.compute)
        return {k: v for k, v in r.items() if k != "history"}


SHARED_CONVERSIONS = ".shared-conversions"  # tables/: models converted once for several precisions


class TablesStage(Stage):
    """One latency table per device: the shipped one when it was measured on this very host with
    these runtime versions, otherwise measured and validated here."""

    name = "tables"

    def settings(self, ctx):
        from dna_deploy.host import host_description, runtime_versions
        from dna_deploy.latency.devices import load_device

        devices = [load_device(d.device) for d in ctx.cfg.devices]
        # tables belong to this host and these runtime versions: a moved run folder or an upgrade re-profiles
        from dna_deploy.latency.profiler import TIMING_DEFAULTS

        # written as before block tables existed, so that a layer-table run keeps its fingerprint
        profile = to_mapping(ctx.cfg.profile)
        granularity = profile.pop("granularity")
        if profile["rounds"] is None:
            profile["rounds"] = TIMING_DEFAULTS[granularity]["rounds"]
        if granularity != "layer":
            profile["granularity"] = granularity
        if profile["validate_held_out"] is None:  # unset, as before it existed: a run keeps its fingerprint
            profile.pop("validate_held_out")
        return {"devices": [d.to_dict() for d in devices], **profile, "host": host_description(),
                "versions": {d.runtime + (f":{d.op_resolver}" if d.op_resolver else ""): runtime_versions(d.runtime, d.op_resolver)
                             for d in devices}}

    def outputs(self, ctx):
        return [f"tables/{ctx.device_name(d)}__{ctx.space.name}.json" for d in ctx.cfg.devices]

    def commands(self, ctx):
        p = ctx.cfg.profile
        cmds = []
        for d in ctx.cfg.devices:
            table = ctx.table_path(ctx.device_name(d))
            timing = (["--rounds", p.rounds] if p.rounds is not None else []) + \
                (["--warmup-s", repr(p.warmup_s)] if p.granularity == "layer" else [])
            extra = ["--max-extra-rounds", p.max_extra_rounds] if p.max_extra_rounds is not None else []
            where = ["--target", d.target] if d.target not in (None, "local") else []
            cmds.append(["profile", "--device", d.device, "--space", ctx.cfg.space, "-o", table, *timing,
                         "--runs", p.runs, "--cv-threshold", f"{p.cv_threshold:g}", "--granularity", p.granularity, *extra,
                         *where])
            cmds.append(["profile", "validate", "--table", table, "--space", ctx.cfg.space, "-n", p.validate_samples,
                         *(["--held-out", p.validate_held_out] if p.validate_held_out is not None else []),
                         "--rounds", p.validate_rounds, "--warmup-s", repr(p.warmup_s), *extra, *where])
        return cmds

    def run(self, ctx):
        from dna_deploy.latency.devices import load_device
        from dna_deploy.latency.profiler import profile, shipped_table_for_host
        from dna_deploy.latency.table import LatencyTable
        from dna_deploy.latency.validate import validate_table

        p = ctx.cfg.profile
        res = {}
        shares = self._shared_conversions(ctx)
        for d in ctx.cfg.devices:
            dev = load_device(d.device)
            dst = ctx.table_path(dev.name)
            share = shares.get(d.device)
            if d.target not in (None, "local"):  # a board or phone: profiled and validated there
                res[dev.name] = self._on_target(ctx, d, dev, dst, share)
                continue
            shipped, why = shipped_table_for_host(dev, ctx.space, granularity=p.granularity) if p.use_shipped in ("auto", True) else (None, None)
            if shipped is None and p.use_shipped is True:
                from dna_deploy.errors import TableError

                raise TableError(f"profile.use_shipped is true but no shipped table fits {dev.name}: {why}; "
                                 "set use_shipped: auto to measure here")
            if shipped is not None:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shipped, dst)
                png = shipped.with_suffix(".fidelity.png")
                if png.is_file():
                    shutil.copyfile(png, dst.with_suffix(".fidelity.png"))
                res[dev.name] = {"table": str(dst), "source": f"shipped ({shipped.name}: this host, same runtime versions)",
                                 "fidelity": LatencyTable.load(dst).fidelity}
                continue
            ctx.log(f"[tables] profiling {dev.name} on this machine" + (f" (shipped table: {why})" if why else ""))
            profile(ctx.space, dev, dst, rounds=p.rounds, runs_per_round=p.runs, cv_threshold=p.cv_threshold,
                    show_progress=ctx.show_progress, granularity=p.granularity,
                    warmup_s=p.warmup_s if p.granularity == "layer" else None, max_extra_rounds=p.max_extra_rounds,
                    share=share)
            rep = validate_table(dst, ctx.space, samples=p.validate_samples, held_out=p.validate_held_out, plot_path=dst.with_suffix(".fidelity.png"),
                                 show_progress=ctx.show_progress, rounds=p.validate_rounds, warmup_s=p.warmup_s,
                                 share=share,
                                 **({"max_extra_rounds": p.max_extra_rounds} if p.max_extra_rounds is not None else {}))
            res[dev.name] = {"table": str(dst), "source": "measured on this machine",
                             "fidelity": LatencyTable.load(dst).fidelity,
                             "validate": {k: rep[k] for k in ("raw_sum", "calibrated", "macs_linear")}}
        if shares:  # every table that needed them is measured: the converted models are not needed again
            shutil.rmtree(ctx.out / "tables" / SHARED_CONVERSIONS, ignore_errors=True)
        return res

    @staticmethod
    def _shared_conversions(ctx) -> dict:
        """{device: share} for the devices whose tables will be measured and whose runtime converts
        several precisions at once (LiteRT fp32 and int8 with the same kernels and batch): their op
        models and validation networks are converted once for all of them (artifacts.share_conversions)."""
        from dna_deploy.latency.devices import load_device
        from dna_deploy.latency.profiler import shipped_table_for_host
        from dna_deploy.runtimes import runner_class

        p, groups = ctx.cfg.profile, {}
        for d in ctx.cfg.devices:
            dev = load_device(d.device)
            if not runner_class(dev.runtime).converts_precisions_together:
                continue
            if d.target in (None, "local") and p.use_shipped in ("auto", True) and \
                    shipped_table_for_host(dev, ctx.space, granularity=p.granularity)[0] is not None:
                continue  # a shipped table is taken: nothing to convert
            key = (dev.runtime, dev.op_resolver, dev.batch, d.target or "local")
            groups.setdefault(key, []).append((d.device, dev.precision))
        share_dir = ctx.out / "tables" / SHARED_CONVERSIONS
        return {name: {"dir": share_dir, "precisions": sorted({q for _, q in members})}
                for members in groups.values() if len({q for _, q in members}) > 1 for name, _ in members}

    @staticmethod
    def _on_target(ctx, d, dev, dst, share=None) -> dict:
        from dna_deploy.latency.on_target import profile_on_target
        from dna_deploy.latency.table import LatencyTable
        from dna_deploy.latency.validate import validate_table
        from dna_deploy.targets import parse_target

        p, target = ctx.cfg.profile, parse_target(d.target)
        ctx.log(f"[tables] profiling {dev.name} on {target.url}")
        profile_on_target(ctx.space, dev, dst, target, rounds=p.rounds, runs_per_round=p.runs,
                          cv_threshold=p.cv_threshold, show_progress=ctx.show_progress, granularity=p.granularity,
                          warmup_s=p.warmup_s if p.granularity == "layer" else None, max_extra_rounds=p.max_extra_rounds,
                          share=share)
        rep = validate_table(dst, ctx.space, samples=p.validate_samples, held_out=p.validate_held_out, plot_path=dst.with_suffix(".fidelity.png"),
                             show_progress=ctx.show_progress, rounds=p.validate_rounds, warmup_s=p.warmup_s, target=target,
                             share=share,
                             **({"max_extra_rounds": p.max_extra_rounds} if p.max_extra_rounds is not None else {}))
        return {"table": str(dst), "source": f"measured on {target.url}", "fidelity": LatencyTable.load(dst).fidelity,
                "validate": {k: rep[k] for k in ("raw_sum", "calibrated", "macs_linear")}}


class TrainStage(Stage):
    name = "train"
    deps = ("teacher",)

    def settings(self, ctx):
        return to_mapping(ctx.cfg.train)

    def outputs(self, ctx):
        return [f"supernet/block{b}.pt" for b in range(len(ctx.space.blocks))]

    def commands(self, ctx):
        return [["train", *ctx.common(), *ctx.distill_teacher_args(), "-o", ctx.out / "supernet",
                 *cli_args(ctx.cfg.train, skip=("seed",)), *ctx.compute_args()]]

    def run(self, ctx):
        from dna_deploy.distill.blockwise import train_supernet

        teacher = None if ctx.cfg.train.method == "dna++" else ctx.load_teacher()
        res = train_supernet(ctx.space, ctx.data, teacher, ctx.out / "supernet", config=ctx.cfg.train,
                             compute=ctx.compute, show_progress=ctx.show_progress)
        return {str(b): {"first_loss": r["history"][0]["loss"], "last_loss": r["history"][-1]["loss"],
                         "epochs": len(r["history"])} for b, r in res.items()}


class RateStage(Stage):
    name = "rate"
    deps = ("train",)

    def settings(self, ctx):
        return to_mapping(ctx.cfg.rate)

    def outputs(self, ctx):
        return ["ratings.json"]

    def commands(self, ctx):
        return [["rate", *ctx.common(), "--supernet", ctx.out / "supernet", *ctx.distill_teacher_args(),
                 "-o", ctx.out / "ratings.json", *cli_args(ctx.cfg.rate), *ctx.compute_args(training=False)]]

    def run(self, ctx):
        from dna_deploy.select.rate import rate_supernet

        r = ctx.cfg.rate
        teacher = None if ctx.cfg.train.method == "dna++" else ctx.load_teacher()
        table = rate_supernet(ctx.space, ctx.out / "supernet", teacher, ctx.data, ctx.out / "ratings.json",
                              metric=r.metric, calib_images=r.calib_images, calib_batch=r.calib_batch,
                              seed=ctx.cfg.seed, rate_images=r.rate_images, rate_chunk=r.rate_chunk,
                              rate_memory_gb=r.rate_memory_gb, centre_paths=r.centre_paths,
                              compute=dataclasses.replace(ctx.compute, amp_dtype=None),  # ratings in fp32
                              show_progress=ctx.show_progress)
        return {"candidates": sum(len(b["candidates"]) for b in table["blocks"]), "metric": table["metric"]}


class SearchStage(Stage):
    name = "search"
    deps = ("rate", "tables")

    @staticmethod
    def search_settings(ctx):
        """The search section with confirm_top resolved: unset, 4 candidates are confirmed where timing
        them is cheap (every budgeted device a CPU runtime of this machine), else none."""
        from dna_deploy.deploy.confirm import PIPELINE_CONFIRM_TOP, cheap_here

        s = ctx.cfg.search
        if s.confirm_top is None:
            s = dataclasses.replace(s, confirm_top=0 if cheap_here(ctx.tables, ctx.budgets()) else PIPELINE_CONFIRM_TOP)
        return s

    def settings(self, ctx):
        s = to_mapping(self.search_settings(ctx))
        if not s["confirm_top"]:  # nothing confirmed: written as before the rungs existed, a run keeps its fingerprint
            s.pop("confirm_step")
        return {**s, "budgets": ctx.budgets()}

    def outputs(self, ctx):
        return ["search.json", "pareto.png"]

    def commands(self, ctx):
        args = ["search", "--space", ctx.cfg.space, "-r", ctx.out / "ratings.json"]
        budgets = dict(zip((d.device for d in ctx.cfg.devices), ctx.budgets()))
        for d in ctx.ordered_devices():  # budgeted tables first, so each -b pairs with its own -t
            args += ["-t", ctx.table_path(ctx.device_name(d))]
        args += [a for d in ctx.ordered_devices() if budgets[d.device] is not None for a in ("-b", repr(budgets[d.device]))]
        return [args + cli_args(self.search_settings(ctx)) + ["--pareto", ctx.out / "pareto", "-o", ctx.out / "search.json"]]

    def run(self, ctx):
        from dna_deploy.select.rate import load_ratings
        from dna_deploy.select.search import run_search

        order = [ctx.cfg.devices.index(d) for d in ctx.ordered_devices()]  # as the reproduce command orders them
        from dna_deploy.deploy.confirm import cheap_here

        tables, budgets = ctx.tables, ctx.budgets()
        settings = self.search_settings(ctx)
        if settings.confirm_top:
            ctx.log(f"[search] confirming {settings.confirm_top} candidates on this machine (the best under the budgets "
                    f"and under rungs {100 * settings.confirm_step:g} % apart below them): each exported as "
                    "it ships and timed on every budgeted runtime (seconds each with ONNX Runtime, about 20 s more to "
                    "convert for LiteRT; set search.confirm_top: 0 to trust the tables)")
        elif ctx.cfg.search.confirm_top is None:
            ctx.log(f"[search] the budgets are not confirmed by measurement: {cheap_here(tables, budgets)}")
        from dna_deploy.deploy.confirm import confirm_candidates

        res = run_search(ctx.space, load_ratings(ctx.out / "ratings.json", ctx.space), [tables[i] for i in order],
                         [budgets[i] for i in order], settings, output=ctx.out / "search.json",
                         pareto_path=ctx.out / "pareto", confirm_dir=ctx.out / "confirm",
                         confirm=confirm_candidates, show_progress=ctx.show_progress, log=ctx.log)
        if "confirmation" in res:
            c = res["confirmation"]
            ctx.log(f"[search] confirmation took {c['seconds']:.0f} s ({c['timed']} candidate(s) timed, {c['reused']} "
                    f"from earlier timings); shipped #{c['shipped']}: {c['why']}")
        return res


class RetrainStage(Stage):
    name = "retrain"
    deps = ("search",)

    def settings(self, ctx):
        return {**to_mapping(ctx.cfg.retrain), "arch": ctx.arch}

    def outputs(self, ctx):
        return ["retrain/model.pt"]

    def _uses_teacher(self, ctx) -> bool:
        return ctx.cfg.retrain.kd_weight > 0 and ctx.cfg.teacher is not None

    def commands(self, ctx):
        r = ctx.cfg.retrain
        args = ["retrain", *ctx.common(), "-a", ctx.arch, "-o", ctx.out / "retrain", *cli_args(r, skip=("init_supernet",)),
                *ctx.compute_args()]
        if self._uses_teacher(ctx):
            args += ctx.teacher_args()
        if r.init_supernet:
            args += ["--init-supernet", ctx.out / "supernet"]
        return [args]

    def retrain(self, ctx, arch, out: Path, teacher) -> dict:
        """The run's retraining recipe on any network of the space (the found one, or a baseline's)."""
        from dna_deploy.distill.retrain import retrain

        r = ctx.cfg.retrain
        return retrain(ctx.space, arch, ctx.data, out, config=r.classifier(ctx.cfg.seed, with_teacher=teacher is not None),
                       teacher=teacher, supernet_dir=ctx.out / "supernet" if r.init_supernet else None,
                       show_progress=ctx.show_progress, data_spec=ctx.cfg.data, compute=ctx.compute)

    def run(self, ctx):
        teacher = ctx.load_teacher() if self._uses_teacher(ctx) else None
        res = self.retrain(ctx, ctx.space.parse_arch(ctx.arch), ctx.out / "retrain", teacher)
        return {k: v for k, v in res.items() if k != "history"}


class BaselineStage(Stage):
    """Random networks at the found network's predicted latency, retrained with its recipe."""

    name = "baseline"
    deps = ("retrain", "tables")

    def settings(self, ctx):
        return to_mapping(ctx.cfg.baseline)

    def outputs(self, ctx):
        return ["baseline/baseline.json"]

    def _table_and_target(self, ctx):
        order = ctx.ordered_devices()[0]  # the first budgeted device: the latency the search was held to
        table = ctx.tables[ctx.cfg.devices.index(order)]
        return ctx.device_name(order), table, table.predict(ctx.space, ctx.space.parse_arch(ctx.arch))["predicted_ms"]

    def peers(self, ctx) -> list:
        from dna_deploy.select.search import latency_peers

        b = ctx.cfg.baseline
        if b.random_networks == 0:
            return []
        _, table, target = self._table_and_target(ctx)
        return latency_peers(ctx.space, table, target, b.random_networks, tolerance=b.tolerance, seed=ctx.cfg.seed,
                             exclude=(ctx.arch,))

    def commands(self, ctx):
        recorded = ctx.out / "baseline" / "baseline.json"
        archs = ([p["arch"] for p in read_json(recorded, what="baseline result")["peers"]] if recorded.is_file()
                 else [str(a) for a in self._peers_or_none(ctx)[0]])
        cmds = RetrainStage().commands(ctx)[0]
        at = cmds.index("-a")
        return [cmds[:at + 1] + [arch, "-o", ctx.out / "baseline" / f"random{i}"] + cmds[at + 4:]
                for i, arch in enumerate(archs)]

    def _peers_or_none(self, ctx) -> tuple[list, str | None]:
        """(peers, why none): a found network at the edge of the space may have no random peers."""
        from dna_deploy.errors import InfeasibleBudget

        try:
            return self.peers(ctx), None
        except InfeasibleBudget as e:
            return [], str(e)

    def run(self, ctx):
        from dna_deploy.io import load_checkpoint, write_json

        b, recipe = ctx.cfg.baseline, RetrainStage()
        found = load_checkpoint(ctx.out / "retrain" / "model.pt", what="retrained model")["metrics"]["val_accuracy"]
        result = {"random_networks": b.random_networks, "tolerance": b.tolerance, "found_arch": ctx.arch,
                  "found_val_accuracy": found, "peers": []}
        if b.random_networks:
            device, table, target = self._table_and_target(ctx)
            result.update(device=device, found_predicted_ms=target)
            teacher = ctx.load_teacher() if recipe._uses_teacher(ctx) else None
            peers, why_none = self._peers_or_none(ctx)
            if why_none:
                result["no_peers"] = why_none
                ctx.log(f"[baseline] {why_none}")
            for i, arch in enumerate(peers):
                ctx.log(f"[baseline] random network {i + 1}/{b.random_networks}: {arch}")
                res = recipe.retrain(ctx, arch, ctx.out / "baseline" / f"random{i}", teacher)
                result["peers"].append({"arch": str(arch), "predicted_ms": table.predict(ctx.space, arch)["predicted_ms"],
                                        "val_accuracy": res["val_accuracy"]})
            accs = sorted(p["val_accuracy"] for p in result["peers"])
            if accs:
                median = float(statistics.median(accs))
                result.update(median_val_accuracy=median, found_minus_median_pts=100 * (found - median),
                              found_beats_median=found > median,
                              found_rank=1 + sum(a > found for a in accs))  # 1 = better than every random network
            if len(result["peers"]) < b.random_networks:
                result["fewer_peers_than_asked"] = True
        write_json(ctx.out / "baseline" / "baseline.json", result)
        return result


class ExportStage(Stage):
    name = "export"
    deps = ("retrain",)

    @staticmethod
    def targets(ctx) -> list:
        """The export settings, with a LiteRT export's kernels taken from the run's LiteRT devices
        when it names none, so its graph is the one their tables measure (nn/rewrite.py)."""
        from dna_deploy.errors import DataError
        from dna_deploy.latency.devices import load_device

        devices = [load_device(d.device) for d in ctx.cfg.devices]
        resolvers = {d.op_resolver or "xnnpack" for d in devices if d.runtime == "litert"}
        out = []
        for e in ctx.cfg.export:
            if e.to == "tflite" and e.op_resolver is None and len(resolvers) > 1:
                raise DataError(f"the run's LiteRT devices use different kernel sets ({', '.join(sorted(resolvers))}), "
                                "and each needs its own graph: set op_resolver on the tflite export")
            if e.to == "tflite" and e.op_resolver is None and resolvers and resolvers != {"xnnpack"}:
                e = dataclasses.replace(e, op_resolver=next(iter(resolvers)))
            out.append(e)
        return out

    def settings(self, ctx):
        # an export for LiteRT's default kernels is fingerprinted as before the field existed
        return {"targets": [{k: v for k, v in to_mapping(e).items() if not (k == "op_resolver" and v is None)}
                            for e in self.targets(ctx)]}

    def outputs(self, ctx):
        return [f"export/{e.to}/model.json" for e in ctx.cfg.export]

    def commands(self, ctx):
        return [["export", "-w", ctx.out / "retrain/model.pt", "--to", e.to, "-o", ctx.out / "export" / e.to,
                 *cli_args(e, skip=("to",))] for e in self.targets(ctx)]

    def run(self, ctx):
        from dna_deploy.deploy.export import export_model

        res = {}
        for e in self.targets(ctx):
            side = export_model(ctx.out / "retrain/model.pt", ctx.out / "export" / e.to, e)
            res[e.to] = [a["path"] for a in side["artifacts"]]
        return res


# The runtime that runs each export format: a device's target times the folders of its runtime.
EXPORT_RUNTIME = {"onnx": "onnxruntime", "tflite": "litert", "tensorrt": "tensorrt"}


class VerifyStage(Stage):
    name = "verify"
    deps = ("export", "tables")

    @staticmethod
    def budgets(ctx) -> dict[str, float]:
        """Each budgeted device's budget in ms, by its spec's name: what verify holds the deployed network to."""
        return {ctx.device_name(d): b for d, b in zip(ctx.cfg.devices, ctx.budgets()) if b is not None}

    def settings(self, ctx):
        return {**to_mapping(ctx.cfg.verify), "budgets": self.budgets(ctx)}

    def outputs(self, ctx):
        return [f"export/{e.to}/verify.json" for e in ctx.cfg.export]

    @staticmethod
    def groups(ctx) -> list[tuple[str | None, list[int]]]:
        """The export folders by where they are timed: here (None, one job sharing one speed probe),
        or the target of the devices that run their format (a device entry's `target:`)."""
        from dna_deploy.errors import DataError
        from dna_deploy.latency.devices import load_device

        out: dict[str | None, list[int]] = {}
        for i, e in enumerate(ctx.cfg.export):
            named = {d.target for d in ctx.cfg.devices if d.target not in (None, "local")
                     and load_device(d.device).runtime == EXPORT_RUNTIME.get(e.to)}
            if len(named) > 1:
                raise DataError(f"export {e.to!r} runs on devices of {len(named)} targets ({', '.join(sorted(named))}); "
                                "verify times a folder on one target: give those devices separate pipelines")
            out.setdefault(named.pop() if named else None, []).append(i)
        return list(out.items())

    def commands(self, ctx):  # one command per target: a target's folders share one speed probe (verify_exports)
        tables = [a for d in ctx.cfg.devices for a in ("-t", ctx.table_path(ctx.device_name(d)))]
        budgets = [a for name, ms in self.budgets(ctx).items() for a in ("--budget-ms", f"{name}={ms!r}")]
        return [["verify", *(ctx.out / "export" / ctx.cfg.export[i].to for i in idx), "--data", ctx.cfg.data, *tables,
                 *budgets, *cli_args(ctx.cfg.verify), *(["--target", target] if target else [])]
                for target, idx in self.groups(ctx)] if ctx.cfg.export else []

    def run(self, ctx):
        from dna_deploy.deploy.verify import verify_exports
        from dna_deploy.targets import parse_target

        v = ctx.cfg.verify
        reports: dict[int, dict] = {}
        for target, idx in self.groups(ctx):
            done = verify_exports([ctx.out / "export" / ctx.cfg.export[i].to for i in idx], data=ctx.cfg.data,
                                  tables=ctx.tables, max_images=v.max_images, show_progress=ctx.show_progress,
                                  overrides=v.overrides(), max_extra_rounds=v.max_extra_rounds,
                                  budgets=self.budgets(ctx), latency_advisory=v.latency_advisory,
                                  target=parse_target(target),
                                  # on a target, only the artifacts of the runtime its devices run
                                  only=[EXPORT_RUNTIME[ctx.cfg.export[idx[0]].to]] if target else None)
            reports.update(zip(idx, done))
        return {"reports": {e.to: reports[i] for i, e in enumerate(ctx.cfg.export)}}


class ReportStage(Stage):
    name = "report"
    deps = ("verify", "baseline")

    def outputs(self, ctx):
        return ["report.md", "report.html"]

    def settings(self, ctx):
        import time

        return {"always": time.time()}  # the report reflects the latest run, skipped stages included

    def run(self, ctx):
        from dna_deploy.pipeline.report import write_report

        return write_report(ctx, commands={s.name: [command_line(c) for c in s.commands(ctx)] for s in STAGES})


STAGES: tuple[Stage, ...] = (TeacherStage(), TablesStage(), TrainStage(), RateStage(), SearchStage(), RetrainStage(),
                             BaselineStage(), ExportStage(), VerifyStage(), ReportStage())
