"""Sample quality of a CPU-cheap VIGFace DiT on the toy faces (plain PyTorch, no Ray).

Trains a DiT config for a wall-clock / step budget with ``generation.trainer_step.dit_train_step``
(the Ray job's step), samples fixed probe rows (``generation.dit_probe``) and reports their identity
fidelity by the INDEPENDENT evaluator (``--evaluator``, the ``train_evaluator`` export:
``evaluation.independent_evaluator``; real rows vs its class means of the real images, virtual rows by
consistency / separability), per guidance; the stage-1 model's score (the model the DiT is conditioned
on, not independent) is printed beside it, labelled as such.

    python bench/dit_toy_quality.py train --name h128d4 --hidden 128 --depth 4 --heads 4 --lr 1e-3 --seconds 180
    python bench/dit_toy_quality.py load --dit runs/tiny/dit/tiny --name current   # an exported DiT
    python bench/dit_toy_quality.py ceiling      # FR cosine of the REAL toy images to their prototypes
    python bench/dit_toy_quality.py oracle       # sampler with the exact v of a training image

PNGs go to bench/results/dit_toy_quality/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.embed import load_evaluator  # noqa: E402
from evaluation.generation_fidelity import embed_uint8, format_fidelity, prototype_fidelity  # noqa: E402
from evaluation.independent_evaluator import FidelityProbe, format_independent  # noqa: E402
from evaluation.plots import image_grid  # noqa: E402
from fr.backbones import load_backbone  # noqa: E402
from fr.prototypes import load_prototypes  # noqa: E402
from fr.training import NonFiniteGuard  # noqa: E402
from generation.conditions import condition_maps, condition_prototypes, sample_seeded, unit_to_images  # noqa: E402
from generation.diffusion import add_noise, x0_from_v  # noqa: E402
from generation.dit import DiT, build_dit, load_dit, save_dit  # noqa: E402
from generation.dit_probe import probe_rows, sample_rows  # noqa: E402
from generation.ema import EMA  # noqa: E402
from generation.trainer_step import DiTShardDataset, dit_train_step, frozen, step_generator  # noqa: E402

DATA = Path("runs/tiny/data/toy/train")
FR = Path("runs/tiny/fr/tiny")
EVALUATOR = Path("runs/tiny/fr/tiny-evaluator/backbone")  # the train_evaluator export (independent of the DiT)
OUT = Path("bench/results/dit_toy_quality")


def load_data(size: int = 112, data: Path = DATA) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All toy training images [N, 3, S, S] in [-1, 1] at ``size`` px, labels [N], landmarks [N, 5, 2]."""
    ds = DiTShardDataset(data, model_image_size=size)
    items = [ds[i] for i in range(len(ds))]
    return (torch.stack([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items]),
            torch.stack([lm for _, _, lm in items]))


@torch.no_grad()
def x0_errors(model: DiT, images: torch.Tensor, labels: torch.Tensor, landmarks: torch.Tensor, cond: torch.Tensor,
              ts=(50, 250, 500, 750, 950)) -> dict[int, float]:
    """MSE of the conditioned x0 prediction on 64 training images at a few t (vs 'predict 0' = E[x0^2])."""
    model.eval()
    x0, y, lm = images[:64], labels[:64], landmarks[:64]
    maps = condition_maps(lm, model.config.image_size, model.config.landmark_channels)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(x0.shape, generator=g)
    out = {}
    for t in ts:
        tt = torch.full((len(x0),), t, dtype=torch.long)
        xt = add_noise(x0, noise, tt)
        v = model(xt, tt, cond[y], maps)
        out[t] = float((x0_from_v(xt, v, tt) - x0).pow(2).mean())
    return out


def make_probe(args, protos) -> FidelityProbe:
    """The independent evaluator with its class means of the REAL training images (112 px shards)."""
    real = load_data(112, Path(args.data))
    return FidelityProbe(load_evaluator(args.evaluator, None, True), unit_to_images(real[0]), real[1].numpy(),
                         protos.num_real)


