"""The text tokenizer: exact round trips, special tokens as single ids, save/load, errors."""

import pytest

from omniar.data.shapeworld.corpus import world_text
from omniar.tokenizers.text import SPECIAL_TOKENS, TextTokenizer


@pytest.fixture(scope="module")
def corpus():
    return list(world_text(300))


@pytest.fixture(scope="module")
def tok(corpus):
    return TextTokenizer.train(corpus, vocab_size=512)


def test_round_trip_is_exact_on_all_world_text_and_beyond(tok, corpus):
    assert all(tok.decode(tok.encode(t)) == t for t in corpus)
    for t in ["Ünïcødé ✓ 漢字 🙂", "  spaces\tand\nnewlines  ", "<boi> typed as text", ""]:
        assert tok.decode(tok.encode(t)) == t


def test_bpe_compresses_the_world(tok, corpus):
    n_bytes = sum(len(t.encode()) for t in corpus)
    n_tokens = sum(len(tok.encode(t)) for t in corpus)
    assert n_tokens < n_bytes / 3


def test_special_tokens_are_single_ids_text_never_produces(tok, corpus):
    ids = {tok.token_id(t) for t in SPECIAL_TOKENS}
    assert len(ids) == len(SPECIAL_TOKENS)
    produced = {i for t in corpus + ["<boi> <eos> <user>"] for i in tok.encode(t)}
    assert not produced & ids
    assert tok.encode("a", bos=True, eos=True) == [tok.bos, *tok.encode("a"), tok.eos]
    assert tok.decode([tok.bos, *tok.encode("a red"), tok.eos]) == "a red"


def test_the_words_it_was_trained_on_name_the_words_a_text_brings_new(tok, corpus, tmp_path):
    from omniar.tokenizers.text import words_of

    assert tok.words == {w for t in corpus for w in words_of(t)} and {"circle", "color", "red"} <= tok.words
    assert tok.unseen_words("what color is the circle?") == []
    assert tok.unseen_words("What colour is the hexagon? Is the colour red?") == ["What", "colour", "hexagon", "Is"]
    tok.save(tmp_path / "t")
    again = TextTokenizer.load(tmp_path / "t")
    assert again.words == tok.words and again.unseen_words("a colour") == ["colour"]
    # a tokenizer.json from elsewhere (or saved before the words were kept): nothing to say
    (tmp_path / "t" / "words.json").unlink()
    assert TextTokenizer.load(tmp_path / "t").unseen_words("a colour") == []
    (tmp_path / "t" / "words.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="corrupt words file .*words.json: expected a list of words"):
        TextTokenizer.load(tmp_path / "t")


def test_save_load_and_errors(tok, tmp_path):
    tok.save(tmp_path)
    again = TextTokenizer.load(tmp_path)
    assert again.encode("a blue star") == tok.encode("a blue star") and again.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="unknown special token"):
        tok.token_id("<video>")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([10**6])
    with pytest.raises(ValueError, match="vocab_size must be"):
        TextTokenizer.train(["a"], vocab_size=100)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="corrupt tokenizer file"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        TextTokenizer.load(tmp_path / "nope")


def test_cli_trains_on_a_manifest_or_a_text_file(tmp_path, capsys):
    import json

    from omniar.cli import main

    (tmp_path / "m.jsonl").write_text(json.dumps({"caption": "a red circle", "question": "what color is it?",
                                                  "answer": "red", "edit": {"instruction": "remove it"},
                                                  "audio": [{"path": "x.wav", "transcript": "a red circle"}]}) + "\n")
    main(["tokenizer", "train", "text", "--data", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "t1"),
          "--vocab-size", "300"])
    assert "5 texts" in capsys.readouterr().out
    (tmp_path / "lines.txt").write_text("hello world\n\nhello there\n")
    main(["tokenizer", "train", "text", "--data", str(tmp_path / "lines.txt"), "--out", str(tmp_path / "t2"),
          "--vocab-size", "300"])
    tok = TextTokenizer.load(tmp_path / "t2")
    assert tok.decode(tok.encode("hello world")) == "hello world"
    with pytest.raises(SystemExit, match="text file not found"):
        main(["tokenizer", "train", "text", "--data", str(tmp_path / "none.txt"), "--out", str(tmp_path / "t3")])
