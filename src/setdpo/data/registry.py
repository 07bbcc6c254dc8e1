"""The registry of named sources: what `setdpo data download NAME` fetches and `data prepare
--source NAME` reads.

One `Source` per name holds everything the other modules need: the files (`RemoteFile`: URL,
size and SHA-256 where a published value was found), a license note printed before
downloading, the column map of the interactions (`InteractionMap`) and of the titles
(`TitleMap`), the prompt domain and the preprocessing the papers on the source usually
apply (`usual`: `--preprocess usual`). `setdpo.data.download` fetches the files,
`setdpo.data.convert` turns them into the two tables the engine reads, `setdpo.data.sources`
hands those to `setdpo.data.engine`. Names with a parameter (``amazon2023:Video_Games``,
``goodreads:poetry``) are checked against the known categories here.

Digests: each known SHA-256 below was found in public code that downloads and checks that
file (the comment beside each table names where); none was computed here, which has no
network. Files without one say None and are fetched only with an expected digest
(``--sha256``) or ``--no-checksum``; the digest of what was fetched is printed to pin it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from setdpo.errors import InputError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a source: its official address, size in bytes and SHA-256 (None: no
    published value found)."""

    url: str
    sha256: str | None = None
    size: int | None = None

    @property
    def name(self) -> str:
        """The file's name in the cache (the last part of the URL)."""
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Layout:
    """How a downloaded file holds a table: `file` (a `RemoteFile.name`), the `member`
    inside it when it is a zip (matched by its base name), its `format` (csv | tsv | dat
    (GroupLens ``::``) | jsonl | pyliteral: one Python dict literal a line, read with
    `ast.literal_eval`) and its column `names` when it has no header. A ``.gz`` file is
    read decompressed."""

    file: str
    format: str
    member: str | None = None
    names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class InteractionMap:
    """The interaction table: its columns and how its time is written: ``s`` (Unix
    seconds), ``ms`` (milliseconds) or a `strptime` pattern. `distinct`: one interaction
    per (user, item, time), repeats dropped and counted."""

    layout: Layout
    user: str
    item: str
    rating: str | None
    time: str
    time_format: str = "s"
    distinct: bool = False


@dataclass(frozen=True)
class TitleMap:
    """Where the titles are: the item id and title columns (the first non-empty title of an
    id is kept; interactions with items that have none are dropped and counted)."""

    layout: Layout
    item: str
    title: str


@dataclass(frozen=True)
class Source:
    """A registered source (`resolve`). `converted`: read through `setdpo.data.convert`
    (Parquet in the cache); otherwise the extracted files are read as they are."""

    name: str
    description: str
    files: tuple[RemoteFile, ...]
    license: str
    interactions: InteractionMap
    titles: TitleMap
    domain: str
    folder: str  # under the cache: the downloaded files, and the tables read from them
    converted: bool = True
    usual: tuple[tuple[str, Any], ...] = ()  # PrepareConfig fields `--preprocess usual` sets

    def file(self, name: str) -> RemoteFile:
        return next(f for f in self.files if f.name == name)


@dataclass(frozen=True)
class Family:
    """Sources sharing a format: `build(param)` makes the `Source` of one category (or the
    only one when `params` is empty)."""

    name: str
    summary: str
    license: str
    params: tuple[str, ...]
    build: Callable[[str | None], Source]
    param_kind: str = "category"
    example: str = "Video_Games"  # the parameter shown in messages and listings

    @property
    def param_plural(self) -> str:
        return {"category": "categories"}.get(self.param_kind, self.param_kind + "s")


# SASRec (Kang & McAuley 2018, section 4.1) on Amazon, Steam and MovieLens: "discard users
# and items with fewer than 5 related actions"; here iterated to a fixed point (k-core).
FIVE_CORE = (("kcore", 5),)

# --- MovieLens (GroupLens) ----------------------------------------------------------------

