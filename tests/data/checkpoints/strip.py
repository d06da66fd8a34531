"""Shrink a dyntok checkpoint for the test suite: weights in float16, the tokenizer from its package
(tokenizer_files dropped), no loop or optimizer state. Usage: python strip.py IN OUT"""
import sys

import torch

c = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
keep = {k: c[k] for k in ("epoch", "global_step", "pytorch-lightning_version", "dyntok") if k in c}
keep["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in c["state_dict"].items()}
keep["dyntok"] = dict(keep["dyntok"], tokenizer_files=None)
torch.save(keep, sys.argv[2])
