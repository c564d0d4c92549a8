#!/usr/bin/env python3
"""Print (or compare) the manifest of a directory tree.

One JSON object per path, sorted by path, in the format of the test
fixtures' *.manifest.jsonl (and of `erofs-fuse manifest IMAGE`):

  path     "/" for the root, "/a/b" below it
  type     file, dir, symlink, char, block, fifo or socket
  mode     permission bits in octal, 4 digits ("0755", "4755")
  uid, gid, nlink
  mtime    nanoseconds since the epoch
  size     files: bytes; directories: null (layout-specific); others: absent
  sha256   files: hex digest of the contents
  target   symlinks: the link target
  rdev     char/block devices: [major, minor]
  xattrs   only when there are any: {name: hex value}; names listed but
           not readable (user.* on symlinks and special files) are left out

Written with json.dumps(sort_keys=True, ensure_ascii=False). Names that are
not UTF-8 appear with each undecodable byte as the escape \\udcXX (Python's
surrogateescape, spelled out).

The walk does not follow symlinks or cross into other mounts. A file that
cannot be read (EIO from a mount, for instance) is reported on stderr and
makes the exit status 1; the walk goes on so every failure is listed.
"""

import argparse
import errno
import hashlib
import json
import os
import re
import stat
import sys

TYPES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

CHUNK = 1 << 20
SURROGATE = re.compile("[\udc80-\udcff]")


def spell_surrogates(text):
    """Lone surrogates (undecodable name bytes) as \\udcXX escapes."""
    return SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def sort_key(line_path):
    return line_path[0]


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def describe(path, rel):
    """The manifest object of one entry (`path` bytes, `rel` its str path)."""
    st = os.lstat(path)
    kind = TYPES[stat.S_IFMT(st.st_mode)]
    obj = {
        "path": rel,
        "type": kind,
        "mode": "%04o" % stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "nlink": st.st_nlink,
        "mtime": st.st_mtime_ns,
    }
    if kind == "file":
        obj["size"] = st.st_size
        obj["sha256"] = sha256_of(path)
    elif kind == "dir":
        obj["size"] = None
    elif kind == "symlink":
        obj["target"] = os.fsdecode(os.readlink(path))
    elif kind in ("char", "block"):
        obj["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
    xattrs = {}
    for name in os.listxattr(path, follow_symlinks=False):
        try:
            xattrs[name] = os.getxattr(path, name, follow_symlinks=False).hex()
        except OSError as e:
            # Listed but not readable: the VFS refuses user.* on symlinks
            # and special files (ENODATA) although erofs lists them.
            if e.errno != errno.ENODATA:
                raise
    if xattrs:
        obj["xattrs"] = xattrs
    return obj, st


def walk(root):
    """Yields (str path, object) for every entry below `root`; collects errors."""
    errors = []
    root_b = os.fsencode(root)
    root_dev = os.lstat(root_b).st_dev
    stack = [(root_b, "/")]
    out = []
    while stack:
        path, rel = stack.pop()
        try:
            obj, st = describe(path, rel)
        except OSError as e:
            errors.append("%s: %s" % (rel, e))
            continue
        out.append((rel, obj))
        if stat.S_ISDIR(st.st_mode) and st.st_dev == root_dev:
            try:
                names = os.listdir(path)
            except OSError as e:
                errors.append("%s: %s" % (rel, e))
                continue
            for name in names:
                child_rel = (rel.rstrip("/") + "/" + os.fsdecode(name))
                stack.append((os.path.join(path, name), child_rel))
    out.sort(key=sort_key)
    return out, errors


def render(obj):
    return spell_surrogates(json.dumps(obj, sort_keys=True, ensure_ascii=False))


def load(path):
    rows = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                rows[obj["path"]] = obj
    return rows


def compare(expected, got, limit=20):
    """Readable differences between two {path: object} maps."""
    diffs = []
    for p in sorted(set(expected) | set(got)):
        if p not in got:
            diffs.append("missing: %s" % p)
        elif p not in expected:
            diffs.append("extra:   %s" % p)
        else:
            e, g = expected[p], got[p]
            for key in sorted(set(e) | set(g)):
                if e.get(key, "<absent>") != g.get(key, "<absent>"):
                    diffs.append("%s: %s: expected %r, got %r"
                                 % (p, key, e.get(key, "<absent>"), g.get(key, "<absent>")))
        if len(diffs) >= limit:
            diffs.append("... (stopped after %d differences)" % limit)
            break
    return diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="The format is described in the module docstring.")
    parser.add_argument("dir", help="root of the tree to describe")
    parser.add_argument("-o", "--output", help="write the manifest here instead of stdout")
    parser.add_argument("--compare", metavar="EXPECTED.jsonl",
                        help="compare with this manifest instead of printing; exit 1 if different")
    args = parser.parse_args()

    rows, errors = walk(args.dir)
    for err in errors:
        print("manifest.py: %s" % err, file=sys.stderr)

    if args.compare:
        got = {p: json.loads(render(obj)) for p, obj in rows}
        diffs = compare(load(args.compare), got)
        for d in diffs:
            print(d)
        return 1 if diffs or errors else 0

    text = "".join(render(obj) + "\n" for _, obj in rows)
    if args.output:
        with open(args.output, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    else:
        sys.stdout.buffer.write(text.encode("utf-8", errors="surrogateescape"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
