"""The edge runtime: load a bundle and predict. Needs onnxruntime, tokenizers and numpy only."""

from edgebert.runtime.backends import BACKENDS, BackendError, computed_in, open_session, require_backend
from edgebert.runtime.predictor import Prediction, Predictor, load_tokenizer, softmax

__all__ = [
    "BACKENDS",
    "BackendError",
    "Prediction",
    "Predictor",
    "computed_in",
    "load_tokenizer",
    "open_session",
    "require_backend",
    "softmax",
]
