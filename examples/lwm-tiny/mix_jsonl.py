"""Shuffle several jsonl files of training records into one, for `lwm train` (which reads its files in
order): token-file paths ("vision": "tokens/x.npz", relative to their own jsonl) are rewritten relative
to the output file, and `FILE.jsonl:FIELDS` gives every record of FILE the field string FIELDS (e.g.
`captions.jsonl:vision` makes unconditional vision records, what classifier-free guidance contrasts with).

    python examples/lwm-tiny/mix_jsonl.py data/chat_mix.jsonl data/videos/chat.jsonl data/images/captions.jsonl:vision
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", nargs="+", help="FILE.jsonl or FILE.jsonl:FIELDS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out_dir = args.out.resolve().parent
    lines = []
    for spec in args.inputs:
        path, _, fields = spec.partition(":")
        src_dir = Path(path).resolve().parent
        for raw in Path(path).read_text().splitlines():
            if not raw.strip():
                continue
            record = json.loads(raw)
            vision = record.get("vision")
            if isinstance(vision, str):
                record["vision"] = os.path.relpath(src_dir / vision, out_dir)
            if fields:
                record["fields"] = fields
            lines.append(json.dumps(record))
    random.Random(args.seed).shuffle(lines)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(args.out)
    print(f"{args.out}: {len(lines)} records from {len(args.inputs)} files")


if __name__ == "__main__":
    main()
