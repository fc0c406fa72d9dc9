"""Training across edge devices: E-Tree (arXiv 2008.01553) against FedAvg, gossip learning, local-only
and centralised training, under non-IID data (issue 42)."""
