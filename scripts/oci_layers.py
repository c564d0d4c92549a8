#!/usr/bin/env python3
"""Build the two-layer OCI image used by scripts/podman-e2e.sh.

    oci_layers.py OUT_DIR TAG

writes an OCI image layout in OUT_DIR/oci (tag TAG) whose layers are
gzip-compressed tars, as a registry serves them, and OUT_DIR/layers.env with
shell assignments for the script:

    L1_TGZ, L2_TGZ        the layer blobs (hard links named L1.tar.gz, L2.tar.gz)
    L1_DIGEST, L2_DIGEST  sha256:... of the compressed blobs (manifest digests)
    L1_DIFFID, L2_DIFFID  sha256:... of the uncompressed tars (config diff_ids)

Layer 1 (base) is a busybox root; layer 2 (top) whiteouts /etc/deleted, makes
/opq opaque (adding /opq/c), changes /etc/hello and adds /etc/top. Everything
is owned by 0:0 except /etc/owned1000 (1000:1000, 0640), so ownership that
survives conversion, mounting and the rootless user namespace can be checked.

Output is deterministic (fixed mtimes, gzip header without name or time), so
the digests are the same on every run and machine for the same busybox.
"""

import gzip
import hashlib
import io
import json
import os
import platform
import sys
import tarfile

MTIME = 1700000000
BUSYBOX = "/bin/busybox"
APPLETS = ["sh", "cat", "ls", "id", "true", "stat", "test", "echo"]


def entry(name, kind=tarfile.REGTYPE, mode=0o644, uid=0, gid=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""  # numeric ids only, as image tools write them
    info.mtime = MTIME
    info.linkname = linkname
    return info


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def dir(self, name, mode=0o755):
        self.tar.addfile(entry(name + "/", tarfile.DIRTYPE, mode))

    def file(self, name, data, mode=0o644, uid=0, gid=0):
        info = entry(name, mode=mode, uid=uid, gid=gid)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def symlink(self, name, target):
        self.tar.addfile(entry(name, tarfile.SYMTYPE, 0o777, linkname=target))

    def finish(self):
        """Returns (uncompressed tar, gzip blob)."""
        self.tar.close()
        raw = self.buf.getvalue()
        out = io.BytesIO()
        # filename="" and mtime=0: no name or timestamp in the gzip header.
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
            gz.write(raw)
        return raw, out.getvalue()


def base_layer():
    layer = Layer()
    layer.dir(".")
    layer.dir("bin")
    with open(BUSYBOX, "rb") as f:
        layer.file("bin/busybox", f.read(), 0o755)
    for applet in APPLETS:
        layer.symlink("bin/" + applet, "busybox")
    layer.dir("etc")
    layer.file("etc/hello", b"hello\n")
    layer.file("etc/deleted", b"gone\n")
    layer.file("etc/owned1000", b"mine\n", 0o640, 1000, 1000)
    # What podman/crun would otherwise create in the rootfs: shipping them
    # keeps even a read-only --rootfs usable (rootless-podman.md, table row 5).
    layer.symlink("etc/mtab", "/proc/mounts")
    for name in ("hosts", "hostname", "resolv.conf"):
        layer.file("etc/" + name, b"")
    layer.dir("opq")
    layer.file("opq/a", b"a\n")
    layer.dir("opq/sub")
    layer.file("opq/sub/b", b"b\n")
    for name in ("proc", "sys", "dev", "run"):
        layer.dir(name)
    layer.dir("root", 0o700)
    layer.dir("tmp", 0o1777)
    layer.file("run/.containerenv", b"")
    return layer.finish()


def top_layer():
    layer = Layer()
    layer.dir(".")
    layer.dir("etc")
    layer.file("etc/.wh.deleted", b"")  # OCI whiteout: /etc/deleted is gone
    layer.file("etc/hello", b"hello from layer 2\n")
    layer.file("etc/top", b"top\n")
    layer.dir("opq")
    # OCI opaque marker before its siblings, as the image spec asks: the
    # lower /opq/a and /opq/sub vanish, /opq/c is the only entry.
    layer.file("opq/.wh..wh..opq", b"")
    layer.file("opq/c", b"c\n")
    return layer.finish()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: oci_layers.py OUT_DIR TAG")
    out, tag = sys.argv[1], sys.argv[2]
    oci = os.path.join(out, "oci")
    blobs = os.path.join(oci, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        digest = sha256(data)
        path = os.path.join(blobs, digest[7:])
        with open(path, "wb") as f:
            f.write(data)
        return digest, path

    env = {}
    layers = []
    diff_ids = []
    for n, (raw, blob) in enumerate((base_layer(), top_layer()), start=1):
        digest, path = put(blob)
        link = os.path.join(out, "L%d.tar.gz" % n)
        if os.path.lexists(link):
            os.unlink(link)
        os.link(path, link)
        env["L%d_TGZ" % n] = link
        env["L%d_DIGEST" % n] = digest
        env["L%d_DIFFID" % n] = sha256(raw)
        diff_ids.append(sha256(raw))
        layers.append({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": len(blob),
        })

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    config = json.dumps({
        "created": "2023-11-14T22:13:20Z",
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "oci_layers.py base"},
                    {"created": "2023-11-14T22:13:20Z", "created_by": "oci_layers.py top"}],
    }, sort_keys=True).encode()
    config_digest, _ = put(config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": layers,
    }, sort_keys=True).encode()
    manifest_digest, _ = put(manifest)
    with open(os.path.join(oci, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }]}, f)
    with open(os.path.join(oci, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(out, "layers.env"), "w") as f:
        for key, value in env.items():
            f.write("%s=%s\n" % (key, value))
    for key, value in env.items():
        print("%s=%s" % (key, value))


if __name__ == "__main__":
    main()
