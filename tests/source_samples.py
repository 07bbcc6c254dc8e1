"""Small files in the exact format and compression of every registered source
(`setdpo.data.registry`), and a local HTTP server that serves them under their official
paths (``SETDPO_MIRROR``) with byte ranges, a connection cut after N bytes, or ranges
ignored.

Every family holds the same interactions (`INTERACTIONS`: 6 users x 8 items of 10, times
increasing, ratings 1-5), written the way the source writes them, plus what a conversion
must leave out: one interaction with an item that has no title (``no_title``: 1) and, where
the format can hold one, one record without a user (``incomplete``: 1); Last.fm repeats one
tagging (``duplicate``: 1).
"""

from __future__ import annotations

import ast
import gzip
import http.server
import io
import json
import re
import threading
import urllib.parse
import zipfile
from datetime import UTC, datetime

from setdpo.data.registry import Source

USERS, ITEMS = 6, 10
TITLES = {i: f"Item {i}, part {i % 3} (20{i:02d})" for i in range(1, ITEMS + 1)}
NO_TITLE = 99  # an item whose metadata has no title (or that the metadata lacks)
BASE = 1_300_000_000  # seconds


def interactions() -> list[tuple[int, int, int, int]]:
    """(user, item, rating, time in seconds): user u rates 8 items, one a day."""
    rows = []
    for u in range(1, USERS + 1):
        for j in range(8):
            rows.append((u, (u + 3 * j) % ITEMS + 1, 1 + (u + j) % 5, BASE + 86400 * (8 * u + j)))
    return rows


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode("utf-8"), mtime=0)


