#!/usr/bin/env python3
"""Generate a random directory tree for differential tests (run as root).

The same --seed always gives the same tree. It covers what an EROFS reader
must get right: odd names (spaces, dots, names sorting around "." and "..",
non-ASCII UTF-8, arbitrary non-UTF-8 bytes, 1 to 254 bytes), a directory
large enough to span several blocks, nesting up to 12 levels, file sizes
around 512 and 4096 byte boundaries and up to 2 MiB (random, compressible and
all-zero contents), unusual modes (setuid, setgid, sticky, 0000), owners past
16 bits, nanosecond mtimes from 1970 to past 2038, hard links across
directories, symlinks (short, dangling, 4095 bytes, odd bytes), char and
block devices with large numbers, fifos, sockets, and xattrs in the user.,
trusted. and security. namespaces (empty values, values up to 1000 bytes,
the same xattr on many files so mkfs.erofs shares it).
"""

import argparse
import os
import random
import stat
import sys

MAX_PATH = 3000
# Debian's mkfs.erofs 1.5 fails on 255-byte names ("Could not format the
# device: No such file or directory"); the mkfs.erofs 1.9 fixtures cover 255.
MAX_NAME = 254
# Block edges (512, 4096) and pcluster edges (16K, 32K, 64K, 128K).
SIZES = [0, 1, 2, 511, 512, 513, 4095, 4096, 4097, 8191, 8192, 8193, 12288, 16383, 16385,
         32767, 32768, 32769, 65535, 65536, 65537, 131071, 131072, 131073]
FILE_MODES = [0o644, 0o644, 0o755, 0o600, 0o000, 0o777, 0o444, 0o4755, 0o2755, 0o6711, 0o1644, 0o640]
DIR_MODES = [0o755, 0o755, 0o700, 0o1777, 0o2775, 0o555, 0o750]
IDS = [0, 0, 0, 1, 1000, 65534, 65535, 65536, 100000, 2**31 - 2]
SPECIAL_NAMES = [b"-", b"+", b".a", b"..a", b"a.", b",", b"~", b".-", b"...", b"0", b"\x7f"]
SHARED_XATTRS = [(b"user.shared", b"same value on many files"), (b"trusted.overlay.opaque", b"y"),
                 (b"security.shared", b"")]


