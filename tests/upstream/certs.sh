#!/usr/bin/env bash
# Test PKI for the upstream TLS / mutual-TLS tests, made with openssl.
#
#   tests/upstream/certs.sh DIR      (DIR is created; existing files replaced)
#
# Writes into DIR (all PEM; every key is unencrypted PKCS#8, "BEGIN PRIVATE
# KEY", EC P-256; every certificate X.509 v3, SHA-256, valid from now
# for CERTS_DAYS days, default 30):
#
#   ca.pem, ca.key                 the test CA ("nativelink-lre test CA")
#   server.pem, server.key         CN=localhost, SAN DNS:localhost,IP:127.0.0.1,IP:::1,
#                                  EKU serverAuth, signed by ca
#   client.pem, client.key         CN=nativelink-lre-test-client, EKU clientAuth,
#                                  signed by ca
#   other-ca.pem, other-ca.key     an unrelated CA (negative tests: a client
#                                  trusting only it must reject server.pem)
#   other-client.pem, other-client.key
#                                  a client cert signed by other-ca (a server
#                                  requiring certs from ca must reject it)
#
# Prints DIR. Needs only `openssl` (1.1.1 or 3.x).
set -euo pipefail

die() { echo "certs.sh: $*" >&2; exit 1; }
[[ $# -eq 1 ]] || die "usage: certs.sh DIR"
command -v openssl >/dev/null || die "openssl not found"
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
DAYS=${CERTS_DAYS:-30}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/certs.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# Extensions, one section each; `openssl x509 -req -extfile F -extensions S`.
cat >"$TMP/ext.cnf" <<'EOF'
[ca]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[server]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = serverAuth
subjectAltName         = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid, issuer

[client]
basicConstraints       = critical, CA:FALSE
keyUsage               = critical, digitalSignature
extendedKeyUsage       = clientAuth
subjectAltName         = DNS:nativelink-lre-test-client
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid, issuer
EOF

newkey() { # FILE: an EC P-256 key in PKCS#8 PEM ("BEGIN PRIVATE KEY")
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
        -pkeyopt ec_param_enc:named_curve -out "$1" 2>/dev/null
    chmod 600 "$1"
}

# Serial numbers: random, positive, 16 bytes (what webpki likes; no reuse
# across runs, so a cached cert of a former run is never "the same").
serial() { echo "0x$(openssl rand -hex 16 | sed 's/^./4/')"; }

make_ca() { # NAME CN
    local name=$1 cn=$2
    newkey "$TMP/$name.key"
    openssl req -new -key "$TMP/$name.key" -subj "/O=nativelink-lre tests/CN=$cn" \
        -out "$TMP/$name.csr"
    sign "$name" "$name" ca
}

make_leaf() { # NAME CN CA SECTION
    local name=$1 cn=$2 ca=$3 section=$4
    newkey "$TMP/$name.key"
    openssl req -new -key "$TMP/$name.key" -subj "/O=nativelink-lre tests/CN=$cn" \
        -out "$TMP/$name.csr"
    sign "$name" "$ca" "$section"
}

sign() { # NAME ISSUER SECTION (ISSUER == NAME: self-signed)
    local name=$1 issuer=$2 section=$3
    local signer=(-CA "$TMP/$issuer.pem" -CAkey "$TMP/$issuer.key")
    [[ "$issuer" == "$name" ]] && signer=(-signkey "$TMP/$name.key")
    openssl x509 -req -in "$TMP/$name.csr" "${signer[@]}" -sha256 -days "$DAYS" \
        -set_serial "$(serial)" -extfile "$TMP/ext.cnf" -extensions "$section" \
        -out "$TMP/$name.pem" 2>/dev/null
}

make_ca ca "nativelink-lre test CA"
make_leaf server localhost ca server
make_leaf client nativelink-lre-test-client ca client
make_ca other-ca "nativelink-lre unrelated test CA"
make_leaf other-client nativelink-lre-test-client other-ca client

# Sanity: the chain verifies with the purposes a TLS stack checks, and the
# other CA does not vouch for the server.
openssl verify -CAfile "$TMP/ca.pem" -purpose sslserver "$TMP/server.pem" >/dev/null ||
    die "server.pem does not verify against ca.pem"
openssl verify -CAfile "$TMP/ca.pem" -purpose sslclient "$TMP/client.pem" >/dev/null ||
    die "client.pem does not verify against ca.pem"
if openssl verify -CAfile "$TMP/other-ca.pem" "$TMP/server.pem" >/dev/null 2>&1; then
    die "server.pem verifies against other-ca.pem"
fi
for k in ca server client other-ca other-client; do
    head -1 "$TMP/$k.key" | grep -qx -- '-----BEGIN PRIVATE KEY-----' || die "$k.key is not PKCS#8"
done

for f in ca server client other-ca other-client; do
    install -m 644 "$TMP/$f.pem" "$DIR/$f.pem"
    install -m 600 "$TMP/$f.key" "$DIR/$f.key"
done
echo "$DIR"
