"""ModelCheckpoint that keeps the best val loss across a resume into a new run folder, and whose
last.ckpt is the run's real last step.

Every launch gets its own Hydra folder, so a resumed run (ckpt_path=..., resume=auto) saves into
a different dirpath than the run it continues. Lightning's ModelCheckpoint then forgets the best
score and would call the next (maybe worse) validation "best". This one restores the ranking and
never deletes checkpoints outside its own folder: the earlier run's files stay where they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class ResumableModelCheckpoint(ModelCheckpoint):
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)
            return
        self.best_model_score = state_dict["best_model_score"]
        self.best_model_path = state_dict["best_model_path"]
        self.best_k_models = state_dict.get("best_k_models", {})
        self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
        self.kth_value = state_dict.get("kth_value", self.kth_value)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if self.dirpath is not None and Path(filepath).resolve().is_relative_to(Path(self.dirpath).resolve()):
            super()._remove_checkpoint(trainer, filepath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning writes last.ckpt only with a validation, so when max_steps is not a multiple of
        eval_interval it would hold an earlier step: write the final state, so that a finished run
        continues (a larger max_steps) or samples from where it really stopped. Nothing under
        fast_dev_run, which promises no checkpoints (Lightning 2.6's own on_train_end writes one, which
        resume=auto would then take up)."""
        if trainer.fast_dev_run:
            return
        if self.save_last and not trainer.interrupted and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)
