"""The Python API in fastai's shape: data, a learner, fit, look, predict, export; or one call.

    import fitvision as fv
    data = fv.ImageData("cifar10", train_limit=2000)        # or fv.ImageData.from_folder("photos", size=128)
    learn = fv.Learner(data, "resnet9")                     # device and precision picked for the hardware
    learn.lr_find(); learn.fit_one_cycle(5)
    learn.show_batch(); learn.plot_confusion()              # matplotlib figures (a notebook shows them)
    learn.predict("cat.jpg")                                # a path, a PIL image or an array
    learn.export("runs/mine")                               # a run directory the CLI accepts
    run = fv.load("runs/mine"); run.predict(["a.jpg", "b.jpg"]); run.evaluate()
    run = fv.fit(recipe="cpu", data="cifar10", epochs=5)    # what `fitvision train` does

Everything here is built from the same pieces as `fitvision train`: one config path
(fitvision.recipes.resolve_config), the same setup, loop, evaluation and run directory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitvision.data.loader import fit_steps
from fitvision.errors import FitVisionError
from fitvision.optim.schedules import create_schedule
from fitvision.train import learner as loop
from fitvision.train.evaluate import Run, load_run
from fitvision.train.imagedata import ImageData

__all__ = ["ImageData", "Learner", "fit", "load"]


class Learner(loop.Learner):
    """A fitvision.train.Learner built from ImageData and a model name, as `fitvision train` builds one.

    ``model``: a registry name (`fitvision models`) or timm:NAME / torchvision:NAME. ``settings``:
    any non-data TrainConfig field (lr, opt, wd, epochs, ema, tta, ...), over the recipe the data
    was made with. The optimizer follows the config's policy (fitvision.optim.configure_optimizer).
    """

    def __init__(self, data: ImageData, model: str = "resnet9", *, progress: bool = True, **settings: Any):
        from fitvision.optim import configure_optimizer
        from fitvision.train.setup import build_model, preflight, stem_bias_hook

        if not isinstance(data, ImageData):
            raise FitVisionError(f"Learner(data, model) takes ImageData, got {type(data).__name__}; "
                                 "for your own loaders use fitvision.train.learner.Learner(model, train_dl, valid_dl)")
        if not isinstance(model, str):
            raise FitVisionError("Learner(data, model) takes a model name (see `fitvision models`); for your own "
                                 "nn.Module use fitvision.train.learner.Learner(module, data.train_dl, data.valid_dl)")
        from fitvision.train.device import resolve_device, share_cpu

        cfg = preflight(data.config_for(model=model, **settings))
        # beside a busy process, fewer threads, as `fitvision train` does (10x faster there: 2
        # spinning threads on 2 cores shared with one busy process took 23 s where 1 took 2.2 s)
        shared = share_cpu() if resolve_device(cfg.device).type == "cpu" else None
        module, self.meta, self.params, notes = build_model(cfg, data)
        options = {name: getattr(cfg, name) for name in loop.LOOP_OPTIONS}
        super().__init__(module, data.train_dl, data.valid_dl, opt_func=lambda m: configure_optimizer(m, cfg),
                         progress=progress, **options)
        self.cfg, self.data = cfg, data
        self.notes = data.notes + notes + stem_bias_hook(cfg, self) + ([shared] if shared else [])

    def __repr__(self) -> str:
        return f"Learner({self.cfg.model}, {self.params:,} parameters, {self.data.summary()})"

    def fit_recipe(self, epochs: float | None = None) -> list[dict[str, float]]:
        """Train as the config says: its schedule (cfg.sched, lr, pct_start, ...) over ``epochs``
        (default cfg.epochs), as `fitvision train` does."""
        cfg = dataclasses.replace(self.cfg, epochs=epochs or self.cfg.epochs)
        total = fit_steps(self.train_dl, cfg.epochs)
        return self.fit(cfg.epochs, create_schedule(cfg, total_steps=total))

    def show_batch(self, n: int = 16, augment: bool = True, path: str | Path | None = None):
        """Training images as the model sees them; see ImageData.show_batch."""
        return self.data.show_batch(n=n, augment=augment, path=path)

    def plot_confusion(self, path: str | Path | None = None, tta: bool | None = None):
        """The confusion matrix on the validation set: a matplotlib Figure, or the file written."""
        from fitvision.report.plots import confusion_matrix, plot_confusion

        probs, targets = self.get_preds(tta=tta)
        cm = confusion_matrix(targets.numpy(), probs.argmax(1).numpy(), len(self.data.classes))
        return plot_confusion(cm, self.data.classes, path)

    def as_run(self) -> Run:
        """This learner's current weights as a Run: what `fitvision predict/eval` would load from its export."""
        config = dataclasses.replace(self.cfg, precision=self.precision).to_dict()
        return Run(path=Path(self.cfg.out or "."), model=self.eval_module(), meta=self.meta, config=config,
                   device=self.device)

    def predict(self, images, topk: int = 3, tta: bool | None = None):
        """One image (a path, a PIL image, a uint8 array (H, W, 3)) -> {"class", "prob", "top"};
        a list of them -> a list; a uint8 batch (N, H, W, 3) or (N, 3, H, W) -> class
        probabilities (N, C), as fitvision.train.learner.Learner.predict."""
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
            return super().predict(images, tta=tta)
        was_training = self.model.training
        self.model.eval()
        try:
            return self.as_run().predict(images, topk)
        finally:
            self.model.train(was_training)

    def export(self, path: str | Path) -> Path:
        """A run directory (weights, model.json, config.json, history, predictions, summary.json,
        plots and report.html) that `fitvision predict`, `eval`, `export` and `report` accept."""
        from fitvision.report.html import write_report
        from fitvision.train import rundir

        run_dir = Path(path)
        if (run_dir / "model.json").exists():
            raise FitVisionError(f"{run_dir} already holds a run; export to another folder")
        if not self.state.history:
            raise FitVisionError("nothing to export yet: fit the learner first (e.g. learn.fit_one_cycle(1))")
        run_dir.mkdir(parents=True, exist_ok=True)
        epochs = rundir.epochs_done(self.state)
        cfg = dataclasses.replace(self.cfg, out=str(run_dir), epochs=epochs)
        cfg.save(run_dir / "config.json")
        rundir.write_results(run_dir, cfg, self, self.data, self.meta, self.params)
        write_report(run_dir)
        return run_dir


def load(path: str | Path, device: str | None = None) -> Run:
    """A run directory (from `fitvision train`, ``fit`` or ``Learner.export``), ready to predict and evaluate."""
    return load_run(path, device=device)


def fit(recipe: str | None = None, data: str | None = None, config: str | Path | None = None,
          progress: bool = True, **settings: Any) -> Run:
    """What `fitvision train` does, from Python: the recipe (None: "auto"), a config file, then
    ``settings`` (any TrainConfig field, e.g. epochs=5, out="runs/x"); returns the finished run.
    (Not ``fitvision.train``: that name is the training subpackage.)"""
    from fitvision.logs import logger
    from fitvision.recipes import resolve_config
    from fitvision.train.run import train_run

    cfg, why = resolve_config(recipe, config, data=data, **settings)
    logger.info(why)  # train_run's setup runs the pre-flight checks before any work
    return load(train_run(cfg, progress=progress, why=why))
