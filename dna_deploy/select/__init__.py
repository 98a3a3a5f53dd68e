"""Choosing the network: rate every candidate of every block (rate.py), then the exact optimum of
the summed ratings under latency, MACs and parameter limits (search.py)."""
