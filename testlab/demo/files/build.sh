#!/bin/sh
# Builds the "product": a script the test step runs on every VM.
set -e
mkdir -p out
cat > out/hello.sh <<'SCRIPT'
#!/bin/sh
echo "hello from $TESTLAB_VM"
SCRIPT
chmod +x out/hello.sh
echo "built out/hello.sh"
