"""Training: teachers (teacher.py), the supervised loop (supervised.py), DNA block-wise distillation
(student.py, blockwise.py) and retraining the searched network (retrain.py). The files they write
and later stages read are defined in checkpoints.py; loop.py holds the resume/checkpoint logic
every epoch loop shares."""
