"""Which writing system a text is in, and whether Universal Sentence Encoder (USE) can read it.

Why: USE multilingual v3 was trained on 16 languages (ar, de, en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr,
zh, zh-tw). A text in another script (Hindi, Hebrew, Greek, Bengali, Tamil, ...) or in an Arabic-script
language other than Arabic (Persian, Urdu, Pashto, ...) gets a USE vector that is noise, so a combination
gives such texts e5's reading alone. The check is by script, from the Unicode character names: no model,
no language list to keep, microseconds per text. Latin- and Cyrillic-script languages USE was not trained on
(Swedish, Ukrainian, ...) still share its word pieces and are left to it.

Also the two fits that make one space of a combination (`encoders.text.ConcatEncoder`) for every language:
`fit_stand_in` (what to put in USE's block for a text USE cannot read) and `language_directions` /
`project_out` (per-language centring without a language label at query time). Pure numpy.
"""
from __future__ import annotations

import unicodedata
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
