"""Text side of LWM: the LLaMA SentencePiece tokenizer (`load_tokenizer`) and LWM's prompt builders."""

from lwm_core.text.prompts import (lwm_chat_followup_ids, lwm_chat_segments, lwm_generation_prompt_ids,
                                  lwm_unconditional_prompt_ids)
from lwm_core.text.tokenizer import StreamDecoder, Tokenizer, load_tokenizer

__all__ = [
    "StreamDecoder",
    "Tokenizer",
    "load_tokenizer",
    "lwm_chat_followup_ids",
    "lwm_chat_segments",
    "lwm_generation_prompt_ids",
    "lwm_unconditional_prompt_ids",
]
