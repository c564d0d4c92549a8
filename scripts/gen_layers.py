#!/usr/bin/env python3
"""Writes a random stack of OCI image layers, for tests of merged mounts.

    scripts/gen_layers.py SEED LAYERS OUTDIR

Writes OUTDIR/layer0.tar (the base) to OUTDIR/layer{LAYERS-1}.tar, each the
change set of a layer over those below it, as an OCI image diff spells it:
new and changed entries with their parent directories, deletions as
`.wh.NAME` whiteout files, and directories emptied and refilled as opaque
(`.wh..wh..opq`). Changes cover: files rewritten, files and whole
directories deleted (with `.wh.` files or 0:0 character devices), names
no layer has whited out, a directory too big for one readdir reply, a file replaced by a directory and a directory by a
file, new files, directories, symlinks, hard links, fifos and devices, and
directories made opaque. Whiteouts only name what the layers below hold,
as a real diff does. Deterministic for a seed.
"""
import io
import random
import sys
import tarfile

MTIMES = [1_650_000_000, 1_700_000_000, 1_710_000_000]


class Stack:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        # The merged state so far: path -> kind ("dir", "file", ...).
        self.state = {}
        self.counter = 0

    def fresh(self, parent):
        self.counter += 1
        base = "n%d" % self.counter
        return parent + "/" + base if parent else base

    def info(self, path, kind, mode):
        rng = self.rng
        ti = tarfile.TarInfo(path + "/" if kind == tarfile.DIRTYPE else path)
        ti.type = kind
        ti.mode = mode
        ti.uid = rng.choice([0, 0, 1000, 65534])
        ti.gid = rng.choice([0, 0, 100, 1000])
        ti.uname = ti.gname = ""
        ti.mtime = rng.choice(MTIMES)
        if rng.random() < 0.15:
            ti.pax_headers = {"SCHILY.xattr.user.note": "v%d" % rng.randrange(100)}
        return ti

    def dirs(self):
        return [""] + sorted(p for p, k in self.state.items() if k == "dir")

    def add_entry(self, out, path, linkable):
        """A random new non-directory entry at `path`."""
        rng = self.rng
        r = rng.random()
        if r < 0.6:
            size = rng.choice([0, 1, 100, 4096, rng.randrange(1, 20000)])
            ti = self.info(path, tarfile.REGTYPE, rng.choice([0o644, 0o755, 0o600]))
            ti.size = size
            out.append((ti, rng.randbytes(size)))
            self.state[path] = "file"
            linkable.append(path)
        elif r < 0.75:
            ti = self.info(path, tarfile.SYMTYPE, 0o777)
            ti.linkname = rng.choice(["target", "../up", "/abs/path"])
            out.append((ti, None))
            self.state[path] = "symlink"
        elif r < 0.85 and linkable:
            ti = self.info(path, tarfile.LNKTYPE, 0o644)
            ti.linkname = rng.choice(linkable)
            out.append((ti, None))
            self.state[path] = "file"
        elif r < 0.92:
            out.append((self.info(path, tarfile.FIFOTYPE, 0o600), None))
            self.state[path] = "fifo"
        else:
            ti = self.info(path, tarfile.CHRTYPE, 0o660)
            ti.devmajor, ti.devminor = rng.randrange(1, 300), rng.randrange(1, 300)
            out.append((ti, None))
            self.state[path] = "char"

    def add_tree(self, out, path, depth, linkable):
        """A new directory at `path` with random contents."""
        out.append((self.info(path, tarfile.DIRTYPE, self.rng.choice([0o755, 0o750, 0o1777])), None))
        self.state[path] = "dir"
        for _ in range(self.rng.randrange(0, 6)):
            child = self.fresh(path)
            if depth < 3 and self.rng.random() < 0.3:
                self.add_tree(out, child, depth + 1, linkable)
            else:
                self.add_entry(out, child, linkable)

    def whiteout(self, out, path):
        """A whiteout hiding `path` of the layers below."""
        parent, _, name = path.rpartition("/")
        if self.rng.random() < 0.25:
            ti = self.info(path, tarfile.CHRTYPE, 0o600)
            ti.devmajor = ti.devminor = 0
            ti.pax_headers = {}
            out.append((ti, None))
            return
        ti = self.info((parent + "/" if parent else "") + ".wh." + name, tarfile.REGTYPE, 0o644)
        ti.size = 0
        ti.pax_headers = {}
        out.append((ti, b""))

    def remove(self, path):
        for p in [p for p in self.state if p == path or p.startswith(path + "/")]:
            del self.state[p]

    def base(self):
        out, linkable = [], []
        out.append((self.info(".", tarfile.DIRTYPE, 0o755), None))
        # A directory too big for one readdir reply, so listings resume
        # mid-way; later layers add to it and delete from it.
        out.append((self.info("big", tarfile.DIRTYPE, 0o755), None))
        self.state["big"] = "dir"
        for i in range(self.rng.randrange(200, 400)):
            self.add_entry(out, "big/%s-%04d" % ("x" * self.rng.randrange(20, 60), i), linkable)
        for _ in range(self.rng.randrange(6, 10)):
            self.add_tree(out, self.fresh(""), 1, linkable)
        for _ in range(self.rng.randrange(2, 6)):
            self.add_entry(out, self.fresh(""), linkable)
        return out

    def layer(self):
        """One change set over the current state."""
        rng = self.rng
        out, linkable, touched = [], [], []
        parents_listed = set()
        out.append((self.info(".", tarfile.DIRTYPE, 0o755), None))

        def free(path):
            # One change per subtree and layer, as a diff would give it.
            return all(
                not (path == t or path.startswith(t + "/") or t.startswith(path + "/"))
                for t in touched
            )

        def list_parents(path):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                p = "/".join(parts[:i])
                if p not in parents_listed and self.state.get(p) == "dir":
                    parents_listed.add(p)
                    out.append((self.info(p, tarfile.DIRTYPE, 0o755), None))

        for _ in range(rng.randrange(10, 20)):
            # Mostly outside the big directory, which would draw most picks.
            existing = sorted(p for p in self.state if not p.startswith("big/") or rng.random() < 0.1)
            if not existing:
                break
            path = rng.choice(existing)
            if not free(path):
                continue
            kind = self.state[path]
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            r = rng.random()
            list_parents(path)
            touched.append(path)
            if r < 0.3:
                # Delete: mostly OCI's .wh. file, sometimes overlayfs's own
                # 0:0 character device (some tools write those).
                self.whiteout(out, path)
                self.remove(path)
            elif r < 0.55 and kind == "file":
                # Rewrite.
                self.remove(path)
                self.add_entry(out, path, linkable)
            elif kind != "dir":
                # A file becomes a directory.
                self.remove(path)
                self.add_tree(out, path, 2, linkable)
            elif r < 0.45:
                # A directory becomes a file.
                self.remove(path)
                self.add_entry(out, path, linkable)
            elif r < 0.7:
                # Emptied and refilled: opaque.
                self.remove(path)
                out.append((self.info(path, tarfile.DIRTYPE, 0o755), None))
                ti = self.info(path + "/.wh..wh..opq", tarfile.REGTYPE, 0o644)
                ti.size = 0
                ti.pax_headers = {}
                out.append((ti, b""))
                self.state[path] = "dir"
                for _ in range(rng.randrange(0, 4)):
                    self.add_entry(out, self.fresh(path), linkable)
            else:
                # Something new inside.
                out.append((self.info(path, tarfile.DIRTYPE, 0o755), None))
                child = self.fresh(path)
                if rng.random() < 0.3:
                    self.add_tree(out, child, 2, linkable)
                else:
                    self.add_entry(out, child, linkable)
        # A whiteout of a name no layer has (diff tools write those too),
        # in a directory that merges.
        dirs = [d for d in self.dirs() if d and free(d)]
        if dirs and rng.random() < 0.5:
            d = rng.choice(dirs)
            list_parents(d + "/x")
            touched.append(d)
            self.whiteout(out, self.fresh(d))
        # Something new at the top.
        if rng.random() < 0.7:
            path = self.fresh("")
            touched.append(path)
            self.add_tree(out, path, 1, linkable)
        return out


def main():
    seed, count, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    stack = Stack(seed)
    for i in range(count):
        entries = stack.base() if i == 0 else stack.layer()
        with tarfile.open("%s/layer%d.tar" % (outdir, i), "w", format=tarfile.PAX_FORMAT) as tar:
            for ti, data in entries:
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)


if __name__ == "__main__":
    main()
