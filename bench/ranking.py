"""Do block-wise ratings rank real networks? DNA and DNA++ vs a SPOS single-path one-shot supernet.

Data: the embedded MNIST subset made harder (few training images) so that networks of the tiny
space spread in accuracy. Ground truth: >= 12 architectures trained stand-alone with one fixed
recipe, accuracy on the validation split. Compared rankings:
  (a) DNA: summed block ratings (teacher = the largest network, trained on the same images);
  (a') DNA++: summed block ratings of the teacher-free, self-supervised supernet (same epochs);
  (b) SPOS: one supernet with the head, trained end to end on labels with one uniform path per
      step, for as many steps as DNA's block-wise training took in total; each architecture is
      rated by its accuracy on the rate split after re-estimating BatchNorm for its path.
Both rate on the rate split, never on validation. Also: does the network DNA's exact search picks
under a latency budget beat the median random network of (about) the same predicted latency?
Run: python bench/ranking.py [--archs 14] [--train-images 600]   (about 20 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dna_deploy.data import load_mnist, stack
from dna_deploy.distill.blockwise import train_blocks
from dna_deploy.distill.selfsup import train_blocks_selfsup
from dna_deploy.distill.supervised import evaluate, train_classifier
from dna_deploy.distill.teacher import load_teacher, train_space_teacher
from dna_deploy.io import write_json
from dna_deploy.latency.table import LatencyTable
from dna_deploy.nn.builder import build_network
from dna_deploy.nn.supernet import Supernet
from dna_deploy.select.rate import _recalibrate, rate_supernet
from dna_deploy.select.search import search
from dna_deploy.settings import ClassifierConfig, DistillConfig
from dna_deploy.space import load_space

ROOT = Path(__file__).resolve().parent.parent


def ranks(x):
    x = np.asarray(x, float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    for v in np.unique(x):  # average ranks for ties
        m = x == v
        r[m] = r[m].mean()
    return r


def spearman(a, b):
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def kendall_tau_b(a, b):
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    conc = disc = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                conc += 1
            else:
                disc += 1
    return float((conc - disc) / math.sqrt((conc + disc + ties_a) * (conc + disc + ties_b)))


def train_standalone(space, arch, data, recipe, tmp, seed=0):
    torch.manual_seed(seed)
    net = build_network(space, arch)
    r = train_classifier(net, data, Path(tmp) / f"sa_{abs(hash(str(arch)))}_{seed}.pt", config=recipe, resume=False,
                         show_progress=False)
    return r["val_accuracy"]


def train_spos(space, data, steps, batch, seed=0):
    """Single-path one-shot: the whole supernet with head, cross-entropy, one uniform path per step."""
    torch.manual_seed(seed)
    net = Supernet(space)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, weight_decay=1e-4)
    x, y = stack(data.train)
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    for s in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        arch = space.sample(rng)
        loss = F.cross_entropy(net(x[idx], arch), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@torch.no_grad()
def rate_spos(net, space, arch, data, calib):
    """Accuracy on the rate split after re-estimating BN for this path (SPOS's protocol)."""
    path = net.extract(arch)
    _recalibrate(path, [calib[i:i + 64] for i in range(0, len(calib), 64)])
    return evaluate(path, data.rate)["accuracy"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", type=int, default=14)
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=6, help="stand-alone recipe epochs")
    ap.add_argument("--dna-epochs", type=int, default=20, help="per block (the reference schedule)")
    ap.add_argument("--seeds", type=int, default=2, help="stand-alone trainings per network, averaged")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    space = load_space("tiny")
    data = load_mnist(32, train_limit=args.train_images)
    recipe = ClassifierConfig(epochs=args.epochs, batch_size=32, lr=3e-3, seed=args.seed)
    table = LatencyTable.load(ROOT / "latency_tables/x86-cpu-onnxruntime__tiny.json")
    res = {"data": data.summary(), "recipe": recipe.__dict__, "archs": []}
    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # ---- DNA: teacher, block-wise distillation, rating
        t0 = time.time()
        teacher_r = train_space_teacher(space, data, tmp / "teacher.pt", config=ClassifierConfig(epochs=args.epochs * 2, batch_size=32),
                                        show_progress=False)
        teacher = load_teacher(str(tmp / "teacher.pt"), space)
        cfg = DistillConfig(epochs=args.dna_epochs, batch_size=32)
        train_blocks(space, data, teacher, tmp / "supernet", config=cfg, show_progress=False)
        ratings = rate_supernet(space, tmp / "supernet", teacher, data, tmp / "ratings.json", calib_images=128,
                                show_progress=False)
        t_dna = time.time() - t0
        dna_steps = len(space.blocks) * args.dna_epochs * math.ceil(len(data.train) / cfg.batch_size)
        block_scores = {b["block"]: {k: v["loss"] for k, v in b["candidates"].items()} for b in ratings["blocks"]}

        def dna_rating(arch, scores=block_scores):
            return sum(scores[b][".".join(map(str, ops))] for b, ops in enumerate(arch.canonical().blocks))

        # ---- DNA++: no teacher, the same epochs per block
        t0 = time.time()
        cfg_pp = DistillConfig(method="dna++", epochs=args.dna_epochs, batch_size=32)
        train_blocks_selfsup(space, data, tmp / "supernet_pp", config=cfg_pp, show_progress=False)
        ratings_pp = rate_supernet(space, tmp / "supernet_pp", None, data, tmp / "ratings_pp.json", calib_images=128,
                                   show_progress=False)
        t_pp = time.time() - t0
        pp_scores = {b["block"]: {k: v["loss"] for k, v in b["candidates"].items()} for b in ratings_pp["blocks"]}

        # ---- SPOS with the same number of steps
        t0 = time.time()
        spos = train_spos(space, data, dna_steps, 32, seed=args.seed)
        calib, _ = stack(data.train, 128)
        t_spos_train = time.time() - t0

        # ---- ground truth: stand-alone training of archs spread over the latency range
        rng = random.Random(args.seed)
        pool = [space.sample(rng) for _ in range(2000)]
        pool.sort(key=lambda a: table.predict(space, a)["predicted_ms"])
        picks = [pool[int(i)] for i in np.linspace(0, len(pool) - 1, args.archs)]
        picks = list({str(a): a for a in picks}.values())
        for a in picks:
            t0 = time.time()
            per_seed = [train_standalone(space, a, data, recipe, tmp, seed=args.seed + k) for k in range(args.seeds)]
            acc = float(np.mean(per_seed))
            t_sa = time.time() - t0
            t0 = time.time()
            spos_r = rate_spos(spos, space, a, data, calib)
            res["archs"].append({"arch": str(a), "val_accuracy": acc, "val_accuracy_per_seed": per_seed, "dna_rating": dna_rating(a),
                                 "dnapp_rating": dna_rating(a, pp_scores), "spos_rate_accuracy": spos_r,
                                 "predicted_ms": table.predict(space, a)["predicted_ms"], "standalone_s": t_sa,
                                 "spos_rate_s": time.time() - t0})
            print(f"  {str(a):52} acc {acc:.3f}  DNA {dna_rating(a):.4f}  DNA++ {dna_rating(a, pp_scores):.4f}  "
                  f"SPOS {spos_r:.3f}", flush=True)
        accs = [r["val_accuracy"] for r in res["archs"]]
        dna = [-r["dna_rating"] for r in res["archs"]]  # lower rating = better
        sp = [r["spos_rate_accuracy"] for r in res["archs"]]
        res["dna"] = {"kendall_tau": kendall_tau_b(dna, accs), "spearman_rho": spearman(dna, accs),
                      "wall_s": t_dna, "steps": dna_steps}
        pp = [-r["dnapp_rating"] for r in res["archs"]]
        res["dnapp"] = {"kendall_tau": kendall_tau_b(pp, accs), "spearman_rho": spearman(pp, accs), "wall_s": t_pp,
                        "steps": dna_steps}
        res["spos"] = {"kendall_tau": kendall_tau_b(sp, accs), "spearman_rho": spearman(sp, accs),
                       "wall_s": t_spos_train + sum(r["spos_rate_s"] for r in res["archs"]), "steps": dna_steps}

        # ---- searched network vs random networks of about the same predicted latency
        mid = table.predict(space, picks[len(picks) // 2])["predicted_ms"]
        best = search(space, ratings, [table], [mid])[0]
        best_arch = space.parse_arch(best["arch"])
        lat = table.predict(space, best_arch)["predicted_ms"]
        near = [a for a in pool if abs(table.predict(space, a)["predicted_ms"] - lat) <= 0.05 * lat and str(a) != best["arch"]]
        rng.shuffle(near)
        near = near[:5]
        best_acc = float(np.mean([train_standalone(space, best_arch, data, recipe, tmp, seed=args.seed + k)
                                  for k in range(args.seeds)]))
        near_accs = [float(np.mean([train_standalone(space, a, data, recipe, tmp, seed=args.seed + k) for k in range(args.seeds)]))
                     for a in near]
        res["searched"] = {"arch": best["arch"], "predicted_ms": lat, "budget_ms": mid, "val_accuracy": best_acc,
                           "random_same_latency": [{"arch": str(a), "val_accuracy": v} for a, v in zip(near, near_accs)],
                           "random_median_accuracy": float(np.median(near_accs)) if near_accs else None}
    res["teacher_val_accuracy"] = teacher_r["val_accuracy"]
    if args.seeds >= 2:  # how well one training run ranks another: the ceiling any rating can reach here
        s0 = [r["val_accuracy_per_seed"][0] for r in res["archs"]]
        s1 = [r["val_accuracy_per_seed"][1] for r in res["archs"]]
        res["seed_to_seed"] = {"kendall_tau": kendall_tau_b(s0, s1), "spearman_rho": spearman(s0, s1),
                               "mean_abs_diff_pts": float(100 * np.mean(np.abs(np.array(s0) - np.array(s1))))}
    res["total_wall_s"] = time.time() - t_all
    accs_arr = np.array(accs)
    print(f"\n{len(accs)} networks trained stand-alone: accuracy {accs_arr.min():.3f} .. {accs_arr.max():.3f} "
          f"(teacher {teacher_r['val_accuracy']:.3f}); train images {len(data.train)}")
    print(f"{'method':6} {'Kendall tau':>11} {'Spearman rho':>12} {'wall s':>7} {'steps':>6}")
    for m in ("dna", "dnapp", "spos"):
        print(f"{m.upper():6} {res[m]['kendall_tau']:11.3f} {res[m]['spearman_rho']:12.3f} {res[m]['wall_s']:7.0f} {res[m]['steps']:6}")
    if "seed_to_seed" in res:
        ss = res["seed_to_seed"]
        print(f"{'seed 0 vs seed 1':16} tau {ss['kendall_tau']:.3f}  rho {ss['spearman_rho']:.3f}  "
              f"(mean |difference| {ss['mean_abs_diff_pts']:.2f} points: the noise ceiling)")
    s = res["searched"]
    print(f"searched under {s['budget_ms']:.3f} ms: {s['arch']} acc {s['val_accuracy']:.3f} vs median {s['random_median_accuracy']} "
          f"of {len(s['random_same_latency'])} random networks within 5 % of its predicted latency")
    print(f"total {res['total_wall_s'] / 60:.1f} min")
    out = ROOT / "bench/results"
    write_json(out / "ranking.json", res)
    plot(res, out / "ranking.png")


def plot(res, path):
    from dna_deploy.display import new_figure, save_figure

    acc = [r["val_accuracy"] for r in res["archs"]]
    fig, axes = new_figure((10, 4), ncols=2)
    axes[0].scatter([r["dna_rating"] for r in res["archs"]], acc)
    axes[0].set_xlabel("DNA summed block rating (lower is better)")
    axes[0].set_title(f"DNA: tau {res['dna']['kendall_tau']:.2f}, rho {res['dna']['spearman_rho']:.2f}")
    axes[1].scatter([r["spos_rate_accuracy"] for r in res["archs"]], acc, c="tab:orange")
    axes[1].set_xlabel("SPOS supernet accuracy (rate split)")
    axes[1].set_title(f"SPOS: tau {res['spos']['kendall_tau']:.2f}, rho {res['spos']['spearman_rho']:.2f}")
    for ax in axes:
        ax.set_ylabel("stand-alone validation accuracy")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
