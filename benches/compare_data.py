#!/usr/bin/env python3
"""Deterministic mixed dataset for benches/compare (python3 >= 3.9, stdlib only).

Usage:
    compare_data.py DIR [--size-mb N]     build a fresh dataset of about N MiB (default 2048) in DIR
    compare_data.py DIR --mutate PCT      modify about PCT percent of the files in DIR in place
    compare_data.py --version             print the generator version (part of the cache marker)

Every byte is derived from fixed seeds, so two runs with the same --size-mb produce identical
trees (contents, names, modes and mtimes); --mutate is equally deterministic. Layout and share
of N:
    small/    ~15%  many 1-16 KiB text files of pseudo-random words, nested 1-3 directories deep
    large/    ~35%  large compressible files (word text, log lines, CSV rows)
              ~30%  large incompressible files (random bytes)
    medium/   ~10%  64 KiB - 4 MiB files: text, random, or half text / half random
    dup/      ~10%  "shifted duplicates": copies of large files with a few bytes inserted at the
                    start (content-defined chunking should dedup them, fixed-size chunking won't)
    sparse/   1 GiB apparent-size file holding 4 MiB of data (not counted in N)
    links/    a few relative symlinks and an empty directory

--mutate PCT (run it on a copy: it modifies DIR in place, a second run mutates again) changes
PCT% of the small files (half rewritten, half edited by inserting a paragraph), overwrites a
region inside PCT% of the medium files, appends to or overwrites a region inside PCT% of the
large/dup files (at least one of each), and adds a new directory with PCT/10 % as many new
small files. Everything else is left untouched.
"""

import argparse
import os
import sys
from array import array
from itertools import accumulate, repeat
from operator import floordiv, itemgetter, mod
from random import Random

GEN_VERSION = 1  # bump whenever the generated data changes (invalidates cached datasets)
SEED = "backstop-compare"
MiB = 1 << 20
KiB = 1 << 10
BASE_MTIME = 1_700_000_000  # 2023-11-14, all generated files get mtimes around this
SPARSE_APPARENT = 1 << 30
SPARSE_DATA_PIECES = 4  # 1 MiB each


def rng_for(*parts):
    """Independent deterministic stream per component, so changing one part keeps the others."""
    return Random("/".join([SEED, str(GEN_VERSION)] + [str(p) for p in parts]))


# ---------------------------------------------------------------------------------------------
# content generators
# ---------------------------------------------------------------------------------------------

def picks(rng, table, n):
    """n uniform picks from a 65536-entry table, done in C (uint16 indices from random bytes)."""
    idx = array("H", rng.randbytes(2 * max(n, 2)))
    if sys.byteorder == "big":
        idx.byteswap()
    return itemgetter(*idx)(table)


def interleave(*columns):
    """Row-wise concatenation of equally long columns of byte strings, done in C."""
    n, k = len(columns[0]), len(columns)
    out = [b""] * (n * k)
    for j, col in enumerate(columns):
        out[j::k] = col
    return b"".join(out)


