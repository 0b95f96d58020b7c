import pickle
from pathlib import Path

import pytest

from adapter4rec.data.readers import check_known_items, read_items, read_users
from adapter4rec.errors import Adapter4RecError, ConfigError, DataError

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# --- well-formed files -------------------------------------------------------------------------

def test_items_bom_crlf_entities_blank_lines(tmp_path):
    path = write(tmp_path, "items.tsv",
                 b"\xef\xbb\xbfA1\tSalt &amp; Pepper\r\n\r\n   \r\n  B2 \t  Caf\xc3\xa9 grinder  \r\n"
                 b"\t \nC3\t&lt;tube&gt; &#39;x&#39;\r\n")
    assert read_items(path) == {"A1": "Salt & Pepper", "B2": "Café grinder", "C3": "<tube> 'x'"}
    assert list(read_items(path)) == ["A1", "B2", "C3"]  # file order


def test_items_abstract_column(tmp_path):
    path = write(tmp_path, "news.tsv", "N1\tTitle one\tAbstract &amp; more\nN2\tTitle two\t\nN3\tTitle three\n")
    assert read_items(path) == {"N1": "Title one", "N2": "Title two", "N3": "Title three"}
    assert read_items(path, with_abstract=True) == {
        "N1": "Title one Abstract & more", "N2": "Title two", "N3": "Title three"}


def test_items_one_column_image_layout(tmp_path):
    path = write(tmp_path, "images.tsv", "img1\r\nimg2\n\n img3 \n")
    assert read_items(path) == {"img1": "", "img2": "", "img3": ""}


def test_users_well_formed(tmp_path):
    path = write(tmp_path, "users.tsv",
                 b"\xef\xbb\xbfu1\ta b  c\r\n\r\nu2\t d \r\n   \n u3 \tc a\n")
    users = read_users(path)
    assert users == [("u1", ["a", "b", "c"]), ("u2", ["d"]), ("u3", ["c", "a"])]
    assert isinstance(users, list) and users.line_numbers == [1, 3, 5]


# --- malformed files: DataError with file name and 1-based line ------------------------------

ITEM_CASES = {
    "non_utf8": (b"A\tok\nB\tfine\nC\tbad \xff byte\n", 3, "UTF-8"),
    "non_utf8_after_bom_crlf": (b"\xef\xbb\xbfA\tok\r\n\r\nC\t\xc3(\r\n", 3, "UTF-8"),
    "duplicate_id": ("A\tx\nB\ty\n\nA\tz\n", 4, "line 1"),
    "empty_id": ("A\tx\n\tno id\n", 2, "empty item id"),
    "whitespace_id": ("A\tx\n \t title\n", 2, "empty item id"),
    "too_many_columns": ("A\tx\nB\ty\tabs\textra\n", 2, "columns"),
    "empty_title": ("A\tx\nB\t\n", 2, "empty title"),
    "whitespace_title": ("A\tx\nB\t   \t abstract\n", 2, "empty title"),
    "entity_only_space_title": ("A\tx\nB\t&nbsp;\n", 2, "empty title"),
    "one_column_in_titled_file": ("A\tx\nB\nC\tz\n", 2, "empty title"),
    "one_column_before_titled_line": ("A\nB\tx\n", 1, "empty title"),
    "space_in_id": ("A\tx\nB C\ty\n", 2, "whitespace"),
    "stray_cr": ("A\tx\nB\ty\rC\tz\n", 2, "carriage return"),
}


@pytest.mark.parametrize("data, line, fragment", ITEM_CASES.values(), ids=ITEM_CASES.keys())
def test_items_malformed(tmp_path, data, line, fragment):
    path = write(tmp_path, "bad_items.tsv", data)
    with pytest.raises(DataError) as info:
        read_items(path)
    assert f"bad_items.tsv:{line}: " in str(info.value)
    assert fragment in str(info.value)
    assert info.value.line == line


def test_duplicate_item_names_both_lines(tmp_path):
    path = write(tmp_path, "items.tsv", "A\tx\nB\ty\n\nA\tz\n")
    with pytest.raises(DataError, match=r"items.tsv:4: duplicate item id 'A' \(first on line 1\)"):
        read_items(path)


USER_CASES = {
    "no_tab": ("u1\ta b\nu2 a b\n", 2, "no tab"),
    "empty_user_id": ("u1\ta\n\tb c\n", 2, "empty user id"),
    "whitespace_user_id": ("u1\ta\n  \tb c\n", 2, "empty user id"),
    "no_items": ("u1\ta\nu2\t\n", 2, "no items"),
    "whitespace_items": ("u1\ta\nu2\t   \n", 2, "no items"),
    "two_tabs": ("u1\ta\n\nu2\ta\tb\n", 3, "2 tabs"),
    "duplicate_user": ("u1\ta\nu2\tb\nu1\tc\n", 3, "first on line 1"),
    "non_utf8": (b"u1\ta\nu2\tb\nu3\t\xe9t\xe9\n", 3, "UTF-8"),
    "stray_cr": ("u1\ta\ru2\tb\n", 1, "carriage return"),
}