GROUPLENS = "https://files.grouplens.org/datasets/movielens"
MOVIELENS_LICENSE = (
    "MovieLens (GroupLens, University of Minnesota): research use only; cite Harper & "
    "Konstan 2015 (ACM TiiS 5(4)); no redistribution and no commercial use without "
    "permission (README in the zip)"
)
# ml-20m.zip: size and SHA-256 from tensorflow/datasets tensorflow_datasets/url_checksums/
# movielens.txt (also ISG-Siegen/OmniRec src/omnirec/data_loaders/movielens_large.py). No
# SHA-256 of ml-10m.zip or ml-32m.zip was found (GroupLens publishes MD5 only). ml-20m's size is
# also Academic Torrents' (torrent 296054417b4d8eeeb4c7b1c842570bf792ee4d14). GroupLens prints
# only rounded sizes for ml-10m.zip (63 MB) and ml-32m.zip (239 MB); those are in docs/data.md,
# not here, as the downloader checks `size` exactly.
MOVIELENS = {
    # name: (sha256, size, ratings file, movies file, format, ratings in the README)
    "ml-10m": (None, None, "ratings.dat", "movies.dat", "dat", "10,000,054"),
    "ml-20m": (
        "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
        198702078,
        "ratings.csv",
        "movies.csv",
        "csv",
        "20,000,263",
    ),
    "ml-32m": (None, None, "ratings.csv", "movies.csv", "csv", "32,000,204"),
}


def _movielens(name: str) -> Source:
    sha256, size, ratings, movies, fmt, count = MOVIELENS[name]
    dat = fmt == "dat"
    zip_file = RemoteFile(f"{GROUPLENS}/{name}.zip", sha256, size)
    user, item, rating, time = ("user", "item", "rating", "timestamp") if dat else (
        "userId", "movieId", "rating", "timestamp")  # fmt: skip
    inter = Layout(zip_file.name, fmt, ratings, (user, item, rating, time) if dat else None)
    items = Layout(zip_file.name, fmt, movies, ("item_id", "title", "genres") if dat else None)
    return Source(
        name,
        f"MovieLens {name[3:].upper()} ({count} ratings, GroupLens)",
        (zip_file,),
        MOVIELENS_LICENSE,
        InteractionMap(inter, user, item, rating, time),
        TitleMap(items, "item_id" if dat else "movieId", "title"),
        "movie",
        "grouplens",  # the zip; read from grouplens/<name>/ once extracted
        converted=False,
        usual=FIVE_CORE,
    )


# --- Amazon Reviews 2018 (Ni, Li & McAuley 2019) ---------------------------------------------

