"""A progress bar that shows steps, it/s and the loss, without Lightning's epoch/version noise."""

from __future__ import annotations

from pytorch_lightning.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """``train: 1234/10000 [01:02<07:40, 19.1it/s, loss=0.51, iou=0.812, ...]``; the run is one
    endless epoch."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.set_description("train")

    def get_metrics(self, trainer, pl_module) -> dict:
        """The loss, and the evaluators' last figures where trainer.eval_every measures them."""
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        for callback in trainer.callbacks:
            metrics.update({name: f"{value:.3f}" for name, value in getattr(callback, "latest", {}).items()})
        return metrics
