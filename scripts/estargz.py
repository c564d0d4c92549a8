#!/usr/bin/env python3
"""Convert an OCI image layout's layers to eStargz (Python 3 stdlib only).

    estargz.py IN_LAYOUT OUT_LAYOUT [--tag TAG] [--chunk-size BYTES]

IN_LAYOUT is an OCI image layout (as `podman push IMAGE oci:DIR` or
`skopeo copy ... oci:DIR` writes it) whose first manifest has tar or
tar+gzip layers. OUT_LAYOUT gets the same image with every layer rewritten
as eStargz, a new config (diff_ids of the new layers) and a manifest whose
layer descriptors carry the annotations containers/image and stargz tools
read: `containerd.io/snapshot/stargz/toc.digest` and
`io.containers.estargz.uncompressed-size`. Push it unchanged with
`skopeo copy --preserve-digests oci:OUT_LAYOUT:TAG docker://...`.

Why: nothing on these machines writes eStargz (containers/image cannot,
and ctr-remote/nerdctl cannot be built without Go module network access),
and the e2e needs eStargz layers to check the additional layer store with.

The blob follows the eStargz spec (stargz-snapshotter docs/estargz.md):
  - a concatenation of gzip members which, decompressed, is one tar stream;
  - a new gzip member starts at the top of the blob, at the top of the
    payload of every non-empty regular file, at every chunk of a file larger
    than --chunk-size (default 4 MiB), and at the TOC's tar header;
  - the first entry is the no-prefetch landmark `.no.prefetch.landmark`
    (one byte 0x0f), as the spec requires when no file is prioritized;
  - the last tar entry is `stargz.index.json`, the TOC: {"version": 1,
    "entries": [...]}, one entry per tar entry ("dir", "reg", "symlink",
    "hardlink", "char", "block", "fifo") plus one "chunk" entry per further
    chunk, with offset (of the gzip member holding the payload or chunk),
    chunkOffset, chunkSize (0 for the last or only chunk), digest (whole
    file) and chunkDigest; modes are st_mode values (type and permission
    bits), modtimes RFC 3339 UTC, xattrs base64;
  - then the end-of-archive blocks and a 51-byte footer: an empty gzip member
    whose extra field (subfield "SG", 22 bytes) is "%016xSTARGZ" % toc_offset.
The TOC digest is sha256 of the TOC JSON bytes; the diffID is sha256 of the
whole decompressed stream (TOC entry included, as for any eStargz layer).
"""

import argparse
import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import tarfile
import zlib

TOC_NAME = "stargz.index.json"
LANDMARK = ".no.prefetch.landmark"
TOC_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
SIZE_ANNOTATION = "io.containers.estargz.uncompressed-size"
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
# Refuse absurd inputs instead of exhausting memory (layers are held whole).
MAX_LAYER = 4 << 30

TYPES = {
    tarfile.DIRTYPE: ("dir", 0o040000),
    tarfile.REGTYPE: ("reg", 0o100000),
    tarfile.AREGTYPE: ("reg", 0o100000),
    tarfile.SYMTYPE: ("symlink", 0o120000),
    tarfile.LNKTYPE: ("hardlink", 0o100000),
    tarfile.CHRTYPE: ("char", 0o020000),
    tarfile.BLKTYPE: ("block", 0o060000),
    tarfile.FIFOTYPE: ("fifo", 0o010000),
}


def die(msg):
    sys.exit(f"estargz.py: {msg}")


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def member(data):
    """One gzip member (no name, mtime 0: deterministic)."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def footer(toc_offset):
    """The 51-byte eStargz footer: an empty gzip member with the TOC offset."""
    sub = b"%016xSTARGZ" % toc_offset
    extra = b"SG" + struct.pack("<H", len(sub)) + sub
    header = b"\x1f\x8b\x08\x04" + b"\0\0\0\0" + b"\0\xff" + struct.pack("<H", len(extra)) + extra
    empty_stored_block = b"\x01\x00\x00\xff\xff"
    trailer = struct.pack("<II", zlib.crc32(b""), 0)
    out = header + empty_stored_block + trailer
    assert len(out) == 51
    return out


def modtime(info):
    if info.mtime <= 0:
        return ""
    t = datetime.datetime.fromtimestamp(int(info.mtime), datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def toc_entry(info):
    kind, type_bits = TYPES[info.type]
    ent = {"name": info.name, "type": kind, "mode": type_bits | (info.mode & 0o7777),
           "uid": info.uid, "gid": info.gid}
    if info.uname:
        ent["userName"] = info.uname
    if info.gname:
        ent["groupName"] = info.gname
    mt = modtime(info)
    if mt:
        ent["modtime"] = mt
    if kind in ("symlink", "hardlink"):
        ent["linkName"] = info.linkname
    if kind in ("char", "block"):
        ent["devMajor"] = info.devmajor
        ent["devMinor"] = info.devminor
    xattrs = {k[len("SCHILY.xattr."):]: base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
              for k, v in info.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    if xattrs:
        ent["xattrs"] = xattrs
    return ent


class Writer:
    """Accumulates the blob (gzip members) and the uncompressed stream."""

    def __init__(self):
        self.blob = io.BytesIO()
        self.raw = hashlib.sha256()
        self.raw_size = 0
        self.pending = b""   # uncompressed bytes of the member being filled

    def add(self, data):
        self.pending += data
        self.raw.update(data)
        self.raw_size += len(data)

    def flush(self):
        """Ends the current member (if any); returns the next member's offset."""
        if self.pending:
            self.blob.write(member(self.pending))
            self.pending = b""
        return self.blob.tell()

    def add_member(self, data):
        """data as a member of its own; returns its offset."""
        off = self.flush()
        self.add(data)
        self.flush()
        return off


