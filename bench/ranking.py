"""Do block-wise ratings rank real networks? DNA and DNA++ against SPOS, MACs and parameters, on
Fashion-MNIST, with a measured noise ceiling and bootstrap intervals.

Why this design (issue 17): a ranking benchmark is only as good as its ground truth. Ours was two
seeds on 600 MNIST images, whose seed-vs-seed Kendall tau was 0.14, so no rating could be told
from another. Here:
- Ground truth: networks of the `tiny` space spread evenly over its predicted-latency range, each
  trained stand-alone with one recipe from `--seeds` (>= 3) seeds on Fashion-MNIST (Debian's
  dataset-fashion-mnist, 60k/10k), scored on the 10k test images (the val split) together with the
  training images that no training, rating or search touches (44k in the full run: 60k minus the
  6k rate split minus the 10k trained on). Scored on the 10k alone, the same network's seeds
  differed by 0.36 points (mean std); on all 54k, by 0.29: most of the spread between seeds is the
  training's own, not the test sample's (6 networks x 3 seeds, one-off, issue 17's note). Two noise
  ceilings are reported: the mean Kendall tau of one seed's ranking against another's, and of
  one seed against the mean of the others (ratings are scored against the mean of all seeds,
  which is a little more reliable than either). When the ceilings are low the ground truth is
  mostly seed noise, and no rating's tau can be told from another's.
- Ratings, all from the same training images and the same number of images seen by the search
  supernet (blocks x epochs x images), all scored on the rate split, never on val:
  DNA (summed block ratings, teacher = the space's largest network trained here), DNA++ (teacher
  free), SPOS (one weight-sharing supernet with the head trained end to end with one uniform path
  per step, SGD + momentum + cosine as the SPOS paper; each network rated by its rate-split
  accuracy after re-estimating BatchNorm), and the zero-cost MACs and parameter counts.
- Statistics: Kendall tau-b and Spearman rho against the seed-mean accuracy, with 95 % bootstrap
  intervals that resample networks and, inside each network, seeds (not the supernets' own
  training, which runs once); paired intervals for DNA minus each baseline (the same resamples),
  ties counted half.
- Search: DNA's exact optimum under the median network's predicted latency, trained with the same
  seeds, against random networks drawn at the same predicted latency (+-5 %): the difference from
  their median, with a bootstrap interval over those networks and seeds.
Latency here is the shipped ONNX Runtime tiny table's prediction: it only spreads the networks and
defines "the same latency"; nothing is timed.

Every stand-alone training and supernet is kept in --work-dir, so a killed run resumes.
Run: python bench/ranking.py [--quick] [--device auto]   (full: about 90 minutes on 2 cores; --quick: about 10)
     python bench/ranking.py --ceiling-only [--train-images N --epochs E]   (the ground truth and its ceiling alone)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from dna_deploy.compute import Compute
from dna_deploy.data import load_fashion_mnist, stack
from dna_deploy.distill.blockwise import train_blocks
from dna_deploy.distill.selfsup import train_blocks_selfsup
from dna_deploy.distill.supervised import evaluate, train_classifier
from dna_deploy.distill.teacher import load_teacher, train_space_teacher
from dna_deploy.errors import DataError
from dna_deploy.io import fingerprint, read_json, write_json
from dna_deploy.latency.table import LatencyTable
from dna_deploy.nn.builder import build_network
from dna_deploy.nn.supernet import Supernet
from dna_deploy.progress import progress_bar
from dna_deploy.select.rate import rate_supernet, recalibrate_batchnorm
from dna_deploy.select.search import latency_peers, search
from dna_deploy.settings import ClassifierConfig, ComputeSettings, DistillConfig
from dna_deploy.space import load_space

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "latency_tables/x86-cpu-onnxruntime__tiny.json"
PROFILES = {  # what --quick and the full run train; the full run spends its time on the ground truth
    "quick": {"networks": 4, "seeds": 3, "train_images": 2000, "epochs": 2, "dna_epochs": 1, "teacher_epochs": 2,
              "peers": 2, "rate_images": 1000, "calib_images": 256, "val_images": 2000, "score_images": 2000},
    "full": {"networks": 12, "seeds": 3, "train_images": 10000, "epochs": 2, "dna_epochs": 3, "teacher_epochs": 3,
             "peers": 5, "rate_images": 2000, "calib_images": 512, "val_images": 10000, "score_images": 44000},
}
RATINGS = ("dna", "dnapp", "spos", "macs", "params")
LABELS = {"dna": "DNA", "dnapp": "DNA++", "spos": "SPOS", "macs": "MACs", "params": "params"}


def kendall(a, b) -> float:
    return float(stats.kendalltau(a, b).statistic)  # tau-b: ties (repeated networks) handled


def spearman(a, b) -> float:
    return float(stats.spearmanr(a, b).statistic)


def unused_training_images(data, limit: int):
    """Up to `limit` training images outside the train subset and the rate split (fixed order)."""
    from torch.utils.data import Subset

    used = set(data.train.indices) | set(data.rate.indices)
    free = [i for i in range(len(data.train.dataset)) if i not in used]
    return Subset(data.train.dataset, free[:limit])


class StandAlone:
    """Stand-alone trainings, one JSON entry per (network, seed), written after each: a killed run
    loses at most the training in flight. A network's score is its accuracy on the test images
    and `extra` (held-out training images) pooled."""

    def __init__(self, space, data, recipe: ClassifierConfig, work: Path, compute: Compute, bar, extra,
                 shard: tuple[int, int] | None = None):
        self.space, self.data, self.recipe, self.compute, self.bar = space, data, recipe, compute, bar
        self.extra = extra
        self.shard = shard
        # one file per shard: several processes train at once (one GPU holds many tiny trainings)
        self.path = work / ("standalone.json" if shard is None else f"standalone.shard{shard[0]}of{shard[1]}.json")
        self.done = {}
        for path in sorted(work.glob("standalone*.json")):  # every shard's results, from any earlier run
            self.done.update(read_json(path))
        self.work = work

    def mine(self, i: int) -> bool:
        """Whether this process trains the i-th (network, seed) pair (every pair without --shard)."""
        return self.shard is None or i % self.shard[1] == self.shard[0]

    def accuracy(self, arch, seed: int) -> float:
        key = f"{arch}@{seed}"
        if key not in self.done:
            torch.manual_seed(seed)
            net = build_network(self.space, arch)
            t0 = time.time()
            cfg = dataclasses.replace(self.recipe, seed=seed)
            ckpt = self.work / ("standalone.pt" if self.shard is None else f"standalone.shard{self.shard[0]}.pt")
            r = train_classifier(net, self.data, ckpt, config=cfg, resume=False,
                                 show_progress=False, compute=self.compute)
            n_val, n_extra = len(self.data.val), len(self.extra)
            extra = evaluate(net, self.extra, compute=self.compute)["accuracy"] if n_extra else 0.0
            self.done[key] = {"test_accuracy": r["val_accuracy"], "extra_accuracy": extra, "extra_images": n_extra,
                              "accuracy": (r["val_accuracy"] * n_val + extra * n_extra) / (n_val + n_extra),
                              "wall_s": time.time() - t0}
            write_json(self.path, self.done)
        return self.done[key]["accuracy"]

    def test_accuracy(self, arch, seed: int) -> float:
        return self.done[f"{arch}@{seed}"]["test_accuracy"]

    def per_seed(self, archs, seeds: int, task) -> np.ndarray:
        out = np.zeros((len(archs), seeds))
        for i, a in enumerate(archs):
            for s in range(seeds):
                out[i, s] = self.accuracy(a, s)
                self.bar.advance(task, info=f"{str(a)[:40]} seed {s}: {out[i, s]:.4f}")
        return out


def train_spos(space, data, images: int, batch: int, compute: Compute, work: Path, seed: int = 0) -> Supernet:
    """Single-path one-shot: the whole supernet with its head, cross-entropy, one uniform path per
    step; SGD with Nesterov momentum and a cosine schedule (SPOS trains with SGD, momentum 0.9)."""
    ckpt = work / "spos.pt"
    net = Supernet(space).to(compute.device)
    if ckpt.exists():
        net.load_state_dict(torch.load(ckpt, weights_only=True, map_location=compute.device))
        return net
    torch.manual_seed(seed)
    steps = math.ceil(images / batch)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    x, y = stack(data.train)
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        loss = F.cross_entropy(net(x[idx].to(compute.device), space.sample(rng)), y[idx].to(compute.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    tmp = ckpt.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(ckpt)
    return net


@torch.no_grad()
def rate_spos(net: Supernet, arch, data, calib: torch.Tensor, rate_images: int, compute: Compute) -> float:
    """Rate-split accuracy of the inherited path after re-estimating its BatchNorm (SPOS's protocol)."""
    path = net.extract(arch).to(compute.device)
    recalibrate_batchnorm(path, [calib[i:i + 64].to(compute.device) for i in range(0, len(calib), 64)])
    x, y = stack(data.rate, rate_images)
    return float((path(x.to(compute.device)).argmax(1).cpu() == y).float().mean())


def block_scores(ratings: dict) -> dict:
    return {b["block"]: {k: v["loss"] for k, v in b["candidates"].items()} for b in ratings["blocks"]}


def summed_rating(scores: dict, arch) -> float:
    """Lower is better, as the ratings' losses."""
    return sum(scores[b][".".join(map(str, ops))] for b, ops in enumerate(arch.canonical().blocks))


def bootstrap(ratings: dict, acc: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """Kendall tau and Spearman rho of each rating against the seed-mean accuracy, with 95 %
    intervals from resampling networks and, within each, seeds; DNA minus each other rating is
    paired (the same resamples). Ratings: higher = predicted better."""
    rng = np.random.default_rng(seed)
    n, s = acc.shape
    names = list(ratings)
    taus, rhos = np.zeros((n_boot, len(names))), np.zeros((n_boot, len(names)))
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        gt = acc[idx[:, None], rng.integers(0, s, (n, s))].mean(1)
        for j, m in enumerate(names):
            r = np.asarray(ratings[m])[idx]
            taus[b, j], rhos[b, j] = kendall(r, gt), spearman(r, gt)
    gt = acc.mean(1)
    out = {}
    for j, m in enumerate(names):
        out[m] = {"kendall_tau": kendall(ratings[m], gt), "spearman_rho": spearman(ratings[m], gt),
                  "kendall_tau_ci95": np.nanpercentile(taus[:, j], [2.5, 97.5]).tolist(),
                  "spearman_rho_ci95": np.nanpercentile(rhos[:, j], [2.5, 97.5]).tolist()}
    if "dna" in names:
        d = names.index("dna")
        for j, m in enumerate(names):
            if m != "dna":
                diff = taus[:, d] - taus[:, j]
                out[m]["dna_minus_this_tau"] = kendall(ratings["dna"], gt) - out[m]["kendall_tau"]
                out[m]["dna_minus_this_tau_ci95"] = np.nanpercentile(diff, [2.5, 97.5]).tolist()
                diff = diff[~np.isnan(diff)]  # a resample whose tau is undefined (one network repeated) is left out
                out[m]["p_dna_better"] = float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))  # ties count half
    return out


