#!/usr/bin/env python3
"""Step 3: score every trained model on the held-out split and keep the best one.

Reads  $DROVER_INPUTS/models/0, 1, ...  (model.json files from every instance of train.py's sweep)
       $DROVER_INPUTS/models.json        (which instance each file came from: index, matrix, file)
       $DROVER_INPUTS/dataset            (the CSV from prepare.py; its "test" rows)
Writes $DROVER_OUTPUTS/best_model.json  (a byte-for-byte copy of the winning model)
       $DROVER_OUTPUTS/metrics.json     ({"chosen": {...}, "candidates": [...], ...})

The best model has the highest held-out accuracy; ties go to the lower held-out loss.
"""

import sys

sys.dont_write_bytecode = True  # don't leave __pycache__ next to the scripts

import json
import os
import shutil

from common import N_PIXELS, evaluate, fail, input_path, inputs_dir, load_dataset, log, outputs_dir, softmax_scores, write_json


def load_model(name, path, classes):
    try:
        with open(path, encoding="utf-8") as f:
            model = json.load(f)
        weights = model["weights"]
        hp = model["hyperparameters"]
    except (OSError, ValueError, KeyError) as e:
        fail(f"input {name!r} ({path}) is not a model written by train.py: {e}")
    if model.get("classes") != classes or any(len(w) != N_PIXELS + 1 for w in weights):
        fail(f"input {name!r} was trained on other classes or features than this dataset has")
    return path, model, hp


def main():
    listing_path = os.path.join(inputs_dir(), "models.json")
    try:
        with open(listing_path, encoding="utf-8") as f:
            listing = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read the list of models {listing_path!r}: {e}")
    if not listing:
        fail(f"no models listed in {listing_path!r}")
    # Each model is named after its sweep values, e.g. "lr=0.03".
    models = [
        (",".join(f"{k}={v}" for k, v in sorted(entry["matrix"].items())), os.path.join(inputs_dir(), "models", entry["file"]))
        for entry in listing
    ]

    classes, splits = load_dataset(input_path("dataset"))
    test = splits["test"]
    if not test:
        fail("the dataset has no test rows")

    candidates = []
    for name, path in models:
        path, model, hp = load_model(name, path, classes)
        loss, acc = evaluate(model["weights"], test)
        candidates.append(
            {
                "input": name,
                "lr": hp["lr"],
                "epochs": hp["epochs"],
                "train_loss": model.get("train_loss"),
                "test_loss": round(loss, 6),
                "accuracy": round(acc, 6),
                "_path": path,
                "_weights": model["weights"],
            }
        )
    best = min(candidates, key=lambda c: (-c["accuracy"], c["test_loss"], c["input"]))

    # Per-digit accuracy of the winner: shows which glyphs it still confuses.
    hits = [0] * len(classes)
    seen = [0] * len(classes)
    for x, y in test:
        p = softmax_scores(best["_weights"], x)
        seen[y] += 1
        hits[y] += p.index(max(p)) == y
    per_class = {c: round(h / max(n, 1), 6) for c, h, n in zip(classes, hits, seen)}

    out = outputs_dir()
    shutil.copyfile(best["_path"], os.path.join(out, "best_model.json.tmp"))
    os.replace(os.path.join(out, "best_model.json.tmp"), os.path.join(out, "best_model.json"))
    for c in candidates:
        del c["_path"], c["_weights"]
    write_json(
        "metrics.json",
        {
            "chosen": {k: best[k] for k in ("input", "lr", "epochs", "accuracy", "test_loss")},
            "candidates": candidates,
            "test_rows": len(test),
            "classes": classes,
            "chance_accuracy": round(1 / len(classes), 6),
            "chosen_per_class_accuracy": per_class,
        },
    )

    log(f"evaluated {len(candidates)} models on {len(test)} held-out images, {len(classes)} classes (chance {1 / len(classes):.3f})")
    log(f"{'model':<10} {'lr':>8} {'epochs':>6} {'train_loss':>10} {'test_loss':>9} {'accuracy':>8}")
    for c in candidates:
        train_loss = "-" if c["train_loss"] is None else f"{c['train_loss']:.4f}"
        mark = "  <- best" if c is best else ""
        log(f"{c['input']:<10} {c['lr']:>8g} {c['epochs']:>6} {train_loss:>10} {c['test_loss']:>9.4f} {c['accuracy']:>8.3f}{mark}")
    log("per-digit accuracy of the best: " + " ".join(f"{c}:{a:.2f}" for c, a in per_class.items()))
    log(f"chosen: lr={best['lr']:g} accuracy={best['accuracy']:.3f}")


if __name__ == "__main__":
    main()
