"""Training verbs (torch). ``train``: fine-tune a BERT for text classification; ``pretrain``: a
BERT from scratch with masked-language modelling and next-sentence prediction."""

from edgebert.training.finetune import TrainConfig, train
from edgebert.training.pretrain import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "TrainConfig", "pretrain", "train"]
