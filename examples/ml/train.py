#!/usr/bin/env python3
"""Step 2: train a multinomial logistic regression (softmax) classifier with plain SGD.

Reads  $DROVER_INPUTS/dataset    (the CSV from prepare.py; only its "train" rows)
Writes $DROVER_OUTPUTS/model.json (weights, hyperparameters, training loss)

Pure Python: one weight vector of 64 pixels + bias per class, zero-initialised,
samples visited in a seeded shuffled order each epoch, so a run is deterministic.
The learning rate is the knob the pipeline sweeps: too small and 30 epochs are not
enough to converge, too large and SGD keeps overshooting.
"""

import sys

sys.dont_write_bytecode = True  # don't leave __pycache__ next to the scripts

import argparse
import math
import operator
import random
import time

from common import N_PIXELS, evaluate, fail, input_path, load_dataset, log, write_json


def sgd_epoch(weights, data, lr, rng):
    """One pass over `data` in a shuffled order; returns (mean loss, accuracy) seen while training."""
    order = list(range(len(data)))
    rng.shuffle(order)
    mul, exp = operator.mul, math.exp
    n_classes = len(weights)
    loss = 0.0
    correct = 0
    for i in order:
        (idx, vals), y = data[i]
        z = [sum(map(mul, map(w.__getitem__, idx), vals)) for w in weights]
        m = max(z)
        e = [exp(v - m) for v in z]
        s = sum(e)
        loss -= math.log(max(e[y] / s, 1e-12))
        if z.index(m) == y:
            correct += 1
        # gradient of the cross-entropy w.r.t. class k's weights: (p_k - [k == y]) * x
        # (only the non-zero pixels of x, so only their weights, change)
        for k in range(n_classes):
            g = lr * (e[k] / s - (k == y))
            w = weights[k]
            for j, v in zip(idx, vals):
                w[j] -= g * v
    n = max(len(data), 1)
    return loss / n, correct / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, required=True, help="SGD learning rate")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not (args.lr > 0 and math.isfinite(args.lr)) or args.epochs < 1:
        fail("--lr must be a positive number and --epochs at least 1")

    classes, splits = load_dataset(input_path("dataset"))
    train = splits["train"]
    if not train:
        fail("the dataset has no train rows")
    log(f"train: {len(train)} rows, {len(classes)} classes, lr={args.lr:g}, epochs={args.epochs}, seed={args.seed}")

    start = time.process_time()
    rng = random.Random(args.seed)
    weights = [[0.0] * (N_PIXELS + 1) for _ in classes]
    history = []
    for epoch in range(1, args.epochs + 1):
        loss, acc = sgd_epoch(weights, train, args.lr, rng)
        history.append(round(loss, 6))
        log(f"epoch {epoch:3d}/{args.epochs}  loss={loss:.4f}  acc={acc:.3f}")

    # The loss above is averaged while the weights still moved; report the final model's too.
    train_loss, train_acc = evaluate(weights, train)
    log(f"final: train_loss={train_loss:.4f} train_accuracy={train_acc:.3f} ({time.process_time() - start:.2f}s CPU)")

    path = write_json(
        "model.json",
        {
            "model": "softmax_regression",
            "classes": classes,
            "n_features": N_PIXELS,
            "bias": "last weight of each class",
            "hyperparameters": {"lr": args.lr, "epochs": args.epochs, "seed": args.seed},
            "train_rows": len(train),
            "train_loss": round(train_loss, 6),
            "train_accuracy": round(train_acc, 6),
            "loss_history": history,
            "weights": [[round(v, 6) for v in w] for w in weights],
        },
    )
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
