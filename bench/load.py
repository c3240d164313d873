"""Peak host memory of `load_model` per checkpoint format, as a multiple of the model's size.

    python bench/load.py                     # '200m' preset, fp32, formats lwm/hf/orbax, 1 and 8 devices
    python bench/load.py --preset debug

Each load runs in a fresh subprocess (so one case's peak does not hide another's); the figure is the
process's peak RSS minus its RSS after importing JAX, divided by the parameter bytes. The goal is
"near the model's size, not twice it": about 1x, plus the largest single weight in flight. Side by
side, transformers' `LlamaForCausalLM.from_pretrained` on the same Hugging Face folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={sys.argv[3]}"
import jax, numpy as np
def status(field):  # VmHWM is this process's own peak (ru_maxrss can carry the parent's across exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))
rss = lambda: status("VmRSS")
kind, spec, devices, preset = sys.argv[1:5]
if kind == "lwm":
    from lwm_core import load_model, make_mesh
    import lwm_core.checkpoint, lwm_core.sharding  # imports are not the model
    base = rss()
    mesh = make_mesh("1,-1,1,1") if int(devices) > 1 else None
    model = load_model(spec, preset if spec.startswith("params::") else None, mesh=mesh)
    from flax import nnx
    jax.block_until_ready(jax.tree.leaves(nnx.state(model)))
else:
    import torch
    from transformers import LlamaForCausalLM
    torch.set_num_threads(2)
    base = rss()
    model = LlamaForCausalLM.from_pretrained(spec.split("::", 1)[1], dtype=torch.float32)
    with torch.no_grad():  # touch every weight: safetensors maps the file, pages count once read
        sum(float(p.sum()) for p in model.parameters())
peak = status("VmHWM")
print(json.dumps({"base": base, "peak": peak, "end": rss()}))
"""


def run(kind: str, spec: str, devices: int, preset: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, spec, str(devices), preset], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{kind} {spec}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="200m")
    parser.add_argument("--formats", default="lwm,hf,orbax")
    parser.add_argument("--devices", default="1,8")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from lwm_core import load_model, save_params

    model = load_model(f"random:{args.preset}")
    params = model.params_dict()
    size = sum(v.nbytes for v in params.values())
    largest = max(v.nbytes for v in params.values())
    del model
    with tempfile.TemporaryDirectory() as tmp:
        specs = {"lwm": f"params::{tmp}/w.msgpack", "hf": f"hf::{tmp}/hf", "orbax": f"orbax::{tmp}/ob"}
        for fmt in args.formats.split(","):
            save_params(params, specs[fmt], config=load_model(f"random:{args.preset}").config if fmt != "lwm"
                        else None)
        del params
        print(f"preset {args.preset}: parameters {size / 2**30:.2f} GiB fp32, largest weight "
              f"{largest / 2**20:.0f} MiB; peak RSS above the process's baseline (VmHWM), as a multiple of the model")
        print(f"{'loader':<34}{'devices':>8}{'peak GiB':>10}{'x model':>9}{'kept GiB':>10}")
        rows = [("lwm " + fmt, "lwm", specs[fmt], int(d)) for fmt in args.formats.split(",")
                for d in args.devices.split(",")]
        if "hf" in args.formats.split(","):
            rows.append(("transformers from_pretrained (hf)", "hf", specs["hf"], 1))
        for name, kind, spec, devices in rows:
            r = run(kind, spec, devices, args.preset)
            extra = r["peak"] - r["base"]
            print(f"{name:<34}{devices:>8}{extra / 2**30:>10.2f}{extra / size:>9.2f}"
                  f"{(r['end'] - r['base']) / 2**30:>10.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
