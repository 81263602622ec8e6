"""Training verbs (torch). ``train``: fine-tune a BERT for text classification; ``pretrain``: a
BERT from scratch with masked-language modelling and next-sentence prediction; ``distill``: a
smaller student from a fine-tuned teacher."""

from edgebert.training.distill import DistillConfig, distill
from edgebert.training.finetune import TrainConfig, train
from edgebert.training.pretrain import PretrainConfig, pretrain

__all__ = ["DistillConfig", "PretrainConfig", "TrainConfig", "distill", "pretrain", "train"]
