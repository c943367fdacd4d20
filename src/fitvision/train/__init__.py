"""fitvision.train: the training loop and what surrounds it.

learner.py (Learner: the step and the loop), hooks.py (progress, early stopping, checkpoints,
transfer phases), checkpoint.py (atomic, exact resume), lr_find.py, precision.py, ema.py,
run.py (`fitvision train` / `lr-find`: config to run directory), modelfile.py, inference.py,
transfer.py. Nothing is imported here, so `import fitvision` stays cheap.
"""