def report(name: str, model: DiT, data, cond, protos, backbone, args, probe: FidelityProbe) -> None:
    images, labels, landmarks = data
    errs = x0_errors(model, images, labels, landmarks, cond)
    print(f"[{name}] x0 MSE by t (E[x0^2]={float(images[:64].pow(2).mean()):.3f}): "
          + " ".join(f"t{t}={e:.3f}" for t, e in errs.items()), flush=True)
    rows = probe_rows(protos.num_real, protos.num_virtual, args.eval_ids, args.eval_images)
    OUT.mkdir(parents=True, exist_ok=True)
    for g in args.guidance:
        t0 = time.perf_counter()
        faces = sample_rows(model, cond, rows, landmarks, args.sample_steps, g)
        secs = time.perf_counter() - t0
        title = f"[{name}] guidance {g}, {args.sample_steps} DDIM steps, {len(rows)} samples in {secs:.0f}s"
        print(format_independent(probe.measure(faces, rows), f"{title}; INDEPENDENT evaluator {args.evaluator} "
                                 f"(real rows vs its class means of the real images, chance 1/{protos.num_real})"))
        emb = embed_uint8(backbone, faces, 128)
        print(format_fidelity(prototype_fidelity(emb, rows, cond, protos.num_real),
                              "  beside it, the stage-1 model the DiT is conditioned on (NOT independent), vs the "
                              "prototypes"), flush=True)
        pick = np.concatenate([np.arange(0, 4 * args.eval_images * 2, 2), len(rows) // 2 + np.arange(0, 16, 2)])
        pick = pick[pick < len(rows)]
        png = OUT / f"{name}_g{g:g}.png"
        image_grid(list(faces[pick]), 8, png, labels=[("r" if r < protos.num_real else "v") + str(r) for r in rows[pick]])
        print(f"[{name}] grid -> {png}", flush=True)


def train(args, data, cond, backbone, at_steps=(), on_checkpoint=None) -> tuple[DiT, DiT]:
    """Train for ``args.seconds`` / ``args.max_steps``; at every step in ``at_steps`` call
    ``on_checkpoint(step, train_wall_s, train_cpu_s, raw, ema_module)`` (its own time is not counted), and once
    more at the last step when the time budget ends the run between two of them."""
    images, labels, landmarks = data
    torch.manual_seed(args.seed)
    kw = dict(image_size=args.image_size, cond_dim=cond.shape[1], cond_drop_prob=0.1, landmark_channels=args.lm_channels)
    for k in ("hidden_size", "depth", "num_heads", "patch_size"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    model = build_dit("tiny", **kw)
    ema = EMA(model, max(args.ema, 0.0), warmup=getattr(args, "ema_warmup", False))  # decay 0 = the raw weights
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) if args.warmup else 1.0)
    guard = NonFiniteGuard(5)
    id_fn = frozen(backbone) if args.id_weight > 0 else None
    print(f"[{args.name}] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params {model.config}", flush=True)
    rng = np.random.default_rng(args.seed)
    perm, pos, step, t0, mses = rng.permutation(len(images)), 0, 0, time.perf_counter(), []
    cpu0, paused, paused_cpu, at_steps = time.process_time(), 0.0, 0.0, set(at_steps)
    while step < args.max_steps and time.perf_counter() - t0 - paused < args.seconds:
        if pos + args.batch > len(perm):
            perm, pos = rng.permutation(len(images)), 0
        idx = torch.as_tensor(perm[pos:pos + args.batch])
        pos += args.batch
        model.train()
        out = dit_train_step(model, ema, opt, images[idx], cond[labels[idx]], landmarks[idx],
                             step_generator(args.seed, step, 0), guard, step, id_fn, args.id_weight, 0.1)
        sched.step()
        mses.append(out["mse"])
        step += 1
        if step % 50 == 0:
            print(f"[{args.name}] step {step} {time.perf_counter() - t0 - paused:.0f}s mse(last50)="
                  f"{np.mean(mses[-50:]):.4f} id={out['id']:.3f}", flush=True)
        if on_checkpoint is not None and step in at_steps:
            w, c = time.perf_counter(), time.process_time()
            on_checkpoint(step, w - t0 - paused, c - cpu0 - paused_cpu, model, ema.module)
            paused, paused_cpu = paused + time.perf_counter() - w, paused_cpu + time.process_time() - c
    secs = time.perf_counter() - t0 - paused
    if on_checkpoint is not None and step and step not in at_steps:  # the budget ran out between checkpoints
        on_checkpoint(step, secs, time.process_time() - cpu0 - paused_cpu, model, ema.module)
    print(f"[{args.name}] trained {step} steps (batch {args.batch}) in {secs:.0f}s = {step * args.batch / secs:.0f} img/s; "
          f"mse first50={np.mean(mses[:50]):.4f} last50={np.mean(mses[-50:]):.4f}; load {open('/proc/loadavg').read().split()[:3]}",
          flush=True)
    return model, ema.module


@torch.no_grad()
def oracle(data) -> None:
    """Sampler check: a 'model' that returns the exact v towards a fixed image must reproduce that image."""
    images = data[0][:4]

    class Oracle(torch.nn.Module):
        config = build_dit("tiny", image_size=112).config

        def forward(self, x, t, proto, lm, drop=None):
            from generation.diffusion import signal_noise_coeffs
            target = torch.cat([images, images])[:x.shape[0]]
            a, s = signal_noise_coeffs(t, x)
            return (a * x - target) / s  # v = a eps - s x0 with eps = (x - a x0) / s

    x = sample_seeded(Oracle(), torch.zeros(4, 512), None, [1, 2, 3, 4], steps=25, guidance=4.0)
    err = float((x - images).abs().max())
    print(f"oracle sampler max |x - x0| = {err:.2e} (unit range); round trip uint8 equal: "
          f"{np.array_equal(unit_to_images(x), unit_to_images(images))}")
    OUT.mkdir(parents=True, exist_ok=True)
    image_grid(list(unit_to_images(x)), 4, OUT / "oracle.png")


def ceiling(data, cond, protos, backbone) -> None:
    images, labels, _ = data
    faces = unit_to_images(images)
    emb = embed_uint8(backbone, faces, 256)
    print(format_fidelity(prototype_fidelity(emb, labels.numpy(), cond, protos.num_real),
                          f"[ceiling] real toy train images ({len(faces)}) vs their own real prototype"))


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Data, models and the DiT recipe (shared with bench/dit_learning_curve.py)."""
    p.add_argument("--data", default=str(DATA), help="the real toy training shards")
    p.add_argument("--fr", default=str(FR), help="stage-1 export (backbone + prototypes) to condition on")
    p.add_argument("--evaluator", default=str(EVALUATOR), help="the independent evaluator (train_evaluator export)")
    p.add_argument("--image_size", type=int, default=112, help="DiT resolution (toy faces are area-downscaled)")
    p.add_argument("--hidden_size", "--hidden", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--num_heads", "--heads", type=int)
    p.add_argument("--patch_size", "--patch", type=int)
    p.add_argument("--lm_channels", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--max_steps", type=int, default=10 ** 9)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--ema_warmup", action="store_true", help="EMA decay min(ema, (1+n)/(10+n)) (generation.ema)")
    p.add_argument("--id_weight", type=float, default=0.1)
    p.add_argument("--guidance", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 2.0, 4.0])
    p.add_argument("--sample_steps", type=int, default=25)
    p.add_argument("--eval_ids", type=int, default=20, help="identities per kind")
    p.add_argument("--eval_images", type=int, default=3, help="images per identity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)


def setup(args) -> tuple:
    """(training data at the DiT's size, condition rows, prototypes, frozen stage-1 backbone)."""
    torch.set_num_threads(args.threads)
    data = load_data(args.image_size, Path(args.data))
    protos = load_prototypes(Path(args.fr) / "prototypes")
    return data, condition_prototypes(protos.weight), protos, frozen(load_backbone(Path(args.fr) / "backbone"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["train", "load", "ceiling", "oracle"])
    p.add_argument("--name", default="run")
    p.add_argument("--dit", default="runs/tiny/dit/tiny")
    add_common_args(p)
    p.add_argument("--raw", action="store_true", help="also evaluate the raw (non-EMA) weights")
    p.add_argument("--save", default="/tmp/dit_toy_quality", help="where trained DiTs are saved (save_dit)")
    args = p.parse_args()
    if args.mode == "oracle":
        torch.set_num_threads(args.threads)
        return oracle(load_data(112, Path(args.data)))
    if args.mode == "load":
        args.image_size = load_dit(args.dit).config.image_size
    data, cond, protos, backbone = setup(args)
    if args.mode == "ceiling":
        return ceiling(data, cond, protos, backbone)
    probe = make_probe(args, protos)
    if args.mode == "load":
        return report(args.name, load_dit(args.dit).eval(), data, cond, protos, backbone, args, probe)
    raw, ema = train(args, data, cond, backbone)
    save_dit(ema, Path(args.save) / f"{args.name}_ema")
    save_dit(raw, Path(args.save) / f"{args.name}_raw")
    report(args.name + ("_ema" if args.ema > 0 else ""), ema, data, cond, protos, backbone, args, probe)
    if args.raw and args.ema > 0:
        report(args.name + "_raw", raw, data, cond, protos, backbone, args, probe)


if __name__ == "__main__":
    main()
