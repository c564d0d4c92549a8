#!/usr/bin/env python3
"""Generate bench-nydus.sh's tree: ~300 MB, always the same (seed 24).

~15k small files (log-normal sizes, median ~3 KB, capped at 1 MiB; half of
each text-like, half random, so zstd gets ~2x on them) in ~600 nested
directories, 200 symlinks, two 48 MiB random files and a 48 MiB text-like
file (Zipf-distributed words: zstd gets ~3x). mtimes are fixed.
"""

import itertools
import os
import random
import sys

DIRS, FILES, SYMLINKS, LARGE_MIB = 600, 15000, 200, 48
MTIME = 1700000000


def text_chunk(rng, vocab, cum, size):
    """`size` bytes of text-like data: Zipf words, numbers, a little noise."""
    out = bytearray()
    words = iter(rng.choices(vocab, cum_weights=cum, k=size // 2))
    while len(out) < size:
        r = rng.random()
        if r < 0.9:
            out += next(words) + b" "
        elif r < 0.97:
            out += b"%d\n" % rng.randrange(1000)
        else:
            out += rng.randbytes(4)
    return bytes(out[:size])


def main():
    root = sys.argv[1]
    rng = random.Random(24)
    letters = b"abcdefghijklmnopqrstuvwxyz"
    vocab = [bytes(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(4000)]
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    names = ["lib", "usr", "share", "locale", "python3", "include", "doc", "bin", "etc"]
    os.makedirs(root)
    dirs = [root]
    for i in range(DIRS):
        d = os.path.join(rng.choice(dirs), "%s-%d" % (rng.choice(names), i))
        os.mkdir(d)
        dirs.append(d)
    text = text_chunk(rng, vocab, cum, 4 << 20)
    paths = []
    for i in range(FILES):
        size = int(rng.lognormvariate(8, 1.6)) % (1 << 20)
        p = os.path.join(rng.choice(dirs), "f%d.%s" % (i, rng.choice(["so", "py", "txt", "h", "mo"])))
        start = rng.randrange(len(text) - (1 << 20))
        with open(p, "wb") as f:
            f.write(text[start:start + size // 2] + rng.randbytes(size - size // 2))
        paths.append(p)
    for i in range(SYMLINKS):
        target = os.path.relpath(rng.choice(paths), root)
        os.symlink("/" + target, os.path.join(rng.choice(dirs), "link-%d" % i))
    for i in range(2):
        with open(os.path.join(root, "large-%d.bin" % i), "wb") as f:
            for _ in range(LARGE_MIB):
                f.write(rng.randbytes(1 << 20))
    with open(os.path.join(root, "text.bin"), "wb") as f:
        for _ in range(LARGE_MIB):
            f.write(text_chunk(rng, vocab, cum, 1 << 20))
    for d, subdirs, fs in os.walk(root, topdown=False):
        for name in fs:
            os.utime(os.path.join(d, name), (MTIME, MTIME), follow_symlinks=False)
        os.utime(d, (MTIME, MTIME))


if __name__ == "__main__":
    main()
