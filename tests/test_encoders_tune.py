"""Text tuning: the fine-tuning loop on real e5 weights (pulls translations together, seeded, safe output),
mmrec's held-out rule and spec resolution, the CLI, and the shipped default on products it never saw."""
from __future__ import annotations

import json
import shutil
from collections import defaultdict

import numpy as np
import pytest

from encoders.text import load_text_encoder, split_weighted
from encoders.tune import TextTuneConfig, read_tune_info, tune_text_encoder

LANGS3 = ("en", "de", "ja")


@pytest.fixture(scope="module")
def by_product(emoji_market) -> dict[str, dict[str, str]]:
    """product_id -> language -> title, from the real emoji-market catalog."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    items = emoji_market.items
    for pid, lang, title in zip(items["product_id"], items["language"], items["title"]):
        out[pid][lang] = title
    return out


def _margin(vecs: np.ndarray) -> float:
    """vecs (P, L, d): mean cosine of a product's translations minus mean cosine across products."""
    P, L, _ = vecs.shape
    flat = vecs.reshape(P * L, -1)
    sims = flat @ flat.T
    owner = np.repeat(np.arange(P), L)
    same = owner[:, None] == owner[None, :]
    np.fill_diagonal(same, False)
    other = owner[:, None] != owner[None, :]
    return float(sims[same].mean() - sims[other].mean())


def test_tuning_pulls_translations_together_and_is_seeded(by_product, tmp_path):
    from encoders.e5 import rebuilt_e5_dir

    pids = sorted(by_product)[:16]
    groups = [[by_product[p][lang] for lang in LANGS3] for p in pids]
    config = TextTuneConfig(steps=4, batch_groups=8, lr=1e-4, threads=1)
    out = tune_text_encoder(rebuilt_e5_dir(), groups, tmp_path / "tuned", config, prefix="passage: ",
                            meta={"name": "tiny-tune"}, progress=False)
    info = read_tune_info(out)
    assert info["groups"] == 16 and info["config"]["steps"] == 4 and len(info["losses"]) == 4
    tuned = load_text_encoder(str(out))
    assert tuned.name == "tiny-tune" and tuned.dim == 384 and info["digest"] in tuned.version
    frozen = load_text_encoder("e5-small")
    texts = [t for g in groups for t in g]
    before = _margin(frozen.encode(texts).reshape(16, 3, -1))
    after_vecs = tuned.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(after_vecs, axis=1), 1.0, atol=1e-5)
    assert _margin(after_vecs.reshape(16, 3, -1)) > before + 0.02  # translations closer, products apart
    again = tune_text_encoder(rebuilt_e5_dir(), groups, tmp_path / "again", config, prefix="passage: ", progress=False)
    assert read_tune_info(again)["losses"] == info["losses"]  # same seed, same run
    np.testing.assert_allclose(load_text_encoder(str(again), reuse=False).encode(texts[:6]), after_vecs[:6], atol=1e-5)
    # a directory re-tuned in place is reloaded, not served stale from this process's encoder cache
    tune_text_encoder(rebuilt_e5_dir(), groups, out, TextTuneConfig(steps=2, batch_groups=8, lr=1e-4, threads=1),
                      prefix="passage: ", meta={"name": "tiny-tune"}, progress=False)
    assert load_text_encoder(str(out)).version != tuned.version
    # a path with `+` in it still works inside a weighted combination
    plus = tmp_path / "c++" / "tuned+1"
    shutil.copytree(again, plus)
    both = load_text_encoder(f"0.5*{plus}+0.5*use-m3")
    assert both.dim == 384 + 512 and [round(w, 2) for w, _ in both.parts] == [0.5, 0.5]


