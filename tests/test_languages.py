"""Languages beyond the catalog: the script check that keeps USE out of texts it cannot read, and CLDR's
emoji names (Debian `unicode-cldr-core`) that name emoji-market's products in ~100 languages."""
from __future__ import annotations

import numpy as np
import pytest

from encoders.languages import script, use_reads
from mmrec.data import cldr


@pytest.mark.parametrize("text, expected", [
    ("red apple", "LATIN"), ("Äpfel 12", "LATIN"), ("яблоко", "CYRILLIC"), ("تفاح أحمر", "ARABIC"),
    ("लाल सेब", "DEVANAGARI"), ("תפוח אדום", "HEBREW"), ("κόκκινο μήλο", "GREEK"), ("赤いリンゴ", "KATAKANA"), ("苹果", "CJK"),
    ("りんご", "HIRAGANA"), ("빨간 사과", "HANGUL"), ("แอปเปิ้ลแดง", "THAI"), ("123 ?!", None), ("", None),
])
def test_script_is_the_main_writing_system(text, expected):
    assert script(text) == expected


def test_use_reads_its_scripts_and_not_the_others():
    for text in ("red apple", "grüner Tee", "яблоко", "تفاح أحمر", "苹果", "りんご", "사과", "แอปเปิ้ล", "SKU-42"):
        assert use_reads(text), text
    # Hindi, Hebrew, Greek, Bengali, Tamil, Armenian, Georgian, Amharic; Arabic-script Persian and Urdu
    for text in ("लाल सेब", "תפוח אדום", "κόκκινο μήλο", "লাল আপেল", "சிவப்பு ஆப்பிள்", "կարմիր խնձոր",
                 "წითელი ვაშლი", "ቀይ ፖም", "سیب قرمز", "سرخ سیب", "کفش ورزشی"):
        assert not use_reads(text), text
    assert use_reads("كتاب عربي")  # Arabic, with the letters Persian does not use


def test_the_encoder_level_check_follows_use_reads():
    from encoders.text import USEEncoder

    assert USEEncoder.unsupported(None, "לחם") and not USEEncoder.unsupported(None, "pain")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def languages() -> list[str]:
    if not cldr.ANNOTATIONS.is_dir():
        pytest.skip("Debian unicode-cldr-core is not installed (make setup installs it as root)")
    return cldr.available_languages()


def test_cldr_names_emoji_in_many_languages(languages):
    assert len(languages) >= 90 and {"en", "hi", "he", "sw", "vi", "el"} <= set(languages)
    assert not any("_" in lang for lang in languages) and "root" not in languages
    hi = cldr.load_annotations("hi")
    assert hi.names[cldr.cldr_key("🍌")] and "केला" in hi.names[cldr.cldr_key("🍌")]
    assert cldr.cldr_key("☂️") == "☂" and cldr.cldr_key("☂") in cldr.load_annotations("sv").names
    assert all(hi.keywords.values()) and all("|" not in k for ks in hi.keywords.values() for k in ks)
    by = cldr.names_by_emoji(["en", "de"])
    assert by[cldr.cldr_key("🍕")] == {"en": "pizza", "de": "Pizza"}
    with pytest.raises(Exception, match="no CLDR annotations"):
        cldr.load_annotations("xx")


def test_tuning_names_never_hold_a_held_out_product(languages):
    """The default text encoder is tuned on CLDR names of every emoji except the held-out products'."""
    from mmrec.data.datasets.emoji_market import products
    from mmrec.embedding.text_model import emoji_name_groups, held_out_from_tuning

    prods, _ = products()
    groups = emoji_name_groups()
    tuned = {t for g in groups for t in g}
    by = cldr.names_by_emoji()
    held = [p for p in prods if held_out_from_tuning(p.product_id)]
    held_keys = {cldr.cldr_key(p.char) for p in held}
    elsewhere = ({n for k, names in by.items() if k not in held_keys for n in names.values()}
                 | {n for p in prods if not held_out_from_tuning(p.product_id) for n in p.names.values()})
    held_only = {n for p in held for n in (*p.names.values(), *by.get(cldr.cldr_key(p.char), {}).values())} - elsewhere
    assert len(groups) > 1500 and sum(map(len, groups)) > 100_000 and len(held_only) > 5000
    assert not held_only & tuned