AMAZON2018 = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2"
AMAZON2018_LICENSE = (
    "Amazon Review Data 2018 (Ni, Li & McAuley, EMNLP 2019; UCSD McAuley lab): research "
    "use; cite the paper; terms on https://cseweb.ucsd.edu/~jmcauley/datasets/amazon_v2/"
)
# The "ratings only" CSV of each category (item,user,rating,timestamp, no header): SHA-256
# from ISG-Siegen/OmniRec src/omnirec/data_loaders/amazon2018.py (these URLs). The metadata
# files (titles) have none.
AMAZON2018_RATINGS = {
    "AMAZON_FASHION": "c72e84207601cd00840a91b9b4433c60b8be800a27aa86991f5cb57f29b99825",
    "All_Beauty": "b3d9260771f9fe489a61180b9ff407e15e10f481a287848f69bc4709b669246f",
    "Appliances": "35af90b093508f4a811d259b71b94d45b2f67b0daf3d702203d29ff6b16b1e28",
    "Arts_Crafts_and_Sewing": "ab42ec44840c130b8bcb1993bad37021b5ff98f3aae55a120c2a0d0624be3be5",
    "Automotive": "3cb4182e6623f1ac4511cf02a46c5ba11b761fa6d7feead7922199603f9d35df",
    "Books": "2ff13d9763d38118851d8f8a4ab530f958e08ad48aa764c2d9bbe16ec227a3b8",
    "CDs_and_Vinyl": "daedcfb79310479728f11cc1e66d49ec6dccdec124222391bf6f4f69ca5092db",
    "Cell_Phones_and_Accessories": "c05835e7a7f7a1b0bab4fe4f2dbabecb102fde22de579758d10d36973d8b6a14",
    "Clothing_Shoes_and_Jewelry": "8b78d8a965e2351468deeebe99edb6118561711be4d5b6294e24e25f910c4d3d",
    "Digital_Music": "a73f1504ed58fdc3533a6817b4c89fc4f722eb46dc18f94a4566a4b171439c9c",
    "Electronics": "1ce756643c0abed1b0d8a0738e67fc2510f3086d2bd52567942e18582dd01791",
    "Gift_Cards": "e360486b46b7eef5f2ed3ecc0a486f15097b7600fbee4079632418496802704a",
    "Grocery_and_Gourmet_Food": "9652d130382a3f1fcbfffffcaf3b8474e2649be034fbea8b0281b78424b65d40",
    "Home_and_Kitchen": "618e6c4493bcdd147a2bf3015bc0835dfedbc03570fba7d89335d9cd360069eb",
    "Industrial_and_Scientific": "29e194947309c1a0e81f0f9646fd6f63959949dbd807ea327e07074f35376a30",
    "Kindle_Store": "f2fac32f72f51857f164c2c1671db141f06b2649608ebf1af2efba02a2fb219b",
    "Luxury_Beauty": "5e1ab08a0147412d6a15ab4b8259df7fbc1fe09c747ba5c46486081ee4d68d24",
    "Magazine_Subscriptions": "40287d71ee0c49030ee222888fb21a95941c2c31344e15bdd2e58e0f63831c2d",
    "Movies_and_TV": "c7a6ca7769a34fd0d335e1cd25e359c18a8fcd474515f8b62986297e35b5fc4f",
    "Musical_Instruments": "8933b17434e4984bcce8cf4ec43d847e0af6aa6d46add28bbb37b80e06da1b06",
    "Office_Products": "2e24f3df092efc71fa4dea41162c7c1ab2d46bc53c4cace63794a3a66dc6d82f",
    "Patio_Lawn_and_Garden": "103438afc6ddb6a9416b94804bf86251b7d3b15bdf6cc50e90d6787008f08e31",
    "Pet_Supplies": "dac12cc077131bdf1c951cc0cc2016d6381e6b52eb65a3cb98456ce82a3c6bd9",
    "Prime_Pantry": "ed55b1f239c4ec3402fdd15a603a4b84210177678c36c01db59487a8fddf685c",
    "Software": "86d2ec7712b4c979bf7e7e984d39989b610c9f0e4ba4fc02c6aac7dcd9a15583",
    "Sports_and_Outdoors": "da8d746f1602d5ff01d4056c8f55b228996a30d40069b658d71388b0bf3df5d6",
    "Tools_and_Home_Improvement": "1406d988afa38c62aeba1e6b33dada18a570fa6d8dd59cbc6e5229f8ecae0db0",
    "Toys_and_Games": "cfdf96d55b3d923c913f3b139e7fabdc20360989db38527ef5947982aa246d45",
    "Video_Games": "c3fec1cce4ee67f0d51f8b53a7e294d8bbe6f75ca1d8732256e900b3c46606d8",
}  # fmt: skip
# The prompt domain of the categories that have one (the rest: generic).
AMAZON_DOMAINS = {"Books": "book", "Kindle_Store": "book", "CDs_and_Vinyl": "music",
                  "Digital_Music": "music", "Movies_and_TV": "movie"}  # fmt: skip


# --- Amazon Reviews 2023 (Hou et al. 2024) -------------------------------------------------

