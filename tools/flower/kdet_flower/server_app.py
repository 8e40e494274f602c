"""ServerApp: FedAvg over the clients kdet samples each round, with kdet's initial weights and
centralized evaluation by `kdet fed eval`.

`KdetFedAvg` is Flower's FedAvg with two changes, so that the global weights equal those of
`kdet train` on the same config: the average leaves out nodes kdet did not sample (they answer
with num-examples 0), and it is computed as kdet computes it — in float32, the clients in
kdet's sampling order, `sum_k w_k * n_k`, then times `1/N` (candle's `t / N` is an affine
map by the reciprocal). Flower's own `aggregate_arrayrecords` sums `w_k * (n_k / N)` in reply
order, which differs in the last bits. The setting `fedntd` or `fedx` of the clients' method
lives in the kdet config (`method`); the server is the same for all."""

import json
import os

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .kdet import kdet, sample, scratch, settings, to_arrays, to_file

app = ServerApp()


class KdetFedAvg(FedAvg):
    """FedAvg over kdet's sampled clients, summed in kdet's order and arithmetic."""

    def __init__(self, binary, config, **kw):
        super().__init__(**kw)
        self.binary, self.config = binary, config

    def aggregate_train(self, server_round, replies):
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        by_client = {}
        for m in valid:
            metrics = next(iter(m.content.metric_records.values()))
            if int(metrics["num-examples"]) > 0:
                by_client[int(metrics["client"])] = m.content
        order = sample(self.binary, self.config, server_round - 1)
        missing = [c for c in order if c not in by_client]
        if missing:
            raise RuntimeError(f"round {server_round}: no reply from sampled clients {missing}")
        total, acc = 0, {}
        for c in order:
            content = by_client[c]
            n = int(next(iter(content.metric_records.values()))["num-examples"])
            arrays = next(iter(content.array_records.values()))
            for k, a in arrays.items():
                scaled = a.numpy().astype(np.float32) * np.float32(n)
                acc[k] = scaled if k not in acc else acc[k] + scaled
            total += n
        inv = np.float32(1.0 / total)
        avg = ArrayRecord({k: Array(np.ascontiguousarray(v * inv)) for k, v in sorted(acc.items())})
        metrics = self.train_metrics_aggr_fn([by_client[c] for c in order], self.weighted_by_key)
        return avg, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    binary, config = settings(context.run_config)
    rounds = int(context.run_config.get("num-server-rounds") or os.environ.get("KDET_FED_ROUNDS", "2"))
    d = scratch()
    init = os.path.join(d, "init.safetensors")
    kdet(binary, "fed", "init", config, "--out", init)
    nodes = int(context.run_config.get("num-clients") or os.environ.get("KDET_FED_CLIENTS", "0"))

    def evaluate(server_round, arrays):
        path = os.path.join(d, f"global-{server_round}.safetensors")
        to_file(arrays, path)
        e = kdet(binary, "fed", "eval", config, "--weights", path)
        print(f"round {server_round}: global model: {json.dumps(e)}", flush=True)
        return MetricRecord({k: float(v) for k, v in e.items()})

    strategy = KdetFedAvg(
        binary,
        config,
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=max(nodes, 1),
        min_available_nodes=max(nodes, 1),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=to_arrays(init),
        num_rounds=rounds,
        train_config=ConfigRecord(),
        evaluate_fn=evaluate,
    )
    out = os.environ.get("KDET_FED_OUT") or os.path.join(d, "final.safetensors")
    to_file(result.arrays, out)
    print(f"final global state: {out}", flush=True)
