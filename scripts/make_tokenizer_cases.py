#!/usr/bin/env python3
"""Tokenizer test cases for BPETokenizer (Sources/MM1Pack/Tokenizer), written with the `tokenizers` library.

Requires only `tokenizers` (0.23).  Run from anywhere:
    python3 scripts/make_tokenizer_cases.py

Writes, deterministically, into fixtures/tokenizer/:
  gpt2.tokenizer.json    byte-level BPE trained here on CORPUS: ByteLevel pre-tokenizer with the GPT-2
                         regex, no normalizer, added tokens with lstrip/rstrip/single_word/normalized flags
  llama3.tokenizer.json  Llama-3 layout: Sequence[Split(Llama-3 regex, Isolated), ByteLevel(use_regex=false)],
                         ignore_merges, special tokens <|begin_of_text|> ...
  misc.tokenizer.json    the rarer knobs (see make_misc)
  smol.tokenizer.json    NFKC normalizer, Sequence[Digits(individual), ByteLevel(add_prefix_space=true)],
                         a Split with MergedWithPrevious, a normalized added token
  <name>.cases.json      {"tokenizer": path relative to the repo, "cases": [{"text", "ids", "decoded"}]}
                         where ids = Tokenizer.encode(text, add_special_tokens=False).ids and
                         decoded = Tokenizer.decode(ids, skip_special_tokens=False); one file per tokenizer
                         above and one for fixtures/llava-llama/tokenizer.json; the texts are CASES plus
                         120 seeded random mixes of the character classes the split patterns distinguish.
"""
from __future__ import annotations

import json
import os

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "fixtures", "tokenizer")

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!",
    "What is in this picture? Describe the image in detail. There are two cats sitting on a mat.",
    "I'm sure you're right, but they'll say we've done it and he's gone. I'd rather not. Don't!",
    "In 2024, 1,234,567 people paid $3.50 each -- that's 4320987.5 dollars (approx.) for 12 items.",
    "def tokenize(text):\n    return [t for t in text.split() if t]  # simple\n\n\tindented\ttabs\n",
    "Ça va très bien, merci. Über den Straßen Zürichs schwebt eine Möwe. Ñandú, señor.",
    "Ελληνικά γράμματα και λέξεις. Русский текст для проверки токенизатора. Україна.",
    "中文字符测试，这是一个句子。日本語のテキストです。한국어 문장입니다. العربية نص قصير.",
    "Emoji time: 👍 👍🏽 😀😃 🇫🇷 👨‍👩‍👧 ❤️ ✨ — “quotes” ‘single’ «guillemets» … ellipsis",
    "numbers ½ ¾ ² ³ ٣٤٥ ५६७ Ⅻ and symbols ∑ ∫ √ ≠ ≤ ≥ € £ ¥ © ® ™ § ¶",
    "HTTP://Example.COM/path?query=1&x=2 <tag attr=\"v\">text</tag> {\"json\": [1, 2, 3]}",
    "Multiple   spaces   and\n\n\nnewlines\r\nwindows line endings\r\n  and trailing   ",
] * 3

CASES = [
    "", " ", "  ", "a", "hello", "Hello world", "hello world", " hello world", "  leading spaces",
    "trailing spaces   ", "multiple     spaces   between words", "tabs\tand\ttabs", "line\nbreak",
    "windows\r\nline\r\n", "\n", "\n\n\n", " \n \n ", "   \n\n  x", "x  \n\t y", "end with newline\n",
    "I'm, you're, he's, we've, they'll, I'd, can't, won't", "SHE'S I'M WE'RE YOU'LL", "rock'n'roll 'quoted'",
    "'s 't 'll", "'ſ 'K", "don't''s", "1234567890", "3.14159 1,000,000 42nd 7th", "x²³ ½ Ⅻ ٣٤٥ ५६७",
    "12345678901234567890", "Ça va? Über straße", "naïve café résumé", "e\u0301 combining a\u0308",
    "Ελληνικά γράμματα", "Русский текст", "中文字符测试", "日本語のテキスト", "한국어 문장",
    "العربية نص", "👍", "👍🏽 👨‍👩‍👧 🇫🇷", "emoji😀in😃words", "\u00a0nbsp\u00a0here", "line\u2028sep",
    "ideographic\u3000space", "zero\u200bwidth\u200djoiner", "\u0000\u0001\u007f control",
    "def f(x):\n    return x**2  # comment\n", "if (a && b) { c[i] = d->e; }", "http://example.com/a?b=1&c=2",
    "!!!???...", "--->", "\"quoted\" (parens) [brackets] {braces}", "a.b,c;d:e", "$$$ 100% #1 @user",
    "ﬁx ﬀ ① ㍿ Ａｂｃ", "what is in this picture? describe the dog",
    "<s>", "</s>", "<s><s>", "a<s>b", " <s> ", "<s> the cat", "<image>", "<image><image>", "<ima", "<s",
    "<unk>", "<s>what is in this picture? describe the dog", "<s><image> describe the image",
    "<|endoftext|>", "text<|endoftext|>more", "<|user|>", "hi   <|user|>   there", "a<|user|>b",
    "[MASK]", "a [MASK] b", "a[MASK]b", "[MASK]x", "x [MASK]", "hello world tokens", "Hello World",
    "<|begin_of_text|>Hello", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "  <|eot_id|>  ", "<|eot_id|><|eot_id|>", "<|reserved_special_token_0|>", "<|begin_of_text",
    "fix ﬁx FIX", "wordfix fix", "The quick brown fox jumps over the lazy dog.",
    "the the the the the the", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ab" * 40,
    " ".join(CORPUS[:4]), "\n".join(CORPUS[4:12]),
]


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"), sort_keys=False)
        f.write("\n")