AMAZON2023 = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023"
AMAZON2023_LICENSE = (
    "Amazon Reviews 2023 (Hou et al., 'Bridging Language and Items for Retrieval and "
    "Recommendation', 2024; UCSD McAuley lab): research use; cite the paper; terms on "
    "https://amazon-reviews-2023.github.io/"
)
# The lab's rating-only extract of each category's reviews (benchmark/0core/rating_only:
# user_id,parent_asin,rating,timestamp in ms, the fields of the reviews' .jsonl.gz without
# the text): SHA-256 from ISG-Siegen/OmniRec src/omnirec/data_loaders/amazon2023.py (these
# URLs). The metadata files (raw/meta_categories, titles) have none.
AMAZON2023_RATINGS = {
    "All_Beauty": "54b894e68ad965aa73cdb80d8695c1ed37679c46f38b6f97b21ab0fb585aab24",
    "Amazon_Fashion": "7d08f3ad3ec331eb95cabf5a85c8e65f82f958429a17131e6d391f54532c0310",
    "Appliances": "0096701a2521a5fc71c5cfca11e953b0eb48a94a1b6ee4be65cb680c1fd56976",
    "Arts_Crafts_and_Sewing": "05ca786b3f99269ba659d71891b55d23e37bd74ab6cec0b53214ccb656308bb3",
    "Automotive": "9dda260d1d2cb91d0f967d0b4bfa0a09fda2904432023234569e45a6a30c48d3",
    "Baby_Products": "e2a8d0498afed767ee2615db7fac549559d82490b1a73c7241b84b5e9e8c279e",
    "Beauty_and_Personal_Care": "dd89a914e8c71d811c49a7e8fbdfc251c08bffb461b9544275e94018cb17f741",
    "Books": "752e144c1d3804619711a6b21bd68a5505825064723bfcd5008ac26067abe04b",
    "CDs_and_Vinyl": "1bade4e428efcffb549b6b7cb1f62a8cde9644e19a981a210b11a4c9c1561e75",
    "Cell_Phones_and_Accessories": "1f6df616b0ae463c039f68c7082daec52d2c713b33adb57b85db3430a8e2373a",
    "Clothing_Shoes_and_Jewelry": "ee93396e811c03d077290b78e323228c58814a034e3e98d0339e5314d7f7a9a7",
    "Digital_Music": "dbd5ddd5398d0eb9cfe224c9cc60470ccfd9c55e76fc82653dd3f44f6796c2a1",
    "Electronics": "2ac3508c5d0ee55ed9fdc833629f751e0f0120b9a8cb30867c8c14b87911c170",
    "Gift_Cards": "abfd9636afc5cdc1f46082ac1f9661b7c617cbd9c8a75652ad6a567173a14807",
    "Grocery_and_Gourmet_Food": "4cb2da7f57dfe210eecf348ee16514d11460022f0ce4ed141aa66e3eb5410135",
    "Handmade_Products": "b024e3e4cb1b1f4c9cfbb44a506ea42f8b8430ee8caf0dfa69fef52b69ece408",
    "Health_and_Household": "0a8982f9915bd18ea61caf4341db95c3fe1478abee907e6a61fec838374d2dca",
    "Health_and_Personal_Care": "5516d99b9747abff99003a7e1518833c2d64b10196201b6e6e90673bee15964d",
    "Home_and_Kitchen": "9be4e2dc8b3dc513c02521644b2ae55f722b2941767e539dcfe518f6bdd4f70b",
    "Industrial_and_Scientific": "97aea590deb258f634caea04b63f038dceb5990bbc92cac87ce2a985f0f91595",
    "Kindle_Store": "ff546c451edfb403d10099912b816b11600e689a599621167d4847331fdc0a0d",
    "Magazine_Subscriptions": "4892619d97f810331c2a278176b2be616de10403be59e48efbe65c5c1e7904d2",
    "Movies_and_TV": "aa927ae5a4fc5262bfa6152ce522349f828760035242fd7e02b1dc139e867156",
    "Musical_Instruments": "042648a89f479aaa2af4664dcb49966dbaf07bd5ebab6957799f5fb4c5efa2e0",
    "Office_Products": "f91b5cfb6ed5ff52afe3e2f3ecc7918cbd8745b3241a8fc61011c3a41f23920b",
    "Patio_Lawn_and_Garden": "a1ea496e71e488c6b12823d479ed6375384b82f6794b38e66d12a5dcd20c392d",
    "Pet_Supplies": "cfc55406a1fbb507e4adfa18472e60a5de52fab3dd76f97fea25d30da1288003",
    "Software": "11687bdbedc0bfd9bf86368465dcab40f2450d1ea8eabd3c830ba8b339edd9c0",
    "Sports_and_Outdoors": "110617511c7303ca34d157b7d62fd20a02e412c3639b4c6e307a951fadf0414c",
    "Subscription_Boxes": "fb867ee253db3987ab3ceaf371da506df794b08c98cf9a99e9718d9e4e818188",
    "Tools_and_Home_Improvement": "5845ac062a2c165d540badac13f00a8cb8cdaa30deb670a9b41db19d92c6bd1d",
    "Toys_and_Games": "170fc8a18797c6091cf1b07bb3d97c13c94bfa030cf76c430bb8cac0dfb47a9f",
    "Video_Games": "30692f9806e33a7b5d8b599b73d7ca33dbfefb0abdfc1578052a101f2e64b3cd",
    "Unknown": "864c1dfa8b215a9a09fe0d17c7abc15f2da97078bc9acc7911783f2447016e10",
}  # fmt: skip


