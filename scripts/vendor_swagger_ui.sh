#!/usr/bin/env bash
# Vendor the Swagger UI and ReDoc assets the API serves at /docs and /redoc
# (src/api/docs_ui.py), so the docs pages load nothing from outside the host.
#
# Fetches exact versions from the npm registry with `npm pack` (npm checks each
# tarball against the registry's integrity hash), copies only the files the pages
# load plus their licences into src/api/static/, and writes src/api/static/README.md
# with the versions and sha256 of every file. Run it again after changing a version.
#
#   bash scripts/vendor_swagger_ui.sh
set -euo pipefail

SWAGGER_UI_VERSION=5.35.0 # swagger-ui-dist: Swagger UI 5 reads OpenAPI 3.1 (FastAPI's)
REDOC_VERSION=2.5.4       # redoc 2.x: the `<redoc spec-url>` page FastAPI's get_redoc_html writes

cd "$(dirname "$0")/.."
DEST=src/api/static
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

npm pack --silent --pack-destination "$WORK" \
    "swagger-ui-dist@$SWAGGER_UI_VERSION" "redoc@$REDOC_VERSION" >/dev/null
mkdir -p "$WORK/swagger-ui" "$WORK/redoc"
tar -xzf "$WORK/swagger-ui-dist-$SWAGGER_UI_VERSION.tgz" -C "$WORK/swagger-ui" --strip-components=1
tar -xzf "$WORK/redoc-$REDOC_VERSION.tgz" -C "$WORK/redoc" --strip-components=1

rm -rf "$DEST/swagger-ui" "$DEST/redoc"
mkdir -p "$DEST/swagger-ui" "$DEST/redoc"
# Swagger UI: the bundle, its stylesheet, the favicon; the package's licence and
# notice, and the licences of what the bundle contains.
for f in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png \
    LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
    cp "$WORK/swagger-ui/$f" "$DEST/swagger-ui/$f"
done
# ReDoc: the standalone bundle; the package's licence and the bundle's licences.
for f in bundles/redoc.standalone.js bundles/redoc.standalone.js.LICENSE.txt LICENSE; do
    cp "$WORK/redoc/$f" "$DEST/redoc/$(basename "$f")"
done
{
    echo "# Vendored documentation assets"
    echo
    echo "Served by \`src/api/docs_ui.py\` at \`/docs-assets/\` for \`/docs\` (Swagger UI) and"
    echo "\`/redoc\` (ReDoc), so the docs pages make no request outside the host. Written by"
    echo "\`scripts/vendor_swagger_ui.sh\` (do not edit by hand; change a version there and run it)."
    echo
    echo "| package (npm registry) | version | licence |"
    echo "|---|---|---|"
    echo "| \`swagger-ui-dist\` | $SWAGGER_UI_VERSION | Apache-2.0: \`swagger-ui/LICENSE\`, \`swagger-ui/NOTICE\`; bundled code: \`swagger-ui/swagger-ui-bundle.js.LICENSE.txt\` |"
    echo "| \`redoc\` | $REDOC_VERSION | MIT: \`redoc/LICENSE\`; bundled code: \`redoc/redoc.standalone.js.LICENSE.txt\` |"
    echo
    echo "Each file is the package's own, unchanged (its sha256 below). The bundles name source"
    echo "maps that are not vendored: only a browser's developer tools ask for them (404)."
    echo
    echo "| file | bytes | sha256 |"
    echo "|---|---|---|"
    (cd "$DEST" && for f in swagger-ui/* redoc/*; do
        echo "| \`$f\` | $(stat -c %s "$f") | \`$(sha256sum "$f" | cut -d' ' -f1)\` |"
    done)
} >"$DEST/README.md"

du -sh "$DEST"