def test_tuning_refuses_bad_groups_and_foreign_output_dirs(tmp_path):
    from encoders.e5 import rebuilt_e5_dir

    with pytest.raises(ValueError, match="at least 2 groups"):
        tune_text_encoder(rebuilt_e5_dir(), [["same", "same"], ["alone"]], tmp_path / "x", progress=False)
    for bad in ({"steps": 0}, {"batch_groups": 1}, {"lr": float("nan")}, {"lr": 0.0}, {"threads": -1}):
        with pytest.raises(ValueError, match="text tuning"):
            TextTuneConfig(**bad)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an earlier tuned model"):
        tune_text_encoder(rebuilt_e5_dir(), [["a", "b"], ["c", "d"]], foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_held_out_rule_and_title_groups(emoji_market):
    from mmrec.embedding.text_model import held_out_from_tuning, title_groups

    pids = set(emoji_market.items["product_id"])
    held = {p for p in pids if held_out_from_tuning(p)}
    assert 0.15 < len(held) / len(pids) < 0.25
    groups = title_groups(emoji_market.items)
    everything = title_groups(emoji_market.items, skip_held_out=False)
    assert len(groups) + len(held) == len(everything) == len(pids)
    rows = list(zip(emoji_market.items["product_id"], emoji_market.items["title"]))
    held_only = {t for p, t in rows if p in held} - {t for p, t in rows if p not in held}
    assert held_only and not held_only & {t for g in groups for t in g}  # held-out titles never reach tuning
    # one distinct title (after stripping) is no pair: nothing to learn from
    assert title_groups([{"product_id": "p", "title": "x"}, {"product_id": "p", "title": " x "}],
                        skip_held_out=False) == []


def test_cli_train_text_on_a_small_catalog(tmp_path, capsys):
    from mmrec.cli import main

    names = {"tea": {"en": "green tea", "de": "grüner Tee"}, "cup": {"en": "coffee cup", "de": "Kaffeetasse"},
             "key": {"en": "door key", "de": "Türschlüssel"}}
    rows = [{"item_id": f"{p}:{lang}", "product_id": p, "title": title, "language": lang}
            for p, by_lang in names.items() for lang, title in by_lang.items()]
    catalog = tmp_path / "shop.jsonl"
    catalog.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "tuned"
    code = main(["train-text", "--catalog", str(catalog), "--out", str(out), "--steps", "2", "--batch-products", "3",
                 "--threads", "1"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["groups"] == 3 and printed["held_out"] == "none" and printed["name"] == "e5-small-tuned[shop]"
    assert load_text_encoder(f"{out}+use-m3", reuse=False).dim == 384 + 512
    lone = tmp_path / "lone.jsonl"
    lone.write_text(json.dumps({"item_id": "a", "product_id": "a", "title": "only one"}))
    assert main(["train-text", "--catalog", str(lone), "--out", str(tmp_path / "o2")]) == 2
    assert "at least 2 products" in capsys.readouterr().err
    assert main(["train-text", "--catalog", str(catalog), "--out", str(out), "--steps", "0"]) == 2


def _has_token(spec: str) -> bool:
    """True if the spec still names the tuned model instead of its directory."""
    from mmrec.embedding.text_model import TUNED

    return any(name == TUNED for _, name in split_weighted(spec))


def test_default_text_encoder_beats_frozen_ones_on_held_out_products(by_product):
    """The shipped default (tuned into the cache on first use, ~5 min) on products kept out of its tuning:
    query in one language, gallery = every product's title in another (4 languages, 12 ordered pairs)."""
    from encoders.text import ConcatEncoder
    from mmrec.embedding.text_model import (
        DEFAULT_TEXT,
        held_out_from_tuning,
        load_text_encoder,
        resolve_text_spec,
    )

    resolved = resolve_text_spec("default")
    assert resolved != "default" and resolve_text_spec(DEFAULT_TEXT) == resolved and not _has_token(resolved)
    assert isinstance(load_text_encoder("default"), ConcatEncoder)  # tuned e5 + USE, a directory in the cache
    langs = ("en", "de", "ja", "fa")
    pids = sorted(p for p, t in by_product.items() if all(lang in t for lang in langs))
    held = np.array([i for i, p in enumerate(pids) if held_out_from_tuning(p)])
    titles = [by_product[p][lang] for p in pids for lang in langs]

    def r1(encoder) -> float:
        vecs = encoder.encode(titles).reshape(len(pids), len(langs), -1)
        hits = []
        for a in range(len(langs)):
            for b in range(len(langs)):
                if a != b:
                    hits.extend((vecs[held, a] @ vecs[:, b].T).argmax(1) == held)
        return float(np.mean(hits))

    default = load_text_encoder("default")
    scores = {name: r1(load_text_encoder(name)) for name in ("e5-small", "use-m3")}
    ours = r1(default)
    assert ours > 1.1 * max(scores.values()), (ours, scores)
