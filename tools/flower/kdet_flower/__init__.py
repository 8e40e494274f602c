"""kdet's federated runs on Flower: a ServerApp (FedAvg, kdet's client sampling and sum) and a
ClientApp that trains with `kdet fed client`."""
