"""Synthetic datasets in the Adapter4Rec layout, with structure a text-based recommender can learn.

The world: 20 latent topics, each owning 12 common English words (whole tokens for BERT-style
uncased vocabularies), plus shared filler words. An item belongs to one topic and its title is
mostly words of that topic, so the title text reveals the topic. A user's sequence follows a sparse
topic Markov chain (each topic has 2-3 likely next topics), choosing popular items more often.

The source and target domains share the vocabulary and most of the chain but use different item ids
(``S...`` / ``T...``), different (overlapping) topic subsets and different topic popularity, so
knowledge learned on the source transfers to the target without the two being identical.

    adapter4rec synthetic OUT_DIR   # writes OUT_DIR/source and OUT_DIR/target
"""

import random
from pathlib import Path

from adapter4rec.errors import ConfigError

TOPICS = {
    "music": "guitar string amp pedal drum piano violin bass microphone speaker keyboard song",
    "chemistry": "acid tube glass funnel solution lab chemical sample liquid gas metal scale",
    "kitchen": "knife pan pot spoon bowl oven plate cup kettle fork lid cooking",
    "garden": "seed soil plant flower hose shovel rake grass tree leaf garden fence",
    "office": "pen paper desk chair folder printer ink notebook clip file envelope pencil",
    "fitness": "yoga weight bike running ball band gym training jump rope fitness sport",
    "camping": "tent sleeping lantern stove camp fire backpack compass rain outdoor hiking trail",
    "baby": "baby bottle blanket child kids milk sleep infant nursery cradle rattle teddy",
    "pets": "dog cat pet food leash collar fish bird cage treat puppy kitten",
    "electronics": "cable battery phone laptop screen power wireless mouse port usb camera radio",
    "tools": "drill hammer saw screw tool nail blade bit steel wood box jack",
    "beauty": "hair skin face cream oil lip makeup perfume wig beauty powder comb",
    "car": "car tire engine wheel seat brake motor auto driver truck fuel horn",
    "books": "book novel story history guide reading author poetry art science edition page",
    "games": "game card board puzzle player dice video team chess play fun party",
    "clothing": "shirt dress jacket coat shoe hat sock pants cotton wool belt jeans",
    "bathroom": "towel shower bath soap mirror toilet brush sink curtain tile water bathroom",
    "lighting": "lamp bulb led ceiling wall switch bright shade candle glow torch lighting",
    "travel": "luggage bag travel passport pillow case suit trip wallet strap lock map",
    "medical": "medical health blood pressure monitor test glove mask doctor hospital aid nurse",
}
TOPICS = {name: words.split() for name, words in TOPICS.items()}
FILLER = ("premium set pack new small large black white red blue green classic pro mini heavy "
          "portable deluxe basic original best quality home kit extra super double single modern "
          "simple gift").split()

# Chain shape: probability of staying in the same topic, of jumping to one of the topic's few
# successors, and (the rest) of jumping anywhere in the domain.
_STAY, _SUCCESSOR = 0.10, 0.85
_N_SOURCE_TOPICS, _N_TARGET_TOPICS = 16, 14  # out of 20; they overlap in 10 topics
_ENTITY_RATE = 0.08  # share of titles joining two words with "&amp;" (readers unescape it)


def vocabulary():
    """Every word the generator can put in a title (sorted, unique)."""
    return sorted({w for words in TOPICS.values() for w in words} | set(FILLER))


def _world(seed):
    """Topic order and sparse successor lists shared by both domains of a seed."""
    rng = random.Random(f"adapter4rec-world-{seed}")  # str seeds are stable across processes
    names = list(TOPICS)
    order = rng.sample(names, len(names))
    successors = {}
    for t in names:
        nexts = rng.sample([n for n in names if n != t], 3)
        successors[t] = {n: rng.uniform(1.0, 3.0) for n in nexts}
    return order, successors


def _domain_chain(domain, seed, rng):
    """Topics, start weights and transition rows of one domain."""
    order, successors = _world(seed)
    topics = order[:_N_SOURCE_TOPICS] if domain == "source" else order[-_N_TARGET_TOPICS:]
    # Zipf-like topic popularity in a domain-specific order.
    ranked = rng.sample(topics, len(topics))
    start = {t: 1.0 / (r + 1) ** 0.7 for r, t in enumerate(ranked)}
    rows = {}
    for t in topics:
        nexts = {n: w for n, w in successors[t].items() if n in topics}
        while len(nexts) < 2:  # the world's successors may lie outside this domain: add local ones
            n = rng.choice([n for n in topics if n != t and n not in nexts])
            nexts[n] = rng.uniform(1.0, 3.0)
        total = sum(nexts.values())
        row = {n: (1.0 - _STAY - _SUCCESSOR) / len(topics) for n in topics}
        row[t] += _STAY
        for n, w in nexts.items():
            row[n] += _SUCCESSOR * w / total
        rows[t] = row
    return topics, start, rows


