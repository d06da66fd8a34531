"""Plain PyTorch, no Lightning: the token-dropping encoder (significance scores, gather, Drop-and-Restore,
LayerDrop), the task model, rank gates, the one ``LengthConfig`` type and MACs accounting."""
