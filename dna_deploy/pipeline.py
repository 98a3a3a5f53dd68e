"""The main job: one YAML file declares data, space, teacher, devices and budgets, training, rating,
search, export and verification; `run_pipeline` runs it stage by stage into one folder.

Each stage has a fingerprint of its settings and of the fingerprints of the stages it depends on.
A stage whose fingerprint matches the last run and whose outputs exist is skipped; a changed stage
reruns and so does everything downstream. Long stages also resume inside themselves.
"""

from __future__ import annotations

import datetime as _dt
import shlex
import shutil
import time
from pathlib import Path

from dna_deploy.errors import DataError, check_keys
from dna_deploy.io import fingerprint, read_json, read_structured, sha256_file, shipped_dir, write_json

TOP_KEYS = {"name", "output", "seed", "data", "space", "teacher", "devices", "profile", "train", "rate", "search",
            "retrain", "export", "verify", "progressive"}
STAGES = ("teacher", "tables", "train", "rate", "search", "retrain", "export", "verify", "report")


def load_pipeline(path: str | Path) -> dict:
    cfg = read_structured(path, what="pipeline file")
    check_keys(cfg, known=TOP_KEYS, required=("space", "devices"), where=f"pipeline file {path}", error=DataError)
    cfg.setdefault("data", "mnist")
    cfg.setdefault("seed", 0)
    cfg.setdefault("teacher", {"train": {"epochs": 3}})
    for k in ("profile", "train", "rate", "search", "retrain", "verify"):
        cfg[k] = cfg.get(k) or {}
        if not isinstance(cfg[k], dict):
            raise DataError(f"pipeline file {path}: '{k}' must be a mapping")
    cfg["export"] = cfg.get("export") or [{"to": "onnx"}]
    if not isinstance(cfg["devices"], list) or not cfg["devices"]:
        raise DataError(f"pipeline file {path}: 'devices' must list at least one device")
    for d in cfg["devices"]:
        if not isinstance(d, dict) or "device" not in d:
            raise DataError(f"pipeline file {path}: each device needs 'device: NAME' (and budget_ms or budget_fraction)")
    return cfg


