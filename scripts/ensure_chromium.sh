#!/usr/bin/env bash
# Make sure a Chromium for the browser tests (tests/support/browser.py) is installed, and print its version.
# Playwright drives this Chromium through executable_path: `playwright install` is never run.
# Looks for $CHROMIUM, else `chromium` or `chromium-browser` on PATH. With none, installs Debian's
# `chromium` package with apt-get (as root, or through `sudo -n`); it never downloads a browser any
# other way. Exits non-zero, saying what to install, when it cannot.
set -uo pipefail

find_chromium() {
    if [ -n "${CHROMIUM:-}" ]; then
        command -v "$CHROMIUM" 2>/dev/null
        return
    fi
    command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null
}

print_version() {
    local version
    # Debian's launcher script can print shell noise on stderr: keep only the version line.
    if version=$("$1" --version 2>/dev/null) && [ -n "$version" ]; then
        echo "chromium: $version ($1)"
    else
        echo "error: $1 does not run ('$1 --version' failed)" >&2
        exit 1
    fi
}

if [ -n "${CHROMIUM:-}" ] && ! find_chromium >/dev/null; then
    echo "error: CHROMIUM=$CHROMIUM is not an executable; unset it or point it at a Chromium binary" >&2
    exit 1
fi

if binary=$(find_chromium); then
    print_version "$binary"
    exit 0
fi

fail() {
    echo "error: Chromium is needed for the browser tests and $1." >&2
    echo "       Install Debian's package as root: apt-get install -y --no-install-recommends chromium" >&2
    echo "       (or set CHROMIUM to a Chromium/Chrome binary)" >&2
    exit 1
}

if ! command -v apt-get >/dev/null 2>&1; then
    fail "this system has no apt-get"
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    fail "installing it needs root (no password-less sudo here)"
fi

echo "Chromium not found: installing Debian's chromium package ..."
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "${as_root[@]}" apt-get install -y --no-install-recommends chromium >"$log" 2>&1; then
    if grep -qE "Unable to locate package|has no installation candidate|Package '?chromium'? has no" "$log"; then
        echo "no package lists yet: apt-get update, then install again"
        "${as_root[@]}" apt-get update >"$log" 2>&1 || { cat "$log" >&2; fail "apt-get update failed"; }
        "${as_root[@]}" apt-get install -y --no-install-recommends chromium >"$log" 2>&1 \
            || { cat "$log" >&2; fail "apt-get install chromium failed"; }
    else
        cat "$log" >&2
        fail "apt-get install chromium failed"
    fi
fi

if binary=$(find_chromium); then
    print_version "$binary"
else
    fail "the chromium package installed no chromium command on PATH"
fi