def test_stand_in_and_language_directions_do_what_they_say():
    """The two fits of the default text space, on data where the answer is known."""
    from encoders.languages import fit_stand_in, language_directions, project_out

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12))
    true = rng.normal(size=(12, 7))
    assert np.allclose(fit_stand_in(x, x @ true, ridge=1e-6), true, atol=1e-3)
    with pytest.raises(ValueError):
        fit_stand_in(x, x[:10] @ true)
    # 3 languages = the same 50 meanings, each language shifted by its own offset
    meaning = rng.normal(size=(50, 16))
    offsets = rng.normal(size=(3, 16)) * 3
    vecs = np.concatenate([meaning + o for o in offsets])
    langs = np.repeat(["aa", "bb", "cc"], 50)
    dirs = language_directions(vecs, langs, k=8)
    assert dirs.shape == (2, 16) and np.allclose(dirs @ dirs.T, np.eye(2), atol=1e-5)  # 3 means span 2 directions
    before = (vecs[:50] / np.linalg.norm(vecs[:50], axis=1, keepdims=True)) @ (
        vecs[50:100] / np.linalg.norm(vecs[50:100], axis=1, keepdims=True)).T
    clean = project_out(vecs, dirs)
    after = clean[:50] @ clean[50:100].T  # a meaning in "aa" vs every meaning in "bb"
    assert (after.argmax(1) == np.arange(50)).mean() > (before.argmax(1) == np.arange(50)).mean()
    assert (after.argmax(1) == np.arange(50)).mean() == 1.0 and np.allclose(np.linalg.norm(clean, axis=1), 1)


def test_concat_fills_an_unreadable_part_with_its_stand_in(tmp_path):
    """USE cannot read Hindi: without a stand-in its block is zero, with one it is the mapped e5 reading;
    a saved text space loads as the same encoder (same vectors, same version)."""
    from encoders.text import ConcatEncoder, load_text_encoder, save_text_space

    e5, use = load_text_encoder("e5-small"), load_text_encoder("use-m3")
    texts = ["केला", "banana"]
    plain = ConcatEncoder([(0.4, e5), (0.6, use)]).encode(texts)
    assert np.allclose(plain[0, e5.dim:], 0) and not np.allclose(plain[1, e5.dim:], 0)
    m = np.random.default_rng(1).normal(size=(e5.dim, use.dim)).astype(np.float32)
    dirs = np.linalg.qr(np.random.default_rng(2).normal(size=(e5.dim + use.dim, 3)))[0].T
    filled = ConcatEncoder([(0.4, e5), (0.6, use)], stand_ins={1: (0, m)}, directions=dirs)
    out = filled.encode(texts)
    assert not np.allclose(out[0, e5.dim:], 0) and np.allclose(out @ dirs.T, 0, atol=1e-5)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    saved = save_text_space(tmp_path / "space", [(0.4, "e5-small"), (0.6, "use-m3")], stand_ins={1: (0, m)},
                            directions=dirs)
    again = load_text_encoder(str(saved), reuse=False)
    assert again.version == filled.version and np.allclose(again.encode(texts), out, atol=1e-5)
    assert again.version != ConcatEncoder([(0.4, e5), (0.6, use)]).version
    with pytest.raises(Exception, match="matrix"):
        ConcatEncoder([(0.4, e5), (0.6, use)], stand_ins={1: (0, m.T)})


def test_language_blocks_draw_pairs_that_share_their_languages():
    """Same-language negatives in tuning (TextTuneConfig.language_blocks): each block of a step is one
    language pair over distinct products, so a text's in-batch negatives include its own language."""
    import random

    from encoders.tune import TextTuneConfig, _language_block_pairs, tune_text_encoder

    words = {"en": "thing", "de": "Ding", "fr": "chose", "sv": "sak"}
    by = [{lang: [f"{w} {i}"] for lang, w in words.items()} for i in range(40)]
    index = {lang: set(range(40)) for lang in words}
    lang_of = {f"{w} {i}": lang for lang, w in words.items() for i in range(40)}
    pairs = _language_block_pairs(by, index, None, 24, 8, random.Random(0))
    assert len(pairs) == 24
    assert len({int(a.split()[-1]) for a, _ in pairs}) == 24  # distinct products
    for start in range(0, 24, 8):
        block = {(lang_of[a], lang_of[b]) for a, b in pairs[start:start + 8]}
        assert len(block) == 1 and len(next(iter(block))) == len(set(next(iter(block)))) == 2
    assert len({(lang_of[a], lang_of[b]) for a, b in pairs}) > 1  # blocks draw their own pairs
    # off by default, with the digest (cache names) it always had; on, it needs each text's language
    assert TextTuneConfig().digest() == TextTuneConfig(language_blocks=0).digest() != TextTuneConfig(language_blocks=8).digest()
    with pytest.raises(ValueError, match="language_blocks"):
        TextTuneConfig(language_blocks=1)
    with pytest.raises(ValueError, match="language of every text"):
        tune_text_encoder("/nonexistent", [["a", "b"], ["c", "d"]], "/nonexistent-out", TextTuneConfig(language_blocks=2))