class Pipeline:
    def __init__(self, cfg: dict, out: Path, *, show_progress: bool = True, log=print, config_path: str = "pipeline.yaml"):
        from dna_deploy.space import load_space

        self.cfg, self.out, self.show, self.log, self.config_path = cfg, Path(out), show_progress, log, config_path
        self.out.mkdir(parents=True, exist_ok=True)
        self.space = load_space(cfg["space"])
        self.state_path = self.out / "pipeline_state.json"
        self.state = read_json(self.state_path, what="pipeline state") if self.state_path.is_file() else {"stages": {}}
        self.fps: dict[str, str] = {}
        self.results: dict[str, dict] = {}
        self.commands: dict[str, list[str]] = {}
        self._data = None

    # ------------------------------------------------------------ helpers
    @property
    def data(self):
        if self._data is None:
            from dna_deploy.data import load_data

            self._data = load_data(self.cfg["data"], self.space.input_size, seed=self.cfg["seed"])
        return self._data

    def stage(self, name: str, settings: dict, deps: list[str], fn, outputs: list[str]):
        fp = fingerprint({"settings": settings, "deps": [self.fps[d] for d in deps], "space": self.space.fingerprint,
                          "data": self.cfg["data"], "seed": self.cfg["seed"]})
        self.fps[name] = fp
        prev = self.state["stages"].get(name)
        if prev and prev.get("fingerprint") == fp and prev.get("finished") and all((self.out / o).exists() for o in outputs):
            self.log(f"[{name}] up to date, skipped")
            self.results[name] = prev["result"]
            prev["skipped"] = True
            return prev["result"]
        self.log(f"[{name}] running")
        t0 = time.time()
        result = fn()
        self.state["stages"][name] = {"fingerprint": fp, "finished": True, "seconds": time.time() - t0, "result": result,
                                      "skipped": False, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        write_json(self.state_path, self.state)
        self.results[name] = result
        return result

    def cmd(self, stage: str, *args: str) -> None:
        self.commands.setdefault(stage, []).append(" ".join(shlex.quote(str(a)) for a in ("dna-deploy", *args)))

    # ------------------------------------------------------------ stages
    def run(self) -> dict:
        self.run_teacher()
        self.run_tables()
        self.run_train()
        self.run_rate()
        self.run_search()
        self.run_retrain()
        self.run_export()
        self.run_verify()
        self.run_report()
        write_json(self.state_path, self.state)
        return {"output": str(self.out), "report": str(self.out / "report.md"), "results": self.results,
                "verify_passed": all(v["passed"] for v in self.results["verify"]["reports"].values())}

    def run_teacher(self):
        t = self.cfg["teacher"]
        out = self.out / "teacher.pt"
        if "checkpoint" in t or "torchvision" in t:
            spec = t.get("checkpoint") or f"torchvision:{t['torchvision']}"
            self.teacher_args = ["--teacher", spec] + (["--teacher-weights", t["weights"]] if t.get("weights") else []) \
                + (["--taps", ",".join(t["taps"])] if t.get("taps") else [])
            self.teacher_spec = (spec, t.get("weights"), t.get("taps"))
            # the file's content is part of the fingerprint: a new teacher reruns everything after it
            files = [f for f in (t.get("checkpoint"), t.get("weights")) if f and Path(f).is_file()]
            self.stage("teacher", {**t, "sha256": [sha256_file(f) for f in files]}, [],
                       lambda: {"teacher": spec, "given": True}, [])
            return
        train = t.get("train", {})
        self.teacher_spec = (str(out), None, None)
        self.teacher_args = ["--teacher", str(out)]
        self.cmd("teacher", "teacher", "train", "--space", self.cfg["space"], "--data", self.cfg["data"], "-o", out,
                 "--epochs", train.get("epochs", 3), "--seed", self.cfg["seed"])

        def fn():
            from dna_deploy.classify import ClassifierConfig
            from dna_deploy.teacher import train_space_teacher

            cfg = ClassifierConfig(epochs=train.get("epochs", 3), max_steps=train.get("max_steps"), seed=self.cfg["seed"])
            r = train_space_teacher(self.space, self.data, out, arch=train.get("arch"), config=cfg, show_progress=self.show)
            return {k: v for k, v in r.items()}

        self.stage("teacher", t, [], fn, ["teacher.pt"])

    def load_teacher(self):
        from dna_deploy.teacher import load_teacher

        spec, weights, taps = self.teacher_spec
        return load_teacher(spec, self.space, weights=weights, taps=taps)

    def run_tables(self):
        from dna_deploy.devices import host_description, load_device
        from dna_deploy.profile.profiler import default_table_path, profile, runtime_versions
        from dna_deploy.profile.table import LatencyTable
        from dna_deploy.profile.validate import validate_table

        p = self.cfg["profile"]
        use_shipped = p.get("use_shipped", "auto")
        devices = [load_device(d["device"]) for d in self.cfg["devices"]]

        def fn():
            res = {}
            for dev in devices:
                dst = self.out / "tables" / f"{dev.name}__{self.space.name}.json"
                shipped = default_table_path(dev, self.space, shipped_dir("latency_tables"))
                why = None
                if use_shipped in ("auto", True) and shipped.is_file():
                    t = LatencyTable.load(shipped)
                    same_cpu = t.meta.get("host", {}).get("cpu") == host_description(dev.device).get("cpu")
                    same_rt = t.meta.get("versions") == runtime_versions(dev.runtime)
                    if t.meta.get("space_fingerprint") == self.space.fingerprint and t.calibration and (
                            use_shipped is True or (same_cpu and same_rt)):
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(shipped, dst)
                        png = shipped.with_suffix(".fidelity.png")
                        if png.is_file():
                            shutil.copyfile(png, dst.with_suffix(".fidelity.png"))
                        res[dev.name] = {"table": str(dst), "source": f"shipped ({shipped.name}: same CPU and runtime versions)",
                                         "fidelity": t.fidelity}
                        continue
                    why = "other CPU" if not same_cpu else "other runtime versions"
                self.log(f"[tables] profiling {dev.name} on this machine" + (f" (shipped table: {why})" if why else ""))
                profile(self.space, dev, dst, rounds=p.get("rounds", 5), runs_per_round=p.get("runs", 20),
                        show_progress=self.show)
                rep = validate_table(dst, self.space, samples=p.get("validate_samples", 16), plot_path=dst.with_suffix(".fidelity.png"),
                                     show_progress=self.show, rounds=p.get("validate_rounds", 3))
                res[dev.name] = {"table": str(dst), "source": "measured on this machine", "fidelity": LatencyTable.load(dst).fidelity,
                                 "validate": {k: rep[k] for k in ("raw_sum", "calibrated", "macs_linear")}}
            return res

        for dev in devices:
            dst = self.out / "tables" / f"{dev.name}__{self.space.name}.json"
            self.cmd("tables", "profile", "--device", dev.name, "--space", self.cfg["space"], "-o", dst)
            self.cmd("tables", "profile", "validate", "--table", dst, "--space", self.cfg["space"], "-n", p.get("validate_samples", 16))
        self.stage("tables", {"devices": [d.to_dict() for d in devices], **p}, [], fn,
                   [f"tables/{d.name}__{self.space.name}.json" for d in devices])
        self.tables = [LatencyTable.load(self.out / "tables" / f"{d.name}__{self.space.name}.json") for d in devices]

    def run_train(self):
        t = self.cfg["train"]
        self.cmd("train", "train", "--space", self.cfg["space"], "--data", self.cfg["data"], *self.teacher_args,
                 "-o", self.out / "supernet", "--epochs", t.get("epochs", 5), "--seed", self.cfg["seed"])

        def fn():
            from dna_deploy.train import DistillConfig, train_blocks

            check_keys(t, known=DistillConfig.__dataclass_fields__, where="pipeline 'train'", error=DataError)
            cfg = DistillConfig(**{"seed": self.cfg["seed"], **t})
            res = train_blocks(self.space, self.data, self.load_teacher(), self.out / "supernet", config=cfg,
                               show_progress=self.show)
            return {str(b): {"first_loss": r["history"][0]["loss"], "last_loss": r["history"][-1]["loss"],
                             "epochs": len(r["history"])} for b, r in res.items()}

        self.stage("train", t, ["teacher"], fn, [f"supernet/block{b}.pt" for b in range(len(self.space.blocks))])

    def run_rate(self):
        r = self.cfg["rate"]
        self.cmd("rate", "rate", "--space", self.cfg["space"], "--data", self.cfg["data"], "--supernet", self.out / "supernet",
                 *self.teacher_args, "-o", self.out / "ratings.json", "--calib-images", r.get("calib_images", 256))

        def fn():
            from dna_deploy.rate import rate_supernet

            table = rate_supernet(self.space, self.out / "supernet", self.load_teacher(), self.data, self.out / "ratings.json",
                                  metric=r.get("metric", "l1-norm"), calib_images=r.get("calib_images", 256),
                                  show_progress=self.show)
            return {"candidates": sum(len(b["candidates"]) for b in table["blocks"]), "metric": table["metric"]}

        self.stage("rate", r, ["train"], fn, ["ratings.json"])

    def budgets(self) -> list[float | None]:
        out = []
        for d, t in zip(self.cfg["devices"], self.tables):
            if d.get("budget_ms") is not None:
                out.append(float(d["budget_ms"]))
            elif d.get("budget_fraction") is not None:
                lo = t.predict(self.space, self.space.smallest_arch())["predicted_ms"]
                hi = t.predict(self.space, self.space.largest_arch())["predicted_ms"]
                out.append(lo + float(d["budget_fraction"]) * (hi - lo))
            else:
                out.append(None)
        return out

    def run_search(self):
        s = self.cfg["search"]
        budgets = self.budgets()
        args = ["search", "--space", self.cfg["space"], "-r", self.out / "ratings.json"]
        for t, b in zip(self.tables, budgets):
            args += ["-t", t.path] + (["-b", f"{b:.6g}"] if b is not None else [])
        self.cmd("search", *args, "--top-k", s.get("top_k", 5), "--pareto", self.out / "pareto", "-o", self.out / "search.json")

        def fn():
            from dna_deploy import search as S
            from dna_deploy.rate import load_ratings

            ratings = load_ratings(self.out / "ratings.json", self.space)
            t0 = time.perf_counter()
            rows = S.search(self.space, ratings, self.tables, budgets, max_mmacs=s.get("max_mmacs"),
                            max_params=s.get("max_params"), top_k=s.get("top_k", 5))
            seconds = time.perf_counter() - t0
            front = S.pareto(self.space, ratings, self.tables, [None] * len(self.tables))
            S.write_front(front, self.out / "pareto.csv", self.out / "pareto.png", self.tables[0].name)
            res = {"budgets_ms": {t.name: b for t, b in zip(self.tables, budgets)}, "results": rows, "search_seconds": seconds,
                   "pareto_points": len(front), "largest": str(self.space.largest_arch()),
                   "largest_predicted_ms": {t.name: t.predict(self.space, self.space.largest_arch())["predicted_ms"]
                                            for t in self.tables}}
            write_json(self.out / "search.json", res)
            return res

        self.stage("search", {**s, "budgets": budgets}, ["rate", "tables"], fn, ["search.json", "pareto.png"])
        self.arch = self.results["search"]["results"][0]["arch"]

    def run_retrain(self):
        r = self.cfg["retrain"]
        args = ["retrain", "--space", self.cfg["space"], "--data", self.cfg["data"], "-a", self.arch, "-o", self.out / "retrain",
                "--epochs", r.get("epochs", 4), "--kd-weight", r.get("kd_weight", 0.5), *self.teacher_args]
        if r.get("init_supernet", True):
            args += ["--init-supernet", self.out / "supernet"]
        self.cmd("retrain", *args)

        def fn():
            from dna_deploy.classify import ClassifierConfig
            from dna_deploy.retrain import retrain

            cfg = ClassifierConfig(epochs=r.get("epochs", 4), kd_weight=r.get("kd_weight", 0.5), max_steps=r.get("max_steps"),
                                   seed=self.cfg["seed"])
            res = retrain(self.space, self.space.parse_arch(self.arch), self.data, self.out / "retrain", config=cfg,
                          teacher=self.load_teacher() if r.get("kd_weight", 0.5) > 0 else None,
                          supernet_dir=self.out / "supernet" if r.get("init_supernet", True) else None,
                          show_progress=self.show, data_spec=self.cfg["data"])
            return res

        self.stage("retrain", {**r, "arch": self.arch}, ["search"], fn, ["retrain/model.pt"])

    def run_export(self):
        from dna_deploy.export.pipeline import export_model

        targets = self.cfg["export"]
        for e in targets:
            args = ["export", "-w", self.out / "retrain/model.pt", "--to", e["to"], "-o", self.out / "export" / e["to"]]
            for p in e.get("precisions", ["fp32"]):
                args += ["-p", p]
            self.cmd("export", *args)

        def fn():
            res = {}
            for e in targets:
                side = export_model(self.out / "retrain/model.pt", self.out / "export" / e["to"], to=e["to"],
                                    precisions=tuple(e.get("precisions", ["fp32"])), calibration=e.get("calibration_data"))
                res[e["to"]] = [a["path"] for a in side["artifacts"]]
            return res

        self.stage("export", {"targets": targets}, ["retrain"], fn, [f"export/{e['to']}/model.json" for e in targets])

    def run_verify(self):
        from dna_deploy.verify import verify_export

        v = self.cfg["verify"]
        for e in self.cfg["export"]:
            args = ["verify", self.out / "export" / e["to"], "--data", self.cfg["data"]]
            for t in self.tables:
                args += ["-t", t.path]
            self.cmd("verify", *args)

        def fn():
            reports = {}
            for e in self.cfg["export"]:
                r = verify_export(self.out / "export" / e["to"], data=self.cfg["data"], tables=self.tables,
                                  max_images=v.get("max_images"), show_progress=self.show,
                                  overrides={k: v[k] for k in ("max_latency_error_pct",) if k in v})
                reports[e["to"]] = r
            return {"reports": reports}

        self.stage("verify", v, ["export", "tables"], fn, [f"export/{e['to']}/verify.json" for e in self.cfg["export"]])

    def run_report(self):
        from dna_deploy.report import write_report

        def fn():
            return write_report(self)

        self.stage("report", {"t": time.time()}, ["verify"], fn, ["report.md"])


def run_pipeline(config_path: str | Path, *, out: str | Path | None = None, show_progress: bool = True, log=print,
                 overrides: dict | None = None) -> dict:
    """Run the pipeline; with `progressive: {rounds: N}` (DNA+), round r+1 distils from round r's
    retrained winner, in out/round{r+1}/. Returns the last round's result plus every round's summary."""
    import copy

    cfg = load_pipeline(config_path)
    for k, v in (overrides or {}).items():
        cfg[k] = v
    out = Path(out or cfg.get("output") or "runs/pipeline")
    prog = cfg.get("progressive") or {}
    check_keys(prog, known=("rounds",), where="pipeline 'progressive'", error=DataError)
    rounds = int(prog.get("rounds", 1))
    if rounds < 1:
        raise DataError("pipeline 'progressive': rounds must be at least 1")
    summary, result, folder = [], None, out
    for r in range(1, rounds + 1):
        cfg_r = copy.deepcopy(cfg)
        if r > 1:
            cfg_r["teacher"] = {"checkpoint": str(folder / "retrain" / "model.pt")}
            folder = out / f"round{r}"
            log(f"[DNA+ round {r}] teacher: the round {r - 1} network")
        result = Pipeline(cfg_r, folder, show_progress=show_progress, log=log, config_path=str(config_path)).run()
        best = result["results"]["search"]["results"][0]
        summary.append({"round": r, "folder": str(folder), "arch": best["arch"], "rating": best["rating"],
                        "teacher_val_accuracy": result["results"]["retrain"].get("teacher_val_accuracy"),
                        "val_accuracy": result["results"]["retrain"]["val_accuracy"], "mmacs": best["mmacs"]})
    if rounds > 1:
        write_json(out / "progressive.json", summary)
    result["rounds"] = summary
    return result


def quickstart_config() -> Path:
    return shipped_dir("examples") / "quickstart.yaml"

