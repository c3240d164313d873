"""`ask` end to end: lwm vs the Hugging Face stack, same weights, same frames, same tokens, one process.

    python bench/ask.py                    # '200m' + vision, full-size VQGAN, 32-frame video (~8.2K tokens)
    python bench/ask.py --smoke            # 'debug' + vision, tiny VQGAN, 4 frames: checks the script runs

Both sides read and sample the video with the same code (`lwm_core.video`: decord or OpenCV, LWM's
linspace, LWM's PIL preprocessing), then:
- lwm: `Asker` (our NNX VQGAN encode, the chat input, `Sampler` chunked prefill + cached decode);
- hf: diffusers' `VQModel` (aMUSEd's layout, our VQGAN's weights through our diffusers writer) encode,
  the SAME input ids (our chat input over the diffusers codes), the embeddings looked up in torch
  (`vte` rows at vision positions, `wte` elsewhere, as LWM does) and passed as `inputs_embeds` to
  transformers' `LlamaForCausalLM` (`attn_implementation="sdpa"`, fp32, the same language-model
  weights through our HF writer) with `use_cache=True, logits_to_keep=1`; then greedy decode with its
  DynamicCache, one forward per token, as `generate` does.
Time to first token = read + VQGAN encode + prefill. Rounds alternate the two sides (so a busy spell
hits both); figures are the best round after a warm-up round (compilation). The script prints
whether both sides got the same codes and the same greedy tokens. Run it on a quiet machine: torch's
OpenMP threads lose far more than XLA's when cores are shared (see docs/attention.md).

The issue's goal: >= 1.5x the Hugging Face stack on time to first token, >= 1.0x on decode tokens/s.
The `generate` half of the issue's bench (one image, 257 tokens with CFG) is bench/generate.py.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def print_round_ratios(named: dict[str, list[float]]) -> None:
    """One line per measure: min / median / max of its per-round ratios hf / lwm."""
    for name, values in named.items():
        values = sorted(values)
        print(f"  per-round ratio hf/lwm, {name}: min {values[0]:.2f}x  median {values[len(values) // 2]:.2f}x  "
              f"max {values[-1]:.2f}x  ({len(values)} rounds)")


def make_video(path: str, frames: int, w: int, h: int, fps: int = 8) -> None:
    import cv2

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for t in range(frames):
        f = np.zeros((h, w, 3), np.uint8)
        f[:] = (30 + 3 * t % 200, 60, 90)
        cv2.rectangle(f, ((7 * t) % w, h // 5), ((7 * t) % w + w // 10, h // 2), (40, 40, 250), -1)
        cv2.circle(f, (w // 2, (5 * t) % h), h // 10, (60, 230, 60), -1)
        writer.write(f)
    writer.release()


def read_frames(path: str, max_frames: int, resolution: int) -> np.ndarray:
    """The shared first stage: decode the sampled frames and preprocess them as LWM -> [N, R, R, 3]."""
    from lwm_core.video import load_media, preprocess_frames

    return preprocess_frames(load_media(path, max_n_frames=max_frames).frames, resolution)


def load_hf_stack(params: dict, config, vqgan_model, vq_config, tmp: str, threads: int):
    """(torch, diffusers VQModel, transformers LlamaForCausalLM (sdpa, fp32), LWM's vision embedding
    `vte` [V, d] as a tensor): our VQGAN's and language model's weights, written to `tmp` by our
    diffusers and Hugging Face writers and read back by those libraries."""
    import torch
    from diffusers import VQModel
    from transformers import LlamaForCausalLM

    from lwm_core.checkpoint.hf import write_hf
    from lwm_core.vqgan.io import write_vqgan
    from lwm_core.vqgan.params_lwm import model_to_lwm

    torch.set_num_threads(threads)
    write_vqgan(model_to_lwm(vqgan_model), vq_config, os.path.join(tmp, "vq"), fmt="diffusers")
    vq = VQModel.from_pretrained(os.path.join(tmp, "vq")).eval()
    text = {k: v for k, v in params.items() if "vte" not in k and "vision_head" not in k}
    write_hf(text, os.path.join(tmp, "hf"), config.replace(vision=False))
    lm = LlamaForCausalLM.from_pretrained(os.path.join(tmp, "hf"), dtype=torch.float32,
                                          attn_implementation="sdpa").eval()
    vte = torch.from_numpy(np.array(params["transformer/vte/embedding"], np.float32))
    return torch, vq, lm, vte


class HFStack:
    """diffusers VQModel + transformers LlamaForCausalLM (sdpa) holding the given weights."""

    def __init__(self, params: dict, config, vqgan_model, vq_config, tmp: str, threads: int):
        self.torch, self.vq, self.lm, self.vte = load_hf_stack(params, config, vqgan_model, vq_config, tmp, threads)
        self.batch = 8

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """[N, R, R, 3] in [-1, 1] -> codes [N, h*w], `batch` frames per call as ours."""
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(frames), self.batch):
                x = self.torch.from_numpy(frames[start:start + self.batch].transpose(0, 3, 1, 2).copy())
                _, _, (_, _, idx) = self.vq.quantize(self.vq.encode(x).latents)
                out.append(idx.numpy().reshape(len(x), -1))
        return np.concatenate(out).astype(np.int32)

    def answer(self, ids: np.ndarray, vmask: np.ndarray, new_tokens: int):
        """Greedy: (tokens, prefill seconds, decode seconds) with LWM's text/vision embeddings."""
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(ids.astype(np.int64))[None]
            m = torch.from_numpy(vmask)[None]
            embeds = torch.where(m[..., None], self.vte[t.where(m, 0)], self.lm.model.embed_tokens(t.where(~m, 0)))
            start = time.perf_counter()
            out = self.lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
            prefill = time.perf_counter() - start
            tokens, cache = [token], out.past_key_values
            start = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = self.lm(torch.tensor([[token]]), past_key_values=cache, use_cache=True)
                token, cache = int(out.logits[0, -1].argmax()), out.past_key_values
                tokens.append(token)
            return tokens, prefill, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny VQGAN, 4 frames: does it run")
    p.add_argument("--preset", default="200m")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32, help="greedy decode steps (eos ignored)")
    p.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up round")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    preset, vq_preset, frames, size = args.preset, "full", args.frames, (640, 360)
    if args.smoke:
        preset, vq_preset, frames, size, args.new_tokens, args.repeats = "debug", "tiny", 4, (96, 64), 4, 1

    from lwm_core import ModelConfig, load_model
    from lwm_core.loading import generation_options
    from lwm_core.infer import SamplingSettings
    from lwm_core.infer.ask import Asker
    from lwm_core.infer.vision_prompt import MediaCodes, chat_input
    from lwm_core.text import load_tokenizer
    from lwm_core.vqgan import VQGANConfig, VQGANTokenizer
    from lwm_core.vqgan.model import init_vqgan

    vq_config = VQGANConfig.from_name(vq_preset)
    per_frame = vq_config.latent_size ** 2 + 1
    config = ModelConfig.from_name(preset, vision=True).replace(
        max_sequence_length=max(4096, 1 << (frames * per_frame + 256 + args.new_tokens).bit_length()))
    model = load_model(f"random:{preset}", config, **generation_options())  # as the command loads it
    tokenizer = load_tokenizer(os.path.join(os.path.dirname(__file__), "..", "tests", "data", "tokenizer",
                                            "tokenizer.model"))
    vq_model = init_vqgan(vq_config, 0)
    vq = VQGANTokenizer(vq_model, identity="bench", source="bench")
    asker = Asker(model, tokenizer, vq, max_frames=frames)
    question = "What happens in this video, and in which order?"
    settings = SamplingSettings()
    with tempfile.TemporaryDirectory() as tmp:
        video = os.path.join(tmp, "bench.mp4")
        make_video(video, 2 * frames, *size)
        hf = HFStack(model.params_dict(), config, vq_model, vq_config, tmp, args.threads)
        best: dict[str, float] = {}
        ratios: list[tuple[float, float]] = []  # per timed round: (time to first token, decode) hf / lwm
        for round_ in range(args.repeats + 1):  # round 0 compiles / warms up
            t = time.perf_counter()
            pixels = read_frames(video, frames, vq_config.resolution)
            read = time.perf_counter() - t
            t = time.perf_counter()
            ours_codes = vq.encode(pixels).reshape(len(pixels), -1)
            ours_vq = time.perf_counter() - t
            media = MediaCodes(video, ours_codes, np.arange(len(pixels)), read, ours_vq, "encoded")
            [ours] = asker.ask([(question, media)], settings=settings, max_new_tokens=args.new_tokens)
            t = time.perf_counter()
            hf_codes = hf.encode(pixels)
            hf_vq = time.perf_counter() - t
            prompt = chat_input(tokenizer, question, hf_codes, asker.spec)
            hf_tokens, hf_prefill, hf_decode = hf.answer(prompt.ids, prompt.vision_mask, args.new_tokens)
            ours_ids = ours.answer_ids  # eos is not special here: both sides run new_tokens steps unless eos
            timings = {"read": read, "ours vqgan": ours_vq, "ours prefill": ours.timings["prefill"],
                       "ours decode": ours.timings["decode"] / max(1, len(ours_ids) - 1),
                       "hf vqgan": hf_vq, "hf prefill": hf_prefill,
                       "hf decode": hf_decode / max(1, args.new_tokens - 1)}
            if round_:
                best = {k: min(v, best.get(k, float("inf"))) for k, v in timings.items()}
                ttft = [timings["read"] + timings[f"{side} vqgan"] + timings[f"{side} prefill"]
                        for side in ("ours", "hf")]
                ratios.append((ttft[1] / ttft[0], timings["hf decode"] / timings["ours decode"]))
        same_codes = float((ours_codes == hf_codes).mean())
    n = len(ours.prompt_ids)
    ttft_ours = best["read"] + best["ours vqgan"] + best["ours prefill"]
    ttft_hf = best["read"] + best["hf vqgan"] + best["hf prefill"]
    print(f"ask, '{preset}' + vision (random weights), VQGAN '{vq_preset}', {len(pixels)} frames, {n} prompt tokens, "
          f"{args.new_tokens} greedy tokens, {args.threads} threads; best of {args.repeats} rounds after a warm-up")
    print(f"  read + sample + preprocess (shared): {best['read']:.3f} s")
    print(f"  VQGAN encode:  lwm {best['ours vqgan']:.3f} s   diffusers {best['hf vqgan']:.3f} s   "
          f"({best['hf vqgan'] / best['ours vqgan']:.2f}x)")
    print(f"  prefill:       lwm {best['ours prefill']:.3f} s   transformers {best['hf prefill']:.3f} s   "
          f"({best['hf prefill'] / best['ours prefill']:.2f}x)")
    print(f"  time to first token: lwm {ttft_ours:.3f} s   hf {ttft_hf:.3f} s   "
          f"({ttft_hf / ttft_ours:.2f}x; goal >= 1.5x)")
    print(f"  decode:        lwm {1 / best['ours decode']:.1f} tok/s   transformers {1 / best['hf decode']:.1f} "
          f"tok/s   ({best['hf decode'] / best['ours decode']:.2f}x; goal >= 1.0x)")
    print_round_ratios({"time to first token": [r[0] for r in ratios], "decode": [r[1] for r in ratios]})
    agree = hf_tokens[:len(ours_ids)] == ours_ids
    print(f"  same VQGAN codes at {100 * same_codes:.2f}% of positions; greedy tokens "
          f"{'equal' if agree else 'DIFFER'} ({len(ours_ids)} compared; fp32 sums in another order can flip a "
          "near-tie on random weights)")


if __name__ == "__main__":
    main()