def test_language_gate_learns_languages_from_their_letters(tmp_path):
    """The n-gram classifier behind a query's USE share tells Latin-script languages apart by their letters
    and gives each text its language's share. Gated queries: a share of 0 leaves USE's block empty, so the
    query ranks any gallery exactly as e5 alone does; passages are never gated (one gallery representation).
    A saved space reloads the gate (same vectors, a version that tells gated from ungated)."""
    from encoders.languages import fit_language_gate
    from encoders.text import ConcatEncoder, load_text_encoder, save_text_space

    words = {"de": ["Straße", "grüner Tee", "Schuhe", "Brötchen", "Größe", "Mütze", "schön", "Käse"],
             "vi": ["đường phố", "trà xanh", "giày", "bánh mì", "kích thước", "mũ", "đẹp", "phô mai"],
             "hu": ["utca", "zöld tea", "cipő", "zsemle", "méret", "sapka", "szép", "sajt"]}
    texts = [w for ws in words.values() for w in ws]
    langs = [lang for lang, ws in words.items() for _ in ws]
    gate = fit_language_gate(texts, langs, {"de": 1.0, "vi": 0.0, "hu": 0.25})
    assert gate.languages == ("de", "hu", "vi")
    p = gate.probabilities(["Grüße", "phở bò", "szőlő"])
    assert list(p.argmax(1)) == [0, 2, 1] and np.allclose(p.sum(1), 1, atol=1e-5)
    share = gate(["Grüße", "phở bò", "szőlő"])
    assert share[0] > 0.9 and share[1] < 0.1 and 0.15 < share[2] < 0.35

    e5, use = load_text_encoder("e5-small"), load_text_encoder("use-m3")
    plain = ConcatEncoder([(0.4, e5), (0.6, use)])
    gated = ConcatEncoder([(0.4, e5), (0.6, use)], gates={1: gate})
    gallery = ["rice noodle soup with beef", "green tea", "running shoes", "bread roll", "cheese", "hat"]
    assert np.array_equal(gated.encode(gallery), plain.encode(gallery))  # passages: never gated
    query = gated.encode(["phở bò", "Grüße"], kind="query")
    assert np.allclose(query[0, e5.dim:], 0, atol=1e-3)  # Vietnamese: no USE
    assert np.allclose(query[1], plain.encode(["Grüße"], kind="query")[0], atol=1e-3)  # German: USE kept
    by_gated = query[0] @ gated.encode(gallery).T
    by_e5 = e5.encode(["phở bò"], kind="query")[0] @ e5.encode(gallery).T
    assert list(np.argsort(-by_gated)) == list(np.argsort(-by_e5))
    assert np.allclose(by_gated, np.sqrt(0.4) * by_e5, atol=2e-3)  # e5 alone, scaled by its weight

    saved = save_text_space(tmp_path / "gated", [(0.4, "e5-small"), (0.6, "use-m3")], gates={1: gate})
    again = load_text_encoder(str(saved), reuse=False)
    assert again.version == gated.version != plain.version
    assert np.allclose(again.encode(["phở bò", "Grüße"], kind="query"), query, atol=1e-5)


def test_the_use_gate_follows_use_s_own_reading_of_each_language():
    """`fit_use_gate` (the opt-in e5-use-gated space): each language's share comes from USE's measured X -> en
    R@1 there, so German (a USE language) keeps USE and Vietnamese (Latin script, not a USE language) loses
    it; the default space's digest does not depend on the gate's settings (its cache stays valid)."""
    import random

    from encoders.text import load_text_encoder
    from mmrec.data import cldr
    from mmrec.embedding.text_model import GATED_CONFIG, TextSpaceConfig, fit_use_gate

    names = cldr.names_by_emoji(["en", "de", "vi"])
    by_emoji = dict(sorted((k, v) for k, v in names.items() if len(v) == 3)[:300])
    config = TextSpaceConfig(language_gate=True, gate_emoji=300, gate_min_names=100)
    gate = fit_use_gate(load_text_encoder("use-m3"), by_emoji, config, random.Random(0))
    shares = dict(zip(gate.languages, gate.share.tolist()))
    assert set(shares) == {"en", "de", "vi"} and shares["en"] == 1.0
    assert shares["de"] > 0.8 and shares["vi"] < 0.2, shares
    assert gate(["Regenschirm mit Griff"])[0] > 0.5 > gate(["ô che mưa"])[0]
    # the default space keeps its digest (and so its cached directory) whatever the gate's settings
    assert TextSpaceConfig().digest() == TextSpaceConfig(gate_prior_boost=1.0).digest() == "1e2c7c1b62"
    assert GATED_CONFIG.digest() != TextSpaceConfig().digest()
