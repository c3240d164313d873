"""`generate` of one image end to end: lwm vs the Hugging Face stack, same weights, same prompt ids, one process.

    python bench/generate.py                     # '200m' + vision, full-size VQGAN: 257 tokens, CFG 5.0, top-k 8192
    python bench/generate.py --temperature 0     # greedy: both sides must give the same codes (compared)
    python bench/generate.py --smoke             # 'debug' + vision, tiny VQGAN (17 tokens): checks the script runs

Both sides start from the same ids (`plan_generation`: LWM's image prompt and its unconditional prompt
`<s><vision>`, our tokenizer), then:
- lwm: `generate_vision` on a `Sampler` as `lwm generate` runs it (one chunked prefill of the
  [cond; uncond] rows into a bucketed cache, one jitted step per token, guidance on the vision head,
  codes only, the end of frame forced) and `VQGANTokenizer.decode` of the frame;
- hf: transformers' `LlamaModel` of `LlamaForCausalLM` (`attn_implementation="sdpa"`, fp32, the same
  language-model weights through our HF writer) over the 2 rows [cond, uncond], left-padded with an
  attention mask and LWM's positions (cumsum(mask) - 1), with a `DynamicCache`, one forward per token;
  LWM's vision head (our `vision_head` kernel) on the last hidden state, the chosen code fed back to
  both rows through our `vte` embedding (`inputs_embeds`), guidance uncond + cfg x (cond - uncond), codes
  only, temperature then top-k (skipped when greedy, as transformers' greedy search does) and a
  torch sample; then diffusers' `VQModel` decode (aMUSEd's layout, our VQGAN weights through our
  diffusers writer) of the same codes.
Time to first token = prefill + the first code chosen; decode tokens/s over the other positions (the
forced end of frame included). Rounds alternate the two sides (so a busy spell hits both); figures are
the best round after a warm-up round (compilation), then each ratio's min / median / max over the
rounds. With --temperature 0 both sides are greedy and the
script says whether they chose the same codes. Run it on a quiet machine: the load average is printed
before and after, and torch's OpenMP threads lose far more than XLA's when cores are shared
(docs/attention.md).

The issue's goal: >= 1.5x the Hugging Face stack on time to first token, >= 1.0x on decode tokens/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from ask import load_hf_stack, print_round_ratios  # bench/ask.py: the same weights in diffusers + transformers


class HFGenerator:
    """transformers LlamaModel (sdpa) + LWM's vision embedding and head in torch, diffusers VQModel."""

    def __init__(self, params: dict, config, vqgan_model, vq_config, tmp: str, threads: int):
        self.torch, self.vq, lm, self.vte = load_hf_stack(params, config, vqgan_model, vq_config, tmp, threads)
        self.vq_dim = vq_config.quantized_embed_dim
        self.llama = lm.model  # the text lm_head is not needed: vision codes come from the vision head
        self.head = self.torch.from_numpy(np.array(params["vision_head/kernel"], np.float32))  # [d, V]

    def _choose(self, hidden, step: int, *, cfg, top_k, temperature, num_codes, period, eof, generator):
        """hidden [rows, d] (the last position) -> the next code, as lwm's CodeSampling + forced eof."""
        torch = self.torch
        logits = hidden @ self.head  # [rows, V]
        if cfg is not None:
            logits = logits[1:] + cfg * (logits[:1] - logits[1:])  # uncond + cfg * (cond - uncond)
        logits = logits[0]
        logits[num_codes:] = -float("inf")
        if temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                logits[logits < torch.topk(logits, top_k).values[-1]] = -float("inf")
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        return eof if (step + 1) % period == 0 else token

    def generate(self, cond: list[int], uncond: list[int], steps: int, **choose):
        """(codes, time to first token, decode seconds): one forward per token over [cond, uncond]
        (cond alone when cfg is None)."""
        torch = self.torch
        from transformers import DynamicCache

        rows = [cond, uncond] if choose["cfg"] is not None else [cond]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding, as lwm's sampler
            ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
        generator = torch.Generator().manual_seed(choose.pop("seed"))
        with torch.inference_mode():
            start = time.perf_counter()
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # LWM's positions: real tokens only
            cache = DynamicCache()
            out = self.llama(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True)
            token = self._choose(out.last_hidden_state[:, -1], 0, generator=generator, **choose)
            first = time.perf_counter() - start
            tokens = [token]
            start = time.perf_counter()
            for step in range(1, steps):
                mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long)], 1)
                positions = positions[:, -1:] + 1
                embeds = self.vte[token].expand(len(rows), 1, -1)  # the code, as a vision token, to every row
                out = self.llama(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                 cache=cache, use_cache=True)
                token = self._choose(out.last_hidden_state[:, -1], step, generator=generator, **choose)
                tokens.append(token)
            return tokens, first, time.perf_counter() - start

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes [N, h, w] -> frames [N, H, W, 3] in [-1, 1], as diffusers decodes indices."""
        torch = self.torch
        with torch.inference_mode():
            idx = torch.from_numpy(codes.reshape(-1).astype(np.int64))
            out = self.vq.decode(idx, force_not_quantize=True, shape=(*codes.shape, self.vq_dim)).sample
            return out.clamp_(-1, 1).numpy().transpose(0, 2, 3, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="'debug' model, tiny VQGAN (17 tokens): does it run")
    p.add_argument("--preset", default="200m")
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale (LWM's image default 5.0)")
    p.add_argument("--top-k", type=int, default=8192, help="top-k (LWM's image default 8192)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy on both sides (codes compared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up round")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    preset, vq_preset = args.preset, "full"
    if args.smoke:
        preset, vq_preset, args.repeats = "debug", "tiny", 1
    load_before = os.getloadavg()

    from lwm_core import ModelConfig, load_model
    from lwm_core.loading import generation_options
    from lwm_core.infer import Sampler
    from lwm_core.infer.generate import GenerationSettings, generate_vision, plan_generation
    from lwm_core.text import load_tokenizer
    from lwm_core.vqgan import VQGANConfig, VQGANTokenizer
    from lwm_core.vqgan.model import init_vqgan

    vq_config = VQGANConfig.from_name(vq_preset)
    config = ModelConfig.from_name(preset, vision=True)
    model = load_model(f"random:{preset}", config, **generation_options())  # as the command loads it
    tokenizer = load_tokenizer(os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tokenizer",
                                            "tokenizer.model"))
    vq_model = init_vqgan(vq_config, 0)
    vq = VQGANTokenizer(vq_model, identity="bench", source="bench")
    settings = GenerationSettings(cfg=args.cfg, top_k=args.top_k, temperature=args.temperature, seed=args.seed)
    t = time.perf_counter()
    plan = plan_generation(model.config, tokenizer, "fireworks over a city at night", vq.config, settings)
    prompt_s = time.perf_counter() - t
    sampler = Sampler(model)
    steps, spec = plan.frame_length, plan.spec
    choose = dict(cfg=args.cfg if args.cfg != 1.0 else None, top_k=args.top_k, temperature=args.temperature,
                  num_codes=spec.num_codes, period=steps, eof=spec.eof_id, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hf = HFGenerator(model.params_dict(), config, vq_model, vq_config, tmp, args.threads)
    best: dict[str, float] = {}
    ratios: dict[str, list[float]] = {"time to first token": [], "decode": [], "VQGAN decode": []}  # hf / lwm
    stamps: list[float] = []  # when each generated position was chosen (generate_vision's on_progress)
    for round_ in range(args.repeats + 1):  # round 0 compiles / warms up
        stamps.clear()
        start = time.perf_counter()
        result = generate_vision(plan, sampler, on_progress=lambda *_: stamps.append(time.perf_counter()))
        ours_codes = result.codes[0]  # [1, h, w]
        t = time.perf_counter()
        ours_frame = vq.decode(ours_codes)
        ours_vq = time.perf_counter() - t
        hf_tokens, hf_first, hf_decode = hf.generate(list(plan.image_prompt_ids), list(plan.uncond_prompt_ids),
                                                     steps, **choose)
        t = time.perf_counter()
        hf_frame = hf.decode(ours_codes)  # the same codes, so the frames can be compared too
        hf_vq = time.perf_counter() - t
        timings = {"ours first": stamps[0] - start, "ours decode": (stamps[-1] - stamps[0]) / (steps - 1),
                   "ours vqgan": ours_vq, "hf first": hf_first, "hf decode": hf_decode / (steps - 1),
                   "hf vqgan": hf_vq}
        if round_:
            best = {k: min(v, best.get(k, float("inf"))) for k, v in timings.items()}
            for name, kind in (("time to first token", "first"), ("decode", "decode"), ("VQGAN decode", "vqgan")):
                ratios[name].append(timings[f"hf {kind}"] / timings[f"ours {kind}"])
    load_after = os.getloadavg()

    b = best
    print(f"generate one image, '{preset}' + vision (random weights), VQGAN '{vq_preset}', {len(plan.image_prompt_ids)}"
          f"-token prompt vs {len(plan.uncond_prompt_ids)}-token unconditional, {steps} tokens, cfg {args.cfg}, "
          f"top-k {args.top_k}, temperature {args.temperature}, {args.threads} threads; best of {args.repeats} "
          "rounds after a warm-up")
    print(f"  load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores): "
          f"{'quiet' if max(load_before[0], load_after[0]) < 0.5 * os.cpu_count() else 'BUSY, rerun when quiet'}")
    print(f"  prompt ids (shared): {prompt_s * 1e3:.1f} ms")
    print(f"  time to first token (prefill): lwm {b['ours first']:.3f} s   transformers {b['hf first']:.3f} s   "
          f"({b['hf first'] / b['ours first']:.2f}x; goal >= 1.5x)")
    print(f"  decode:        lwm {1 / b['ours decode']:.1f} tok/s   transformers {1 / b['hf decode']:.1f} tok/s   "
          f"({b['hf decode'] / b['ours decode']:.2f}x; goal >= 1.0x)")
    print(f"  VQGAN decode:  lwm {b['ours vqgan']:.3f} s   diffusers {b['hf vqgan']:.3f} s   "
          f"({b['hf vqgan'] / b['ours vqgan']:.2f}x); same codes, frames max |diff| "
          f"{np.abs(ours_frame - hf_frame).max():.1e}")
    print_round_ratios(ratios)
    ours_ids = result.vision_ids[0].tolist()
    if args.temperature == 0:
        same = sum(a == b_ for a, b_ in zip(ours_ids, hf_tokens, strict=True))
        print(f"  greedy codes {'equal' if ours_ids == hf_tokens else 'DIFFER'} ({same}/{steps} positions; fp32 "
              "sums in another order can flip a near-tie on random weights)")
    else:
        print("  sampled codes are not compared (two random generators); --temperature 0 compares greedy codes")


if __name__ == "__main__":
    main()
