"""Record what the code of this checkout reports for each stripped checkpoint: its test metrics and the
class probabilities on a few fixed sentences. Usage: python record.py DIR"""
import json
import sys
from pathlib import Path

import dyntok

TEXTS = ["a gripping, beautifully acted film.", "dull and far too long.",
         "the plot goes nowhere, but the actors seem to enjoy themselves in every single scene.", "fine."]
d = Path(sys.argv[1])
rec = {}
for p in sorted(d.glob("*.ckpt")):
    pred = dyntok.load(p)
    rec[p.stem] = {"test": pred.evaluate("test"), "texts": TEXTS,
                   "probabilities": pred.predict(TEXTS).probabilities.tolist()}
(d / "recorded_45cc2ce.json").write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
print(json.dumps({k: v["probabilities"] for k, v in rec.items()}))
