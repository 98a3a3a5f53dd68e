"""What a run at ImageNet scale costs, measured on whatever device this machine has.

Measured here (images/s, on `--device`, AMP on CUDA):
- teacher forward: torchvision efficientnet_b0 at 224 px (random weights: speed only);
- block training: one DNA step of each `dna-mbconv` block student (teacher features as input);
- rating: candidates/s of the prefix-tree rater for block 1 on `--rate-images` images;
- retraining: one supervised step of the largest `dna-mbconv` network.
From these it prints an ImageNet wall-time ESTIMATE for 1 and 8 GPUs (or processes) under the DNA
schedule (20 epochs per block on 1.28 M images, 6,264 candidates rated on 50 k images, and
`--retrain-epochs` of retraining, 100 by default), with memory and the disk a feature cache would take.

Two more measurements that need no GPU:
- peak RSS of `dna-deploy train` on synthetic image folders of two sizes (streamed data: it must not
  grow with the dataset);
- how ratings converge as the rate set grows (`--rate-images` N against all of the rate split),
  Kendall tau per block, on the embedded MNIST with the tiny space.

Run: python bench/scale.py [--device auto] [--quick]   -> bench/results/scale.json
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dna_deploy.compute import Compute
from dna_deploy.io import write_json
from dna_deploy.settings import ComputeSettings

ROOT = Path(__file__).resolve().parent.parent
IMAGENET_TRAIN, IMAGENET_RATE_IMAGES = 1_281_167, 50_000
DNA_EPOCHS_PER_BLOCK = 20


def _timed(fn, steps: int, warmup: int, compute: Compute) -> float:
    """Seconds per call, after warm-up (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    if compute.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if compute.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def throughput(compute: Compute, batch: int, steps: int, rate_images: int) -> dict:
    import torchvision

    from dna_deploy.distill.student import BlockStudent, feature_distance
    from dna_deploy.nn.builder import build_network
    from dna_deploy.nn.supernet import sample_path
    from dna_deploy.select.rate import _Context, rate_block_tree
    from dna_deploy.space import load_space

    space = load_space("dna-mbconv")
    out = {}
    x = compute.batch(torch.randn(batch, 3, 224, 224))
    teacher = compute.module(torchvision.models.efficientnet_b0(weights=None).eval())
    with torch.no_grad():
        def teach():
            with compute.autocast():
                teacher(x)
        out["teacher_forward_img_s"] = batch / _timed(teach, steps, 2, compute)
    rng = random.Random(0)
    per_block = []
    for b in range(len(space.blocks)):
        hw, cin = space.resolution_at(b), (3 if b == 0 else space.channels_in(b))
        inp = compute.batch(torch.randn(batch, cin, space.input_size if b == 0 else hw, space.input_size if b == 0 else hw))
        student = compute.module(BlockStudent(space, b, [blk.out_channels for blk in space.blocks]))
        opt = torch.optim.Adam(student.parameters(), 1e-3)
        scaler = compute.scaler()
        with torch.no_grad():
            target = student(inp, sample_path(space, b, rng)).detach().float()

        def step():
            with compute.autocast():
                pred = student(inp, sample_path(space, b, rng))
            loss = feature_distance(pred.float(), target, "mse")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        per_block.append(batch / _timed(step, steps, 2, compute))
    out["block_train_img_s"] = per_block
    # one image through all blocks once = one step of every block
    out["blockwise_img_s"] = 1 / sum(1 / v for v in per_block)
    # rating: block 1's prefix tree on `rate_images` images (inputs at its resolution)
    b = 1
    student = compute.module(BlockStudent(space, b, [blk.out_channels for blk in space.blocks])).eval()
    hw = space.resolution_at(b)
    cal = [compute.batch(torch.randn(64, space.channels_in(b), hw, hw)) for _ in range(4)]
    rate_in = compute.batch(torch.randn(rate_images, space.channels_in(b), hw, hw))
    target = compute.batch(torch.randn(rate_images, space.blocks[b].out_channels, space.resolution_at(b + 1),
                                       space.resolution_at(b + 1)))
    ctx = _Context(student, cal, rate_in, target, "l1-norm", None, ("l1-norm",), target_std=1.0)
    first = str(space.blocks[b].choices[0])
    t0 = time.perf_counter()
    n = len(rate_block_tree(space, b, ctx, first=first))
    if compute.is_cuda:
        torch.cuda.synchronize()
    out["rating_candidates_s"] = n / (time.perf_counter() - t0)
    out["rating_images"] = rate_images
    # retraining: the largest network, one supervised step
    net = compute.module(build_network(space, space.largest_arch()))
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    scaler = compute.scaler()
    y = torch.randint(0, 1000, (batch,), device=compute.device)

    def sup():
        with compute.autocast():
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    out["retrain_img_s"] = batch / _timed(sup, steps, 2, compute)
    if compute.is_cuda:
        out["cuda_peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    out["candidates_total"] = sum(space.block_candidate_count(b) for b in range(len(space.blocks)))
    # disk a feature cache would take: every block's two taps, fp16, per image, at 224 px
    taps = [space.blocks[b].out_channels * space.resolution_at(b + 1) ** 2 for b in range(len(space.blocks))]
    out["feature_cache_bytes_per_image_all_taps"] = 2 * sum(taps)
    return out


def imagenet_settings() -> dict:
    """The schedule examples/imagenet.yaml sets today (what a user starts from), with the library's
    defaults where it says nothing: the estimate follows the file, not numbers written here."""
    from dna_deploy.io import read_structured
    from dna_deploy.settings import DistillConfig, RateSettings, RetrainSettings

    cfg = read_structured(ROOT / "examples" / "imagenet.yaml", what="pipeline")
    rate, train, retrain = cfg.get("rate", {}), cfg.get("train", {}), cfg.get("retrain", {})
    return {"epochs_per_block": train.get("epochs", DistillConfig().epochs),
            "rate_images": rate.get("rate_images", RateSettings().rate_images) or IMAGENET_RATE_IMAGES,
            "calib_images": rate.get("calib_images", RateSettings().calib_images),
            "retrain_epochs": retrain.get("epochs", RetrainSettings().epochs)}


def estimate(m: dict, gpus: int, retrain_epochs: int | None = None) -> dict:
    """Hours for ImageNet under examples/imagenet.yaml's schedule, assuming linear data-parallel
    scaling (an upper bound on the speed-up). Rating: the measured candidates/s were on
    `rating_images` rate images plus 256 calibration images per tree node; both scale linearly."""
    s = imagenet_settings()
    retrain_epochs = retrain_epochs or s["retrain_epochs"]
    train_h = s["epochs_per_block"] * IMAGENET_TRAIN * sum(1 / v for v in m["block_train_img_s"]) / gpus / 3600
    # the teacher runs on the fly: one forward per image per block step
    teacher_h = s["epochs_per_block"] * IMAGENET_TRAIN * len(m["block_train_img_s"]) / m["teacher_forward_img_s"] / gpus / 3600
    per_image = (s["rate_images"] + s["calib_images"]) / (m["rating_images"] + 256)
    rate_h = m["candidates_total"] / m["rating_candidates_s"] * per_image / gpus / 3600
    retrain_h = retrain_epochs * IMAGENET_TRAIN / m["retrain_img_s"] / gpus / 3600
    return {"gpus": gpus, "settings": s, "train_blocks_h": train_h, "teacher_on_the_fly_h": teacher_h, "rate_h": rate_h,
            "retrain_h": retrain_h, "total_h": train_h + teacher_h + rate_h + retrain_h,
            "feature_cache_tb_if_used": m["feature_cache_bytes_per_image_all_taps"] * IMAGENET_TRAIN / 1e12}


def _run(cmd: list, env=None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def distributed(ranks: int, *, classes: int = 10, per_class: int = 200, blocks: str = "0,5", rate_images: int = 64,
                calib_images: int = 32, train_steps: int = 4, batch: int = 16, memory_gb: float = 4.0) -> dict:
    """`ranks` gloo processes (torchrun) on a generated folder of 224-px images of dna-mbconv:
    train, rate (counted per rank: decodes and teacher images per rate image per block, work per
    rank, peak memory) against a one-process rating of the same supernet, and a short retrain."""
    sys.path.insert(0, str(ROOT / "tests"))
    from imagefolder import make_image_folder

    from dna_deploy.space import load_space

    space = load_space("dna-mbconv")
    block_list = [int(b) for b in blocks.split(",")]
    out = {"ranks": ranks, "space": "dna-mbconv", "blocks": block_list, "image_px": 224, "rate_images": rate_images,
           "calib_images": calib_images, "rate_memory_gb": memory_gb, "wall_s": {}}
    tr = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folder = make_image_folder(tmp / "images", classes=classes, train_per_class=per_class, val_per_class=10, size=224)
        out["images"] = {"train_folder": classes * per_class, "classes": classes,
                         "jpeg": len(list(folder.rglob("*.jpg"))), "png": len(list(folder.rglob("*.png")))}
        out["wall_s"]["make_folder"] = time.perf_counter() - t0
        dna = [sys.executable, "-m", "dna_deploy"]
        common = ["-s", "dna-mbconv", "--data", folder, "--workers", "1", "-f", "json"]
        out["wall_s"]["teacher"] = _run([*dna, "teacher", "train", *common, "-o", tmp / "teacher.pt", "--epochs", "1",
                                         "--max-steps", "2", "--batch-size", "8", "--device", "cpu"])
        out["wall_s"]["train"] = _run([*tr, "-m", "dna_deploy", "train", *common, "--teacher", tmp / "teacher.pt",
                                       "-o", tmp / "sn", "--blocks", blocks, "--epochs", "1", "--max-steps",
                                       str(train_steps), "--batch-size", str(batch * ranks), "--device", "cpu"])
        counts = tmp / "counts"
        counts.mkdir()
        env = {**__import__("os").environ, "DNA_DEPLOY_COUNT_DIR": str(counts)}
        rate = ["rate", *common, "--teacher", tmp / "teacher.pt", "--supernet", tmp / "sn", "--blocks", blocks,
                "--rate-images", str(rate_images), "--calib-images", str(calib_images), "--rate-memory-gb", str(memory_gb),
                "--device", "cpu"]
        out["wall_s"]["rate"] = _run([*tr, ROOT / "bench" / "_counted.py", *rate, "-o", tmp / "rN.json"], env=env)
        per_rank = [json.loads((counts / f"rank{r}.json").read_text()) for r in range(ranks)]
        t0 = time.perf_counter()
        _run([*dna, *rate, "-o", tmp / "r1.json"])
        out["wall_s"]["rate_one_process"] = time.perf_counter() - t0
        many, one = (json.loads((tmp / f).read_text()) for f in ("rN.json", "r1.json"))
        diffs = [abs(b2["candidates"][k]["loss"] - c["loss"]) / abs(c["loss"])
                 for b1, b2 in zip(one["blocks"], many["blocks"]) for k, c in b1["candidates"].items()]
        out["ratings_max_rel_diff_vs_one_process"] = max(diffs)
        # decodes: the calibration images are read once per run, the rate images once per block
        out["per_rank"] = [{"rank": r, "decodes": c["decodes"], "teacher_images": c["teacher_images"],
                            "decodes_per_rate_image_per_block": (c["decodes"] - calib_images) / (rate_images * len(block_list)),
                            "teacher_per_rate_image_per_block": (c["teacher_images"] - calib_images)
                            / (rate_images * len(block_list)),
                            "peak_rss_mb": c["peak_rss_mb"], "cuda_peak_mb": c["cuda_peak_mb"]}
                           for r, c in enumerate(per_rank)]
        out["blocks_rated"] = [{"block": b["block"], "candidates": len(b["candidates"]), **b["sharding"]}
                               for b in many["blocks"]]
        out["rating_candidates_s"] = sum(len(b["candidates"]) for b in many["blocks"]) / out["wall_s"]["rate"]
        arch = space.largest_arch()
        out["wall_s"]["retrain"] = _run([*tr, "-m", "dna_deploy", "retrain", *common, "-a", str(arch), "-o",
                                         tmp / "retrain", "--epochs", "1", "--max-steps", str(train_steps),
                                         "--batch-size", str(batch * ranks), "--device", "cpu"])
    return out


def report_distributed(d: dict) -> None:
    print(f"\n{d['ranks']} gloo ranks on {d['images']['train_folder']} generated 224-px images "
          f"({d['images']['jpeg']} JPEG, {d['images']['png']} PNG), dna-mbconv blocks {d['blocks']}:")
    for r in d["per_rank"]:
        print(f"  rank {r['rank']}: decodes per rate image per block {r['decodes_per_rate_image_per_block']:.2f}, "
              f"teacher forwards {r['teacher_per_rate_image_per_block']:.2f}, peak RSS {r['peak_rss_mb']:.0f} MB")
    for b in d["blocks_rated"]:
        print(f"  block {b['block']}: {b['candidates']} candidates split by {b['split']} over {b['ranks']} ranks, "
              f"work max/mean {b['work_max_over_mean']:.3f}, chunk {b['rate_chunk']} images")
    print(f"  ratings vs one process: max relative difference {d['ratings_max_rel_diff_vs_one_process']:.1e}; "
          f"wall: " + ", ".join(f"{k} {v:.0f} s" for k, v in d["wall_s"].items()))


def peak_rss_two_sizes(sizes: tuple[int, int]) -> list[dict]:
    """Peak RSS of a streamed `dna-deploy train` (teacher on the fly) on folders of two sizes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from imagefolder import make_image_folder

    rows = []
    space = ROOT / "tests" / "data" / "mbconv64.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = tmp / "teacher.pt"
        small = make_image_folder(tmp / "small", train_per_class=sizes[0] // 4, val_per_class=4)
        subprocess.run([sys.executable, "-m", "dna_deploy", "teacher", "train", "-s", str(space), "--data", str(small),
                        "-o", str(teacher), "--epochs", "1", "--batch-size", "16", "--workers", "1", "-f", "json"],
                       check=True, capture_output=True)
        for n in sizes:
            folder = make_image_folder(tmp / f"d{n}", train_per_class=n // 4, val_per_class=4)
            code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "dna_deploy", "train", "-s", str(space),
                                "--data", str(folder), "--teacher", str(teacher), "-o", str(tmp / f"sn{n}"), "--epochs",
                                "1", "--batch-size", "16", "--workers", "1", "--blocks", "0", "-f", "json"],
                               check=True, capture_output=True, text=True)
            rows.append({"train_images": int(n * 0.9), "peak_rss_mb": int(r.stdout.split()[-1]) / 1024,
                         "seconds": time.perf_counter() - t0})
    return rows


def rating_convergence(sizes: list[int]) -> dict:
    """Kendall tau per block between ratings on N rate images and on the whole rate split."""
    from scipy.stats import kendalltau

    from dna_deploy.data import load_mnist
    from dna_deploy.distill.blockwise import train_blocks
    from dna_deploy.distill.teacher import load_teacher, train_space_teacher
    from dna_deploy.select.rate import rate_supernet
    from dna_deploy.settings import ClassifierConfig, DistillConfig
    from dna_deploy.space import load_space

    space, data = load_space("tiny"), load_mnist(32)
    cpu = Compute.from_settings(ComputeSettings(device="cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_space_teacher(space, data, tmp / "t.pt", show_progress=False, config=ClassifierConfig(epochs=2), compute=cpu)
        teacher = load_teacher(str(tmp / "t.pt"), space)
        train_blocks(space, data, teacher, tmp / "sn", config=DistillConfig(epochs=3, max_steps=20), compute=cpu,
                     show_progress=False)
        full = rate_supernet(space, tmp / "sn", teacher, data, tmp / "full.json", calib_images=128, compute=cpu,
                             show_progress=False)
        out = {"rate_split_images": len(data.rate), "taus": {}}
        for n in sizes:
            part = rate_supernet(space, tmp / "sn", teacher, data, tmp / f"r{n}.json", calib_images=128, rate_images=n,
                                 compute=cpu, show_progress=False)
            taus = []
            for bf, bp in zip(full["blocks"], part["blocks"]):
                names = sorted(bf["candidates"])
                taus.append(float(kendalltau([bf["candidates"][k]["loss"] for k in names],
                                             [bp["candidates"][k]["loss"] for k in names]).statistic))
            out["taus"][n] = taus
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=None, help="[64 on CUDA, 8 on the CPU]")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement [20 on CUDA, 3 on the CPU]")
    ap.add_argument("--rate-images", type=int, default=None, help="[2048 on CUDA, 64 on the CPU]")
    ap.add_argument("--retrain-epochs", type=int, default=None, help="[examples/imagenet.yaml's]")
    ap.add_argument("--quick", action="store_true", help="throughput only")
    ap.add_argument("--ranks", type=int, default=0, help="also train, rate and retrain with this many gloo ranks on a "
                                                        "generated folder of 2,000 224-px images (CPU)")
    ap.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = ap.parse_args()
    compute = Compute.from_settings(ComputeSettings(device=args.device, workers=0))
    cuda = compute.is_cuda
    batch, steps = args.batch or (64 if cuda else 8), args.steps or (20 if cuda else 3)
    rate_images = args.rate_images or (2048 if cuda else 64)
    t0 = time.perf_counter()
    m = throughput(compute, batch, steps, rate_images)
    result = {"device": compute.describe(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(compute.device) if cuda else None, "batch": batch, "measured": m,
              "imagenet_estimate": [estimate(m, g, args.retrain_epochs) for g in (1, 8)],
              "estimate_note": "ESTIMATE: measured per-step speed x the DNA schedule, assuming linear data-parallel "
                               "scaling and a loader that keeps up; not a measured ImageNet run"}
    print(json.dumps({"device": result["device"], "measured": m}, indent=1))
    for e in result["imagenet_estimate"]:
        print(f"ImageNet ESTIMATE on {e['gpus']} x {result['gpu'] or 'this CPU'}: {e['total_h']:.1f} h "
              f"(blocks {e['train_blocks_h']:.1f} h + teacher {e['teacher_on_the_fly_h']:.1f} h + rating "
              f"{e['rate_h']:.1f} h + retrain {e['retrain_h']:.1f} h); a feature cache would take "
              f"{e['feature_cache_tb_if_used']:.2f} TB")
    if args.ranks:
        result["distributed"] = distributed(args.ranks)
        report_distributed(result["distributed"])
    if not args.quick:
        result["peak_rss_two_sizes"] = peak_rss_two_sizes((200, 1600))
        for r in result["peak_rss_two_sizes"]:
            print(f"streamed training on {r['train_images']} images: peak RSS {r['peak_rss_mb']:.0f} MB")
        result["rating_convergence"] = rating_convergence([32, 64, 128, 256])
        for n, taus in result["rating_convergence"]["taus"].items():
            print(f"ratings on {n} of {result['rating_convergence']['rate_split_images']} rate images: "
                  f"Kendall tau vs all per block {', '.join(f'{t:.2f}' for t in taus)}")
    result["wall_s"] = time.perf_counter() - t0
    write_json(args.output, result)
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
