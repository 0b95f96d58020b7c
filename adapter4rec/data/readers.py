"""Readers for the tab-separated dataset layout of Adapter4Rec / IISAN.

``items.tsv``: ``item_id<TAB>title[<TAB>abstract]`` (or just ``item_id`` for image datasets).
``users.tsv``: ``user_id<TAB>item_id item_id ...`` (oldest interaction first).

The readers either return every record of a file or raise ``DataError`` naming the file and line;
they never skip a malformed line silently. Blank lines are the only lines ignored.
"""

import gc
import html
from contextlib import contextmanager
from pathlib import Path

from adapter4rec.errors import ConfigError, DataError

_BOM = b"\xef\xbb\xbf"


class Users(list):
    """The list of ``(user_id, items)`` returned by ``read_users``.

    A plain list to callers; it also remembers the file and the 1-based line of every user
    (``line_numbers``, parallel to the list) so later checks can point at the right line.
    """

    def __init__(self, records=(), line_numbers=(), path=None):
        super().__init__(records)
        self.line_numbers = list(line_numbers)
        self.path = path


@contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while building millions of small lists and tuples.

    They hold no cycles, but their allocation alone keeps triggering full collections, which
    roughly doubles the reading time of a 1M-line file.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _lines(path):
    """Return ``(line_number, text)`` for every non-blank line of a UTF-8 file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found; check data.path, data.users_file and data.items_file",
                        path) from None
    except OSError as e:  # a folder, no permission, ...
        raise DataError(f"cannot read the file ({e.strerror or e})", path) from None
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(f"invalid UTF-8 byte {data[e.start:e.start + 1]!r} at column {column}; "
                        "re-save the file as UTF-8", path, line) from None
    text = text.replace("\r\n", "\n")  # CRLF -> LF (one pass; keeps line numbers)
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if "\r" in text:
        for number, line in lines:
            if "\r" in line:
                # A lone CR is an old-Mac line break or a stray byte; guessing which could merge
                # or split records, so refuse it.
                raise DataError("carriage return (CR) inside a line; use LF or CRLF line endings",
                                path, number)
    return lines


@_gc_paused()
def read_items(path, with_abstract=False):
    """Read an items file into an insertion-ordered ``{item_id: text}``.

    ``text`` is the title with HTML entities unescaped (``with_abstract=True`` appends
    ``" " + abstract`` when the line has one), or ``""`` when the file has no title column.
    """
    lines = _lines(path)
    if not lines:
        raise DataError("no records; the items file is empty", path)
    titled = any("\t" in line for _, line in lines)  # one titled line makes the title column mandatory
    items, first_line = {}, {}
    for number, line in lines:
        parts = line.split("\t")
        if len(parts) > 3:
            raise DataError(
                f"{len(parts)} tab-separated columns, expected at most 3 (item_id, title, abstract); "
                "remove the extra tabs", path, number)
        item_id = parts[0].strip()
        if not item_id:
            raise DataError("empty item id; every line must start with an item id", path, number)
        if len(item_id.split()) > 1:
            # Users files separate item ids by whitespace, so such an id could never be referenced.
            raise DataError(f"item id {item_id!r} contains whitespace; item ids must be single tokens",
                            path, number)
        if item_id in first_line:
            raise DataError(f"duplicate item id {item_id!r} (first on line {first_line[item_id]}); "
                            "item ids must be unique", path, number)
        text = ""
        if titled:
            title = html.unescape(parts[1]).strip() if len(parts) > 1 else ""
            if not title:
                raise DataError(f"item {item_id!r} has an empty title; every line of a titled items "
                                "file needs a non-empty title after a tab", path, number)
            text = title
            if with_abstract and len(parts) == 3:
                abstract = html.unescape(parts[2]).strip()
                if abstract:
                    text = f"{title} {abstract}"
        first_line[item_id] = number
        items[item_id] = text
    return items


def _records(path, key: str, expect: str, empty: str, duplicate: str = ""):
    """``(line number, id, tokens)`` of each line ``id<TAB>token token ...`` of ``path``; a line
    without exactly one tab, an empty id, no token or a repeated id is a ``DataError`` naming the
    file and line (``key``: what the id is; ``expect``: the line format; ``empty``, ``duplicate``:
    the messages' endings)."""
    first_line = {}
    for number, line in _lines(path):
        parts = line.split("\t")
        if len(parts) != 2:
            what = "no tab" if len(parts) == 1 else f"{len(parts) - 1} tabs"
            raise DataError(f"{what}; expected '{expect}' with exactly one tab", path, number)
        rid, tokens = parts[0].strip(), parts[1].split()
        if not rid:
            raise DataError(f"empty {key} id; every line must start with a {key} id", path, number)
        if not tokens:
            raise DataError(f"{key} {rid!r} has {empty}", path, number)
        if rid in first_line:
            raise DataError(f"duplicate {key} id {rid!r} (first on line {first_line[rid]}){duplicate}",
                            path, number)
        first_line[rid] = number
        yield number, rid, tokens


def read_item_features(path):
    """Read an item-features file (``data.item_features``): ``item_id<TAB>feature feature ...``,
    one line per item, features as whitespace-separated tokens (e.g. ``cate=12 brand=3``).

    Returns ``{item_id: [feature, ...]}`` in file order; a line without exactly one tab, with no
    feature, or repeating an item id is a ``DataError`` naming the file and line."""
    out = {}
    for number, item_id, feats in _records(path, "item", "item_id<TAB>feature feature ...",
                                           "no feature after the tab"):
        out[item_id] = feats
    if not out:
        raise DataError("no records; the item-features file is empty", path)
    return out


@_gc_paused()
def read_users(path):
    """Read a users file into a list of ``(user_id, [item_id, ...])`` in file order.

    The returned list is a ``Users`` (a ``list`` subclass) that also carries each user's line number.
    """
    users, numbers = [], []
    for number, user_id, item_ids in _records(
            path, "user", "user_id<TAB>item_id item_id ...",
            "no items after the tab; remove the line or add the user's interactions",
            "; merge the two lines"):
        users.append((user_id, item_ids))
        numbers.append(number)
    if not users:
        raise DataError("no records; the users file is empty", path)
    return Users(users, numbers, path)


def check_known_items(users, items, path, policy="error"):
    """Check that every item id in ``users`` is a key of ``items``.

    ``policy="error"`` raises ``DataError`` naming the unknown ids and their lines (when ``users``
    came from ``read_users``); ``policy="drop"`` removes them, and users left with no items.
    Returns ``(users, n_dropped)``, ``n_dropped`` being the number of interactions removed.
    """
    if policy not in ("error", "drop"):
        raise ConfigError(f"unknown-item policy must be 'error' or 'drop', got {policy!r}")
    numbers = getattr(users, "line_numbers", None)
    has_lines = numbers is not None and len(numbers) == len(users)
    if not has_lines:
        numbers = [None] * len(users)
    # Fast path (set operations in C): nothing to report or drop.
    seen = set().union(*(item_ids for _, item_ids in users))
    if not any(i not in items for i in seen):
        return users, 0
    unknown = {}  # item id -> line numbers (or user ids when lines are unknown), in first-seen order
    for (user_id, item_ids), number in zip(users, numbers):
        for item_id in item_ids:
            if item_id not in items:
                unknown.setdefault(item_id, []).append(number if has_lines else user_id)
    if policy == "error":
        n_interactions = sum(len(v) for v in unknown.values())
        shown = []
        for item_id, where in list(unknown.items())[:5]:
            label = ("line" if has_lines else "user") + ("s" if len(where) > 1 else "")
            places = ", ".join(str(w) for w in where[:5]) + (", ..." if len(where) > 5 else "")
            shown.append(f"{item_id!r} ({label} {places})")
        first_line = next(iter(unknown.values()))[0] if has_lines else None
        raise DataError(
            f"{len(unknown)} item ids ({n_interactions} interactions) are not in the items file: "
            + "; ".join(shown) + ("; ..." if len(unknown) > 5 else "")
            + "; fix the files or use the 'drop' policy to remove them",
            path, first_line)
    kept, kept_numbers, dropped = [], [], 0
    for (user_id, item_ids), number in zip(users, numbers):
        known = [i for i in item_ids if i in items]
        dropped += len(item_ids) - len(known)
        if known:
            kept.append((user_id, known))
            kept_numbers.append(number)
    return (Users(kept, kept_numbers, path) if has_lines else kept), dropped