def _amazon(year: str, category: str) -> Source:
    """Amazon 2018 or 2023: the ratings file of `category` and its metadata (titles)."""
    if year == "2018":
        ratings = RemoteFile(
            f"{AMAZON2018}/categoryFilesSmall/{category}.csv", AMAZON2018_RATINGS[category]
        )
        meta = RemoteFile(f"{AMAZON2018}/metaFiles2/meta_{category}.json.gz")
        layout = Layout(ratings.name, "csv", names=("item", "user", "rating", "timestamp"))
        inter = InteractionMap(layout, "user", "item", "rating", "timestamp")  # no header
        what, item, license = "ratings-only CSV", "asin", AMAZON2018_LICENSE
    else:
        ratings = RemoteFile(
            f"{AMAZON2023}/benchmark/0core/rating_only/{category}.csv.gz",
            AMAZON2023_RATINGS[category],
        )
        meta = RemoteFile(f"{AMAZON2023}/raw/meta_categories/meta_{category}.jsonl.gz")
        inter = InteractionMap(Layout(ratings.name, "csv"), "user_id", "parent_asin", "rating",
                               "timestamp", "ms")  # fmt: skip
        what, item, license = "rating-only CSV", "parent_asin", AMAZON2023_LICENSE
    return Source(
        f"amazon{year}:{category}",
        f"Amazon Reviews {year}, {category}: {what}, titles from the metadata",
        (ratings, meta),
        license,
        inter,
        TitleMap(Layout(meta.name, "jsonl"), item, "title"),
        AMAZON_DOMAINS.get(category, "generic"),
        f"amazon{year}/{category}",
        usual=FIVE_CORE,
    )


# --- Goodreads (Wan & McAuley 2018) ----------------------------------------------------------

GOODREADS = "https://mcauleylab.ucsd.edu/public_datasets/gdrive/goodreads/byGenre"
GOODREADS_LICENSE = (
    "UCSD Goodreads (Wan & McAuley, RecSys 2018; Wan et al., ACL 2019): academic use only; "
    "cite the papers; terms on https://mengtingwan.github.io/data/goodreads"
)
# goodreads_interactions_<genre>.json.gz: SHA-256 from ISG-Siegen/OmniRec
# src/omnirec/data_loaders/goodreads.py (these URLs). The books files (titles) have none.
GOODREADS_INTERACTIONS = {
    "children": "d8ce59259e45262b3322bd87f5c2a13228cd8bb659332414a05660aed7cd7c71",
    "comics_graphic": "b55fbe66c2c802cefad5051808724d5074e342d6a4004309595a972702a62f4d",
    "fantasy_paranormal": "ec6a2444c13aa05b056988ac2671c5d643883c9aca0d8f9e46e413fc5773fa4b",
    "history_biography": "c08c7ebe477807556d4f92b75ba146916f2ae49e3ed269e3966fd9ca4ce517ca",
    "mystery_thriller_crime": "9c3c179ce5e5612cf72dc7aa2e570b49ab655b42a44cb8e9ddd5697393c43c4f",
    "poetry": "65fb9777f5e482695f0e4b71ef9884f6a7e5ab31c224dabc7ae0c2dcd60e49de",
    "romance": "3dde6e1dae8ebb7384f849e4378f5f294cbd6385abeac238aea2ce7e66e0faf0",
    "young_adult": "6d03182383f10e1eec36ac0a972533806518e2a082089867e3deb941ed77d6c4",
}


