# Verification by pin, inside the handshake: a connector's check of its server's key, a
# tunnel exit's check of the entry node's. A pin is the SHA-256 of the leaf certificate's
# DER SubjectPublicKeyInfo. A refused key is left in the worker (Worker.refused_pin) for
# the error event, which says which key it was (tls/classify.pxi).


cdef bint spki_sha256(X509 *cert, unsigned char *md) noexcept nogil:
    # The pin of a certificate: SHA-256 over its DER SubjectPublicKeyInfo (not
    # X509_pubkey_digest, which hashes only the key bits: docs/HOTPATH.md §3). md: 32 bytes.
    cdef unsigned char *der = NULL
    cdef unsigned int mdlen = 0
    cdef int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der)
    if n <= 0:
        return False
    EVP_Digest(der, n, md, &mdlen, EVP_sha256(), NULL)
    OPENSSL_free(der)
    return True


cdef bint pin_listed(const unsigned char *md, unsigned char (*pins)[32],
                     uint32_t npins) noexcept nogil:
    cdef uint32_t k
    for k in range(npins):
        if memcmp(md, pins[k], 32) == 0:
            return True
    return False


cdef void note_refused(SSL *ssl, const unsigned char *md) noexcept nogil:
    cdef Worker *w = <Worker *>SSL_get_app_data(ssl)
    if w != NULL:
        memcpy(w.refused_pin, md, 32)
        w.refused_pin_set = 1


cdef inline SSL *store_ssl(X509_STORE_CTX *store) noexcept nogil:
    return <SSL *>X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx())


cdef inline int pin_admits(X509_STORE_CTX *store) noexcept nogil:
    # A pin overrules the chain's complaint (a self-signed node identity has no chain), so
    # the complaint must not outlive it: SSL_get_verify_result reports the store's last
    # error, and a later failure of the same handshake would be blamed on it.
    X509_STORE_CTX_set_error(store, X509_V_OK)
    return 1


cdef int on_verify_server(int ok, X509_STORE_CTX *store) noexcept nogil:
    # A connector with pins checks the server's (leaf) key during the handshake, so that a
    # server with another key never sees our client certificate or our Finished (a tunnel
    # exit would otherwise dial its target for nothing). With verify = true the chain
    # must verify too; with verify = false the pin alone decides.
    cdef SSL *ssl = store_ssl(store)
    cdef TLSConf *conf = <TLSConf *>SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl))
    cdef X509 *leaf = X509_STORE_CTX_get0_cert(store)
    cdef unsigned char md[32]
    if leaf == NULL or not spki_sha256(leaf, md):
        return 0
    if pin_listed(md, conf.pins, conf.npins):
        if conf.verify_chain:
            return ok
        return pin_admits(store)
    note_refused(ssl, md)
    if ok or not conf.verify_chain:
        X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED)
    return 0


cdef int on_verify_client(int ok, X509_STORE_CTX *store) noexcept nogil:
    # A tunnel exit's check of the entry node. OpenSSL calls this for each certificate of
    # the chain, with `ok` saying whether it verified. The entry's own (leaf) certificate
    # decides: its key in the allow list admits it whatever the chain (a self-signed node
    # identity has none), else only a chain to the configured CA does.
    cdef SSL *ssl = store_ssl(store)
    cdef ServerConf *conf = <ServerConf *>SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl))
    cdef X509 *leaf = X509_STORE_CTX_get0_cert(store)
    cdef unsigned char md[32]
    if leaf == NULL or not spki_sha256(leaf, md):
        return 0
    if pin_listed(md, conf.pins, conf.npins):
        return pin_admits(store)
    if conf.has_ca and ok:
        return 1
    note_refused(ssl, md)
    if ok or not conf.has_ca:
        # "bad certificate" rather than the chain's complaint (a node identity is
        # self-signed): the certificate is fine, its key is not allowed.
        X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED)
    return 0
