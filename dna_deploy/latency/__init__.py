"""Latency lookup tables: device specs (devices.py), measuring op models on a runtime
(profiler.py), the table and its prediction (table.py), and checking the prediction against whole
networks measured end to end (validate.py)."""
