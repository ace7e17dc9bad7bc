"""Helpers shared by prepare.py, train.py and evaluate.py.

Python 3.11 standard library only. Everything here is deterministic.

Drover hands a task two directories through the environment:

* ``DROVER_INPUTS``  -- one entry per declared input, named after the input
  (``inputs: [{name: dataset, ...}]`` -> ``$DROVER_INPUTS/dataset``);
* ``DROVER_OUTPUTS`` -- where the task writes its declared outputs
  (``outputs: [{name: model, path: model.json}]`` -> ``$DROVER_OUTPUTS/model.json``).

When a script is run by hand without them, both default to the current directory.
"""

import json
import math
import operator
import os
import sys

# Pixel values in the CSV are integers 0..16 (like scikit-learn's 8x8 digits);
# models see them scaled to 0..1.
PIXEL_MAX = 16
SIDE = 8
N_PIXELS = SIDE * SIDE


def log(msg):
    """Print one line and flush it, so `drover logs -f` shows it at once."""
    print(msg, flush=True)


def fail(msg):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def inputs_dir():
    return os.environ.get("DROVER_INPUTS") or "."


def outputs_dir():
    out = os.environ.get("DROVER_OUTPUTS") or "."
    os.makedirs(out, exist_ok=True)
    return out


def input_path(name):
    """Path of the declared input `name`.

    The engine materialises a file output as a file named after the input. Be lenient
    and also accept a directory holding exactly one file.
    """
    path = os.path.join(inputs_dir(), name)
    if os.path.isdir(path):
        entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
        if len(entries) != 1:
            fail(f"input {name!r} is a directory with {len(entries)} entries, expected one file: {path}")
        path = os.path.join(path, entries[0])
    if not os.path.isfile(path):
        fail(
            f"input {name!r} not found at {path}: set DROVER_INPUTS to a directory holding a file "
            f"named {name!r} (run_local.sh shows how)"
        )
    return path


def write_json(name, obj):
    """Write $DROVER_OUTPUTS/name atomically (a retried attempt never sees half a file)."""
    path = os.path.join(outputs_dir(), name)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_dataset(path):
    """Read the CSV written by prepare.py.

    Returns (classes, {"train": [(x, y)], "test": [(x, y)]}) where y is the class
    index into `classes` (sorted labels) and x is the image as a *sparse* vector
    (indices, values): pixels scaled to 0..1, zeros left out, plus a constant 1.0
    bias feature at index N_PIXELS. Most of an image is blank background, so
    skipping zeros makes pure-Python training about twice as fast.
    """
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["label", "split"] or len(header) != 2 + N_PIXELS:
            fail(f"{path}: unexpected header {header[:4] if header else header}...")
        rows = list(reader)
    classes = sorted({r[0] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits = {"train": [], "test": []}
    scale = 1.0 / PIXEL_MAX
    for r in rows:
        idx = [j for j, v in enumerate(r[2:]) if v != "0"]
        idx.append(N_PIXELS)
        vals = [int(r[2 + j]) * scale for j in idx[:-1]]
        vals.append(1.0)
        splits[r[1]].append(((idx, vals), index[r[0]]))
    return classes, splits


def dot(w, x):
    """w . x for a dense weight list w and a sparse vector x = (indices, values)."""
    return sum(map(operator.mul, map(w.__getitem__, x[0]), x[1]))


def softmax_scores(weights, x):
    """Class probabilities of a multinomial logistic regression (numerically stable)."""
    z = [dot(w, x) for w in weights]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def evaluate(weights, data):
    """Mean cross-entropy loss and accuracy of `weights` on [(x, y)]."""
    loss = 0.0
    correct = 0
    for x, y in data:
        p = softmax_scores(weights, x)
        loss -= math.log(max(p[y], 1e-12))
        if max(range(len(p)), key=p.__getitem__) == y:
            correct += 1
    n = max(len(data), 1)
    return loss / n, correct / n
