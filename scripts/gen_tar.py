#!/usr/bin/env python3
"""Writes a random OCI-layer-like tar for differential tests of `convert`.

    scripts/gen_tar.py SEED OUT.tar
    scripts/gen_tar.py --restore-dirs TAR DIR

The second form sets each directory of TAR, extracted into DIR with GNU tar,
to the mode and mtime the tar gives it: GNU tar sets a directory's time when
it leaves it, so entries added to it later (in a tar not sorted by
directory) move it on, and mkdir makes subdirectories of a setgid directory
setgid whatever the tar says.

PAX format, with: an explicit root ("./"), nested directories (listed before
their content), regular files of assorted sizes (empty ones too), long names
and paths (PAX path/linkpath), symlinks (short and long targets), hard links
to earlier files, fifos, character and block devices, user.* and trusted.*
xattrs (SCHILY.xattr), owners past 16 and 21 bits, mtimes with and without
fractions, OCI whiteout names (as plain files), and paths listed twice (the
later entry wins, as when extracting). Deterministic for a seed.
"""
import io
import os
import random
import sys
import tarfile


def main():
    seed, out = int(sys.argv[1]), sys.argv[2]
    rng = random.Random(seed)
    entries = []  # (TarInfo, data or None)
    dirs = [""]
    files = []

    def info(name, kind, mode):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid = rng.choice([0, 0, 1000, 65534, 70000, 3000000])
        ti.gid = rng.choice([0, 0, 100, 65534, 80000])
        ti.uname = ti.gname = ""
        if rng.random() < 0.3:
            ti.mtime = 1_600_000_000 + rng.randrange(10**8) + rng.randrange(1, 1000) / 1000
        else:
            ti.mtime = rng.choice([1_700_000_000, 1_600_000_000 + rng.randrange(10**8)])
        if rng.random() < 0.2:
            ti.pax_headers = {
                "SCHILY.xattr.user.k%d" % i: "v" * rng.randrange(0, 300) + str(i)
                for i in range(rng.randrange(1, 4))
            }
            if rng.random() < 0.3:
                ti.pax_headers["SCHILY.xattr.trusted.t"] = "x" * rng.randrange(1, 50)
        return ti

    def name(parent):
        kind = rng.random()
        if kind < 0.05:
            base = "n" * rng.randrange(100, 256)
        elif kind < 0.1:
            base = ".wh." + "gone%d" % rng.randrange(1000)
        else:
            base = "e%d" % rng.randrange(100000)
        return parent + "/" + base if parent else base

    root = info("./", tarfile.DIRTYPE, 0o755)
    root.pax_headers = {}
    entries.append((root, None))
    for _ in range(rng.randrange(5, 25)):
        parent = rng.choice(dirs)
        if len(parent) > 3000:
            continue
        d = name(parent)
        if d in dirs:
            continue
        dirs.append(d)
        entries.append((info(d, tarfile.DIRTYPE, rng.choice([0o755, 0o700, 0o1777, 0o2755])), None))
    for _ in range(rng.randrange(20, 120)):
        parent = rng.choice(dirs)
        path = name(parent)
        if path in dirs:
            continue
        r = rng.random()
        if r < 0.55:
            size = rng.choice([0, 1, 511, 512, 513, 4096, rng.randrange(1, 200_000)])
            ti = info(path, tarfile.REGTYPE, rng.choice([0o644, 0o755, 0o600, 0o4755]))
            data = rng.randbytes(size) if rng.random() < 0.5 else bytes([rng.randrange(256)]) * size
            ti.size = size
            entries.append((ti, data))
            files.append(path)
        elif r < 0.7:
            ti = info(path, tarfile.SYMTYPE, 0o777)
            ti.pax_headers = {}
            ti.linkname = rng.choice(["target", "../x/y", "/abs/" + "t" * rng.randrange(1, 1000)])
            entries.append((ti, None))
        elif r < 0.8 and files:
            ti = info(path, tarfile.LNKTYPE, 0o644)
            ti.linkname = rng.choice(files)
            ti.pax_headers = {}
            entries.append((ti, None))
        elif r < 0.87:
            ti = info(path, tarfile.FIFOTYPE, 0o600)
            entries.append((ti, None))
        elif r < 0.94:
            ti = info(path, rng.choice([tarfile.CHRTYPE, tarfile.BLKTYPE]), 0o660)
            ti.devmajor, ti.devminor = rng.randrange(1, 300), rng.randrange(0, 70000)
            entries.append((ti, None))
        elif files:
            # The same path again with other contents: the later one wins.
            # (Only paths no hard link refers to, which extraction would
            # leave pointing at the old inode.)
            linked = {e[0].linkname for e in entries if e[0].type == tarfile.LNKTYPE}
            again = rng.choice(files)
            if again in linked:
                continue
            size = rng.randrange(0, 5000)
            ti = info(again, tarfile.REGTYPE, 0o640)
            ti.size = size
            entries.append((ti, rng.randbytes(size)))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)


def restore_dirs(tar_path, root):
    final = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            final[os.path.normpath(member.name)] = member
    for name, member in final.items():
        if not member.isdir():
            continue
        path = os.path.join(root, name)
        text = member.pax_headers.get("mtime")
        if text is not None:
            whole, _, frac = text.partition(".")
            ns = int(whole) * 10**9 + int((frac + "000000000")[:9])
        else:
            ns = int(member.mtime) * 10**9
        os.chmod(path, member.mode)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)


if __name__ == "__main__":
    if sys.argv[1] == "--restore-dirs":
        restore_dirs(sys.argv[2], sys.argv[3])
    else:
        main()
