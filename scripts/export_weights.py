"""Copy the inference part of a training checkpoint into DeepLungRegLib/data/weights (what the extension ships).

Network methods (`deeplungreg train`) and embed's feature CNN (`deeplungreg train-features`) alike:

    python scripts/export_weights.py train-runs/mlvirnet/checkpoint.pt DeepLungRegLib/data/weights/mlvirnet.pt \
        --command "python -m DeepLungRegLib.cli train --method mlvirnet ..."
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from DeepLungRegLib.errors import DeepLungRegError  # noqa: E402
from DeepLungRegLib.training.features import export_feature_net  # noqa: E402
from DeepLungRegLib.io.weights import load_torch_file  # noqa: E402
from DeepLungRegLib.training.train import export_weights  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("dest")
    p.add_argument("--command", default="", help="the training command, stored with the weights")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()
    try:
        ck = load_torch_file(a.checkpoint, "cpu", owner="export_weights") if Path(a.checkpoint).is_file() else {}
        export = export_feature_net if isinstance(ck, dict) and ck.get("kind") == "feature_net" else export_weights
        out = export(a.checkpoint, a.dest, a.command, overwrite=a.overwrite)
    except DeepLungRegError as exc:
        print(f"export_weights: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
