#!/usr/bin/env python3
"""Step 1: build a small 8x8 "digits" dataset and write $DROVER_OUTPUTS/dataset.csv.

Every image is a hand-drawn 5x7 prototype glyph of a digit, randomly shifted inside
an 8x8 canvas, sometimes drawn with a thicker stroke, with strokes that fade or
break, stray "ink" pixels and intensity noise; pixel values are integers 0..16.
The classes overlap (3/8/9, 1/7, 5/6 ...), so a linear model does well but not
perfectly. A fixed seed makes the file byte-identical on every run.

CSV columns: label, split ("train" or "test": a fixed split, by default half and
half, balanced per digit), p00 .. p77 (row-major pixels).
"""

import sys

sys.dont_write_bytecode = True  # don't leave __pycache__ next to the scripts

import argparse
import os
import random

from common import N_PIXELS, PIXEL_MAX, SIDE, log, outputs_dir

GLYPHS = {
    "0": [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    "1": ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    "2": [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    "3": ["####.", "....#", "....#", ".###.", "....#", "....#", "####."],
    "4": ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    "5": ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    "6": ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."],
    "7": ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    "8": [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    "9": [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."],
}


def render(glyph, rng):
    """One noisy 8x8 sample of `glyph`, as N_PIXELS ints in 0..PIXEL_MAX."""
    ink = [[0.0] * SIDE for _ in range(SIDE)]
    dx = rng.randint(0, 2)  # shifted: the 5x7 glyph lands at one of 3 x 2 positions
    dy = rng.randint(0, SIDE - 7)
    thick = rng.random() < 0.3  # a bolder pen: also ink the pixel to the right
    for r, line in enumerate(glyph):
        for c, ch in enumerate(line):
            if ch != "#" or rng.random() < 0.12:  # broken strokes
                continue
            level = rng.uniform(0.55, 1.0)  # uneven pressure
            ink[r + dy][c + dx] = max(ink[r + dy][c + dx], level)
            if thick and c + dx + 1 < SIDE:
                ink[r + dy][c + dx + 1] = max(ink[r + dy][c + dx + 1], 0.8 * level)
    pixels = []
    for r in range(SIDE):
        for c in range(SIDE):
            v = ink[r][c]
            if v == 0.0:
                if rng.random() < 0.05:  # stray ink on the blank background
                    v = rng.uniform(0.2, 0.8)
            else:
                v += rng.gauss(0.0, 0.1)  # noisy ink
            pixels.append(min(PIXEL_MAX, max(0, round(v * PIXEL_MAX))))
    return pixels


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000, help="number of images (default 2000)")
    ap.add_argument("--classes", default="0123456789", help="digits to include (default all ten)")
    ap.add_argument("--test-fraction", type=float, default=0.5, help="share held out for evaluation (default 0.5)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    classes = sorted(set(args.classes))
    if not classes or any(c not in GLYPHS for c in classes):
        ap.error(f"--classes must be digits 0-9, got {args.classes!r}")
    if not 0.0 < args.test_fraction < 1.0:
        ap.error("--test-fraction must be between 0 and 1")

    rng = random.Random(args.seed)
    path = os.path.join(outputs_dir(), "dataset.csv")
    counts = {"train": 0, "test": 0}
    per_class = {c: 0 for c in classes}
    ink_total = 0
    with open(path + ".tmp", "w", encoding="utf-8", newline="") as f:
        header = ["label", "split"] + [f"p{r}{c}" for r in range(SIDE) for c in range(SIDE)]
        f.write(",".join(header) + "\n")
        for i in range(args.rows):
            label = classes[i % len(classes)]  # balanced classes
            pixels = render(GLYPHS[label], rng)
            # a fixed, class-balanced split: spread the held-out images evenly over each digit's samples
            j = i // len(classes)
            held_out = int((j + 1) * args.test_fraction) > int(j * args.test_fraction)
            split = "test" if held_out else "train"
            counts[split] += 1
            per_class[label] += 1
            ink_total += sum(1 for p in pixels if p > PIXEL_MAX // 4)
            f.write(f"{label},{split}," + ",".join(map(str, pixels)) + "\n")
    os.replace(path + ".tmp", path)

    log(
        f"dataset: {args.rows} images of {SIDE}x{SIDE}={N_PIXELS} pixels, {len(classes)} classes "
        f"({''.join(classes)}), train={counts['train']} test={counts['test']}, "
        f"mean ink {ink_total / max(args.rows, 1):.1f} px, seed={args.seed} -> {path}"
    )


if __name__ == "__main__":
    main()