class Words:
    """Fast pseudo-text. Everything is made of 65536-entry token tables indexed by raw random
    uint16s and joined in C; there is no per-word or per-line Python code, which keeps the
    generator at disk speed. The tables themselves come from a fixed seed."""

    SYLLABLES = ("ka ri to na mo le su vi de pa gro sti an el or un ex tra con pre ly ment"
                 " ing ed er al ic ous ive ble ta ne so ma li be ge ku ze wa").split()
    LEVELS = ("INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
    SERVICES = ("api", "auth", "billing", "worker-1", "worker-2", "worker-3", "scheduler",
                "gateway", "search", "mailer", "cache", "db-proxy")
    PATHS = ("/api/v1/users", "/api/v1/orders", "/api/v1/items", "/api/v2/search", "/login",
             "/logout", "/health", "/api/v1/invoices", "/static/app.js", "/api/v1/cart")
    STATUSES = (200, 200, 200, 200, 200, 200, 201, 204, 301, 304, 400, 401, 403, 404, 500, 503)
    CURRENCIES = ("EUR", "USD", "GBP", "CHF", "JPY")
    ORDER_STATES = ("paid", "paid", "paid", "shipped", "pending", "refunded", "cancelled")

    def __init__(self):
        rng = rng_for("vocab")
        base, seen = [], set()
        while len(base) < 8000:
            w = "".join(rng.choice(self.SYLLABLES) for _ in range(rng.randint(1, 4)))
            if w not in seen:
                seen.add(w)
                base.append(w)
        self.base = base
        # prose: Zipf-distributed words, some with punctuation / line ends
        weights = [1.0 / (r + 1) ** 1.05 for r in range(len(base))]
        vocab = []
        for w in rng.choices(base, weights, k=65536):
            x = rng.random()
            w = (w + ", " if x < 0.07 else w + ".\n" if x < 0.15 else
                 w.capitalize() + " " if x < 0.16 else w + " ")
            vocab.append(w.encode())
        self.vocab = vocab
        self.avg = sum(map(len, vocab)) / len(vocab)
        # log lines: "<date>T<hh:mm:ss>.<ms>Z " + A + B
        self.dates = ["2024-%02d-%02d" % (1 + d // 28 % 12, 1 + d % 28) for d in range(336)]
        self.log_dates = [(d + "T").encode() for d in self.dates]
        self.hms = [b"%02d:%02d:%02d." % (s // 3600, s // 60 % 60, s % 60) for s in range(86400)]
        self.ms = [b"%03dZ " % m for m in range(1000)]
        self.log_a = [("%s [%s] %s status=%d " % (
            rng.choice(self.LEVELS), rng.choice(self.SERVICES), rng.choice(self.PATHS),
            rng.choice(self.STATUSES))).encode() for _ in range(65536)]
        self.log_b = [("latency_ms=%d req=%08x user=%s\n" % (
            int(1000 * rng.random() ** 3), rng.getrandbits(32), rng.choice(base[:3000])
        )).encode() for _ in range(65536)]
        # CSV rows: "<id>,<date>," + A + B
        self.csv_dates = [(d + ",").encode() for d in self.dates]
        self.csv_a = [("C%06d,%d.%02d,%s," % (
            rng.randrange(250_000), int(5000 * rng.random() ** 2), rng.randrange(100),
            rng.choice(self.CURRENCIES))).encode() for _ in range(65536)]
        self.csv_b = [('%s,SKU-%05d,%d,"%s"\n' % (
            rng.choice(self.ORDER_STATES), rng.randrange(30_000), rng.randint(1, 12),
            rng.choice(base[:2000]))).encode() for _ in range(65536)]

    def text(self, rng, nbytes):
        """About-English prose, exactly nbytes long."""
        out = b"".join(picks(rng, self.vocab, int(nbytes / self.avg * 1.1) + 8))
        while len(out) < nbytes:  # rare: unlucky short words
            out += self.text(rng, nbytes - len(out))
        return out[:nbytes]

    def log(self, rng, nbytes, t):
        """Log lines (about nbytes) with timestamps increasing from t (ms); returns (data, t)."""
        n = nbytes // 100 + 2
        ts = list(accumulate(rng.randbytes(n), initial=t))[1:]
        secs = list(map(floordiv, ts, repeat(1000)))
        days = map(mod, map(floordiv, secs, repeat(86400)), repeat(336))
        return interleave(itemgetter(*days)(self.log_dates),
                          itemgetter(*map(mod, secs, repeat(86400)))(self.hms),
                          itemgetter(*map(mod, ts, repeat(1000)))(self.ms),
                          picks(rng, self.log_a, n), picks(rng, self.log_b, n)), ts[-1]

    def csv(self, rng, nbytes, row):
        """CSV rows (about nbytes) with ids counting from row; returns (data, next row)."""
        n = nbytes // 75 + 2
        ids = range(row, row + n)
        days = map(mod, map(floordiv, ids, repeat(1500)), repeat(336))
        return interleave(list(map(b"%d,".__mod__, ids)), itemgetter(*days)(self.csv_dates),
                          picks(rng, self.csv_a, n), picks(rng, self.csv_b, n)), row + n


def write_stream(path, size, gen):
    """Write exactly `size` bytes taken from the chunk generator `gen` to `path`."""
    left = size
    with open(path, "wb") as f:
        for chunk in gen:
            if left <= 0:
                break
            f.write(chunk[:left])
            left -= min(left, len(chunk))


def random_chunks(rng):
    while True:
        yield rng.randbytes(MiB)


def text_chunks(rng, words):
    while True:
        yield words.text(rng, MiB)


def log_chunks(rng, words):
    t = rng.randrange(300 * 86400 * 1000)
    while True:
        data, t = words.log(rng, MiB, t)
        yield data


def csv_chunks(rng, words):
    yield b"order_id,date,customer,amount,currency,status,sku,qty,comment\n"
    row = 1 + rng.randrange(10 ** 6)
    while True:
        data, row = words.csv(rng, MiB, row)
        yield data


def chunks_for(kind, rng, words):
    return {"random": lambda: random_chunks(rng), "text": lambda: text_chunks(rng, words),
            "log": lambda: log_chunks(rng, words), "csv": lambda: csv_chunks(rng, words)}[kind]()


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------

def split_sizes(rng, budget, mean, minimum):
    """Sizes in [0.5, 1.5] * mean (not MiB-aligned) that add up to about `budget`."""
    sizes = []
    while budget >= minimum:
        s = min(budget, int(mean * (0.5 + rng.random())) + rng.randrange(4096))
        if budget - s < minimum:
            s = budget
        sizes.append(s)
        budget -= s
    return sizes


def make_small_dirs(rng, words):
    """Project-like directory tree for the small files: depth 1 to 3."""
    dirs = []
    for a in range(24):
        top = "small/%02d_%s" % (a, rng.choice(words.base))
        dirs.append(top)
        for b in range(rng.randint(2, 10)):
            mid = "%s/%s_%d" % (top, rng.choice(words.base), b)
            dirs.append(mid)
            for c in range(rng.randint(0, 5)):
                dirs.append("%s/%s_%d" % (mid, rng.choice(words.base), c))
    return dirs


EXTS = (".txt", ".md", ".rs", ".py", ".json", ".html", ".cfg", ".csv")


def generate(root, size_mb):
    words = Words()
    total = size_mb * MiB
    os.makedirs(root, exist_ok=True)
    mtimes = []  # (path, mtime) applied at the end, directories last (deepest first)

    # small text files ---------------------------------------------------------------------
    rng = rng_for("small")
    dirs = make_small_dirs(rng, words)
    for d in dirs:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    budget, i = total * 15 // 100, 0
    while budget > 0:
        size = min(budget, rng.randint(KiB, 16 * KiB))
        d = dirs[rng.randrange(len(dirs))]
        name = "%s_%05d%s" % (words.base[rng.randrange(2000)], i, EXTS[rng.randrange(len(EXTS))])
        path = os.path.join(root, d, name)
        with open(path, "wb") as f:
            f.write(words.text(rng, size - 1) + b"\n")
        mtimes.append((path, BASE_MTIME - rng.randrange(86400 * 365)))
        budget -= size
        i += 1

    # large files ----------------------------------------------------------------------------
    os.makedirs(os.path.join(root, "large"), exist_ok=True)
    mean = min(48 * MiB, max(MiB, total // 40))
    large = []  # (relpath, kind)
    rng = rng_for("large-compressible")
    kinds = ("text", "log", "csv")
    for n, size in enumerate(split_sizes(rng, total * 35 // 100, mean, 64 * KiB)):
        kind = kinds[n % 3]
        rel = "large/%s_%02d.%s" % (kind, n, {"text": "txt", "log": "log", "csv": "csv"}[kind])
        write_stream(os.path.join(root, rel), size, chunks_for(kind, rng_for(rel), words))
        large.append((rel, kind))
    rng = rng_for("large-random")
    for n, size in enumerate(split_sizes(rng, total * 30 // 100, mean, 64 * KiB)):
        rel = "large/blob_%02d.bin" % n
        write_stream(os.path.join(root, rel), size, chunks_for("random", rng_for(rel), words))
        large.append((rel, "random"))
    for rel, _ in large:
        mtimes.append((os.path.join(root, rel), BASE_MTIME - rng.randrange(86400 * 30)))

    # medium files ---------------------------------------------------------------------------
    rng = rng_for("medium")
    os.makedirs(os.path.join(root, "medium"), exist_ok=True)
    budget, n = total * 10 // 100, 0
    while budget >= 16 * KiB:
        size = min(budget, int(64 * KiB * 64 ** rng.random()))  # log-uniform 64 KiB..4 MiB
        kind = ("text", "random", "mixed")[n % 3]
        rel = "medium/m%04d_%s.dat" % (n, kind)
        r2 = rng_for(rel)
        if kind == "mixed":
            half = size // 2
            gen = iter([words.text(r2, half), r2.randbytes(size - half)])
        else:
            gen = chunks_for(kind, r2, words)
        write_stream(os.path.join(root, rel), size, gen)
        mtimes.append((os.path.join(root, rel), BASE_MTIME - rng.randrange(86400 * 90)))
        budget -= size
        n += 1

    # shifted duplicates ---------------------------------------------------------------------
    rng = rng_for("dup")
    os.makedirs(os.path.join(root, "dup"), exist_ok=True)
    budget = total * 10 // 100
    rnd = [rel for rel, kind in large if kind == "random"]
    cmp_ = [rel for rel, kind in large if kind != "random"]
    n = 0
    while budget > 0 and (rnd or cmp_):
        pool = rnd if (n % 2 == 0 and rnd) or not cmp_ else cmp_
        src = pool.pop(0)
        src_path = os.path.join(root, src)
        size = os.path.getsize(src_path)
        if size > budget and n > 0:
            break
        dst = os.path.join(root, "dup", "shifted_" + os.path.basename(src))
        with open(src_path, "rb") as fi, open(dst, "wb") as fo:
            fo.write(rng.randbytes(rng.randint(1, 64)))  # a few inserted bytes
            while True:
                buf = fi.read(4 * MiB)
                if not buf:
                    break
                fo.write(buf)
        mtimes.append((dst, BASE_MTIME - rng.randrange(86400 * 30)))
        budget -= size
        n += 1

    # sparse file ----------------------------------------------------------------------------
    rng = rng_for("sparse")
    os.makedirs(os.path.join(root, "sparse"), exist_ok=True)
    path = os.path.join(root, "sparse", "disk.img")
    with open(path, "wb") as f:
        f.truncate(SPARSE_APPARENT)
        for k in range(SPARSE_DATA_PIECES):
            f.seek((SPARSE_APPARENT - MiB) * k // (SPARSE_DATA_PIECES - 1) // 4096 * 4096)
            f.write(rng.randbytes(MiB) if k % 2 else words.text(rng, MiB))
    mtimes.append((path, BASE_MTIME))

    # symlinks and an empty directory --------------------------------------------------------
    links = os.path.join(root, "links")
    os.makedirs(os.path.join(links, "empty_dir"), exist_ok=True)
    os.symlink("../large/blob_00.bin", os.path.join(links, "blob_link"))
    os.symlink("../" + dirs[0], os.path.join(links, "dir_link"))
    os.symlink("../dup", os.path.join(links, "dup_link"))
    for name in ("blob_link", "dir_link", "dup_link"):
        os.utime(os.path.join(links, name), (BASE_MTIME, BASE_MTIME), follow_symlinks=False)

    # deterministic metadata -----------------------------------------------------------------
    for path, mtime in mtimes:
        os.chmod(path, 0o644)
        os.utime(path, (mtime, mtime))
    all_dirs = [dp for dp, _, _ in os.walk(root)]
    for dp in sorted(all_dirs, key=lambda p: -p.count(os.sep)):
        os.chmod(dp, 0o755)
        os.utime(dp, (BASE_MTIME, BASE_MTIME))


# ---------------------------------------------------------------------------------------------
# mutation (the "5% changed" incremental step)
# ---------------------------------------------------------------------------------------------

def list_files(root, top):
    out = []
    for dp, dns, fns in os.walk(os.path.join(root, top)):
        dns.sort()
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            if os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def pick(rng, items, pct):
    if not items or pct <= 0:
        return []
    n = max(1, round(len(items) * pct / 100))
    return rng.sample(items, min(n, len(items)))


def mutate(root, pct):
    words = Words()
    rng = rng_for("mutate", "%g" % pct)
    small = list_files(root, "small")
    medium = list_files(root, "medium")
    big = list_files(root, "large") + list_files(root, "dup")

    for k, p in enumerate(pick(rng, small, pct)):
        if k % 2 == 0:  # rewrite completely with a new size
            data = words.text(rng, rng.randint(KiB, 16 * KiB) - 1) + b"\n"
        else:  # insert a paragraph at a random position
            with open(p, "rb") as f:
                data = f.read()
            at = rng.randrange(len(data) + 1)
            data = data[:at] + b"\n" + words.text(rng, rng.randint(50, 800)) + b"\n" + data[at:]
        with open(p, "wb") as f:
            f.write(data)

    for p in pick(rng, medium, pct):  # overwrite a 4-64 KiB region in place
        size = os.path.getsize(p)
        n = min(size, rng.randint(4 * KiB, 64 * KiB))
        with open(p, "r+b") as f:
            f.seek(rng.randrange(size - n + 1))
            f.write(rng.randbytes(n))

    for k, p in enumerate(pick(rng, big, pct)):
        binary = p.endswith(".bin")
        if k % 2 == 0:  # append 256 KiB - 2 MiB of similar content
            n = rng.randint(256 * KiB, 2 * MiB)
            with open(p, "ab") as f:
                f.write(rng.randbytes(n) if binary else words.text(rng, n))
        else:  # overwrite 64 KiB in the middle of the file
            size = os.path.getsize(p)
            n = min(size, 64 * KiB)
            with open(p, "r+b") as f:
                f.seek(size // 2 - n // 2)
                f.write(rng.randbytes(n) if binary else words.text(rng, n))

    n_new = round(len(small) * pct / 1000)
    if n_new:
        d = os.path.join(root, "small", "new_%g" % pct)
        os.makedirs(d, exist_ok=True)
        for i in range(n_new):
            with open(os.path.join(d, "new_%05d.txt" % i), "wb") as f:
                f.write(words.text(rng, rng.randint(KiB, 16 * KiB) - 1) + b"\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--mutate", type=float, metavar="PCT")
    ap.add_argument("--version", action="store_true")
    a = ap.parse_args()
    if a.version:
        print(GEN_VERSION)
        return
    if not a.dir:
        ap.error("DIR is required")
    if a.mutate is not None:
        if not os.path.isdir(a.dir):
            ap.error("%s is not a directory" % a.dir)
        mutate(a.dir, a.mutate)
        return
    if os.path.exists(a.dir) and os.listdir(a.dir):
        ap.error("%s exists and is not empty" % a.dir)
    if a.size_mb < 8:
        ap.error("--size-mb must be at least 8")
    generate(a.dir, a.size_mb)


if __name__ == "__main__":
    main()
