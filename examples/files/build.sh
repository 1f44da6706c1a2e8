#!/bin/sh
# Example build: packs a tiny "program" into out/hello.tar.gz. With --break it fails like a bad commit.
set -eu
if [ "${1:-}" = "--break" ]; then
    echo "hello.c:3: error: expected ';' before '}' token" >&2
    exit 1
fi
mkdir -p out work
printf '#!/bin/sh\necho hello\n' > work/hello
chmod +x work/hello
tar -czf out/hello.tar.gz -C work hello
echo "built out/hello.tar.gz"