def train(tok: Tokenizer, vocab_size: int, special: list[str]) -> None:
    trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False, special_tokens=special,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer=trainer)


def make_gpt2() -> Tokenizer:
    tok = Tokenizer(BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    train(tok, 700, ["<|endoftext|>"])
    tok.add_tokens([
        AddedToken("<|user|>", lstrip=True, rstrip=True, normalized=False, special=False),
        AddedToken("[MASK]", single_word=True, normalized=False, special=False),
        AddedToken("hello world", normalized=True, special=False),
        AddedToken("the", single_word=True, normalized=False, special=False),
    ])
    return tok


def make_llama3() -> Tokenizer:
    tok = Tokenizer(BPE(unk_token=None, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>"]
    train(tok, 800, special)
    return tok


def make_smol() -> Tokenizer:
    tok = Tokenizer(BPE(unk_token=None))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[.!?]"), behavior="merged_with_previous", invert=False),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    train(tok, 500, ["<|endoftext|>", "<|im_start|>"])
    tok.add_tokens([AddedToken("fix", normalized=True, special=False),
                    AddedToken("<s>", lstrip=True, normalized=False, special=False)])
    return tok


def make_misc() -> Tokenizer:
    """Exercises the rarer knobs: Split behaviors (removed, merged_with_next, contiguous + invert, a String
    pattern), Digits without individual_digits, ByteLevel(no prefix space, no regex), NFC, an alphabet limited
    to the corpus with unk_token + fuse_unk + byte_fallback, continuing_subword_prefix and end_of_word_suffix.
    BpeTrainer is not deterministic with these settings, so the merges come from a small deterministic trainer
    here (most frequent pair, ties broken by the pair's strings) and tokenizers only builds the BPE from them."""
    normalizer = normalizers.NFC()
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" -- ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"[A-Z]"), behavior="merged_with_next", invert=False),
        pre_tokenizers.Split(Regex(r"\s+"), behavior="contiguous", invert=True),
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    prefix, suffix = "##", "</w>"
    counts: dict[tuple[str, ...], int] = {}
    for line in CORPUS[:6]:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)):
            syms = [c if i == 0 else prefix + c for i, c in enumerate(word)]
            syms[-1] += suffix
            counts[tuple(syms)] = counts.get(tuple(syms), 0) + 1
    alphabet = sorted({s for w in counts for s in w})
    merges: list[tuple[str, str]] = []
    merged_tokens: list[str] = []
    for _ in range(150):
        pairs: dict[tuple[str, str], int] = {}
        for w, n in counts.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        (a, b), n = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < 2:
            break
        new = a + b[len(prefix):]
        merges.append((a, b))
        if new not in merged_tokens and new not in alphabet:
            merged_tokens.append(new)
        updated: dict[tuple[str, ...], int] = {}
        for w, c in counts.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new); i += 2
                else:
                    out.append(w[i]); i += 1
            updated[tuple(out)] = updated.get(tuple(out), 0) + c
        counts = updated
    byte_tokens = [f"<0x{b:02X}>" for b in [0xC2, 0xC3, 0xC4, 0xC5] + list(range(0x80, 0xC0))]
    vocab = {t: i for i, t in enumerate(["<unk>"] + byte_tokens + alphabet + merged_tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True,
                        continuing_subword_prefix=prefix, end_of_word_suffix=suffix))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok


def random_cases(seed: int, n: int) -> list[str]:
    """Seeded random mixes of characters from every class the split patterns distinguish."""
    import random
    rng = random.Random(seed)
    pool = (list("abcxyzABCXYZ") + list("0123456789") + list(" \t\n\r") + [" "] * 6 + list("'’-_.,;:!?()[]{}<>|/\\\"#$%&*+=@^`~")
            + ["'s", "'T", "'ll", "'RE", "'d", "'m", "'ve"] + list("éÉßñçøåÅſ\u212a\u212b") + ["e\u0301", "\u0308", "\u200d", "\u200b"]
            + list("²³½Ⅻ٣५") + list("αβΓ日本中文한글ا") + ["👍", "🏽", "🇫🇷", "❤️", "\u00a0", "\u3000", "\u2028", "\u0085", "\x00", "\x7f"]
            + ["<s>", "</s>", "<image>", "<|endoftext|>", "<|user|>", "[MASK]", "<|eot_id|>", "<|begin_of_text|>", "fix", "ﬁ", "the"])
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 24))) for _ in range(n)]


def cases_for(tok: Tokenizer, tokenizer_rel: str, seed: int) -> dict:
    out = []
    for text in CASES + random_cases(seed, 120):
        ids = tok.encode(text, add_special_tokens=False).ids
        out.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})
    return {"tokenizer": tokenizer_rel, "cases": out}


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for seed, (name, make) in enumerate([("gpt2", make_gpt2), ("llama3", make_llama3), ("smol", make_smol),
                                         ("misc", make_misc)]):
        tok = make()
        path = os.path.join(OUT, f"{name}.tokenizer.json")
        tok.save(path, pretty=False)
        # Reload from disk so the cases come from exactly the stored file.
        tok = Tokenizer.from_file(path)
        write_json(os.path.join(OUT, f"{name}.cases.json"), cases_for(tok, f"fixtures/tokenizer/{name}.tokenizer.json", seed))
    rel = "fixtures/llava-llama/tokenizer.json"
    write_json(os.path.join(OUT, "llava-llama.cases.json"), cases_for(Tokenizer.from_file(os.path.join(REPO, rel)), rel, 99))


if __name__ == "__main__":
    main()
