#!/usr/bin/env python3
"""Writes a generated multi-layer OCI image layout, for pull benchmarks.

    scripts/gen_image.py SEED OUT_DIR [--layers N] [--size MB] [--tag TAG]

OUT_DIR becomes an OCI image layout (index.json tagged TAG, default
"latest") whose N (default 5) layers are gzip tars of about MB/N MB each
(default 500 MB in all, uncompressed): the first holds busybox (so the image
can run `sh`), every layer a rootfs-like spread of small text files (1-32
KiB, compressible), a few large files (half random bytes, half text) and
some whiteouts of what lower layers hold. Deterministic for a seed.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import random
import tarfile

MTIME = 1700000000
WORDS = ("erofs fuse layer image block inode chunk registry blob digest "
         "manifest config overlay mount verity tar index gzip zstd").split()


class Hashing:
    """A file object that hashes what is written through it."""

    def __init__(self, inner):
        self.inner, self.hash, self.size = inner, hashlib.sha256(), 0

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self):
        self.inner.flush()

    def tell(self):
        return self.size


def text(rng, size):
    out, n = [], 0
    while n < size:
        w = rng.choice(WORDS) + (" " if rng.random() < 0.9 else "\n")
        out.append(w)
        n += len(w)
    return "".join(out).encode()[:size]


def entry(name, kind=tarfile.REGTYPE, mode=0o644, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, linkname
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = MTIME
    return info


def write_layer(path, n, rng, budget, lower_files):
    """Writes layer n as a gzip tar; returns (digest, size, diff_id, files)."""
    files = []
    with open(path, "wb") as raw:
        blob = Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6) as gz:
            tar_out = Hashing(gz)
            with tarfile.open(fileobj=tar_out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                def add(name, data, mode=0o644):
                    tar.addfile(entry(name, size=len(data), mode=mode), io.BytesIO(data))
                    files.append(name)

                for d in ("bin", "etc", "usr", "usr/share", "usr/lib", "var"):
                    tar.addfile(entry(d + "/", tarfile.DIRTYPE, 0o755))
                if n == 0:
                    with open("/bin/busybox", "rb") as f:
                        add("bin/busybox", f.read(), 0o755)
                    for applet in ("sh", "ls", "cat", "true"):
                        tar.addfile(entry("bin/" + applet, tarfile.SYMTYPE, 0o777, linkname="busybox"))
                    add("etc/hostname", b"bench\n")
                left = budget
                # A few large files: a quarter of the layer.
                for i in range(4):
                    size = budget // 16
                    half = size // 2
                    add("usr/lib/big%d-%d.bin" % (n, i), rng.randbytes(half) + text(rng, size - half))
                    left -= size
                d = 0
                while left > 0:
                    if len(files) % 200 == 0:
                        d += 1
                        tar.addfile(entry("usr/share/d%d-%d/" % (n, d), tarfile.DIRTYPE, 0o755))
                    size = rng.randint(1024, 32768)
                    add("usr/share/d%d-%d/f%d.txt" % (n, d, len(files)), text(rng, size))
                    left -= size
                for victim in rng.sample(lower_files, min(20, len(lower_files))):
                    head, _, base = victim.rpartition("/")
                    tar.addfile(entry(head + "/.wh." + base))
        blob.flush()
    return ("sha256:" + blob.hash.hexdigest(), blob.size,
            "sha256:" + tar_out.hash.hexdigest(), [f for f in files if "/big" not in f and f.startswith("usr/share")])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--size", type=int, default=500, help="MB in all, uncompressed")
    ap.add_argument("--tag", default="latest")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    blobs = os.path.join(args.out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    layers, diff_ids, lower = [], [], []
    for n in range(args.layers):
        tmp = os.path.join(args.out, "layer.tmp")
        digest, size, diff_id, files = write_layer(tmp, n, rng, args.size * 1000 * 1000 // args.layers, lower)
        os.replace(tmp, os.path.join(blobs, digest[7:]))
        lower += files
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
        diff_ids.append(diff_id)

    def put(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest[7:]), "wb") as f:
            f.write(data)
        return digest

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
        "layers": layers,
    }, sort_keys=True).encode()
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
            "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": args.tag}}]}, f)
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    total = sum(layer["size"] for layer in layers)
    print("%s: %d layers, %.1f MB compressed" % (args.out, len(layers), total / 1e6))


if __name__ == "__main__":
    main()
