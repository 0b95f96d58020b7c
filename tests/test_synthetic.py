import html
from collections import Counter, defaultdict

import pytest
import torch

from adapter4rec.cli import main
from adapter4rec.data import synthetic
from adapter4rec.data.readers import check_known_items, read_items, read_users
from adapter4rec.data.synthetic import make_domain, make_transfer_pair, vocabulary, write_tiny_bert
from adapter4rec.errors import ConfigError


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_transfer_pair(root, seed=3)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def test_deterministic(tmp_path):
    a = make_domain(tmp_path / "a", n_users=50, n_items=40, seed=1)
    b = make_domain(tmp_path / "b", n_users=50, n_items=40, seed=1)
    c = make_domain(tmp_path / "c", n_users=50, n_items=40, seed=2)
    for name in ("items.tsv", "users.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    assert a["item_topics"] == b["item_topics"]
    assert {k: v for k, v in a.items() if k != "path"} != {k: v for k, v in c.items() if k != "path"}


def test_layout_readable(pair):
    source, target = pair
    seen_items = {}
    for folder, prefix, n_users, n_items in [(source, "S", 1000, 400), (target, "T", 600, 300)]:
        raw = (folder / "items.tsv").read_text(encoding="utf-8")
        assert "&amp;" in raw  # the reader has an entity to unescape
        items = read_items(folder / "items.tsv")
        users = read_users(folder / "users.tsv")
        assert (len(items), len(users)) == (n_items, n_users)
        assert check_known_items(users, items, folder / "users.tsv") == (users, 0)
        assert all(i.startswith(prefix) for i in items)
        assert all(5 <= len(seq) <= 20 for _, seq in users)
        assert sum("&" in t for t in items.values()) > 0
        assert not any("&amp;" in t for t in items.values())
        assert len(set(items.values())) > 0.95 * len(items)  # titles tell items apart
        words = set(vocabulary())
        for title in items.values():
            title_words = [w for w in title.split() if w != "&"]
            assert 3 <= len(title_words) <= 6 and set(title_words) <= words
        seen_items[prefix] = set(items)
    assert not seen_items["S"] & seen_items["T"]


def test_domains_share_vocabulary_but_differ(tmp_path):
    s = make_domain(tmp_path / "s", "source", n_users=20, n_items=100)
    t = make_domain(tmp_path / "t", "target", n_users=20, n_items=100)
    shared = set(s["topics"]) & set(t["topics"])
    assert set(s["topics"]) != set(t["topics"]) and len(shared) >= 5
    assert s["interactions"] == sum(len(seq) for _, seq in read_users(tmp_path / "s" / "users.tsv"))


def test_titles_reveal_topic(tmp_path):
    summary = make_domain(tmp_path, n_users=10, n_items=200, seed=5)
    items = read_items(tmp_path / "items.tsv")
    for item_id, title in items.items():
        topic_words = set(synthetic.TOPICS[summary["item_topics"][item_id]])
        words = [w for w in title.split() if w != "&"]
        assert sum(w in topic_words for w in words) > len(words) / 2


def test_next_topic_is_predictable(pair):
    source, _ = pair
    summary = make_domain(source.parent / "check", "source", seed=3)  # same data as `pair`
    topic = summary["item_topics"]
    users = read_users(source / "users.tsv")
    pairs = [(topic[a], topic[b]) for _, seq in users for a, b in zip(seq, seq[1:])]
    half = len(pairs) // 2
    counts = defaultdict(Counter)
    for a, b in pairs[:half]:  # fit on the first half, score on the second
        counts[a][b] += 1
    best = {a: c.most_common(1)[0][0] for a, c in counts.items()}
    accuracy = sum(best.get(a) == b for a, b in pairs[half:]) / (len(pairs) - half)
    n_topics = len(summary["topics"])
    assert accuracy > 4 / n_topics, accuracy


def test_cli_and_bad_arguments(tmp_path, capsys):
    assert main(["synthetic", str(tmp_path / "out"), "--seed", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(read_users(tmp_path / "out" / "target" / "users.tsv")) == 600
    with pytest.raises(ConfigError):
        make_domain(tmp_path / "x", domain="other")
    with pytest.raises(ConfigError):
        make_domain(tmp_path / "x", min_len=5, max_len=4)
    with pytest.raises(ConfigError):
        make_domain(tmp_path / "x", n_items=3)


def test_tiny_bert_loads_offline(tiny_bert, pair, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModel.from_pretrained(tiny_bert, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)
    assert type(model).__name__ == "BertModel" and model.config.max_position_embeddings == 64
    # Every weight comes from the file (nothing freshly initialised on load).
    saved = load_file(f"{tiny_bert}/model.safetensors")
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor), name
    titles = list(read_items(pair[0] / "items.tsv").values())
    batch = tokenizer(titles, padding=True, truncation=True, return_tensors="pt")
    assert tokenizer.unk_token_id not in batch["input_ids"]
    assert tokenizer.tokenize(html.unescape("Guitar &amp; Amp")) == ["guitar", "&", "amp"]
    assert tokenizer.unk_token_id not in tokenizer("Model XK-42 (new)")["input_ids"]
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    assert out.shape[:2] == batch["input_ids"].shape and torch.isfinite(out).all()


def test_tiny_bert_deterministic_and_small(tmp_path):
    a = write_tiny_bert(tmp_path / "a", seed=1)
    b = write_tiny_bert(tmp_path / "b", seed=1)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert (tmp_path / "a" / "model.safetensors").stat().st_size < 2_000_000
    assert a.endswith("a") and b.endswith("b")