class Generator:
    def __init__(self, dest, seed, files):
        self.rng = random.Random(seed)
        self.dest = os.fsencode(dest)
        self.budget = files
        self.dirs = []          # (path, depth)
        self.files = []         # regular files, for hard links
        self.entries = 0
        self.bytes = 0

    # -- names -------------------------------------------------------------
    def name(self, taken, room=MAX_NAME):
        """A fresh name for a directory whose path leaves `room` bytes."""
        rng = self.rng
        for _ in range(100):
            kind = rng.randrange(10)
            if kind == 0:
                n = rng.choice(SPECIAL_NAMES)
            elif kind == 1:
                n = "unicode-éè中文-😀-%d" % rng.randrange(1000)
                n = n.encode()
            elif kind == 2:
                n = bytes(rng.choice([b for b in range(1, 256) if b != 0x2f]) for _ in range(rng.randint(1, 40)))
            elif kind == 3:
                n = b"L" * rng.randint(200, 255)
            elif kind == 4:
                n = ("with space '%d'" % rng.randrange(1000)).encode()
            elif kind == 5:
                n = (".hidden-%d" % rng.randrange(1000)).encode()
            else:
                n = ("%s-%d" % (rng.choice(["lib", "bin", "etc", "data", "x"]), rng.randrange(100000))).encode()
            n = n[:min(MAX_NAME, room)]
            if n and n not in (b".", b"..") and n not in taken and b"/" not in n and b"\0" not in n:
                taken.add(n)
                return n
        raise RuntimeError("could not find a free name")

    # -- contents ----------------------------------------------------------
    def contents(self):
        rng = self.rng
        size = rng.choice(SIZES) if rng.random() < 0.96 else rng.randint(1, 2 << 20)
        style = rng.randrange(6)
        if style == 0:
            return rng.randbytes(size)
        if style == 1:
            return ((b"compressible line %d\n" % rng.randrange(10)) * (size // 20 + 1))[:size]
        if style == 2:
            return bytes(size)
        if style == 3:
            # Half zeros, half random: holes and data in one file.
            half = size // 2
            return bytes(half) + rng.randbytes(size - half)
        if style == 4:
            # Text with some variety: compresses, but not to nothing.
            words = [b"usr", b"lib", b"x86_64", b"linux", b"gnu", b"share", b"%d" % rng.randrange(99)]
            out = bytearray()
            while len(out) < size:
                out += b"/".join(rng.choice(words) for _ in range(rng.randint(1, 6))) + b"\n"
            return bytes(out[:size])
        # Runs of random and compressible data: compressed and stored-plain
        # pclusters in one file.
        out = bytearray()
        while len(out) < size:
            run = rng.choice([100, 1000, 4096, 5000, 20000])
            out += rng.randbytes(run) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * run
        return bytes(out[:size])

    # -- attributes --------------------------------------------------------
    def xattrs(self, path, kind):
        rng = self.rng
        names = []
        if rng.random() < 0.3:
            names.append(rng.choice(SHARED_XATTRS))
        for _ in range(rng.choice([0, 0, 1, 2, 4])):
            ns = [b"trusted.", b"security."] + ([b"user."] if kind in ("file", "dir") else [])
            name = rng.choice(ns) + b"attr%d" % rng.randrange(50)
            value = rng.randbytes(rng.choice([0, 1, 5, 64, 300, 1000]))
            names.append((name, value))
        total = 0
        for name, value in names:
            if name.startswith(b"user.") and kind not in ("file", "dir"):
                continue
            # ext4 keeps one inode's xattrs in a single 4 KiB block.
            total += len(name) + len(value) + 32
            if total > 3000:
                break
            os.setxattr(path, name, value, follow_symlinks=False)

    def owner(self, path):
        os.lchown(path, self.rng.choice(IDS), self.rng.choice(IDS))

    def mtime(self):
        rng = self.rng
        secs = rng.choice([0, 1, 86400, 1_000_000_000, 1_700_000_000, 2**31 - 1, 2**31 + 5, 4_102_444_800,
                           rng.randrange(0, 2**32)])
        return secs * 1_000_000_000 + rng.randrange(1_000_000_000)

    # -- tree --------------------------------------------------------------
    def make(self):
        os.makedirs(self.dest)
        self.dirs.append((self.dest, 0))
        taken = {}
        big = None
        while self.budget > 0:
            parent, depth = self.rng.choice(self.dirs)
            names = taken.setdefault(parent, set())
            # Keep whole paths well under PATH_MAX (4096), which mkfs.erofs needs.
            room = MAX_PATH - len(parent)
            if room < 16:
                continue
            path = os.path.join(parent, self.name(names, room))
            roll = self.rng.random()
            if roll < 0.15 and depth < 12:
                self.make_dir(path, depth + 1)
                if big is None:
                    big = path
            elif roll < 0.65:
                self.make_file(path)
            elif roll < 0.75 and self.files:
                os.link(self.rng.choice(self.files), path)
            elif roll < 0.87:
                self.make_symlink(path)
            else:
                self.make_special(path)
            self.entries += 1
            self.budget -= 1
        # One directory big enough to span several directory blocks.
        big = big or self.dest
        names = taken.setdefault(big, set())
        for _ in range(self.rng.randint(300, 900)):
            path = os.path.join(big, self.name(names))
            with open(path, "wb"):
                pass
            os.utime(path, ns=(self.mtime(),) * 2)
            self.entries += 1
        # Directory attributes last, deepest first: creating children
        # changes a directory's mtime.
        for path, _ in sorted(self.dirs, key=lambda d: -d[1]):
            self.owner(path)
            os.chmod(path, self.rng.choice(DIR_MODES))
            self.xattrs(path, "dir")
            os.utime(path, ns=(self.mtime(),) * 2)

    def make_dir(self, path, depth):
        os.mkdir(path)
        self.dirs.append((path, depth))

    def make_file(self, path):
        data = self.contents()
        with open(path, "wb") as f:
            f.write(data)
        self.bytes += len(data)
        self.owner(path)
        os.chmod(path, self.rng.choice(FILE_MODES))  # after chown, which clears setuid
        self.xattrs(path, "file")
        os.utime(path, ns=(self.mtime(),) * 2)
        self.files.append(path)

    def make_symlink(self, path):
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            target = b"../" + rng.choice([b"lib", b"etc", b"x"])
        elif kind == 1:
            target = b"dangling/" + bytes(rng.randrange(97, 123) for _ in range(rng.randint(1, 30)))
        elif kind == 2:
            target = b"t" * rng.choice([100, 255, 1000, 4000, 4095])
        else:
            target = bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 60)))
        os.symlink(target, path)
        self.owner(path)
        self.xattrs(path, "symlink")
        os.utime(path, ns=(self.mtime(),) * 2, follow_symlinks=False)

    def make_special(self, path):
        rng = self.rng
        kind = rng.randrange(4)
        mode = rng.choice(FILE_MODES) & 0o777
        if kind == 0:
            dev = os.makedev(rng.choice([0, 1, 8, 254, 4095]), rng.choice([0, 3, 255, 256, 65535, 1048575]))
            os.mknod(path, stat.S_IFCHR | mode, dev)
        elif kind == 1:
            dev = os.makedev(rng.choice([7, 8, 259, 4095]), rng.choice([0, 1, 300, 1048575]))
            os.mknod(path, stat.S_IFBLK | mode, dev)
        elif kind == 2:
            os.mkfifo(path, mode)
        else:
            os.mknod(path, stat.S_IFSOCK | mode)
        self.owner(path)
        os.chmod(path, mode)
        self.xattrs(path, "special")
        os.utime(path, ns=(self.mtime(),) * 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="directory to create (must not exist)")
    parser.add_argument("--seed", type=int, required=True, help="random seed: same seed, same tree")
    parser.add_argument("--files", type=int, default=300, help="entries besides the big directory (default 300)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("gen_tree.py: must run as root (owners, device nodes, trusted. xattrs)")
    gen = Generator(args.dest, args.seed, args.files)
    gen.make()
    print("gen_tree.py: seed %d: %d entries, %d bytes of file data" % (args.seed, gen.entries, gen.bytes))


if __name__ == "__main__":
    main()
