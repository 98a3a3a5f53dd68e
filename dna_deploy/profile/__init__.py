"""Latency lookup tables: measure op models on a runtime, predict networks, check the prediction."""
