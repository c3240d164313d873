"""Shared by the data-pipeline tests: the committed tiny tokenizer and a word-per-id fake one."""

from pathlib import Path

TOKENIZER = Path(__file__).parent / "data" / "tokenizer" / "tokenizer.model"


class FakeTokenizer:
    """One id per whitespace-separated word."""

    bos_id, eos_id = 1, 2
    vocab = {"q": 5, "a": 6, "b": 7, "c": 8, "<vision>": 10, "</vision>": 11}

    def encode(self, text):
        return [self.vocab[w] for w in text.split()]
