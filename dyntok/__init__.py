"""dyntok: token dropping inside BERT-family encoders.

Two methods share one token-dropping encoder (:mod:`dyntok.core.encoder`):
trainable gate variables with a bi-modal regularizer (Jeong & Kwak 2021, arXiv 2102.09727) and the
Length-Adaptive Transformer (Kim & Cho 2021, arXiv 2010.07003).
"""

__version__ = "0.1.0"


def load(path, device="cpu", trust_checkpoint=False, *, trusted=None):
    """Load a trained checkpoint for inference: ``dyntok.load(path).predict(texts)`` (see :mod:`dyntok.methods.predictor`).
    ``trust_checkpoint=True`` also loads a file holding more than tensors and plain data (it could run code);
    ``trusted`` is its former name."""
    from dyntok.methods.predictor import load as _load

    if trusted is not None:
        import warnings

        warnings.warn("dyntok.load(trusted=...) is now trust_checkpoint=...", DeprecationWarning, stacklevel=2)
        trust_checkpoint = trusted
    return _load(path, device, trust_checkpoint)
