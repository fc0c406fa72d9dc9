"""Training across edge devices: E-Tree (arXiv 2008.01553) against FedAvg, gossip learning, local-only
and centralised training, under non-IID data (issue 42).

* :mod:`onerec.edge.devices` -- users partitioned over devices (non-IID Dirichlet split or IID), positions
  in a plane, latencies;
* :mod:`onerec.edge.grouping` -- KMA, distance-only and random grouping;
* :mod:`onerec.edge.tree` -- the tree, sample-weighted aggregation, FedAvg and gossip exchanges, the cost
  model (bytes, simulated time), faults;
* :mod:`onerec.edge.simulate` -- the single-process simulation of many devices (SASRec or the generator on
  each);
* :mod:`onerec.edge.distributed` -- one device a process under torch.distributed (gloo), a subgroup per
  tree node and gossip pull (``torchrun -m onerec edge RUN``);
* :mod:`onerec.edge.stage` -- ``onerec edge RUN``.
"""