def header(info):
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def pad(n):
    return b"\0" * (-n % 512)


def add_file(w, info, data, chunk_size, entries):
    """A regular file: header in the current member, payload in its own chunks."""
    info.size = len(data)
    w.add(header(info))
    ent = toc_entry(info)
    ent["size"] = len(data)
    if not data:
        entries.append(ent)
        return
    ent["digest"] = sha256(data)
    chunks = [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]
    pos = 0
    for i, chunk in enumerate(chunks):
        cur = ent if i == 0 else {"name": info.name, "type": "chunk", "chunkOffset": pos}
        cur["offset"] = w.add_member(chunk)
        cur["chunkSize"] = 0 if i == len(chunks) - 1 else len(chunk)
        cur["chunkDigest"] = sha256(chunk)
        entries.append(cur)
        pos += len(chunk)
    w.add(pad(len(data)))


def convert_tar(tar_bytes, chunk_size):
    """A tar stream → (blob bytes, TOC digest, diffID, uncompressed size)."""
    w = Writer()
    entries = []
    landmark = tarfile.TarInfo(LANDMARK)
    landmark.mode = 0o644
    add_file(w, landmark, b"\x0f", chunk_size, entries)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
        for info in tf:
            if info.name in (TOC_NAME, LANDMARK, ".prefetch.landmark"):
                die(f"input layer already holds {info.name}")
            if info.type not in TYPES:
                die(f"{info.name}: unsupported tar entry type {info.type!r}")
            if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                f = tf.extractfile(info)
                add_file(w, info, f.read() if f else b"", chunk_size, entries)
            else:
                w.add(header(info))
                entries.append(toc_entry(info))
    toc = json.dumps({"version": 1, "entries": entries}, indent="\t").encode()
    toc_info = tarfile.TarInfo(TOC_NAME)
    toc_info.size = len(toc)
    toc_info.mode = 0o644
    toc_offset = w.flush()
    w.add(header(toc_info) + toc + pad(len(toc)) + b"\0" * 1024)
    w.flush()
    w.blob.write(footer(toc_offset))
    return w.blob.getvalue(), sha256(toc), "sha256:" + w.raw.hexdigest(), w.raw_size


class Layout:
    """An OCI image layout directory."""

    def __init__(self, path):
        self.path = path

    def blob_path(self, digest):
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
            die(f"{self.path}: bad digest {digest!r}")
        return os.path.join(self.path, "blobs", "sha256", hexd)

    def read_blob(self, desc):
        size = desc.get("size")
        if not isinstance(size, int) or size < 0 or size > MAX_LAYER:
            die(f"{self.path}: blob {desc.get('digest')}: bad size {size!r}")
        with open(self.blob_path(desc["digest"]), "rb") as f:
            data = f.read(size + 1)
        if len(data) != size or sha256(data) != desc["digest"]:
            die(f"{self.path}: blob {desc['digest']} does not match its descriptor")
        return data

    def write_blob(self, data):
        digest = sha256(data)
        os.makedirs(os.path.join(self.path, "blobs", "sha256"), exist_ok=True)
        with open(self.blob_path(digest), "wb") as f:
            f.write(data)
        return digest


def uncompressed(blob, media_type, where):
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if media_type.endswith("+zstd") or blob[:4] == b"\x28\xb5\x2f\xfd":
        die(f"{where}: zstd layers cannot be read with the stdlib; push the input with gzip or uncompressed")
    return blob


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--chunk-size", type=int, default=4 << 20)
    a = ap.parse_args()
    if a.chunk_size < 1:
        die("--chunk-size must be positive")
    src, dst = Layout(a.input), Layout(a.output)
    with open(os.path.join(a.input, "index.json")) as f:
        index = json.load(f)
    manifests = index.get("manifests") or die(f"{a.input}/index.json: no manifests")
    manifest = json.loads(src.read_blob(manifests[0]))
    config = json.loads(src.read_blob(manifest["config"]))
    os.makedirs(a.output, exist_ok=True)
    layers, diff_ids = [], []
    for i, desc in enumerate(manifest["layers"]):
        where = f"{a.input} layer {i}"
        tar_bytes = uncompressed(src.read_blob(desc), desc.get("mediaType", ""), where)
        blob, toc_digest, diff_id, raw_size = convert_tar(tar_bytes, a.chunk_size)
        digest = dst.write_blob(blob)
        layers.append({"mediaType": LAYER_TYPE, "digest": digest, "size": len(blob),
                       "annotations": {TOC_ANNOTATION: toc_digest, SIZE_ANNOTATION: str(raw_size)}})
        diff_ids.append(diff_id)
        print(f"layer {i}: {digest} toc {toc_digest} diffid {diff_id} ({len(blob)} bytes)")
    config.setdefault("rootfs", {"type": "layers"})["diff_ids"] = diff_ids
    config_bytes = json.dumps(config).encode()
    out_manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                    "config": {"mediaType": CONFIG_TYPE, "digest": dst.write_blob(config_bytes),
                               "size": len(config_bytes)},
                    "layers": layers}
    manifest_bytes = json.dumps(out_manifest).encode()
    out_index = {"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST_TYPE, "digest": dst.write_blob(manifest_bytes), "size": len(manifest_bytes),
         "annotations": {"org.opencontainers.image.ref.name": a.tag}}]}
    with open(os.path.join(a.output, "index.json"), "w") as f:
        json.dump(out_index, f)
    with open(os.path.join(a.output, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()
