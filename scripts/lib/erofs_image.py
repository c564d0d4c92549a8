#!/usr/bin/env python3
"""Rewrites an OCI image layout with EROFS-native layers, for lazy benchmarks.

    erofs_image.py EROFS_FUSE IN_LAYOUT OUT_LAYOUT [--tag TAG]

Each layer of IN_LAYOUT's first manifest (tar or tar.gz, as
scripts/gen_image.py writes them) is converted with `EROFS_FUSE convert
--mode full` (an uncompressed EROFS image holding the data) and becomes a
layer of media type application/vnd.erofs.layer.v1 in OUT_LAYOUT, with
the same config otherwise (its diff_ids the EROFS blobs' digests, as
erofs-fuse and containerd's EROFS snapshotter take them). Tagged TAG
(default "1"). Prints the image's size: the sum of its layers.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys

MEDIA_TYPE = "application/vnd.erofs.layer.v1"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("erofs_fuse")
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("--tag", default="1")
    args = ap.parse_args()
    blobs_in = os.path.join(args.inp, "blobs", "sha256")
    blobs = os.path.join(args.out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    with open(os.path.join(args.inp, "index.json")) as f:
        desc = json.load(f)["manifests"][0]
    with open(os.path.join(blobs_in, desc["digest"][7:])) as f:
        manifest = json.load(f)
    with open(os.path.join(blobs_in, manifest["config"]["digest"][7:])) as f:
        config = json.load(f)

    layers = []
    for n, layer in enumerate(manifest["layers"]):
        tmp = os.path.join(args.out, "layer%d.tmp" % n)
        subprocess.run([args.erofs_fuse, "convert", "--quiet", "--mode", "full",
                        os.path.join(blobs_in, layer["digest"][7:]), tmp], check=True)
        digest = sha256_file(tmp)
        size = os.path.getsize(tmp)
        os.replace(tmp, os.path.join(blobs, digest[7:]))
        layers.append({"mediaType": MEDIA_TYPE, "digest": digest, "size": size})

    def put(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest[7:]), "wb") as f:
            f.write(data)
        return digest

    config["rootfs"] = {"type": "layers", "diff_ids": [l["digest"] for l in layers]}
    config = json.dumps(config, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(config), "size": len(config)},
        "layers": layers,
    }, sort_keys=True).encode()
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
            "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": args.tag}}]}, f)
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(sum(l["size"] for l in layers))


if __name__ == "__main__":
    sys.exit(main())
