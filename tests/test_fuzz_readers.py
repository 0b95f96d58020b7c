"""Fuzz the readers: on any bytes they return consistent data or raise DataError, nothing else."""

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapter4rec.data.readers import check_known_items, read_items, read_users
from adapter4rec.errors import DataError

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# Fragments that stress the parsers: separators, line ends, odd whitespace, bad UTF-8, entities.
FRAGMENTS = [b"a", b"b", b"u1", b"x y", b"\xc3\xa9", b"&amp;", b"&#10;", b" ", b"\t", b"\n", b"\r",
             b"\r\n", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\xc2\xa0", b"\xe2\x80\xa8", b"\x0c",
             b"\x1c", b"\xc2\x85", b"\x00"]
random_bytes = st.lists(st.sampled_from(FRAGMENTS), max_size=60).map(b"".join)

# Record-shaped files, so that valid files are common too: mostly unique ids and plausible
# fields, sometimes an empty field, a duplicate id or a wrong number of columns.
odd = st.sampled_from(["", " ", " a ", "é", "a b", "x &amp; y", "&nbsp;"])
plain_id = st.integers(0, 40).map(lambda i: f"i{i}")
text = st.sampled_from(["a", "b c", "S1 S2 S3", " x &amp; y ", "é"])
two_fields = st.tuples(st.one_of(plain_id, plain_id, plain_id, odd), st.one_of(text, text, odd))
line = st.one_of(*[two_fields.map("\t".join)] * 4,
                 st.lists(st.one_of(text, odd), min_size=1, max_size=4).map("\t".join))
ending = st.sampled_from(["\n", "\r\n", "\n\n", "\n \n"])
structured = st.tuples(st.booleans(), st.lists(st.tuples(line, ending), min_size=1, max_size=6)).map(
    lambda t: (b"\xef\xbb\xbf" if t[0] else b"") + "".join(l + e for l, e in t[1]).encode())

files = st.one_of(random_bytes, structured, structured, st.binary(max_size=80))


def non_blank_lines(data):
    """The non-blank lines of a file, computed independently of the reader."""
    text = data.decode("utf-8-sig")
    return [l[:-1] if l.endswith("\r") else l for l in text.split("\n") if l.strip()]


@FUZZ
@given(data=files, with_abstract=st.booleans())
def test_read_items_fuzz(tmp_path, data, with_abstract):
    path = tmp_path / "items.tsv"
    path.write_bytes(data)
    try:
        items = read_items(path, with_abstract=with_abstract)
    except DataError as e:
        assert "items.tsv" in str(e)
        event("DataError")
        return
    event("read")
    lines = non_blank_lines(data)
    assert len(items) == len(lines)  # one record per non-blank line, none lost
    assert list(items) == [l.split("\t")[0].strip() for l in lines]
    titled = any("\t" in l for l in lines)
    for item_id, text in items.items():
        assert item_id and not any(c.isspace() for c in item_id)
        assert isinstance(text, str) and (bool(text) == titled)


@FUZZ
@given(data=files)
def test_read_users_fuzz(tmp_path, data):
    path = tmp_path / "users.tsv"
    path.write_bytes(data)
    try:
        users = read_users(path)
    except DataError as e:
        assert "users.tsv" in str(e)
        event("DataError")
        return
    event("read")
    lines = non_blank_lines(data)
    assert len(users) == len(lines)
    assert len({u for u, _ in users}) == len(users)
    for (user_id, items), l in zip(users, lines):
        assert user_id and user_id == l.split("\t")[0].strip()
        assert items and items == l.split("\t")[1].split()
    # Dropping unknown items never fails and keeps only known ones.
    known = {i for _, seq in users for i in seq[::2]}
    kept, dropped = check_known_items(users, known, path, policy="drop")
    assert all(seq and set(seq) <= known for _, seq in kept)
    assert dropped == sum(len(s) for _, s in users) - sum(len(s) for _, s in kept)
