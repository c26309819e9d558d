#!/usr/bin/env bash
# Certificates and keys for a secure Flower deployment of fedprune (flwr 1.41):
#
#   OUT/ca.crt, OUT/ca.key            a private certificate authority (CA)
#   OUT/server.crt, OUT/server.key    the SuperLink's TLS certificate, signed by the CA, valid
#                                     for localhost, 127.0.0.1 and ::1 (plus every --san)
#   OUT/nodes/node-I, node-I.pub      for SuperNode authentication: one ECDSA P-384 key pair
#                                     per SuperNode (I = 1..NODES), OpenSSH format -- what
#                                     `flower-supernode --auth-supernode-private-key` and
#                                     `flwr supernode register` read
#
# usage: scripts/make_certs.sh [--force] [--san DNS:name|IP:addr]... [--days N] OUT_DIR NODES
#
# Private keys are written with mode 600 (OUT/nodes is 700).  Existing files are never
# overwritten unless --force is given.  Every key is made with openssl.  Flower reads node
# keys in OpenSSH format, which openssl does not write: ssh-keygen converts them, or, where
# there is none (or SSH_KEYGEN is set empty), Python's `cryptography` package, which flwr
# installs ($PYTHON, default python3: the environment that has flwr).
# docs/flower.md ("Secure deployment") shows where each file goes.
set -euo pipefail

prog=${0##*/}

usage() {
    cat <<EOF
usage: $prog [--force] [--san DNS:name|IP:addr]... [--days N] OUT_DIR NODES

Creates in OUT_DIR: ca.crt/ca.key (a CA), server.crt/server.key (the SuperLink's TLS
certificate for localhost, 127.0.0.1, ::1 and each --san), and nodes/node-1 .. node-NODES
with their .pub files (ECDSA P-384, OpenSSH format) for SuperNode authentication.

  --force        replace files that exist (default: refuse and change nothing)
  --san VALUE    another subjectAltName of the SuperLink, e.g. DNS:superlink.example.org
                 or IP:10.0.0.5 (repeatable): the address SuperNodes and flwr use
  --days N       validity of the server certificate in days (default 365; CA: 3650)

Node keys are converted to OpenSSH format by \$SSH_KEYGEN (default ssh-keygen) or, if it
is empty or missing, by \$PYTHON (default python3) with the cryptography package.
EOF
}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}

force=0
days=365
extra_sans=()
args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        -f|--force) force=1 ;;
        --san)
            [ "$#" -ge 2 ] || die "--san needs a value"
            case "$2" in
                DNS:?*|IP:?*) extra_sans+=("$2") ;;
                *) die "--san $2: write DNS:name or IP:address" ;;
            esac
            shift ;;
        --days)
            [ "$#" -ge 2 ] || die "--days needs a value"
            case "$2" in ''|*[!0-9]*) die "--days $2: not a whole number" ;; esac
            days=$2
            shift ;;
        --) shift; args+=("$@"); break ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) args+=("$1") ;;
    esac
    shift
