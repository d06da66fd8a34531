"""``python -m dyntok.api CKPT --split test [--data-dir DIR]``: the metrics and MACs of a checkpoint on a split;
``--length-config C`` or ``--gates-from GATES_CKPT`` (another run's learned hard gates) override its
configuration. The Python API is :func:`dyntok.load` (:mod:`dyntok.methods.predictor`).
"""

from __future__ import annotations

import argparse

from dyntok.errors import ConfigError, DyntokError, user_message
from dyntok.methods.predictor import load


def main(argv: list[str] | None = None) -> None:
    """``python -m dyntok.api CKPT [--split test] [--data-dir DIR] [--length-config C | --gates-from GATES]``:
    metrics and MACs of a checkpoint."""
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m dyntok.api", description=main.__doc__)
    ap.add_argument("checkpoint", help="a .ckpt file or a run folder")
    ap.add_argument("--split", default="test", help="any split of the task (train, validation, test, ...)")
    ap.add_argument("--data-dir", default=None, help="where the task's files are (default: the run's data_dir)")
    ap.add_argument("--length-config", default=None, help="override, e.g. 0.5 or [1,1,0.4,0.4,0.4,0.4]")
    ap.add_argument("--gates-from", default=None,
                    help="a method=gates checkpoint or run folder: infer with its learned hard gates instead")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="also load checkpoints holding more than tensors and plain data (they could run code)")
    args = ap.parse_args(argv)
    if args.length_config is not None and args.gates_from is not None:
        ap.error("give --length-config or --gates-from, not both")
    try:
        pred = load(args.checkpoint, trust_checkpoint=args.trust_checkpoint)
        lc = None
        if args.length_config is not None:
            lc = json.loads(args.length_config)
        if args.gates_from is not None:
            lc = getattr(load(args.gates_from, trust_checkpoint=args.trust_checkpoint).module, "gates", None)
            if lc is None:
                raise ConfigError(f"--gates-from {args.gates_from}: not a method=gates checkpoint")
        vals = pred.evaluate(args.split, args.data_dir, length_config=lc, max_examples=args.max_examples)
    except DyntokError as e:
        print(f"dyntok: error: {user_message(e, '--trust-checkpoint')}", file=sys.stderr)
        sys.exit(2)
    extra = {"gates_from": args.gates_from} if args.gates_from else {}
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, **extra, **vals}, indent=2))


if __name__ == "__main__":
    main()