def _title(rng, topic, used):
    """A 3-6 word title: 1-2 filler words around words of the item's topic, unique if possible."""
    for _ in range(20):
        n_words = rng.randint(3, 6)
        n_filler = 1 if n_words <= 4 else rng.randint(1, 2)
        words = rng.sample(TOPICS[topic], n_words - n_filler)
        if len(words) >= 2 and rng.random() < _ENTITY_RATE:
            words[-2:] = [f"{words[-2]} &amp; {words[-1]}"]
        filler = rng.sample(FILLER, n_filler)
        title = " ".join(filler[:1] + words + filler[1:])
        if title not in used:
            break
    used.add(title)
    return title


def make_domain(out_dir, domain="source", n_users=1000, n_items=400, seed=0, min_len=5, max_len=20):
    """Write ``out_dir/items.tsv`` and ``out_dir/users.tsv`` for one synthetic domain.

    Returns a summary: ``domain``, ``path``, ``users``, ``items``, ``interactions``, ``topics`` (the
    domain's topics) and ``item_topics`` (item id -> topic name, for checks and analysis).
    """
    if domain not in ("source", "target"):
        raise ConfigError(f"domain must be 'source' or 'target', got {domain!r}")
    if not 1 <= min_len <= max_len:
        raise ConfigError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    n_topics = _N_SOURCE_TOPICS if domain == "source" else _N_TARGET_TOPICS
    if n_items < n_topics or n_users < 1:
        raise ConfigError(f"need n_users >= 1 and n_items >= {n_topics} (one per topic), "
                          f"got n_users={n_users}, n_items={n_items}")
    rng = random.Random(f"adapter4rec-{domain}-{seed}")
    topics, start, rows = _domain_chain(domain, seed, rng)

    # Items: every topic gets at least one, the rest follow topic popularity; ids are shuffled so
    # they do not give the topic away.
    item_topic_list = topics + rng.choices(topics, weights=[start[t] for t in topics],
                                           k=n_items - len(topics))
    rng.shuffle(item_topic_list)
    prefix = "S" if domain == "source" else "T"
    width = len(str(n_items))
    used, titles, item_topics, by_topic = set(), {}, {}, {t: [] for t in topics}
    for i, topic in enumerate(item_topic_list, 1):
        item_id = f"{prefix}{i:0{width}d}"
        titles[item_id] = _title(rng, topic, used)
        item_topics[item_id] = topic
        by_topic[topic].append(item_id)
    # Popularity inside a topic: Zipf-like over a random ranking of its items.
    popularity = {}
    for topic, ids in by_topic.items():
        rng.shuffle(ids)
        popularity[topic] = [1.0 / (r + 1) ** 1.1 for r in range(len(ids))]

    users, width = [], len(str(n_users))
    for u in range(1, n_users + 1):
        topic = rng.choices(topics, weights=[start[t] for t in topics])[0]
        seq = []
        for _ in range(rng.randint(min_len, max_len)):
            for _ in range(10):  # prefer items the user has not seen yet
                item = rng.choices(by_topic[topic], weights=popularity[topic])[0]
                if item not in seq:
                    break
            seq.append(item)
            row = rows[topic]
            topic = rng.choices(list(row), weights=list(row.values()))[0]
        users.append((f"{prefix}U{u:0{width}d}", seq))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.tsv", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{i}\t{t}\n" for i, t in titles.items())
    with open(out / "users.tsv", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{u}\t{' '.join(seq)}\n" for u, seq in users)
    return {"domain": domain, "path": str(out), "users": len(users), "items": len(titles),
            "interactions": sum(len(s) for _, s in users), "topics": topics,
            "item_topics": item_topics}


def make_transfer_pair(root, seed=0, source_users=1000, source_items=400, target_users=600,
                       target_items=300, min_len=5, max_len=20):
    """Write ``root/source`` and ``root/target`` and return their paths."""
    root = Path(root)
    make_domain(root / "source", "source", source_users, source_items, seed, min_len, max_len)
    make_domain(root / "target", "target", target_users, target_items, seed, min_len, max_len)
    return root / "source", root / "target"
