"""fitvision.train: the training loop and what surrounds it, one job a module.

learner.py (Learner: the step and the loop), hooks.py (progress, early stopping, checkpoints,
transfer phases), checkpoint.py (snapshots, exact resume), evaluate.py (evaluation and
prediction, also from a run directory), setup.py (pre-flight checks; data, model and Learner
from a config), imagedata.py (ImageData), rundir.py (the run directory), run.py (`fitvision
train` / `lr-find`), device.py, seeding.py, lr_find.py, ema.py, modelfile.py, transfer.py.
Nothing is imported here, so `import fitvision` stays cheap.
"""
