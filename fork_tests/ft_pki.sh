# ft_pki.sh - sourced by the shell tests: mkpki NAME CN [CA] makes $dir/NAME.key and $dir/NAME.pem
# with the openssl command (P-256): a self-signed CA without CA, or a leaf signed by CA with
# subjectAltName DNS:localhost and IP:127.0.0.1. Needs bash (process substitution) and $dir.
mkpki() { # name cn [ca]
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/$1.key" \
        -out "$dir/$1.csr" -subj "/CN=$2" 2>/dev/null || return 1
    if [ -z "${3:-}" ]; then
        openssl x509 -req -in "$dir/$1.csr" -signkey "$dir/$1.key" -days 1 -out "$dir/$1.pem" \
            -extfile <(printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign\n') 2>/dev/null
    else
        openssl x509 -req -in "$dir/$1.csr" -CA "$dir/$3.pem" -CAkey "$dir/$3.key" -CAcreateserial \
            -days 1 -out "$dir/$1.pem" \
            -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n') 2>/dev/null
    fi
}