def _goodreads(genre: str) -> Source:
    shelves = RemoteFile(
        f"{GOODREADS}/goodreads_interactions_{genre}.json.gz", GOODREADS_INTERACTIONS[genre]
    )
    books = RemoteFile(f"{GOODREADS}/goodreads_books_{genre}.json.gz")
    return Source(
        f"goodreads:{genre}",
        f"UCSD Goodreads, {genre}: shelved books (rating 0: not rated), titles from the books",
        (shelves, books),
        GOODREADS_LICENSE,
        # date_added: "Thu Dec 17 11:23:14 -0800 2015", when the book was shelved
        InteractionMap(
            Layout(shelves.name, "jsonl"),
            "user_id",
            "book_id",
            "rating",
            "date_added",
            "%a %b %d %H:%M:%S %z %Y",
        ),
        TitleMap(Layout(books.name, "jsonl"), "book_id", "title"),
        "book",
        f"goodreads/{genre}",
        usual=FIVE_CORE,
    )


# --- Steam (Kang & McAuley 2018) -------------------------------------------------------------

STEAM = "https://cseweb.ucsd.edu/~wckang"
STEAM_LICENSE = (
    "Steam (Kang & McAuley, ICDM 2018 'Self-Attentive Sequential Recommendation'; Pathak et "
    "al. 2017; UCSD McAuley lab): research use; cite the papers"
)


def _steam(_: str | None) -> Source:
    # steam_reviews.json.gz: SHA-256 from ISG-Siegen/OmniRec src/omnirec/data_loaders/
    # steam_reviews.py (this URL; SASRec's). steam_games.json.gz (titles): none found.
    reviews = RemoteFile(
        f"{STEAM}/steam_reviews.json.gz",
        "40c6343deedf488689987749c5f8435233da48c163fbaa2a7766c215d584bc61",
    )
    games = RemoteFile(f"{STEAM}/steam_games.json.gz")
    return Source(
        "steam",
        "Steam reviews (SASRec's Steam: a review is an interaction), titles from the games",
        (reviews, games),
        STEAM_LICENSE,
        InteractionMap(
            Layout(reviews.name, "pyliteral"), "username", "product_id", None, "date", "%Y-%m-%d"
        ),
        TitleMap(Layout(games.name, "pyliteral"), "id", "app_name"),
        "generic",
        "steam",
        usual=FIVE_CORE,
    )


# --- Last.fm (HetRec 2011) -------------------------------------------------------------------

LASTFM_LICENSE = (
    "HetRec 2011 Last.fm 2K (Cantador, Brusilovsky & Kuflik, RecSys 2011): non-commercial "
    "use only (Last.fm terms); cite the workshop (readme.txt in the zip)"
)


