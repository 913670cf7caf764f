# The upstream certificates seen: per connector, the leaf certificate its server presented
# in the latest handshakes, kept on the route so that stats, `relaycore status` and
# Prometheus can say when it expires, who issued it and which key it holds, and so that
# the supervisor hears when that key changes (supervisor/aggregate.py makes the events).
#
# Per handshake this costs a pointer compare, or X509_cmp when a full handshake decoded a
# certificate object of its own (OpenSSL compares the SHA-1 it cached while verifying,
# then the DER): a resumed session presents the very object its first handshake did.
# Only a certificate that differs is hashed (its pin) and referenced; its dates and names
# are read by Python from that reference, at report time (cert_seen_dict), not per
# connection.


cdef void cert_seen_note(CertSeen *seen, SSL *ssl, uint64_t now_ms) noexcept nogil:
    # After a connector's completed handshake: the leaf its server presented.
    cdef X509 *leaf = SSL_get0_peer_certificate(ssl)
    cdef unsigned char md[32]
    if leaf == NULL:
        return
    seen.seen_ms = now_ms
    if seen.leaf == leaf or (seen.leaf != NULL and X509_cmp(seen.leaf, leaf) == 0):
        return
    if not spki_sha256(leaf, md):
        return
    if seen.leaf != NULL:
        # A renewal may keep the key: only another key is a change.
        if memcmp(md, seen.pin, 32) != 0:
            memcpy(seen.previous_pin, seen.pin, 32)
            seen.key_changes += 1
        X509_free(seen.leaf)
    X509_up_ref(leaf)
    seen.leaf = leaf
    memcpy(seen.pin, md, 32)


cdef void cert_seen_clear(CertSeen *seen) noexcept nogil:
    if seen.leaf != NULL:
        X509_free(seen.leaf)
        seen.leaf = NULL


cdef str x509_name(const X509_NAME *name):
    # One line, RFC 2253 ("CN=Test CA,O=Example"); "" if OpenSSL cannot print it.
    cdef BIO *bio = BIO_new(BIO_s_mem())
    if bio == NULL:
        raise MemoryError()
    try:
        if X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) < 0:
            return ""
        return bio_bytes(bio).decode("utf-8", "replace")
    finally:
        BIO_free(bio)


cdef object cert_seen_dict(const CertSeen *seen):
    # Python's view of seen: None before the first handshake.
    cdef tm t
    import calendar
    import time
    if seen.leaf == NULL:
        return None
    not_after = 0
    if ASN1_TIME_to_tm(X509_get0_notAfter(seen.leaf), &t):
        not_after = calendar.timegm((t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                                     t.tm_hour, t.tm_min, t.tm_sec))
    return {
        "pin": seen.pin[:32],
        "not_after": not_after,
        "issuer": x509_name(X509_get_issuer_name(seen.leaf)),
        "subject": x509_name(X509_get_subject_name(seen.leaf)),
        "seen": time.time() - (clock_ms() - seen.seen_ms) / 1000.0,
        "key_changes": seen.key_changes,
        "previous_pin": seen.previous_pin[:32] if seen.key_changes else b"",
    }
