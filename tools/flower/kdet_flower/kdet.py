"""Calls into the kdet binary and conversions between Flower's ArrayRecord and kdet's state files
(safetensors of the global state by name)."""

import json
import os
import subprocess
import tempfile
from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord
from safetensors.numpy import load_file, save_file


def settings(run_config):
    """The kdet binary and config: the app's run config (pyproject.toml, `flwr run --run-config`)
    or the environment (KDET_BIN, KDET_FED_CONFIG), which run_simulation.py sets."""
    binary = run_config.get("kdet-binary") or os.environ.get("KDET_BIN", "kdet")
    config = run_config.get("kdet-config") or os.environ["KDET_FED_CONFIG"]
    return binary, config


def kdet(binary, *args):
    """Run `kdet ARGS`; its JSON line (if any) parsed. A failure raises with kdet's message."""
    p = subprocess.run([binary, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"kdet {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    return None


def to_arrays(path):
    """A kdet state file as an ArrayRecord (names kept, sorted as kdet sorts them)."""
    tensors = load_file(path)
    return ArrayRecord(OrderedDict((k, Array(tensors[k])) for k in sorted(tensors)))


def to_file(arrays, path):
    """An ArrayRecord as a kdet state file."""
    save_file({k: np.ascontiguousarray(a.numpy()) for k, a in arrays.items()}, path)


def sample(binary, config, round0):
    """The clients kdet samples in round `round0` (0-based)."""
    return kdet(binary, "fed", "sample", config, "--round", str(round0))["clients"]


def scratch():
    """A fresh folder for state files (kdet writes only where no file is)."""
    return tempfile.mkdtemp(prefix="kdet-flower-")
