#!/usr/bin/env python3
"""Finally: a one-line summary of the run, written whatever happened.

Runs as a `finally:` task: after every other task has ended, also when one failed or the
run was cancelled. DROVER_RUN_STATE says how they ended (succeeded, failed or cancelled);
an input whose producer did not succeed is simply absent.

Reads  $DROVER_INPUTS/metrics     (evaluate's metrics.json, if evaluate succeeded)
       $DROVER_INPUTS/registered  (register's registered.json, if it ran)
Writes $DROVER_OUTPUTS/summary.json
"""

import sys

sys.dont_write_bytecode = True  # don't leave __pycache__ next to the scripts

import json
import os

from common import inputs_dir, log, write_json


def optional_json(name):
    path = os.path.join(inputs_dir(), name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    state = os.environ.get("DROVER_RUN_STATE", "unknown")
    metrics = optional_json("metrics")
    registered = optional_json("registered")
    summary = {
        "run": os.environ.get("DROVER_RUN_ID", "local"),
        "state": state,
        "chosen": metrics["chosen"] if metrics else None,
        "registered": registered,
    }
    write_json("summary.json", summary)
    if metrics is None:
        log(f"run {state}: no model was evaluated")
    else:
        c = metrics["chosen"]
        verdict = "registered" if registered else "not registered"
        log(f"run {state}: chose lr={c['lr']:g} accuracy={c['accuracy']:.3f}, {verdict}")


if __name__ == "__main__":
    main()
