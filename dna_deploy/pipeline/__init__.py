"""The main job: a pipeline file (config.py) runs declarative stages (stages.py) in order, skipping
those whose settings and inputs are unchanged (runner.py), and writes a report (report.py)."""
