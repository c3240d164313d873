"""Rebuild tests/data/tokenizer/tokenizer.model, the tiny LLaMA-style SentencePiece model whose ids
tests/test_tokenizer.py hard-codes. Run from the repository root: python tests/data/tokenizer/make_fixture.py

The corpus is generated (seeded), and the trainer gets LLaMA's settings: BPE, byte_fallback,
split_digits, add_dummy_prefix, remove_extra_whitespaces off, identity normalisation, unk/bos/eos = 0/1/2.
Rebuilding with another sentencepiece version may give other ids; the committed file was made with
sentencepiece 0.2.x and is what the tests read.
"""

import random
from pathlib import Path

import sentencepiece as spm

HERE = Path(__file__).resolve().parent
WORDS = ("the a an of in on is what this picture video image scene cat dog fox tree house sky red blue "
         "green runs jumps over lazy describe answer question generate hi hello").split()


def corpus(n_lines: int = 600, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    for k in range(n_lines):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
        if k % 3 == 0:
            words = f"You are a helpful assistant. USER: {words}\n<vision></vision> ASSISTANT: {words}"
        elif k % 3 == 1:
            words = f"You are a helpful assistant. USER: Generate an image of {words} ASSISTANT: <vision>"
        if k % 5 == 0:
            words += f" {rng.randint(0, 99999)}"
        lines.append(words)
    return "\n".join(lines)


def main() -> None:
    text_file = HERE / "corpus.txt"
    text_file.write_text(corpus())
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(HERE / "tokenizer"), vocab_size=512, model_type="bpe",
            byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=1.0, minloglevel=2,
        )
    finally:
        text_file.unlink()
        (HERE / "tokenizer.vocab").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
