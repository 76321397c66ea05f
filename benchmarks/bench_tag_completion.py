"""Per-keystroke tag-completion latency on the real 140k-tag Danbooru list (target: < 20 ms per keystroke).

Simulates typing: every prefix of 200 real tag names (sampled across popularity, seeded), plus 50 names typed with
one typo (a substituted, swapped or doubled letter) from the typo onwards. Prints load/index time and p50/p95/max
per keystroke, then times the naive linear scan (`complete_naive`, same ranking) on a sample of the same
keystrokes and prints the speed-up. Usage: python benchmarks/bench_tag_completion.py [path/to/danbooru_tags.csv]
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer_core.tags.completion import TagCompleter, complete_naive  # noqa: E402
from trainer_core.tags.vocabulary import TagVocabulary  # noqa: E402

DEFAULT_CSV = REPO.parent / "shared" / "data" / "danbooru_tags.csv"
LIMIT = 20
NAIVE_SAMPLE = 25


def typing_session(rng: random.Random, names: list[str], typo_names: list[str]) -> list[str]:
    keystrokes: list[str] = []
    for name in names:
        typed = name.replace("_", " ")  # people type spaces
        keystrokes.extend(typed[:i] for i in range(1, len(typed) + 1))
    for name in typo_names:
        typed = list(name.replace("_", " "))
        i = rng.randrange(len(typed) - 1)
        kind = rng.choice(["substitute", "swap", "double"])
        if kind == "substitute":
            typed[i] = rng.choice("aeioustnr")
        elif kind == "swap":
            typed[i], typed[i + 1] = typed[i + 1], typed[i]
        else:
            typed.insert(i, typed[i])
        text = "".join(typed)
        keystrokes.extend(text[:j] for j in range(i + 1, len(text) + 1))
    return keystrokes


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CSV
    t0 = time.perf_counter()
    vocab = TagVocabulary.from_csv(path)
    t1 = time.perf_counter()
    completer = TagCompleter(vocab)
    t2 = time.perf_counter()
    print(f"tags: {len(vocab):,}  index entries (names + aliases): {len(completer):,}")
    print(f"load CSV: {(t1 - t0) * 1000:.0f} ms   build index: {(t2 - t1) * 1000:.0f} ms")

    rng = random.Random(2024)
    # Half from the 5,000 most popular tags (what people usually type), half from the whole list.
    pool_top = [t.name for t in vocab.tags[:5000] if len(t.name) > 2]
    pool_all = [t.name for t in vocab.tags if len(t.name) > 2]
    names = rng.sample(pool_top, 100) + rng.sample(pool_all, 100)
    typo_names = rng.sample(pool_top, 50)
    keystrokes = typing_session(rng, names, typo_names)

    completer.complete("warm up")
    times_ms: list[float] = []
    per_query: dict[str, float] = {}
    for q in keystrokes:
        start = time.perf_counter()
        completer.complete(q, LIMIT)
        dt = (time.perf_counter() - start) * 1000
        times_ms.append(dt)
        per_query[q] = dt
    slowest = max(per_query, key=per_query.__getitem__)
    print(f"keystrokes: {len(times_ms):,}  (200 names typed fully, 50 with a typo)")
    print(
        f"per keystroke: p50 {percentile(times_ms, 50):.2f} ms   p95 {percentile(times_ms, 95):.2f} ms   "
        f"p99 {percentile(times_ms, 99):.2f} ms   "
        f"max {max(times_ms):.2f} ms  (slowest: {slowest!r})   mean {statistics.fmean(times_ms):.2f} ms"
    )

    sample = rng.sample(keystrokes, NAIVE_SAMPLE)
    fast, naive = [], []
    for q in sample:
        start = time.perf_counter()
        a = completer.complete(q, LIMIT)
        fast.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        b = complete_naive(vocab, q, LIMIT)
        naive.append((time.perf_counter() - start) * 1000)
        if a != b:
            print(f"MISMATCH for {q!r}: index and naive scan disagree")
    fast_med, naive_med = statistics.median(fast), statistics.median(naive)
    print(
        f"naive linear scan on {NAIVE_SAMPLE} of the same keystrokes: median {naive_med:.1f} ms vs index "
        f"{fast_med:.2f} ms -> {naive_med / fast_med:,.0f}x faster"
    )


if __name__ == "__main__":
    main()
