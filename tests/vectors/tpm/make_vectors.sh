#!/usr/bin/env bash
# Regenerate the TPM vectors in this folder from a fresh swtpm with tpm2-tools.
# Usage: tests/vectors/tpm/make_vectors.sh   (needs swtpm, swtpm-tools, tpm2-tools)
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "$(cat "$work/swtpm.pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/state"
swtpm socket --tpm2 --tpmstate dir="$work/state" --server type=tcp,port="$port" \
  --ctrl type=tcp,port=$((port + 1)) --flags not-need-init,startup-clear \
  --pid file="$work/swtpm.pid" -d
sleep 0.3
export TPM2TOOLS_TCTI="swtpm:host=127.0.0.1,port=$port" TSS2_LOG=all+none
flush() { tpm2_flushcontext -t; tpm2_flushcontext -l; tpm2_flushcontext -s; }
cd "$work"
# PCR 23 extended twice with sha256("bastion-vector-1") and sha256("bastion-vector-2")
tpm2_pcrextend "23:sha256=$(printf bastion-vector-1 | sha256sum | cut -d' ' -f1)"
tpm2_pcrextend "23:sha256=$(printf bastion-vector-2 | sha256sum | cut -d' ' -f1)"
tpm2_pcrread -Q sha256:0,7,23 -o "$out/pcr_0_7_23.bin"
tpm2_createpolicy -Q --policy-pcr -l sha256:0,7,23 -f "$out/pcr_0_7_23.bin" -L "$out/policy_pcr_0_7_23.bin"
flush
tpm2_createek -c ek.ctx -G rsa -u "$out/ek.pub"
flush
tpm2_createak -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u "$out/ak.pub" -f pem -n "$out/ak.name" -Q
tpm2_readpublic -c ak.ctx -o "$out/ak.tpm2b_public" -Q
flush
tpm2_quote -c ak.ctx -l sha256:0,7,23 -q 00112233445566778899aabbccddeeff \
  -m "$out/quote.msg" -s "$out/quote.sig" -o "$out/quote.pcrs" -g sha256 -Q
flush
printf 'bastion-credential-0123456789abc' > secret.bin
tpm2_makecredential -Q -T none -u "$out/ek.pub" -s secret.bin -n "$(xxd -p -c 256 "$out/ak.name")" \
  -o "$out/credential.blob"
tpm2_pcrread sha256:0,7,23 > "$out/pcrread.txt"
tpm2 --version > "$out/tool-version.txt" 2>&1 || tpm2_pcrread --version > "$out/tool-version.txt"