done
[ "${#args[@]}" -eq 2 ] || { usage >&2; die "expected OUT_DIR and NODES"; }
out=${args[0]}
nodes=${args[1]}
case "$nodes" in ''|*[!0-9]*) die "NODES $nodes: not a whole number" ;; esac
nodes=$((10#$nodes))
[ "$days" -ge 1 ] || die "--days must be at least 1"

command -v openssl >/dev/null 2>&1 || die "openssl not found on PATH"
ssh_keygen=${SSH_KEYGEN-ssh-keygen}
python=${PYTHON:-python3}
converter=""
if [ "$nodes" -gt 0 ]; then
    if [ -n "$ssh_keygen" ] && command -v "$ssh_keygen" >/dev/null 2>&1; then
        converter=ssh-keygen
    elif command -v "$python" >/dev/null 2>&1 \
            && "$python" -c "import cryptography" >/dev/null 2>&1; then
        converter=python
    else
        die "the SuperNode keys need ssh-keygen (package openssh-client) or $python with" \
            "the cryptography package (the environment that has flwr) to be written"
    fi
fi

targets=("$out/ca.key" "$out/ca.crt" "$out/server.key" "$out/server.crt")
i=1
while [ "$i" -le "$nodes" ]; do
    targets+=("$out/nodes/node-$i" "$out/nodes/node-$i.pub")
    i=$((i + 1))
done
existing=()
for f in "${targets[@]}"; do
    if [ -e "$f" ] || [ -L "$f" ]; then
        existing+=("$f")
    fi
done
if [ "${#existing[@]}" -gt 0 ]; then
    if [ "$force" -eq 0 ]; then
        printf '%s: error: refusing to overwrite (pass --force to replace them):\n' "$prog" >&2
        printf '  %s\n' "${existing[@]}" >&2
        exit 1
    fi
    rm -f -- "${existing[@]}"
fi

umask 077  # every file and folder below is private to its owner until chmod'ed
mkdir -p -- "$out"
if [ "$nodes" -gt 0 ]; then mkdir -p -- "$out/nodes"; fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/make_certs.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for s in ${extra_sans[@]+"${extra_sans[@]}"}; do
    san="$san,$s"
done

cat >"$tmp/openssl.cnf" <<EOF
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
CN = fedprune Flower CA
[ v3_ca ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ v3_server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
EOF

openssl_quiet() {
    if ! openssl "$@" >"$tmp/openssl.log" 2>&1; then
        cat "$tmp/openssl.log" >&2
        die "openssl $1 failed"
    fi
}

# the CA: EC P-384 key, self-signed, 10 years
openssl_quiet ecparam -name secp384r1 -genkey -noout -out "$out/ca.key"
openssl_quiet req -new -x509 -sha384 -days 3650 -key "$out/ca.key" -out "$out/ca.crt" \
    -config "$tmp/openssl.cnf" -extensions v3_ca -subj "/CN=fedprune Flower CA"

# the SuperLink's certificate, signed by the CA
openssl_quiet ecparam -name secp384r1 -genkey -noout -out "$out/server.key"
openssl_quiet req -new -sha384 -key "$out/server.key" -out "$tmp/server.csr" \
    -config "$tmp/openssl.cnf" -subj "/CN=fedprune SuperLink"
openssl_quiet x509 -req -sha384 -days "$days" -in "$tmp/server.csr" \
    -CA "$out/ca.crt" -CAkey "$out/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -extfile "$tmp/openssl.cnf" -extensions v3_server -out "$out/server.crt"
openssl_quiet verify -CAfile "$out/ca.crt" "$out/server.crt"

chmod 600 "$out/ca.key" "$out/server.key"
chmod 644 "$out/ca.crt" "$out/server.crt"

# to_openssh PEM_KEY KEY COMMENT: the EC private key PEM_KEY as KEY (OpenSSH format, no
# passphrase) and its public key as KEY.pub ("ecdsa-sha2-nistp384 AAAA... COMMENT")
to_openssh() {
    if [ "$converter" = ssh-keygen ]; then
        cp -- "$1" "$2"
        # -p rewrites the key in OpenSSH's own format (the default since OpenSSH 7.8)
        "$ssh_keygen" -q -p -P "" -N "" -f "$2" >"$tmp/convert.log" 2>&1 || return 1
        pub=$("$ssh_keygen" -y -f "$2" 2>"$tmp/convert.log") || return 1
        set -- "$1" "$2" "$3" $pub
        printf '%s %s %s\n' "$4" "$5" "$3" >"$2.pub"
    else
        "$python" - "$1" "$2" "$3" >"$tmp/convert.log" 2>&1 <<'PY' || return 1
import sys
from cryptography.hazmat.primitives import serialization as ser

pem, key, comment = sys.argv[1:]
with open(pem, "rb") as fh:
    private = ser.load_pem_private_key(fh.read(), password=None)
with open(key, "wb") as fh:
    fh.write(private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH,
                                   ser.NoEncryption()))
with open(key + ".pub", "wb") as fh:
    fh.write(private.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH)
             + b" " + comment.encode() + b"\n")
PY
    fi
    grep -q '^-----BEGIN OPENSSH PRIVATE KEY-----' "$2" \
        && grep -q '^ecdsa-sha2-nistp384 ' "$2.pub"
}

# SuperNode authentication keys: ECDSA on P-384 (a NIST curve, as Flower requires), no
# passphrase (flower-supernode reads the key unattended)
i=1
while [ "$i" -le "$nodes" ]; do
    key="$out/nodes/node-$i"
    openssl_quiet ecparam -name secp384r1 -genkey -noout -out "$tmp/node.pem"
    if ! to_openssh "$tmp/node.pem" "$key" "fedprune-supernode-$i"; then
        cat "$tmp/convert.log" >&2
        rm -f -- "$key" "$key.pub"
        die "could not write $key in OpenSSH format (with $converter)"
    fi
    rm -f -- "$tmp/node.pem"
    chmod 600 "$key"
    chmod 644 "$key.pub"
    i=$((i + 1))
done
if [ "$nodes" -gt 0 ]; then chmod 700 "$out/nodes"; fi

fingerprint=$(openssl x509 -in "$out/ca.crt" -noout -fingerprint -sha256)
enddate=$(openssl x509 -in "$out/server.crt" -noout -enddate)
cat <<EOF
$prog: made in $out
  ca.crt          CA certificate (${fingerprint#*=}); give it to every SuperNode and flwr user
  ca.key          CA private key (600): keep it offline, it signs certificates
  server.crt      SuperLink certificate, subjectAltName $san, ${enddate#*=}
  server.key      SuperLink private key (600)
EOF
if [ "$nodes" -gt 0 ]; then
    cat <<EOF
  nodes/node-1 .. node-$nodes          SuperNode private keys (600), ECDSA P-384, OpenSSH format
  nodes/node-1.pub .. node-$nodes.pub  their public keys: flwr supernode register KEY.pub CONNECTION
EOF
fi
