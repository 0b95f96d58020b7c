import numpy as np
import pytest

from adapter4rec.data.batching import TrainBatches, left_pad, unique_index
from adapter4rec.data.split import build_data
from adapter4rec.encoders.id import IdContent
from adapter4rec.errors import ConfigError, DataError


def write(tmp_path, users, items):
    (tmp_path / "users.tsv").write_text("\n".join(users) + "\n", encoding="utf-8")
    (tmp_path / "items.tsv").write_text("\n".join(items) + "\n", encoding="utf-8")
    return tmp_path


@pytest.fixture
def small(tmp_path):
    items = [f"i{n}\ttitle {n}" for n in range(1, 21)]
    users = ["u1\ti1 i2 i3 i4 i5 i6 i7",
             "u2\ti9 i8 i7",                     # too short: dropped (min 5)
             "u3\ti10 i11 i12 i13 i14",
             "u4\t" + " ".join(f"i{n}" for n in range(1, 19))]  # long: keep the last L+3
    return write(tmp_path, users, items)


def test_preprocess_and_split(small):
    d = build_data(small, min_seq_len=5, max_seq_len=4)
    assert d.user_ids == ["u1", "u3", "u4"]
    assert [len(s) for s in d.seqs] == [7, 5, 7]
    # items that occur are numbered 1..N in items-file order; i8, i9 only occur for dropped u2
    assert d.item_ids[:7] == ["i1", "i2", "i3", "i4", "i5", "i6", "i7"]
    assert "i9" not in d.item_ids
    orig = lambda ids: [d.item_ids[i - 1] for i in ids]
    assert orig(d.seqs[2]) == [f"i{n}" for n in range(12, 19)]
    assert orig(d.train_seq(0)) == ["i1", "i2", "i3", "i4", "i5"]
    assert orig([d.target(0, "valid")]) == ["i6"] and orig([d.target(0, "test")]) == ["i7"]
    assert orig(d.history(0, "test")) == ["i1", "i2", "i3", "i4", "i5", "i6"]


def test_too_few_users_and_bad_lengths(small):
    with pytest.raises(DataError, match="at least 2"):
        build_data(small, min_seq_len=10, max_seq_len=4)
    with pytest.raises(ConfigError):
        build_data(small, max_seq_len=0)


def test_left_pad():
    assert left_pad(np.array([1, 2, 3]), 5).tolist() == [0, 0, 1, 2, 3]
    assert left_pad(np.array([1, 2, 3]), 2).tolist() == [2, 3]


def test_unique_index_round_trip():
    a = np.array([[0, 5, 3], [3, 3, 9]])
    b = np.array([7, 5])
    ids, (ai, bi) = unique_index(a, b)
    assert ids.tolist() == [3, 5, 7, 9]
    table = np.concatenate([[0], ids])
    assert (table[ai] == a).all() and (table[bi] == b).all()


@pytest.mark.parametrize("objective", ["bce", "inbatch", "sampled_softmax"])
def test_batches_encode_each_item_once_and_never_padding(small, objective):
    d = build_data(small, min_seq_len=5, max_seq_len=4)
    tb = TrainBatches(d, IdContent(d.n_items), batch_size=3, objective=objective, num_negatives=4, seed=1)
    b = tb[0]
    ids = b["ids"].numpy()
    assert len(np.unique(ids)) == len(ids) and (ids > 0).all()
    table = np.concatenate([[0], ids])
    inp, tgt = table[b["inp"].numpy()], table[b["tgt"].numpy()]
    users = np.random.default_rng([1, 0]).permutation(d.n_users)[:3]  # step 0's users
    for row, u in enumerate(users):
        train = left_pad(d.train_seq(u), 5)
        assert (inp[row] == train[:-1]).all()
        assert (tgt[row] == np.where(train[:-1] > 0, train[1:], 0)).all()  # no target without input
        if objective == "bce":  # one negative per trained position, never from the user's items
            neg = table[b["neg"].numpy()][row]
            assert ((neg > 0) == (tgt[row] > 0)).all()
            assert not np.isin(neg[neg > 0], d.train_seq(u)).any()
    # the same (seed, epoch, step) gives the same batch
    again = tb[0]
    assert all((again[k] == b[k]).all() for k in ("ids", "inp", "tgt"))