def _lastfm(_: str | None) -> Source:
    # SHA-256 from ISG-Siegen/OmniRec src/omnirec/data_loaders/hetrec_lastfm.py.
    archive = RemoteFile(
        "https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        "6738f48195667ff03caaab4d32ca9a3133d8cc026b7c3cdaf6ce1010e913c59c",
    )
    return Source(
        "lastfm",
        "Last.fm 2K (HetRec 2011): the artists each user tagged, with the time (ms); the "
        "artists' names as titles",
        (archive,),
        LASTFM_LICENSE,
        InteractionMap(
            Layout(archive.name, "tsv", "user_taggedartists-timestamps.dat"),
            "userID",
            "artistID",
            None,
            "timestamp",
            "ms",
            distinct=True,
        ),
        TitleMap(Layout(archive.name, "tsv", "artists.dat"), "id", "name"),
        "music",
        "lastfm",
        usual=FIVE_CORE,
    )


FAMILIES = {
    family.name: family
    for family in (
        Family("ml-10m", "MovieLens 10M", MOVIELENS_LICENSE, (), lambda _: _movielens("ml-10m")),
        Family("ml-20m", "MovieLens 20M", MOVIELENS_LICENSE, (), lambda _: _movielens("ml-20m")),
        Family("ml-32m", "MovieLens 32M", MOVIELENS_LICENSE, (), lambda _: _movielens("ml-32m")),
        Family("amazon2018", "Amazon Reviews 2018", AMAZON2018_LICENSE,
               tuple(AMAZON2018_RATINGS), lambda c: _amazon("2018", c)),
        Family("amazon2023", "Amazon Reviews 2023", AMAZON2023_LICENSE,
               tuple(AMAZON2023_RATINGS), lambda c: _amazon("2023", c)),
        Family("goodreads", "UCSD Goodreads", GOODREADS_LICENSE, tuple(GOODREADS_INTERACTIONS),
               _goodreads, "genre", "poetry"),
        Family("steam", "Steam reviews (SASRec)", STEAM_LICENSE, (), _steam),
        Family("lastfm", "Last.fm 2K (HetRec 2011)", LASTFM_LICENSE, (), _lastfm),
    )
}  # fmt: skip


def family_of(name: str) -> Family | None:
    """The family `name` belongs to (``amazon2023:Books`` -> amazon2023), else None."""
    return FAMILIES.get(name.split(":", 1)[0])


def is_registered(name: str) -> bool:
    """Whether `name` is a registry family (its parameter is checked by `resolve`)."""
    return family_of(name) is not None


def resolve(name: str) -> Source:
    """The `Source` called `name`; an unknown family or category is an error listing the
    known ones."""
    family = family_of(name)
    if family is None:
        raise InputError(f"unknown source {name!r}; registered: {', '.join(names())}")
    _, colon, param = name.partition(":")
    if not family.params:
        if colon:
            raise InputError(f"source {family.name!r} takes no {family.param_kind}: {name!r}")
        return family.build(None)
    if param not in family.params:
        what = f"{family.param_kind} {param!r} is not" if param else f"no {family.param_kind}:"
        raise InputError(
            f"{name!r}: {what} one of {family.name}'s {family.param_plural} "
            f"({', '.join(family.params)}); e.g. {family.name}:{family.example}"
        )
    return family.build(param)


def names() -> list[str]:
    """Every family's name, with ``:CATEGORY`` (or ``:GENRE``) where it takes one."""
    return [f.name + (f":{f.param_kind.upper()}" if f.params else "") for f in FAMILIES.values()]


def every_source() -> list[Source]:
    """Every registered source, each category of each family (docs, tests)."""
    return [f.build(p) for f in FAMILIES.values() for p in (f.params or (None,))]


def listing() -> str:
    """The registry as text (`setdpo data download --list`)."""
    lines = []
    for family, name in zip(FAMILIES.values(), names(), strict=True):
        example = family.build(family.example if family.params else None)
        digests = [f"{f.name} {'yes' if f.sha256 else 'no'}" for f in example.files]
        lines.append(f"{name}: {family.summary}")
        lines.append(f"  files (SHA-256 known){' of ' + example.name if family.params else ''}: "
                     f"{', '.join(digests)}")  # fmt: skip
        if family.params:
            lines.append(f"  {family.param_plural}: {', '.join(family.params)}")
        lines.append(f"  license: {family.license}")
    return "\n".join(lines)
