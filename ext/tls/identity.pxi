# Node identities for tunnels: a key pair and a self-signed certificate per node, known to
# the other nodes by its pin (SHA-256 of the DER SubjectPublicKeyInfo, as `pin` and
# `allow` take it). ECDSA P-256 by default: every TLS stack has it, and a handshake signs
# with it faster than with RSA. Ed25519 on request: smaller and faster still, and both ends
# of a tunnel are relaycore on OpenSSL 3, which has it (TLS 1.2 and 1.3, RFC 8422 / 8446).


cdef bytes bio_bytes(BIO *bio):
    cdef char *data = NULL
    cdef long n = BIO_get_mem_data(bio, &data)
    return data[:n]


cdef bytes cert_pin(X509 *cert):
    cdef unsigned char md[32]
    if not spki_sha256(cert, md):
        raise ValueError(f"cannot encode the public key: {ssl_error_text()}")
    return md[:32]


def make_identity(str key_path, str cert_path, str common_name, int days=3650,
                  str key_type="p256"):
    """A new key (key_type "p256": ECDSA P-256, or "ed25519"; written 0600) and a
    self-signed certificate for it; returns the pin digest (SHA-256 of the DER
    SubjectPublicKeyInfo). Raises OSError, ValueError. Neither file may exist yet."""
    cdef EVP_PKEY *pkey = NULL
    cdef X509 *cert = NULL
    cdef BIO *key_bio = NULL
    cdef BIO *cert_bio = NULL
    cdef X509V3_CTX v3
    cdef X509_EXTENSION *ext
    cdef const void *digest
    cdef bytes cn = common_name.encode()
    if not 1 <= len(cn) <= 64:
        raise ValueError("common name: 1 to 64 bytes")
    if not 1 <= days <= 36500:
        raise ValueError("days: 1 to 36500")
    if key_type not in ("p256", "ed25519"):
        raise ValueError(f"key type: p256 or ed25519, not {key_type!r}")
    ERR_clear_error()
    try:
        if key_type == "ed25519":
            pkey = EVP_PKEY_Q_keygen(NULL, NULL, b"ED25519")
        else:
            pkey = EVP_EC_gen(b"P-256")
        cert = X509_new()
        key_bio = BIO_new(BIO_s_mem())
        cert_bio = BIO_new(BIO_s_mem())
        if pkey == NULL or cert == NULL or key_bio == NULL or cert_bio == NULL:
            raise MemoryError(ssl_error_text())
        X509_set_version(cert, 2)       # v3: extensions
        # A random positive serial: two identities made by one node never share one.
        ASN1_INTEGER_set_int64(X509_get_serialNumber(cert),
                               int.from_bytes(os.urandom(8), "big") >> 1)
        X509_gmtime_adj(X509_getm_notBefore(cert), -3600)   # clock skew between nodes
        X509_gmtime_adj(X509_getm_notAfter(cert), days * 86400)
        X509_set_pubkey(cert, pkey)
        X509_NAME_add_entry_by_txt(X509_get_subject_name(cert), b"CN", MBSTRING_ASC,
                                   <const unsigned char *><const char *>cn, -1, -1, 0)
        X509_set_issuer_name(cert, X509_get_subject_name(cert))
        X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0)
        for nid, value in ((NID_basic_constraints, b"critical,CA:FALSE"),
                           (NID_key_usage, b"critical,digitalSignature"),
                           (NID_ext_key_usage, b"serverAuth,clientAuth"),
                           (NID_subject_key_identifier, b"hash")):
            ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value)
            if ext == NULL:
                raise ValueError(f"certificate extension: {ssl_error_text()}")
            X509_add_ext(cert, ext, -1)
            X509_EXTENSION_free(ext)
        # Ed25519 hashes inside its signature scheme: it takes no digest (RFC 8410 §6).
        digest = NULL
        if key_type != "ed25519":
            digest = EVP_sha256()
        if not X509_sign(cert, pkey, digest):
            raise ValueError(f"cannot sign the certificate: {ssl_error_text()}")
        if not PEM_write_bio_PrivateKey(key_bio, pkey, NULL, NULL, 0, NULL, NULL) or \
                not PEM_write_bio_X509(cert_bio, cert):
            raise ValueError(f"cannot encode the identity: {ssl_error_text()}")
        pin = cert_pin(cert)
        _write_new(key_path, bio_bytes(key_bio), 0o600)
        try:
            _write_new(cert_path, bio_bytes(cert_bio), 0o644)
        except OSError:
            os.unlink(key_path)
            raise
        return pin
    finally:
        EVP_PKEY_free(pkey)
        X509_free(cert)
        if key_bio != NULL:
            BIO_free(key_bio)
        if cert_bio != NULL:
            BIO_free(cert_bio)


def _write_new(str path, bytes data, int mode):
    # O_EXCL: an identity is never overwritten by accident (the caller removes it first),
    # and the key is 0600 from its first byte, not chmod-ed after.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def spki_pin(str cert_path):
    """The pin digest of the first certificate in a PEM file. Raises OSError for a file
    that cannot be read, ValueError for one that holds no certificate."""
    cdef BIO *bio
    cdef X509 *cert
    cdef bytes data = b""
    import io                           # `open` here is open(2), from linux.pxd
    with io.open(cert_path, "rb") as f:
        data = f.read()
    ERR_clear_error()
    bio = BIO_new_mem_buf(<const char *>data, len(data))
    if bio == NULL:
        raise MemoryError()
    cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)
    BIO_free(bio)
    if cert == NULL:
        raise ValueError(f"{cert_path}: not a PEM certificate ({ssl_error_text()})")
    try:
        return cert_pin(cert)
    finally:
        X509_free(cert)
