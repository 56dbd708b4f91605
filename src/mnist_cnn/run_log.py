"""What the writing process (rank 0) keeps beside each checkpoint: the model card, always, and
TensorBoard logs when asked; after the last epoch, the test set's per-class figures."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .datasets import DatasetInfo
from .model import CustomCNN
from .model_card import record_evaluation, write_model_card

if TYPE_CHECKING:
    from .tensorboard_log import TensorBoardLog


class RunLog:
    """Opens nothing until rank 0 logs its first epoch, so other ranks can hold one too.
    (TrainConfig.validate has checked that tensorboard is installed when asked for.)"""

    def __init__(self, run_dir: Path, *, tensorboard: bool, first_epoch: int):
        self.run_dir, self.tensorboard, self.first_epoch = run_dir, tensorboard, first_epoch
        self.board: TensorBoardLog | None = None
        self.last_epoch = 0  # the last epoch logged by this process

    def epoch(self, record: dict, model: CustomCNN, lr: float) -> None:
        """After an epoch's checkpoint: its scalars and filters, and the card rewritten."""
        if self.tensorboard and self.board is None:
            from .tensorboard_log import TensorBoardLog

            self.board = TensorBoardLog(self.run_dir, self.first_epoch)
        if self.board is not None:
            self.board.epoch(record, model, lr)
        self.last_epoch = record["epoch"]
        write_model_card(self.run_dir)

    def finish(
        self,
        model: CustomCNN,
        test: tuple[torch.Tensor, torch.Tensor],
        info: DatasetInfo,
        batch_size: int,
    ) -> None:
        """After the last epoch trained here: the test set's confusion matrix and per-class
        accuracy into evaluation.json, TensorBoard and the card."""
        if not self.last_epoch:
            return  # nothing was trained: what is there is up to date
        from .evaluation import evaluate

        result = evaluate(
            model,
            *test,
            mean=info.mean,
            std=info.std,
            num_classes=info.num_classes,
            batch_size=batch_size,
        )
        record_evaluation(self.run_dir, f"{info.name}/test", result.to_dict(), self.last_epoch)
        if self.board is not None:
            self.board.confusion(result.confusion, list(info.classes), self.last_epoch)
            self.board.close()
        write_model_card(self.run_dir)
