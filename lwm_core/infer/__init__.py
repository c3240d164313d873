"""Inference: the sampler (text and vision generation over the KV cache) and its logits processors."""

from lwm_core.infer.ask import Answer, Asker
from lwm_core.infer.generate import GenerationSettings, generate_vision, plan_generation, write_generation
from lwm_core.infer.processors import compose, guidance, pick, temperature, top_k, top_p
from lwm_core.infer.sampler import ForcedTokens, Generation, Sampler, SamplingSettings

__all__ = ["ForcedTokens", "Generation", "Sampler", "SamplingSettings", "compose", "guidance", "pick",
           "temperature", "top_k", "top_p"]
__all__ += ["GenerationSettings", "generate_vision", "plan_generation", "write_generation"]
__all__ += ["Answer", "Asker"]
