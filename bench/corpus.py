"""Real English text for the benchmarks, read from installed files (no downloads)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STS_TEST = REPO_ROOT.parent / "shared" / "fixtures" / "sts" / "stsb-test.tsv"
WORDNET = Path("/usr/share/wordnet")  # Debian package wordnet-base


def sts_sentences() -> list[str]:
    with STS_TEST.open(newline="", encoding="utf-8") as tsv:
        rows = list(csv.reader(tsv, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [sentence for row in rows for sentence in (row[5], row[6])]


def wordnet_glosses() -> list[str]:
    """Every synset gloss of WordNet 3.0 (definition plus examples), in file order."""
    glosses = []
    for part in ("noun", "verb", "adj", "adv"):
        with (WORDNET / f"data.{part}").open(encoding="utf-8") as data:
            for line in data:
                if not line.startswith(" ") and " | " in line:
                    glosses.append(line.split(" | ", 1)[1].strip())
    return glosses


def english_texts(count: int, seed: int = 0) -> list[str]:
    """`count` texts: all STS-B test sentences, then WordNet glosses, shuffled reproducibly."""
    texts = sts_sentences()
    glosses = wordnet_glosses()
    random.Random(seed).shuffle(glosses)
    texts += glosses[: max(0, count - len(texts))]
    random.Random(seed + 1).shuffle(texts)
    return texts[:count]