def noise_ceiling(acc: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """Mean Kendall tau (and rho) of one seed's ranking against another's, over all seed pairs,
    with a bootstrap interval over networks: how well any rating could agree with one training run."""
    pairs = list(itertools.combinations(range(acc.shape[1]), 2))

    s = acc.shape[1]

    def taus(a):
        rest = [np.delete(a, i, axis=1).mean(1) for i in range(s)]  # each seed against the mean of the others
        return (np.mean([kendall(a[:, i], a[:, j]) for i, j in pairs]), np.mean([spearman(a[:, i], a[:, j]) for i, j in pairs]),
                np.mean([kendall(a[:, i], rest[i]) for i in range(s)]))

    rng = np.random.default_rng(seed)
    boot = np.array([taus(acc[rng.integers(0, len(acc), len(acc))]) for _ in range(n_boot)])
    tau, rho, loo = taus(acc)
    return {"kendall_tau": float(tau), "spearman_rho": float(rho), "kendall_tau_ci95": np.nanpercentile(boot[:, 0], [2.5, 97.5]).tolist(),
            "spearman_rho_ci95": np.nanpercentile(boot[:, 1], [2.5, 97.5]).tolist(), "seed_pairs": len(pairs),
            "seed_vs_rest_kendall_tau": float(loo), "seed_vs_rest_kendall_tau_ci95": np.nanpercentile(boot[:, 2], [2.5, 97.5]).tolist(),
            "mean_seed_std_pts": float(100 * acc.std(1, ddof=1).mean()),
            "accuracy_range_pts": float(100 * (acc.mean(1).max() - acc.mean(1).min()))}


def searched_vs_random(searched: np.ndarray, peers: np.ndarray, n_boot: int, seed: int = 0) -> dict:
    """Seed-mean accuracy of the searched network minus the median of the random peers', with a
    95 % interval resampling the peers and every network's seeds."""
    rng = np.random.default_rng(seed)
    s = searched.shape[0]
    diffs = []
    for _ in range(n_boot):
        p = peers[rng.integers(0, len(peers), len(peers))]
        p = p[np.arange(len(p))[:, None], rng.integers(0, s, p.shape)].mean(1)
        diffs.append(searched[rng.integers(0, s, s)].mean() - np.median(p))
    peer_means = peers.mean(1)
    return {"searched_accuracy": float(searched.mean()), "random_median_accuracy": float(np.median(peer_means)),
            "difference_pts": float(100 * (searched.mean() - np.median(peer_means))),
            "difference_pts_ci95": (100 * np.percentile(diffs, [2.5, 97.5])).tolist(),
            "p_searched_better": float(np.mean(np.array(diffs) > 0) + 0.5 * np.mean(np.array(diffs) == 0)),
            "rank": int(1 + np.sum(peer_means > searched.mean())), "of": len(peers) + 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run (under 10 minutes on 2 cores) that checks the wiring")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (ComputeSettings)")
    ap.add_argument("--work-dir", type=Path, help="where trainings are kept to resume [runs/bench-ranking-{quick,full}]")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench/results", help="where the JSON and PNG go")
    ap.add_argument("--shard", help="I/K: train only every K-th (network, seed) pair from the I-th and stop (with "
                                    "--ceiling-only); K such processes train at once, and a run without --shard then "
                                    "finds every training done and reports")
    ap.add_argument("--ceiling-only", action="store_true",
                    help="train only the ground-truth networks and report the noise ceiling, to choose --train-images "
                         "and --epochs before paying for the ratings; a full run with the same settings reuses them")
    for k, v in PROFILES["full"].items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, help=f"override the profile's {k} [full: {v}]")
    args = ap.parse_args()
    profile = "quick" if args.quick else "full"
    warnings.simplefilter("ignore", stats.ConstantInputWarning)  # a bootstrap resample may repeat one network: nan, skipped
    cfg = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in PROFILES[profile].items()}
    if cfg["seeds"] < 2:
        ap.error("--seeds must be at least 2: the noise ceiling compares seeds")
    compute = Compute.from_settings(ComputeSettings(device=args.device))
    space = load_space("tiny")
    data = load_fashion_mnist(space.input_size, train_limit=cfg["train_images"])
    table = LatencyTable.load(TABLE)
    recipe = ClassifierConfig(epochs=cfg["epochs"], batch_size=64, lr=3e-3, val_images=cfg["val_images"])
    work = args.work_dir or ROOT / f"runs/bench-ranking-{profile}"
    work = work / fingerprint({"cfg": cfg, "data": data.fingerprint, "recipe": recipe.__dict__, "v": 3})[:10]
    work.mkdir(parents=True, exist_ok=True)
    print(f"profile {profile}: {cfg}; device {compute.device}; work dir {work}", flush=True)
    res = {"profile": profile, "config": cfg, "data": data.summary(), "recipe": recipe.__dict__,
           "device": str(compute.device),
           "device_name": torch.cuda.get_device_name(compute.device) if compute.is_cuda else "cpu", "latency_table": TABLE.name, "wall_s": {}}
    t_all = time.time()
    dna_images = len(space.blocks) * cfg["dna_epochs"] * len(data.train)  # what each supernet sees

    # ---- the networks: evenly spaced over the predicted-latency range of 2,000 random ones
    rng = random.Random(0)
    pool = sorted((space.sample(rng) for _ in range(2000)), key=lambda a: table.predict(space, a)["predicted_ms"])
    picks = list({str(a): a for a in (pool[int(i)] for i in np.linspace(0, len(pool) - 1, cfg["networks"]))}.values())

    if args.ceiling_only:
        return ceiling_only(args, cfg, space, data, table, recipe, work, compute, picks, res, t_all)

    with progress_bar() as bar:
        # ---- DNA: teacher (the largest network), block-wise distillation, rating
        t0 = time.time()
        teacher_cfg = ClassifierConfig(epochs=cfg["teacher_epochs"], batch_size=64, lr=3e-3)
        teacher_r = train_space_teacher(space, data, work / "teacher.pt", config=teacher_cfg, show_progress=False,
                                        compute=compute)
        res["wall_s"]["teacher"] = time.time() - t0
        teacher = load_teacher(str(work / "teacher.pt"), space)
        t0 = time.time()
        train_blocks(space, data, teacher, work / "dna", config=DistillConfig(epochs=cfg["dna_epochs"], batch_size=64),
                     compute=compute, show_progress=False)
        dna = rate_supernet(space, work / "dna", teacher, data, work / "dna_ratings.json", calib_images=cfg["calib_images"],
                            rate_images=cfg["rate_images"], compute=compute, show_progress=False)
        res["wall_s"]["dna"] = time.time() - t0
        print(f"DNA trained and rated in {res['wall_s']['dna']:.0f} s (teacher {teacher_r['val_accuracy']:.4f})", flush=True)

        # ---- DNA++: no teacher, the same epochs per block
        t0 = time.time()
        train_blocks_selfsup(space, data, work / "dnapp", config=DistillConfig(method="dna++", epochs=cfg["dna_epochs"],
                                                                                batch_size=64),
                             compute=compute, show_progress=False)
        dnapp = rate_supernet(space, work / "dnapp", None, data, work / "dnapp_ratings.json", calib_images=cfg["calib_images"],
                              rate_images=cfg["rate_images"], compute=compute, show_progress=False)
        res["wall_s"]["dnapp"] = time.time() - t0
        print(f"DNA++ trained and rated in {res['wall_s']['dnapp']:.0f} s", flush=True)

        # ---- SPOS: the same images seen as one DNA supernet
        t0 = time.time()
        spos = train_spos(space, data, dna_images, 64, compute, work)
        calib, _ = stack(data.train, cfg["calib_images"])
        spos_acc = [rate_spos(spos, a, data, calib, cfg["rate_images"], compute) for a in picks]
        res["wall_s"]["spos"] = time.time() - t0
        res["spos_supernet"] = {"images_seen": dna_images, "optimizer": "SGD nesterov momentum 0.9, lr 0.1 cosine, wd 5e-5",
                                "rate_accuracy_mean": float(np.mean(spos_acc)), "rate_accuracy_min": float(np.min(spos_acc)),
                                "rate_accuracy_max": float(np.max(spos_acc))}
        print(f"SPOS trained and rated in {res['wall_s']['spos']:.0f} s: inherited paths score "
              f"{np.min(spos_acc):.3f}..{np.max(spos_acc):.3f} on the rate split", flush=True)

        # ---- ground truth
        t0 = time.time()
        extra = unused_training_images(data, cfg["score_images"])
        standalone = StandAlone(space, data, recipe, work, compute, bar, extra)
        search_budget = table.predict(space, picks[len(picks) // 2])["predicted_ms"]
        best = space.parse_arch(search(space, dna, [table], [search_budget])[0]["arch"])
        best_ms = table.predict(space, best)["predicted_ms"]
        peers = latency_peers(space, table, best_ms, cfg["peers"], exclude=(str(best),), seed=1)
        task = bar.task("stand-alone trainings", (len(picks) + 1 + len(peers)) * cfg["seeds"])
        acc = standalone.per_seed(picks, cfg["seeds"], task)
        res["wall_s"]["ground_truth"] = time.time() - t0
        t0 = time.time()
        best_acc = standalone.per_seed([best], cfg["seeds"], task)[0]
        peer_acc = standalone.per_seed(peers, cfg["seeds"], task)
        res["wall_s"]["searched_vs_random"] = time.time() - t0

    dna_s, pp_s = block_scores(dna), block_scores(dnapp)
    ratings = {"dna": [-summed_rating(dna_s, a) for a in picks], "dnapp": [-summed_rating(pp_s, a) for a in picks],
               "spos": spos_acc, **zero_cost_ratings(space, picks)}
    res["ground_truth"] = {"scored_on": "test images and held-out training images, pooled",
                           "test_images": len(data.val), "extra_images": len(extra)}
    res["networks"] = [{"arch": str(a), "predicted_ms": table.predict(space, a)["predicted_ms"], "accuracy_per_seed": acc[i].tolist(),
                        "accuracy": float(acc[i].mean()),
                        "test_accuracy_per_seed": [standalone.test_accuracy(a, s) for s in range(cfg["seeds"])],
                        **{f"{m}_rating": float(ratings[m][i]) for m in RATINGS}}
                       for i, a in enumerate(picks)]
    res["teacher_val_accuracy"] = teacher_r["val_accuracy"]
    res["noise_ceiling"] = noise_ceiling(acc, args.bootstrap)
    res["ranking"] = bootstrap(ratings, acc, args.bootstrap)
    res["searched"] = {"arch": str(best), "budget_ms": search_budget, "predicted_ms": best_ms, "tolerance": 0.05,
                       "accuracy_per_seed": best_acc.tolist(),
                       "random_same_latency": [{"arch": str(a), "predicted_ms": table.predict(space, a)["predicted_ms"],
                                                "accuracy_per_seed": peer_acc[i].tolist()} for i, a in enumerate(peers)],
                       **searched_vs_random(best_acc, peer_acc, args.bootstrap)}
    res["images_seen"] = {"dna": dna_images, "dnapp": dna_images, "spos": dna_images,
                          "dna_teacher": cfg["teacher_epochs"] * len(data.train)}
    res["wall_s"]["total"] = time.time() - t_all
    report(res)
    out = args.results_dir
    overridden = any(getattr(args, k) is not None for k in PROFILES["full"])
    name = "ranking_custom" if overridden else "ranking" if profile == "full" else "ranking_quick"
    write_json(out / f"{name}.json", res)
    plot(res, out / f"{name}.png")
    print(f"wrote {out / name}.json and .png")


def zero_cost_ratings(space, archs) -> dict:
    """MACs and parameter counts: the ratings every NAS ranking must beat, free to compute."""
    specs = [space.layer_specs(a) for a in archs]
    return {"macs": [sum(s.macs for s in sp) for sp in specs], "params": [sum(s.params for s in sp) for sp in specs]}


def ceiling_only(args, cfg, space, data, table, recipe, work, compute, picks, res, t_all) -> None:
    """The ground truth alone: its noise ceiling says whether a training budget can support any
    ranking claim (issue 17: the ceiling comes first). MACs and parameters, free, are scored too."""
    with progress_bar() as bar:
        t0 = time.time()
        extra = unused_training_images(data, cfg["score_images"])
        shard = tuple(int(v) for v in args.shard.split("/")) if args.shard else None
        standalone = StandAlone(space, data, recipe, work, compute, bar, extra, shard=shard)
        if shard is not None:
            pairs = [(a, s) for a in picks for s in range(cfg["seeds"])]
            task = bar.task(f"stand-alone trainings (shard {args.shard})", sum(map(standalone.mine, range(len(pairs)))))
            for i, (a, s) in enumerate(pairs):
                if standalone.mine(i):
                    standalone.accuracy(a, s)
                    bar.advance(task)
            print(f"shard {args.shard}: done", flush=True)
            return None
        acc = standalone.per_seed(picks, cfg["seeds"], bar.task("stand-alone trainings", len(picks) * cfg["seeds"]))
        res["wall_s"]["ground_truth"] = time.time() - t0
    zero_cost = zero_cost_ratings(space, picks)
    res["ground_truth"] = {"scored_on": "test images and held-out training images, pooled" if len(extra) else "test images",
                           "test_images": len(data.val), "extra_images": len(extra),
                           "images_seen_per_training": cfg["epochs"] * len(data.train),
                           "training_wall_s_mean": float(np.mean([standalone.done[f"{a}@{s}"]["wall_s"]
                                                                  for a in picks for s in range(cfg["seeds"])]))}
    res["networks"] = [{"arch": str(a), "predicted_ms": table.predict(space, a)["predicted_ms"],
                        "accuracy_per_seed": acc[i].tolist(), "accuracy": float(acc[i].mean()),
                        **{f"{m}_rating": float(zero_cost[m][i]) for m in zero_cost}} for i, a in enumerate(picks)]
    res["noise_ceiling"] = c = noise_ceiling(acc, args.bootstrap)
    res["ranking"] = r = bootstrap(zero_cost, acc, args.bootstrap)
    res["wall_s"]["total"] = time.time() - t_all
    g = res["ground_truth"]
    print(f"\n{len(picks)} networks x {cfg['seeds']} seeds, {g['images_seen_per_training']} images seen each "
          f"({g['training_wall_s_mean']:.0f} s per training): accuracy {acc.mean(1).min():.4f}..{acc.mean(1).max():.4f} "
          f"({c['accuracy_range_pts']:.2f} points), mean seed std {c['mean_seed_std_pts']:.2f} points")
    print(f"noise ceiling (seed vs seed): tau {c['kendall_tau']:.3f} [{c['kendall_tau_ci95'][0]:.2f}, "
          f"{c['kendall_tau_ci95'][1]:.2f}]; seed vs the others' mean: tau {c['seed_vs_rest_kendall_tau']:.3f}")
    print("zero-cost ratings: " + "; ".join(f"{LABELS[m]} tau {r[m]['kendall_tau']:.3f} [{r[m]['kendall_tau_ci95'][0]:+.2f}, "
                                            f"{r[m]['kendall_tau_ci95'][1]:+.2f}]" for m in zero_cost))
    name = f"ranking_ceiling_{cfg['networks']}x{cfg['seeds']}_{cfg['train_images']}x{cfg['epochs']}"
    out = args.results_dir
    write_json(out / f"{name}.json", res)
    plot_ceiling(res, out / f"{name}.png")
    print(f"wrote {out / name}.json and .png")


def plot_ceiling(res: dict, path: Path) -> None:
    """Each network's accuracy per seed against its predicted latency (is the spread between
    networks larger than the spread between seeds?), and seed 0 against seed 1."""
    from dna_deploy.display import new_figure, save_figure

    fig, (left, right) = new_figure((11, 4.2), ncols=2)
    nets = res["networks"]
    ms = np.array([n["predicted_ms"] for n in nets])
    acc = 100 * np.array([n["accuracy_per_seed"] for n in nets])
    for s in range(acc.shape[1]):
        left.plot(ms, acc[:, s], "o", alpha=0.6, label=f"seed {s}")
    left.plot(ms, acc.mean(1), "k-", lw=1, label="seed mean")
    left.set_xlabel("predicted latency, ms (shipped ONNX Runtime table)")
    left.set_ylabel("stand-alone accuracy, %")
    left.legend(fontsize=8)
    c = res["noise_ceiling"]
    right.plot(acc[:, 0], acc[:, 1], "o")
    lo, hi = acc.min() - 0.1, acc.max() + 0.1
    right.plot([lo, hi], [lo, hi], "k:", lw=1)
    right.set_xlabel("seed 0 accuracy, %")
    right.set_ylabel("seed 1 accuracy, %")
    right.set_title(f"noise ceiling tau {c['kendall_tau']:.2f} [{c['kendall_tau_ci95'][0]:.2f}, {c['kendall_tau_ci95'][1]:.2f}]")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def report(res: dict) -> None:
    acc = np.array([n["accuracy"] for n in res["networks"]])
    c = res["noise_ceiling"]
    g = res["ground_truth"]
    print(f"\n{len(acc)} networks, {res['config']['seeds']} seeds each: accuracy on {g['test_images']} test + "
          f"{g['extra_images']} held-out training images {acc.min():.4f}..{acc.max():.4f} "
          f"(teacher {res['teacher_val_accuracy']:.4f}); mean seed std {c['mean_seed_std_pts']:.2f} points")
    print(f"noise ceiling (seed vs seed): tau {c['kendall_tau']:.3f} [{c['kendall_tau_ci95'][0]:.2f}, {c['kendall_tau_ci95'][1]:.2f}]"
          f"  rho {c['spearman_rho']:.3f}; seed vs the others' mean: tau {c['seed_vs_rest_kendall_tau']:.3f} "
          f"[{c['seed_vs_rest_kendall_tau_ci95'][0]:.2f}, {c['seed_vs_rest_kendall_tau_ci95'][1]:.2f}]")
    print(f"{'rating':7} {'Kendall tau [95% CI]':>24} {'Spearman rho [95% CI]':>24} {'DNA - this, tau [95% CI]':>26}")
    for m in RATINGS:
        r = res["ranking"][m]
        d = (f"{r['dna_minus_this_tau']:+.3f} [{r['dna_minus_this_tau_ci95'][0]:+.2f}, {r['dna_minus_this_tau_ci95'][1]:+.2f}]"
             if "dna_minus_this_tau" in r else "")
        print(f"{LABELS[m]:7} {r['kendall_tau']:8.3f} [{r['kendall_tau_ci95'][0]:+.2f}, {r['kendall_tau_ci95'][1]:+.2f}]"
              f"{r['spearman_rho']:10.3f} [{r['spearman_rho_ci95'][0]:+.2f}, {r['spearman_rho_ci95'][1]:+.2f}]  {d:>26}")
    s = res["searched"]
    print(f"searched under {s['budget_ms']:.3f} ms: {s['arch']} {s['searched_accuracy']:.4f} vs median "
          f"{s['random_median_accuracy']:.4f} of {s['of'] - 1} random networks at +-5 %: {s['difference_pts']:+.2f} points "
          f"[{s['difference_pts_ci95'][0]:+.2f}, {s['difference_pts_ci95'][1]:+.2f}], rank {s['rank']} of {s['of']}")
    print("wall s: " + ", ".join(f"{k} {v:.0f}" for k, v in res["wall_s"].items()))


def plot(res: dict, path: Path) -> None:
    from dna_deploy.display import new_figure, save_figure

    fig, axes = new_figure((15, 4.2), ncols=3)
    c = res["noise_ceiling"]
    xs = np.arange(len(RATINGS))
    taus = [res["ranking"][m]["kendall_tau"] for m in RATINGS]
    cis = np.array([res["ranking"][m]["kendall_tau_ci95"] for m in RATINGS])
    axes[0].bar(xs, taus, color=["tab:blue", "tab:cyan", "tab:orange", "tab:gray", "tab:gray"])
    axes[0].errorbar(xs, taus, yerr=[np.array(taus) - cis[:, 0], cis[:, 1] - np.array(taus)], fmt="none", ecolor="k", capsize=4)
    axes[0].axhspan(*c["kendall_tau_ci95"], color="tab:green", alpha=0.15)
    axes[0].axhline(c["kendall_tau"], color="tab:green", label=f"noise ceiling (seed vs seed) {c['kendall_tau']:.2f}")
    axes[0].set_xticks(xs, [LABELS[m] for m in RATINGS])
    axes[0].set_ylabel("Kendall tau vs stand-alone accuracy (95 % CI)")
    axes[0].legend(loc="lower left", fontsize=8)
    nets = res["networks"]
    acc = np.array([n["accuracy_per_seed"] for n in nets])
    for ax, m, xlabel in ((axes[1], "dna", "DNA summed block rating (higher = predicted better)"),
                          (axes[2], "spos", "SPOS inherited-path accuracy (rate split)")):
        ax.errorbar([n[f"{m}_rating"] for n in nets], acc.mean(1), yerr=acc.std(1, ddof=1), fmt="o", capsize=3)
        r = res["ranking"][m]
        ax.set_title(f"{LABELS[m]}: tau {r['kendall_tau']:.2f} [{r['kendall_tau_ci95'][0]:.2f}, {r['kendall_tau_ci95'][1]:.2f}]")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("stand-alone accuracy, test + held-out (mean +- seed std)")
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    try:
        main()
    except DataError as e:  # missing data, a bad device: one line, no traceback
        raise SystemExit(f"error: {e}") from None
