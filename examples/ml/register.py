#!/usr/bin/env python3
"""Step 4: register the chosen model -- runs only if it is good enough.

The pipeline's `when:` reads evaluate's metrics (declared `result: true`) and skips this
step when the chosen model's accuracy is below `params.min_accuracy`; Drover never starts
it then, so this script does not check the threshold itself.

Reads  $DROVER_INPUTS/best_model   (the winning model.json)
       $DROVER_INPUTS/metrics      (evaluate's metrics.json)
Writes $DROVER_OUTPUTS/registered.json  (what a model registry would record: the model's
       sha256, its hyperparameters and accuracy, and the run that produced it)
"""

import sys

sys.dont_write_bytecode = True  # don't leave __pycache__ next to the scripts

import hashlib
import json
import os

from common import fail, input_path, log, write_json


def main():
    model_path = input_path("best_model")
    with open(model_path, "rb") as f:
        model_bytes = f.read()
    try:
        with open(input_path("metrics"), encoding="utf-8") as f:
            chosen = json.load(f)["chosen"]
    except (OSError, ValueError, KeyError) as e:
        fail(f"cannot read metrics: {e}")
    entry = {
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "lr": chosen["lr"],
        "epochs": chosen["epochs"],
        "accuracy": chosen["accuracy"],
        "run": os.environ.get("DROVER_RUN_ID", "local"),
    }
    write_json("registered.json", entry)
    log(f"registered model sha256:{entry['model_sha256'][:16]} lr={entry['lr']:g} accuracy={entry['accuracy']:.3f}")


if __name__ == "__main__":
    main()
