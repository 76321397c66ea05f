"""Prompt preparation speed: A1111 parse + 75-token chunking of a 225-token prompt (no model needed).

This runs on every keystroke of the Generate tab's token counter and before every generation, so it must stay far
below a frame (16 ms). Prints p50 / p90 / max in milliseconds over many runs with the shipped SDXL tokenizer.

    python benchmarks/bench_prompt_encode.py [--runs 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# Runnable straight from a source checkout, without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_core.generate.prompt import (  # noqa: E402
    parse_prompt_attention,
    strip_extra_networks,
    tokenize_prompt,
)
from trainer_core.models.tokenizers import load_sdxl_tokenizers  # noqa: E402

TAGS = [
    "1girl",
    "(masterpiece:1.2)",
    "best quality",
    "hatsune miku",
    "vocaloid",
    "[blurry]",
    "((long hair))",
    "twintails",
    "aqua eyes",
    "smile",
    "looking at viewer",
    "(detailed background:1.1)",
    "city lights",
    "night sky",
    "BREAK",
    "standing",
    "cowboy shot",
    "from side",
]


def build_prompt(tokenizer, target_tokens: int = 225) -> str:
    """Repeat realistic tags (weights, BREAK, commas) until the prompt reaches `target_tokens` tokens."""
    parts: list[str] = ["<lora:my_style:0.8>"]
    index = 0
    while True:
        candidate = ", ".join(parts + [TAGS[index % len(TAGS)]])
        stripped, _ = strip_extra_networks(candidate)
        if tokenize_prompt(stripped, tokenizer).token_count > target_tokens:
            return ", ".join(parts)
        parts.append(TAGS[index % len(TAGS)])
        index += 1


def time_ms(fn, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def report(label: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    print(f"{label:<38} p50 {p50:7.3f} ms   p90 {p90:7.3f} ms   max {ordered[-1]:7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()

    tokenizer, _ = load_sdxl_tokenizers()
    prompt = build_prompt(tokenizer)
    stripped, _ = strip_extra_networks(prompt)
    result = tokenize_prompt(stripped, tokenizer)
    print(f"prompt: {len(prompt)} chars, {result.counter_text()} tokens, {len(result.chunks)} chunks")

    for _ in range(20):  # warm up the tokenizer's caches
        tokenize_prompt(stripped, tokenizer)
    report("parse_prompt_attention", time_ms(lambda: parse_prompt_attention(stripped), args.runs))
    report(
        "strip + parse + tokenize + chunk",
        time_ms(lambda: tokenize_prompt(strip_extra_networks(prompt)[0], tokenizer), args.runs),
    )


if __name__ == "__main__":
    main()