def _zip(members: dict[str, str | bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _lines(rows) -> str:
    return "".join(row + "\n" for row in rows)


def _date(seconds: int, fmt: str) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(fmt)


def movielens(name: str) -> dict[str, bytes]:
    rows = interactions()
    if name == "ml-10m":  # ml-10M100K/: "::", no header
        ratings = _lines(f"{u}::{i}::{r}::{t}" for u, i, r, t in rows)
        movies = _lines(f"{i}::{t}::Drama|Comedy" for i, t in TITLES.items())
        members = {"ml-10M100K/ratings.dat": ratings, "ml-10M100K/movies.dat": movies}
    else:  # ml-20m/, ml-32m/: CSV with a header, half stars, quoted titles
        ratings = "userId,movieId,rating,timestamp\n" + _lines(
            f"{u},{i},{r - 0.5 if r > 1 else r},{t}" for u, i, r, t in rows
        )
        movies = "movieId,title,genres\n" + _lines(
            f'{i},"{t}",Drama|Comedy' for i, t in TITLES.items()
        )
        members = {f"{name}/ratings.csv": ratings, f"{name}/movies.csv": movies,
                   f"{name}/links.csv": "movieId,imdbId,tmdbId\n1,0114709,862\n"}  # fmt: skip
    return {f"{name}.zip": _zip(members)}


def amazon2018(category: str) -> dict[str, bytes]:
    rows = interactions() + [(2, NO_TITLE, 5, BASE + 5)]
    ratings = _lines(f"B{i:09d},A{u:013d},{float(r)},{t}" for u, i, r, t in rows)  # no header
    meta = [{"category": ["Video Games"], "title": t, "also_buy": [], "brand": "",
             "asin": f"B{i:09d}", "price": "$9.99"} for i, t in TITLES.items()]  # fmt: skip
    meta.insert(3, {"asin": f"B{NO_TITLE:09d}", "title": "", "brand": "x"})
    meta.append({"asin": "B000000001", "title": "a later title of item 1"})  # repeated asin
    return {
        f"{category}.csv": ratings.encode(),
        f"meta_{category}.json.gz": _gz(_lines(json.dumps(m) for m in meta)),
    }


def amazon2023(category: str) -> dict[str, bytes]:
    rows = interactions() + [(2, NO_TITLE, 5, BASE + 5)]
    ratings = (
        "user_id,parent_asin,rating,timestamp\n"
        + _lines(f"AG{u:010d},B{i:09d},{float(r)},{t * 1000 + 123}" for u, i, r, t in rows)
        + f",B{1:09d},5.0,{BASE * 1000}\n"
    )  # no user: incomplete
    meta = [{"main_category": "Video Games", "title": t, "average_rating": 4.2,
             "features": [], "parent_asin": f"B{i:09d}", "details": {"Brand": "x"}}
            for i, t in TITLES.items()]  # fmt: skip
    return {
        f"{category}.csv.gz": _gz(ratings),
        f"meta_{category}.jsonl.gz": _gz(_lines(json.dumps(m) for m in meta)),
    }


def goodreads(genre: str) -> dict[str, bytes]:
    rows = interactions() + [(2, NO_TITLE, 5, BASE + 5)]
    shelves = [{"user_id": f"{u:032x}", "book_id": str(1000 + i), "review_id": f"{u}{i:030x}",
                "is_read": r > 2, "rating": r - 1, "review_text_incomplete": "",
                "date_added": _date(t, "%a %b %d %H:%M:%S -0700 %Y"),
                "date_updated": _date(t + 60, "%a %b %d %H:%M:%S -0700 %Y"),
                "read_at": "", "started_at": ""} for u, i, r, t in rows]  # fmt: skip
    shelves.append(dict(shelves[0], date_added=""))  # no time: incomplete
    books = [{"isbn": "", "text_reviews_count": "3", "book_id": str(1000 + i), "title": t,
              "title_without_series": t, "popular_shelves": [{"count": "1", "name": "poetry"}]}
             for i, t in TITLES.items()]  # fmt: skip
    return {
        f"goodreads_interactions_{genre}.json.gz": _gz(_lines(json.dumps(s) for s in shelves)),
        f"goodreads_books_{genre}.json.gz": _gz(_lines(json.dumps(b) for b in books)),
    }


def steam() -> dict[str, bytes]:
    rows = interactions() + [(2, NO_TITLE, 5, BASE + 5)]
    reviews = [{"username": f"player {u}", "hours": 1.5 * r, "products": 41,
                "product_id": str(700000 + i), "page_order": 0, "date": _date(t, "%Y-%m-%d"),
                "text": f"it's {'great' if r > 2 else 'bad'}\\n \"quoted\"", "early_access": False,
                "page": 1} for u, i, r, t in rows]  # fmt: skip
    reviews.append({"hours": 1.0, "product_id": "700001", "date": "2017-12-17"})  # no user
    games = [{"publisher": "Kotoshiro", "genres": ["Action", "Indie"], "app_name": t,
              "title": t, "url": "http://store.steampowered.com/app/1/", "release_date":
              "2018-01-04", "discount_price": 4.49, "early_access": False,
              "id": str(700000 + i), "developer": "Kotoshiro"} for i, t in TITLES.items()]  # fmt: skip
    games.append({"app_name": "no id", "title": "no id"})
    for text in map(repr, reviews + games):  # Python literals, as the files hold them
        assert isinstance(ast.literal_eval(text), dict)
    return {
        "steam_reviews.json.gz": _gz(_lines(map(repr, reviews))),
        "steam_games.json.gz": _gz(_lines(map(repr, games))),
    }


def lastfm(friends: int = 0) -> dict[str, bytes]:
    """The HetRec zip (files at its root, tab-separated with a header; times in ms);
    `friends` rows of user_friends.dat, stored uncompressed, make it as large as a test
    needs."""
    rows = interactions() + [(2, NO_TITLE, 5, BASE + 5)]
    tagged = "userID\tartistID\ttagID\ttimestamp\n" + _lines(
        f"{u}\t{i}\t{7 + r}\t{t * 1000}" for u, i, r, t in rows
    )
    u, i, r, t = rows[0]
    tagged += f"{u}\t{i}\t{99}\t{t * 1000}\n"  # the same artist tagged twice at once
    artists = "id\tname\turl\tpictureURL\n" + _lines(
        f"{i}\t{t}\thttp://www.last.fm/music/{i}\thttp://userserve-ak.last.fm/{i}.jpg"
        for i, t in TITLES.items()
    )
    members = {
        "user_taggedartists-timestamps.dat": tagged,
        "artists.dat": artists,
        "tags.dat": "tagID\ttagValue\n1\tmetal\n",
        "user_friends.dat": "userID\tfriendID\n"
        + _lines(f"{n % 2000}\t{n % 1999}" for n in range(friends)),
    }
    method = zipfile.ZIP_STORED if friends else zipfile.ZIP_DEFLATED
    return {"hetrec2011-lastfm-2k.zip": _zip(members, method)}


def sample_files(source: Source) -> dict[str, bytes]:
    """The files of `source` (by their names in the registry), made here."""
    family, _, param = source.name.partition(":")
    if family.startswith("ml-"):
        files = movielens(family)
    else:
        files = {"amazon2018": amazon2018, "amazon2023": amazon2023, "goodreads": goodreads,
                 "steam": lambda _: steam(), "lastfm": lambda _: lastfm()}[family](param)  # fmt: skip
    assert sorted(files) == sorted(f.name for f in source.files)
    return files


# The counts each family's conversion must report (MovieLens: read as it is, none).
LEFT_OUT = {
    "amazon2018": {"read": 49, "incomplete": 0, "no_title": 1},
    "amazon2023": {"read": 50, "incomplete": 1, "no_title": 1},
    "goodreads": {"read": 50, "incomplete": 1, "no_title": 1},
    "steam": {"read": 50, "incomplete": 1, "no_title": 1},
    "lastfm": {"read": 50, "incomplete": 0, "no_title": 1, "duplicate": 1},
}


class FileServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 with HTTP ``Range``; records every
    request's path and Range header in `requests`. `cut[path] = n`: the next response to
    `path` stops after n bytes of its body (the connection closes); `ignore_range`: answer
    200 with the whole file to every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, source: Source, files: dict[str, bytes]) -> None:
        """`files` of `source` under the paths of their official URLs."""
        for file in source.files:
            self.files[urllib.parse.urlsplit(file.url).path] = files[file.name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: FileServer = self.server.state  # type: ignore[attr-defined]
        path, wanted = urllib.parse.urlsplit(self.path).path, self.headers.get("Range")
        state.requests.append((path, wanted))
        body = state.files.get(path)
        if body is None:
            self.send_error(404)
            return
        found = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        start = int(found[1]) if found and not state.ignore_range else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = state.cut.pop(path, None)
        self.wfile.write(body[start:] if cut is None else body[start : start + cut])

    def log_message(self, *args) -> None:
        pass
