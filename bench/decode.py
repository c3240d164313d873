"""Short-context prefill and cached decode: lwm vs transformers' LlamaForCausalLM, same weights.

    python bench/decode.py                      # '200m' preset, fp32, 2K prefill, 32 decode steps
    python bench/decode.py --preset debug --prefill 512 --decode 16

The old figures of this file (2K prefill, decode after a 16-token prompt, scanned and unscanned
layers) now come from bench/prefill.py, which runs every case in its own process (peak RSS per case)
and alternates ours and transformers' round by round; this script only picks its arguments:

    python bench/prefill.py --lengths 2K --skip-ring --scan-layers true,false \
        --decode-context 16 --decode-steps 32 --decode-scan-layers true,false

Ours: `lwm_core.infer.Sampler` (chunked prefill into the KV cache, one jitted step per token), with
stacked layers run by lax.scan (the default) and with one weight per layer (`scan_layers=False`);
transformers: one forward with `use_cache=True, logits_to_keep=1`, then one forward per token with
its DynamicCache, as `generate` does. See bench/prefill.py for the long-context cases.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="200m")
    parser.add_argument("--prefill", default="2K", help="prompt tokens of the prefill (K = 1024)")
    parser.add_argument("--decode", type=int, default=32, help="decode steps")
    parser.add_argument("--context", default="16", help="tokens in the cache before decoding")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--chunk-size", default="512")
    args = parser.parse_args()
    cmd = [sys.executable, str(Path(__file__).with_name("prefill.py")), "--preset", args.preset,
           "--lengths", args.prefill, "--skip-ring", "--scan-layers", "true,false", "--chunk-size", args.chunk_size,
           "--decode-context", args.context, "--decode-steps", str(args.decode), "--decode-scan-layers", "true,false",
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    print(" ".join(cmd[1:]), flush=True)
    sys.exit(subprocess.call(cmd))


if __name__ == "__main__":
    main()
