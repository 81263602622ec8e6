"""Training verbs (torch). ``train``: fine-tune a BERT for text classification."""

from edgebert.training.finetune import TrainConfig, train

__all__ = ["TrainConfig", "train"]