@pytest.mark.parametrize("data, line, fragment", USER_CASES.values(), ids=USER_CASES.keys())
def test_users_malformed(tmp_path, data, line, fragment):
    path = write(tmp_path, "bad_users.tsv", data)
    with pytest.raises(DataError) as info:
        read_users(path)
    assert f"bad_users.tsv:{line}: " in str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize("reader", [read_items, read_users])
@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\n\r\n  \n\t\n"])
def test_empty_files(tmp_path, reader, data):
    path = write(tmp_path, "empty.tsv", data)
    with pytest.raises(DataError, match="empty.tsv: .*empty"):
        reader(path)


# --- unknown items -----------------------------------------------------------------------------

def _unknown_setup(tmp_path):
    items = read_items(write(tmp_path, "items.tsv", "a\tA\nb\tB\n"))
    users = read_users(write(tmp_path, "users.tsv",
                             "u1\ta x1 b\n\nu2\tx2 x3\nu3\tx4 x5 x6 a\nu4\tx1\nu5\tb a\n"))
    return items, users


def test_unknown_items_error(tmp_path):
    items, users = _unknown_setup(tmp_path)
    with pytest.raises(DataError) as info:
        check_known_items(users, items, tmp_path / "users.tsv")
    msg = str(info.value)
    assert "users.tsv:1: " in msg
    assert "6 item ids (7 interactions)" in msg
    assert "'x1' (lines 1, 5)" in msg and "'x2' (line 3)" in msg and "'x5' (line 4)" in msg
    assert "'x6'" not in msg  # only the first five are listed


def test_unknown_items_drop(tmp_path):
    items, users = _unknown_setup(tmp_path)
    kept, dropped = check_known_items(users, items, "users.tsv", policy="drop")
    assert kept == [("u1", ["a", "b"]), ("u3", ["a"]), ("u5", ["b", "a"])]
    assert dropped == 7
    assert kept.line_numbers == [1, 4, 6]
    assert users[1] == ("u2", ["x2", "x3"])  # input untouched


def test_known_items_pass_through_and_plain_lists(tmp_path):
    items = {"a": "A", "b": "B"}
    plain = [("u1", ["a", "b"])]
    assert check_known_items(plain, items, "users.tsv") == (plain, 0)
    with pytest.raises(DataError, match=r"users.tsv: 1 item ids .*'z' \(user u2\)"):
        check_known_items(plain + [("u2", ["z"])], items, "users.tsv")
    assert check_known_items(plain + [("u2", ["z"])], items, "u", policy="drop") == (plain, 1)


def test_unknown_policy_is_config_error(tmp_path):
    items, users = _unknown_setup(tmp_path)
    with pytest.raises(ConfigError, match="'ignore'"):
        check_known_items(users, items, "users.tsv", policy="ignore")


# --- errors --------------------------------------------------------------------------------------

def test_error_hierarchy_and_format():
    assert issubclass(DataError, Adapter4RecError) and issubclass(DataError, ValueError)
    assert issubclass(ConfigError, ValueError)
    assert str(DataError("bad", "f.tsv", 3)) == "f.tsv:3: bad"
    assert str(DataError("bad", "f.tsv")) == "f.tsv: bad"
    assert str(DataError("bad")) == "bad"
    copy = pickle.loads(pickle.dumps(DataError("bad", "f.tsv", 3)))
    assert (str(copy), copy.path, copy.line) == ("f.tsv:3: bad", "f.tsv", 3)


# --- real data -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, n_users, n_interactions, n_items", [
    ("amazon-scientific", 12_076, 85_211, 20_825),
    ("amazon-instrument", 10_000, 83_828, 33_921),
])
def test_real_datasets(name, n_users, n_interactions, n_items):
    folder = DATASETS / name
    if not folder.is_dir():
        pytest.skip(f"real dataset folder {folder} is absent (see shared/datasets/README.md)")
    items = read_items(folder / "items.tsv")
    users = read_users(folder / "users.tsv")
    assert len(users) == n_users
    assert sum(len(seq) for _, seq in users) == n_interactions
    assert len(items) == n_items
    assert min(len(seq) for _, seq in users) == 5
    assert check_known_items(users, items, folder / "users.tsv") == (users, 0)
    assert not any("&amp;" in t for t in items.values())
