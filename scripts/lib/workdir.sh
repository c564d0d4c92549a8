# shellcheck shell=bash
# A benchmark's work directory: made 0700 when absent, refused when it is a
# symlink or someone else's (the defaults sit in /var/tmp, where another user
# could make the name first and have us write or run what they put there).
own_workdir() { # dir
    mkdir -p -m 700 "$1"
    if [ -L "$1" ] || [ ! -O "$1" ]; then
        echo "$(basename "$0"): $1 is not a directory of ours (a symlink or another user's); use --workdir" >&2
        exit 1
    fi
}
