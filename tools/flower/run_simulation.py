#!/usr/bin/env python3
"""Run kdet's federated config on Flower's simulation engine on this machine and compare the
final global weights with `kdet train`'s on the same config.

    tools/flower/run_simulation.py CONFIG [--rounds R] [--kdet target/release/kdet]

CONFIG is a kdet config with a `federated` section (`federated.clients` supernodes are started,
one per client). The script trains the same config with `kdet train` into a temporary folder,
runs Flower's ServerApp + ClientApps for the same rounds, and prints the largest absolute
difference between the two final global models (0 when they agree bit for bit)."""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kdet", default="target/release/kdet")
    args = ap.parse_args()
    binary = os.path.abspath(args.kdet)
    work = tempfile.mkdtemp(prefix="kdet-flower-run-")
    # The config for this comparison: the user's, R rounds, written into the work folder.
    cfg = {"base": os.path.abspath(args.config), "federated": {"rounds": args.rounds},
           "output_dir": os.path.join(work, "kdet_run")}
    config = os.path.join(work, "config.json")
    json.dump(cfg, open(config, "w"))
    sampled = json.loads(subprocess.run([binary, "fed", "sample", config, "--round", "0"],
                                         capture_output=True, text=True, check=True)
                         .stdout.splitlines()[-1])["clients"]
    print(f"kdet train {config}", flush=True)
    subprocess.run([binary, "train", config], check=True)
    merged = json.load(open(os.path.join(work, "kdet_run", "config.json")))
    m = merged["federated"]["clients"]
    os.environ.update({"KDET_BIN": binary, "KDET_FED_CONFIG": config,
                       "KDET_FED_ROUNDS": str(args.rounds), "KDET_FED_CLIENTS": str(m),
                       "KDET_FED_OUT": os.path.join(work, "flower_final.safetensors")})
    from flwr.simulation import run_simulation

    from kdet_flower.client_app import app as client_app
    from kdet_flower.server_app import app as server_app

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=m,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    a = load_file(os.path.join(work, "kdet_run", "model.safetensors"))
    b = load_file(os.path.join(work, "flower_final.safetensors"))
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)
    same = all(np.array_equal(a[k], b[k]) for k in a)
    print(f"{len(a)} tensors of the global model; clients per round: {len(sampled)}; "
          f"largest |kdet train − Flower| = {worst:.3g}; bit-identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
