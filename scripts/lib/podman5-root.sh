# A cached Debian trixie root with rootless podman 5 (podman5-e2e.sh and
# its --bench), entered with unshare + pivot_root: the kernel refuses
# to create a user namespace from a chrooted process, so chroot would not
# do (/work/shared/docs/podman5.md). The sourcing script defines log and die.
# shellcheck shell=bash

P5_CACHE=${P5_CACHE:-/var/cache/erofs-fuse-podman5}
P5_ROOT=$P5_CACHE/root
# What the root holds; a change here rebuilds it (the list is in the stamp).
P5_PACKAGES=podman,crun,uidmap,passt,slirp4netns,fuse3,catatonit,skopeo,busybox-static,ca-certificates,python3,curl,procps
P5_STAMP=$P5_CACHE/root.stamp

# The Debian archive apt uses here (deb822 sources first, then sources.list).
p5_mirror() {
    local url
    url=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        tr ' ' '\n' | grep -v security | head -n 1)
    [ -n "$url" ] || url=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    echo "${url:-http://deb.debian.org/debian}"
}

# Builds the root unless a complete one (stamp written last, same package
# list) is there. The cache directory is root-owned 0700: nothing in it can
# be swapped by another user before we enter it.
p5_build_root() {
    install -d -m 700 -o root -g root "$P5_CACHE"
    [ "$(stat -c %u:%a "$P5_CACHE")" = 0:700 ] || die "$P5_CACHE: not root-owned 0700"
    if [ -f "$P5_STAMP" ] && [ "$(cat "$P5_STAMP")" = "$P5_PACKAGES" ]; then
        log "root: cached $P5_ROOT"
        return 0
    fi
    command -v mmdebstrap >/dev/null || {
        log "root: installing mmdebstrap"
        timeout 600 apt-get update -qq
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq mmdebstrap >/dev/null
    }
    rm -f "$P5_STAMP"
    rm -rf --one-file-system "$P5_ROOT" "$P5_ROOT.new"
    local mirror
    mirror=$(p5_mirror)
    log "root: mmdebstrap trixie from $mirror (a few minutes; cached afterwards)"
    timeout -k 10 1200 mmdebstrap --quiet --variant=minbase --include="$P5_PACKAGES" \
        trixie "$P5_ROOT.new" "$mirror" || die "mmdebstrap failed"
    mv "$P5_ROOT.new" "$P5_ROOT"
    echo "$P5_PACKAGES" >"$P5_STAMP"
}
