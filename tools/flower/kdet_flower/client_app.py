"""ClientApp: client `partition-id` trains the round's global weights with `kdet fed client`
(the simulation's own client step: its images from kdet's partition, its seeds, the round's
learning rate) and sends its state back with its image count as `num-examples`.

Every node receives every round's message (the ServerApp uses fraction_train 1.0); a node whose
partition kdet did not sample this round answers with the weights unchanged and num-examples 0,
and the ServerApp leaves it out of the average. So the clients that train are kdet's."""

import os
import shutil

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .kdet import kdet, sample, scratch, settings, to_arrays, to_file

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    binary, config = settings(context.run_config)
    client = int(context.node_config["partition-id"])
    round0 = int(msg.content["config"]["server-round"]) - 1
    arrays = msg.content["arrays"]
    if client not in sample(binary, config, round0):
        metrics = MetricRecord({"num-examples": 0, "client": client, "sampled": 0})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    d = scratch()
    try:
        global_path = os.path.join(d, "global.safetensors")
        out = os.path.join(d, "local.safetensors")
        to_file(arrays, global_path)
        r = kdet(binary, "fed", "client", config, "--round", str(round0),
                 "--client", str(client), "--weights", global_path, "--out", out)
        local = to_arrays(out)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    # Every reply carries the same metric keys (Flower aggregates only consistent records);
    # the client's mean losses go to its log.
    print(f"round {round0 + 1}, client {client}: {r}", flush=True)
    metrics = MetricRecord({"num-examples": r["examples"], "client": client, "sampled": 1})
    return Message(RecordDict({"arrays": local, "metrics": metrics}), reply_to=msg)
