"""Which writing system a text is in, and whether Universal Sentence Encoder (USE) can read it.

Why: USE multilingual v3 was trained on 16 languages (ar, de, en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr,
zh, zh-tw). A text in another script (Hindi, Hebrew, Greek, Bengali, Tamil, ...) or in an Arabic-script
language other than Arabic (Persian, Urdu, Pashto, ...) gets a USE vector that is noise, so a combination
gives such texts e5's reading alone. The check is by script, from the Unicode character names: no model,
no language list to keep, microseconds per text. Latin- and Cyrillic-script languages USE was not trained on
(Swedish, Ukrainian, ...) still share its word pieces and are left to it.

Also the two fits that make one space of a combination (`encoders.text.ConcatEncoder`) for every language:
`fit_stand_in` (what to put in USE's block for a text USE cannot read) and `language_directions` /
`project_out` (per-language centring without a language label at query time). And `LanguageGate`
(`fit_language_gate`, `reading_share`): a character n-gram language classifier that sets a query's USE share
from how well USE reads the query's language, for the Latin- and Cyrillic-script languages the script check
lets through (Vietnamese, Hungarian, Czech, ...). Pure numpy.
"""
from __future__ import annotations

import unicodedata
import zlib
from collections import Counter
from functools import lru_cache
from typing import Sequence

import numpy as np

# Scripts USE was trained on (the first word of a letter's Unicode name; CJK = Han).
USE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "ARABIC", "CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI"})
_ARABIC_BASE = range(0x0620, 0x064B)  # the Arabic alphabet; letters beyond it write Persian, Urdu, Pashto, ...


@lru_cache(maxsize=4096)
def _char_script(ch: str) -> str | None:
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else None


def script(text: str) -> str | None:
    """The script most of the text's letters are in ("LATIN", "DEVANAGARI", "CJK", ...), None without letters."""
    counts = Counter(s for s in map(_char_script, text) if s)
    return counts.most_common(1)[0][0] if counts else None


def use_reads(text: str) -> bool:
    """False when USE cannot read the text: its main script is not one of USE's, or it is Arabic script with
    letters outside the Arabic alphabet (Persian, Urdu, Pashto, Sindhi, Uyghur, ...). Texts without letters
    (numbers, codes) count as readable."""
    main = script(text)
    if main is None:
        return True
    if main == "ARABIC":
        return not any(_char_script(c) == "ARABIC" and ord(c) not in _ARABIC_BASE for c in text)
    return main in USE_SCRIPTS


# Languages USE multilingual v3 was trained on (zh-tw shares zh's code here).
USE_LANGUAGES = frozenset({"ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh"})


