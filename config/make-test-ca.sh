#!/bin/sh
# Make a test certificate authority and certificates for a first try of DICOM TLS.
# NOT for production: the keys are unencrypted and the CA is yours alone.
#
#   config/make-test-ca.sh DIR [--with-bad]
#
# DIR receives (PEM files; keys 0600):
#   ca.pem ca.key               the test CA ([server.tls] ca_certificates, a destination's tls.ca_certificates)
#   gateway.pem gateway.key     the gateway ([server.tls] certificate/private_key, and as a client to archives)
#   archive.pem archive.key     an archive the gateway forwards to (DCMTK storescp +tls, Orthanc)
#   modality.pem modality.key   a sending modality (DCMTK storescu +tls)
# With --with-bad, also certificates the gateway must refuse:
#   other-ca.pem other-ca.key   a second CA nobody trusts
#   impostor.pem impostor.key   signed by other-ca
#   expired.pem expired.key     signed by ca, valid only in 2020
# Every certificate names IP 127.0.0.1 and DNS localhost; its subject is CN=<name>, O=dicom-gateway test.
# Requires the openssl command (Debian package 'openssl').
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [--with-bad]" >&2
    exit 2
fi
dir=$1
bad=${2:-}
mkdir -p "$dir"
cd "$dir"
umask 077
days=${TEST_CA_DAYS:-30}

ca() {  # name
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
        -keyout "$1.key" -out "$1.pem" -days "$days" -subj "/O=dicom-gateway test/CN=$1" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

request() {  # name
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \
        -keyout "$1.key" -out "$1.csr" -subj "/O=dicom-gateway test/CN=$1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth,clientAuth\n' > "$1.ext"
}

issue() {  # name ca
    request "$1"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days "$days" -sha256 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

issue_expired() {  # name ca: validity in the past needs `openssl ca`, which takes explicit dates
    request "$1"
    mkdir -p "$1.db"
    : > "$1.db/index.txt"
    printf '[ca]\ndefault_ca=test\n[test]\ndatabase=%s.db/index.txt\nnew_certs_dir=%s.db\nserial=%s.db/serial\ndefault_md=sha256\npolicy=any\nunique_subject=no\n[any]\ncommonName=supplied\norganizationName=optional\n' "$1" "$1" "$1" > "$1.db/ca.cnf"
    echo 01 > "$1.db/serial"
    openssl ca -batch -config "$1.db/ca.cnf" -cert "$2.pem" -keyfile "$2.key" -in "$1.csr" -out "$1.pem" \
        -startdate 20200101000000Z -enddate 20200102000000Z -extfile "$1.ext" -notext 2>/dev/null
    rm -rf "$1.db" "$1.csr" "$1.ext"
}

ca ca
for name in gateway archive modality; do
    issue "$name" ca
done
if [ "$bad" = "--with-bad" ]; then
    ca other-ca
    issue impostor other-ca
    issue_expired expired ca
fi
chmod 600 ./*.key
chmod 644 ./*.pem
echo "test CA and certificates written to $dir"
