#!/usr/bin/env bash
# Re-downloads the pinned GraphiQL and React builds from the npm registry and copies them into
# assets/graphiql/, so the GraphiQL page works on a closed network (src/http/graphiql.rs embeds them).
#
#   scripts/vendor-graphiql.sh           download, check each tarball's pinned sha512, copy the files in
#   scripts/vendor-graphiql.sh --check   the same, but only compare with the committed files (exit 1 on any difference)
#
# It also sets each asset's `?v=` in assets/graphiql/index.html to the file's content hash (FNV-1a 64,
# as src/http/graphiql.rs computes it; its unit tests fail when the two disagree).
#
# Needs npm and node. To move to another version: change the pins below (version and integrity, from
# `npm view PACKAGE@VERSION dist.integrity`), run the script, update assets/graphiql/README.md,
# then run `cargo test http::graphiql` and scripts/browser-test.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly DEST=assets/graphiql

# package@version  integrity of its npm tarball
readonly PINS=(
    "graphiql@3.8.3 sha512-cuPDYtXVKV86Pu5PHBX642Odi/uVEE2y1Jxq5rGO/Qy1G2lRp7ZZ7a/T30RzxhuLSWo9zUbzq0P3U49//H0Ugw=="
    "react@18.3.1 sha512-wS+hAgJShR0KhEvPJArfuPVN1+Hz1t0Y6n5jLrGQbkb4urgPE/0Rve+1kMB1v/oWgHgm4WIcV+i7F2pTVj+2iQ=="
    "react-dom@18.3.1 sha512-5m4nQKp+rZRb09LNH59GM4BxTh9251/ylbKIbpe7TpGxfJ+9kv6BLkLBXIjjspbgbnIBNqlI23tRnTWT0snUIw=="
)

# package  file in its tarball  name under assets/graphiql/
readonly FILES=(
    "graphiql package/graphiql.min.js graphiql.min.js"
    "graphiql package/graphiql.min.css graphiql.min.css"
    "graphiql package/LICENSE graphiql.LICENSE"
    "react package/umd/react.production.min.js react.production.min.js"
    "react package/LICENSE react.LICENSE"
    "react-dom package/umd/react-dom.production.min.js react-dom.production.min.js"
    "react-dom package/LICENSE react-dom.LICENSE"
)

check=false
case "${1:-}" in
    "") ;;
    --check) check=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

for tool in npm node; do
    command -v "$tool" >/dev/null 2>&1 || { echo "vendor-graphiql: $tool is needed" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for pin in "${PINS[@]}"; do
    read -r spec integrity <<<"$pin"
    name=${spec%@*}
    tarball=$(cd "$work" && npm pack --silent "$spec" | tail -n 1)
    actual="sha512-$(node -e 'const c=require("crypto"),f=require("fs");process.stdout.write(c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$work/$tarball")"
    if [[ $actual != "$integrity" ]]; then
        echo "vendor-graphiql: $spec: tarball integrity $actual, pinned $integrity" >&2
        exit 1
    fi
    mkdir -p "$work/$name"
    tar -xzf "$work/$tarball" -C "$work/$name"
    echo "vendor-graphiql: $spec ok ($integrity)"
done

differences=0
mkdir -p "$DEST"
for entry in "${FILES[@]}"; do
    read -r name from to <<<"$entry"
    if $check; then
        if ! cmp -s "$work/$name/$from" "$DEST/$to"; then
            echo "vendor-graphiql: $DEST/$to differs from $name's $from" >&2
            differences=$((differences + 1))
        fi
    else
        cp "$work/$name/$from" "$DEST/$to"
        echo "vendor-graphiql: $DEST/$to <- $name/$from"
    fi
done

# FNV-1a 64 of a file, in 16 hex digits: the `?v=` of its URL in index.html.
content_hash() {
    node -e '
        let h = 0xcbf29ce484222325n;
        for (const b of require("fs").readFileSync(process.argv[1])) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
        process.stdout.write(h.toString(16).padStart(16, "0"));' "$1"
}

for entry in "${FILES[@]}"; do
    read -r name from to <<<"$entry"
    [[ $to == *.LICENSE ]] && continue
    hash=$(content_hash "$work/$name/$from")
    if $check; then
        if ! grep -q "/graphiql/assets/$to?v=$hash\"" "$DEST/index.html"; then
            echo "vendor-graphiql: $DEST/index.html does not load $to?v=$hash" >&2
            differences=$((differences + 1))
        fi
    else
        sed -i "s|/graphiql/assets/$to?v=[0-9a-f]*\"|/graphiql/assets/$to?v=$hash\"|" "$DEST/index.html"
        echo "vendor-graphiql: $DEST/index.html loads $to?v=$hash"
    fi
done

if $check; then
    if ((differences > 0)); then
        echo "vendor-graphiql: $differences difference(s) from the pinned packages" >&2
        exit 1
    fi
    echo "vendor-graphiql: all ${#FILES[@]} files and index.html's asset hashes match the pinned packages"
fi