def fit_stand_in(source: np.ndarray, target: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Ridge least squares W (ds, dt) with source @ W ~ target: how one encoder's reading of a text predicts
    another's. Why: a combination that zeroes the block of a part that cannot read a text (USE on Hindi)
    leaves a half vector that looks like every other unreadable text and unlike its own translations;
    `source @ W` (the other part's reading of the same meaning) fills that block instead."""
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if source.ndim != 2 or target.ndim != 2 or len(source) != len(target) or len(source) < 2:
        raise ValueError("fit_stand_in needs two 2-D arrays with the same number (>= 2) of rows")
    gram = source.T @ source + ridge * np.eye(source.shape[1])
    return np.linalg.solve(gram, source.T @ target).astype(np.float32)


def language_directions(vectors: np.ndarray, languages: Sequence[str], k: int) -> np.ndarray:
    """(k', d) orthonormal directions along which the languages' mean vectors differ most (k' <= k, fewer
    when fewer languages). Why: in a multilingual space part of every vector says "which language" rather
    than "what"; in a mixed-language gallery that part makes a query's own-language neighbours outrank its
    translations. Projecting these directions out of every vector (`project_out`) is per-language centring
    that needs no language label at query time."""
    vectors = np.asarray(vectors, np.float64)
    labels = np.asarray(languages)
    if vectors.ndim != 2 or len(vectors) != len(labels):
        raise ValueError("language_directions needs (n, d) vectors and n language labels")
    means = np.stack([vectors[labels == lang].mean(0) for lang in sorted(set(labels.tolist()))])
    if len(means) < 2 or k < 1:
        return np.zeros((0, vectors.shape[1]), np.float32)
    _, s, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    keep = min(k, int((s > 1e-8 * s[0]).sum()))
    return vt[:keep].astype(np.float32)


def project_out(vectors: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Rows of `vectors` without their components along the orthonormal `directions`, re-normalised."""
    vectors = np.asarray(vectors, np.float32)
    if len(directions) == 0:
        return vectors
    out = vectors - (vectors @ directions.T) @ directions
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


NGRAM_BUCKETS = 1 << 14  # hashed character n-gram features of `LanguageGate` (a (buckets, languages) table)


def char_ngrams(text: str, sizes: tuple[int, ...] = (1, 2, 3)) -> np.ndarray:
    """Bucket ids (`NGRAM_BUCKETS`) of the text's lower-cased character n-grams, words padded with spaces;
    crc32, so the same on every machine and run (Python's `hash` is salted per process)."""
    padded = f" {' '.join(text.lower().split())} "
    grams = [padded[i:i + n] for n in sizes for i in range(len(padded) - n + 1)]
    grams = [g for g in grams if g.strip()]
    return np.fromiter((zlib.crc32(g.encode("utf-8")) % NGRAM_BUCKETS for g in grams), np.int64, len(grams))


class LanguageGate:
    """A text's share of one part of a combination from the text's detected language: a character n-gram
    naive Bayes language classifier, p(language | text), times each language's `share` (0..1).

    Why: USE reads its own 16 languages (and close relatives) well and every other language badly, whatever
    the script: Vietnamese, Hungarian, Welsh, Czech are Latin-script and still get USE noise (R@1 .07-.16
    where its own languages get .58-.80). A script check cannot tell them apart; their letters can
    (ư, ő, ŵ, ř, ...). A classifier on the e5 vector cannot either: the tuned e5 is trained to forget the
    language (14% accuracy on held-out names). `share` holds how well the gated part reads each language
    (measured: `reading_share`), so a text that looks like several languages gets the expected share.
    Cost: one table lookup per n-gram of the text (microseconds)."""

    def __init__(self, log_prob: np.ndarray, log_prior: np.ndarray, share: np.ndarray,
                 languages: Sequence[str] = ()) -> None:
        self.log_prob = np.asarray(log_prob, np.float32)
        self.log_prior = np.asarray(log_prior, np.float32).reshape(-1)
        self.share = np.asarray(share, np.float32).reshape(-1)
        self.languages = tuple(languages)
        if (self.log_prob.shape != (NGRAM_BUCKETS, len(self.share)) or len(self.log_prior) != len(self.share)
                or (self.languages and len(self.languages) != len(self.share))):
            raise ValueError(f"LanguageGate needs a ({NGRAM_BUCKETS}, L) table and L priors, shares and languages")

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, L) p(language | text); the prior for a text without n-grams."""
        out = np.empty((len(texts), len(self.share)), np.float32)
        for r, text in enumerate(texts):
            logits = self.log_prior + self.log_prob[char_ngrams(text)].sum(0)
            logits = logits - logits.max()
            p = np.exp(logits)
            out[r] = p / p.sum()
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) the gated part's share of each text, in [0, 1]."""
        if not len(texts):
            return np.zeros(0, np.float32)
        return np.clip(self.probabilities(texts) @ self.share, 0.0, 1.0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"log_prob": self.log_prob, "log_prior": self.log_prior, "share": self.share}


def fit_language_gate(texts: Sequence[str], languages: Sequence[str], share: dict[str, float], *,
                      alpha: float = 0.1, prior_boost: float = 0.0) -> LanguageGate:
    """Multinomial naive Bayes on hashed character 1-3-grams (`char_ngrams`), Laplace smoothing `alpha`;
    `share[lang]` per class (0 where missing). The log-prior is uniform plus `prior_boost` x share: short
    words many languages share ("mango", "taxi") then lean towards the languages the gated part reads well,
    instead of being read as whichever rare language happens to score highest."""
    labels = np.asarray(languages)
    if len(texts) != len(labels) or len(texts) < 2:
        raise ValueError("fit_language_gate needs n texts and n language labels")
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError("fit_language_gate needs at least two languages")
    grams = [char_ngrams(t) for t in texts]
    cls = np.repeat(np.searchsorted(classes, labels), [len(g) for g in grams])
    flat = np.concatenate(grams) if grams else np.zeros(0, np.int64)
    counts = np.bincount(flat * len(classes) + cls, minlength=NGRAM_BUCKETS * len(classes))
    counts = counts.reshape(NGRAM_BUCKETS, len(classes)).astype(np.float64) + alpha
    log_prob = np.log(counts / counts.sum(0, keepdims=True))
    shares = np.array([float(share.get(c, 0.0)) for c in classes])
    log_prior = np.full(len(classes), -np.log(len(classes))) + prior_boost * shares
    return LanguageGate(log_prob, log_prior, shares, classes)


def reading_share(r1: float, low: float, high: float) -> float:
    """How much of its weight a part keeps in a language it retrieves with R@1 `r1` (X -> en, measured):
    none at or below `low`, all at or above `high`, linear between."""
    if high <= low:
        raise ValueError("reading_share needs low < high")
    return float(np.clip((r1 - low) / (high - low), 0.0, 1.0))
