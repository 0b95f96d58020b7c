"""Fuzz the readers: on any bytes they return consistent data or raise DataError, nothing else."""

import html

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



# --- well-formed files load completely ---------------------------------------------------------
# The properties above accept a DataError for any input, so a reader that refused every file
# passed them. These generate only files the format allows (see data/readers.py) and want every
# record back, exactly and in file order.

WELL_FORMED = settings(max_examples=100, deadline=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture])

# An id: no whitespace (the users file splits ids on it), no control character, no BOM (stripped at
# the start of a file) and no surrogate (not encodable as UTF-8).
token = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"),
                              blacklist_characters="\ufeff"), min_size=1, max_size=6)
# Free text: anything but the column and line separators; stripped, as the reader strips fields.
free_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
                    max_size=12).map(str.strip)
pad = st.sampled_from(["", " ", "  ", "\u3000"])     # whitespace around a field, stripped
blank = st.sampled_from(["", "", "\n", " \n", "\r\n", "\t\n"])  # blank lines before a record
eol = st.sampled_from(["\n", "\r\n"])


def assemble(draw, lines):
    """``(bytes, line numbers)`` of a file holding ``lines`` in order, with blank lines, CRLF or
    LF endings, maybe a BOM and maybe no final line end."""
    text, numbers = "", []
    for i, line in enumerate(lines):
        text += draw(blank)
        numbers.append(text.count("\n") + 1)
        text += line + (draw(eol) if i < len(lines) - 1 or draw(st.booleans()) else "")
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    return bom + text.encode("utf-8"), numbers


@st.composite
def items_file(draw):
    """``(bytes, expected {item_id: text}, with_abstract)``: titled (maybe with abstracts) or
    id-only (the image layout)."""
    ids = draw(st.lists(token, min_size=1, max_size=8, unique=True))
    titled, with_abstract = draw(st.booleans()), draw(st.booleans())
    lines, expected = [], {}
    for item_id in ids:
        line, text = draw(pad) + item_id + draw(pad), ""
        if titled:
            # html.escape, because the reader unescapes entities: this title reads back as `title`
            title = draw(free_text.filter(bool))
            line += "\t" + draw(pad) + html.escape(title) + draw(pad)
            text = title
            if draw(st.booleans()):
                abstract = draw(free_text)
                line += "\t" + draw(pad) + html.escape(abstract) + draw(pad)
                if with_abstract and abstract:
                    text = f"{title} {abstract}"
        lines.append(line)
        expected[item_id] = text
    return assemble(draw, lines)[0], expected, with_abstract


@WELL_FORMED
@given(case=items_file())
def test_read_items_well_formed(tmp_path, case):
    data, expected, with_abstract = case
    path = tmp_path / "items.tsv"
    path.write_bytes(data)
    items = read_items(path, with_abstract=with_abstract)
    assert list(items.items()) == list(expected.items())


@st.composite
def users_file(draw):
    """``(bytes, expected [(user_id, items)], line numbers)``; item ids may repeat within and
    across users."""
    user_ids = draw(st.lists(token, min_size=1, max_size=8, unique=True))
    pool = draw(st.lists(token, min_size=1, max_size=10))
    lines, expected = [], []
    for user_id in user_ids:
        seq = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6))
        sep = draw(st.sampled_from([" ", "  ", "\u3000", " \u00a0"]))
        lines.append(draw(pad) + user_id + draw(pad) + "\t" + draw(pad) + sep.join(seq) + draw(pad))
        expected.append((user_id, seq))
    data, numbers = assemble(draw, lines)
    return data, expected, numbers


@WELL_FORMED
@given(case=users_file())
def test_read_users_well_formed(tmp_path, case):
    data, expected, numbers = case
    path = tmp_path / "users.tsv"
    path.write_bytes(data)
    users = read_users(path)
    assert list(users) == expected
    assert users.line_numbers == numbers
