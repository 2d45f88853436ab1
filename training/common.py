"""Paths, the training log and the base model, shared by every training module."""
from __future__ import annotations

import json
import time
from pathlib import Path



ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "training" / "data"
LOG = ROOT / "training" / "train_log.jsonl"
GEN_LEN = 64


def log(entry: dict):
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(entry), flush=True)


def load_base():
    from engine import models
    lm = models.load(models.EMBEDDED, device="cpu")
    return lm
