"""How hard are the toy identities? Raw-pixel cosine vs a small CNN on held-out verification pairs.

    python bench/toy_difficulty.py [--pairs 3000] [--train-ids 200] [--per-id 20] [--epochs 4]

Prints the render rate, the best-threshold verification accuracy of raw-pixel cosine (aligned
RGB, per-image mean removed) and of a small CNN (trained on train-split identities at 56x56,
CosFace-style normalised softmax, Adam) whose embeddings are compared by cosine. The toy set is
useful when raw pixels stay poor (well under 75 %) and the CNN is clearly better.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from evaluation.verification import best_threshold, pair_similarities, raw_pixel_embed_fn, images_to_tensor  # noqa: E402
from fr.data.images import decode_image  # noqa: E402
from fr.data.toyfaces import ToyFaceConfig, iter_toy_records, make_verification_pairs  # noqa: E402


def to_tensor(images: list[np.ndarray], side: int) -> torch.Tensor:
    small = np.stack([cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in images])
    return (torch.from_numpy(small).permute(0, 3, 1, 2).float() - 127.5) / 128.0


class SmallNet(nn.Module):
    """Five 3x3 conv layers (BN, ReLU; four of stride 2) and a linear 128-d embedding."""

    def __init__(self, dim: int = 128):
        super().__init__()
        layers = []
        for cin, cout, stride in [(3, 32, 2), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 192, 2)]:
            layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.LazyLinear(dim), nn.BatchNorm1d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(x))


def train_cnn(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int, seed: int) -> SmallNet:
    torch.manual_seed(seed)
    net = SmallNet()
    net(x[:2])  # materialise the lazy layer
    weight = nn.Parameter(torch.randn(classes, 128) * 0.01)
    opt = torch.optim.Adam([*net.parameters(), weight], lr=2e-3, weight_decay=5e-4)
    steps = epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(len(x) // 64):
            idx = perm[i * 64 : (i + 1) * 64]
            xb = x[idx]
            flip = torch.rand(len(xb)) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            cos = F.linear(F.normalize(net(xb)), F.normalize(weight))
            logits = 30.0 * (cos - 0.25 * F.one_hot(y[idx], classes))  # CosFace margin
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / max(1, len(x) // 64):.3f}", flush=True)
    return net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--verify-ids", type=int, default=500)
    ap.add_argument("--train-ids", type=int, default=200)
    ap.add_argument("--per-id", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--side", type=int, default=56, help="CNN input side (aligned 112 images are downsampled)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    cfg = ToyFaceConfig(num_identities=args.train_ids, seed=args.seed, min_images=args.per_id, max_images=args.per_id)
    records = list(iter_toy_records(cfg, range(args.train_ids)))
    rate = len(records) / (time.perf_counter() - t0)
    print(f"rendered {len(records)} training images at {rate:.0f} img/s (render + align + JPEG, one process)")
    blobs, issame = make_verification_pairs(cfg, args.verify_ids, args.pairs, seed=args.seed + 1)
    pair_images = [decode_image(b) for b in blobs]

    # best threshold over all pairs (optimistic; fine for a difficulty check)
    _, raw_acc = best_threshold(pair_similarities(raw_pixel_embed_fn(images_to_tensor(pair_images))), issame)
    print(f"raw-pixel cosine verification accuracy ({args.pairs} pairs): {100 * raw_acc:.2f}%")

    t1 = time.perf_counter()
    x = to_tensor([decode_image(r["image"]) for r in records], args.side)
    y = torch.tensor([r["label"] for r in records])
    net = train_cnn(x, y, args.train_ids, args.epochs, args.seed)
    with torch.no_grad():
        xp = to_tensor(pair_images, args.side)
        emb = torch.cat([net(xp[i : i + 512]) + net(xp[i : i + 512].flip(3)) for i in range(0, len(xp), 512)])
    _, cnn_acc = best_threshold(pair_similarities(emb), issame)
    print(f"small-CNN cosine verification accuracy ({args.pairs} pairs): {100 * cnn_acc:.2f}% "
          f"(trained {time.perf_counter() - t1:.0f}s on {args.train_ids} ids x {args.per_id} images)")


if __name__ == "__main__":
    main()
