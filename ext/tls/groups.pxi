# Key exchange: the groups a context offers (post-quantum first), the group each handshake
# got, counted per route, and what `pq` makes of a classical one.
#
# pq = "prefer" (the default) offers the hybrid X25519MLKEM768 first, with a key share for
# it and one for X25519 (OpenSSL 3.5's own default list): a server on OpenSSL 3.5 (or
# BoringSSL, or a CDN) picks the hybrid, one on 3.0 picks X25519 from the second share, with
# no HelloRetryRequest and no failed handshake. A server (tunnel exit) prefers the hybrid
# group whenever the client supports it. "off" offers classical groups only.
#
# "require" on a client offers the same as "prefer" and then refuses a classical outcome,
# so that the failure can name the group the server chose (offering the hybrid alone would
# only get a handshake_failure alert). It refuses as soon as the server asks for our
# certificate (on_certificate_request), so that no client identity is sent under a
# classical key exchange; otherwise once the handshake is done, before any byte is relayed.
# On a server (tunnel exit) it accepts hybrid groups only: the entry gets a
# handshake_failure alert it can log, and the exit's event names the groups it offered.
#
# One key share once the server is known (learns_share: pq's own list, not `groups`).
# Each key share is a key generation per handshake, and its private key stays in the SSL
# until the connection ends (OpenSSL frees it only then): 7.5 KiB for ML-KEM-768. Two
# shares are needed for the first handshake only, when the server is unknown; after it
# the connector offers a key share for the group its server chose and no other:
# X25519MLKEM768 alone to a post-quantum server (one X25519 key generation less), X25519
# alone to a classical one (one ML-KEM key generation and 7.5 KiB less per connection).
# Every group stays in supported_groups, the hybrid first: a server that now prefers
# another group (a classical server upgraded to OpenSSL 3.5) asks for its share with a
# HelloRetryRequest, one round trip more, once, and the connector learns the new group.
# Under "require" only a hybrid choice is learnt: a classical server keeps getting both
# shares, so that the refusal names the group it chose.
#
# A classical group where a hybrid one was offered under "prefer" is an error event
# (pq_classical) once per route and change, not per connection: a server that cannot
# do post-quantum would otherwise log every connection. A post-quantum handshake on the
# route re-arms it, at most once a minute; the per-group counters count every handshake.

# OpenSSL 3.5's own default: two key shares ("*"), tuples ("/") of server preference.
cdef const char *PQ_GROUPS = (
    "?*X25519MLKEM768 / ?*X25519:?secp256r1 / ?X448:?secp384r1:?secp521r1"
    " / ?ffdhe2048:?ffdhe3072")
cdef const char *CLASSICAL_GROUPS = (
    "X25519:secp256r1:X448:secp384r1:secp521r1:ffdhe2048:ffdhe3072")
cdef const char *HYBRID_GROUPS = "X25519MLKEM768:SecP256r1MLKEM768:SecP384r1MLKEM1024"
# PQ_GROUPS' groups in a client's order, one key share ("*") each (share_offer).
cdef const char *SHARE_HYBRID = (
    "*X25519MLKEM768:X25519:secp256r1:X448:secp384r1:secp521r1:ffdhe2048:ffdhe3072")
cdef const char *SHARE_X25519 = (
    "X25519MLKEM768:*X25519:secp256r1:X448:secp384r1:secp521r1:ffdhe2048:ffdhe3072")

cdef enum:
    PQ_EVENT_REARM_MS = 60000     # a route's pq_classical events, at most one a minute


cdef uint8_t group_index(const char *name) noexcept nogil:
    # The GROUP_* of OpenSSL's name for a group (SSL_get0_group_name); NULL: none.
    if name == NULL:
        return GROUP_NONE
    if strcasecmp(name, "X25519MLKEM768") == 0:
        return GROUP_X25519MLKEM768
    if strcasecmp(name, "SecP256r1MLKEM768") == 0:
        return GROUP_SECP256R1MLKEM768
    if strcasecmp(name, "SecP384r1MLKEM1024") == 0:
        return GROUP_SECP384R1MLKEM1024
    if strncasecmp(name, "MLKEM", 5) == 0:
        return GROUP_MLKEM
    if strcasecmp(name, "x25519") == 0:
        return GROUP_X25519
    if strcasecmp(name, "secp256r1") == 0 or strcasecmp(name, "P-256") == 0:
        return GROUP_SECP256R1
    if strcasecmp(name, "secp384r1") == 0 or strcasecmp(name, "P-384") == 0:
        return GROUP_SECP384R1
    if strcasecmp(name, "secp521r1") == 0 or strcasecmp(name, "P-521") == 0:
        return GROUP_SECP521R1
    if strcasecmp(name, "x448") == 0:
        return GROUP_X448
    if strncasecmp(name, "ffdhe", 5) == 0:
        return GROUP_FFDHE
    return GROUP_OTHER


cdef inline bint group_is_pq(uint8_t group) noexcept nogil:
    return group < GROUP_X25519


cdef int set_groups(SSL_CTX *ctx, groups, str pq, bint client, uint8_t *mode,
                    uint8_t *offers_pq) except -1:
    # The groups ctx offers: `groups` (OpenSSL syntax) when given, else pq's list. pq must
    # agree with `groups`: "require" needs a post-quantum group in it, "off" none.
    cdef bytes raw
    if pq not in ("off", "prefer", "require"):
        raise ValueError(f"pq: expected 'prefer', 'require' or 'off', got {pq!r}")
    mode[0] = PQ_OFF if pq == "off" else PQ_PREFER if pq == "prefer" else PQ_REQUIRE
    if groups is None:
        raw = (CLASSICAL_GROUPS if mode[0] == PQ_OFF else
               HYBRID_GROUPS if mode[0] == PQ_REQUIRE and not client else PQ_GROUPS)
    else:
        raw = groups.encode()
        has_pq = b"MLKEM" in raw.upper()
        if mode[0] == PQ_REQUIRE and not has_pq:
            raise ValueError(f'pq: "require", but groups = {groups!r} offers no post-quantum'
                             " group (e.g. X25519MLKEM768)")
        if mode[0] == PQ_OFF and has_pq:
            raise ValueError(f'pq: "off", but groups = {groups!r} offers a post-quantum group')
    if not SSL_CTX_set1_groups_list(ctx, raw):
        raise ValueError(f"groups: {ssl_error_text()}")
    offers_pq[0] = b"MLKEM" in raw.upper()
    if mode[0] == PQ_REQUIRE and client:
        SSL_CTX_set_cert_cb(ctx, on_certificate_request, NULL)
    return 0


cdef void share_offer(TLSConf *conf, SSL *ssl) noexcept nogil:
    # A connector's new ssl, before its ClientHello: the one key share conf has learnt.
    # Should the list not apply (it cannot, short of memory), ssl keeps both shares.
    if not conf.learns_share:
        return
    if conf.share_group == GROUP_X25519MLKEM768:
        SSL_set1_groups_list(ssl, SHARE_HYBRID)
    elif conf.share_group == GROUP_X25519:
        SSL_set1_groups_list(ssl, SHARE_X25519)


cdef void share_learn(TLSConf *conf, uint8_t group) noexcept nogil:
    # A connector's handshake got `group`: the share its next connections offer. Another
    # group means both shares again; GROUP_NONE (a resumed TLS 1.2 session) says nothing.
    if not conf.learns_share or group == GROUP_NONE:
        return
    if group == GROUP_X25519MLKEM768 or (group == GROUP_X25519 and conf.pq_mode == PQ_PREFER):
        conf.share_group = group
    else:
        conf.share_group = GROUP_NONE


cdef int on_certificate_request(SSL *ssl, void *arg) noexcept nogil:
    # pq = "require" on a client: the server asks for our certificate. Refuse a classical
    # key exchange before the certificate goes out under it (in TLS 1.2, in the clear);
    # tls_handshake_failed reports it (Worker.refused_classical). 0 aborts the handshake.
    cdef Worker *w
    if group_is_pq(group_index(SSL_get0_group_name(ssl))):
        return 1
    w = <Worker *>SSL_get_app_data(ssl)
    if w != NULL:
        w.refused_classical = 1
    return 0


cdef void pq_reason(Conn *c, char *reason, size_t reason_len) noexcept nogil:
    # Why a handshake of c is refused under pq = "require", naming what was negotiated.
    cdef const char *group = SSL_get0_group_name(c.ssl)
    cdef const char *who = "the server chose"
    if c.tls_side == SIDE_CLIENT:
        who = "the client got"
    if group == NULL:
        group = "no key exchange"
    snprintf(reason, reason_len, "pq = \"require\": %s %s (%s), not a post-quantum hybrid"
             " group", who, group, SSL_get_version(c.ssl))


cdef bint pq_refused_client(Conn *c, char *reason, size_t reason_len) noexcept nogil:
    # A tunnel exit with pq = "require" (hybrid groups only) whose handshake failed: True,
    # and the reason, if the client offered no post-quantum group. Names its first group.
    cdef int offered[32]
    cdef int n = SSL_get1_groups(c.ssl, NULL)
    cdef int k
    cdef const char *first
    if n <= 0 or n > 32:
        return False
    SSL_get1_groups(c.ssl, offered)
    for k in range(n):
        if group_is_pq(group_index(SSL_group_to_name(c.ssl, offered[k]))):
            return False
    first = SSL_group_to_name(c.ssl, offered[0])
    if first == NULL:
        first = "?"
    snprintf(reason, reason_len, "pq = \"require\": the client offered no post-quantum hybrid"
             " group (%d groups, %s first)", n, first)
    return True


cdef bint tls_check_group(Worker *w, int32_t i) noexcept nogil:
    # The handshake of conns[i] is done: count its group, and apply pq. False: the
    # connection failed (pq = "require"). [may close]
    cdef Conn *c = &w.conns[i]
    cdef Route *r = &w.routes[c.route]
    cdef uint8_t mode = r.srv.pq_mode if r.kind == ROUTE_EXIT else r.tls.pq_mode
    cdef bint offered = r.srv.offers_pq if r.kind == ROUTE_EXIT else r.tls.offers_pq
    cdef const char *name = SSL_get0_group_name(c.ssl)
    cdef uint8_t group = group_index(name)
    cdef const char *who = "the server chose"
    cdef char reason[REASON_LEN]
    cdef ErrorEntry *ev
    r.ctr.by_group[group] += 1
    if r.kind != ROUTE_EXIT:
        share_learn(r.tls, group)
    if group_is_pq(group):
        r.pq_classical = 0
        return True
    if mode == PQ_REQUIRE:
        pq_reason(c, reason, REASON_LEN)
        conn_fail(w, i, CAUSE_TLS_PQ_REQUIRED, EPROTO, reason)
        return False
    if (mode == PQ_PREFER and offered and not r.pq_classical
            and (r.pq_event_ms == 0 or w.now_ms >= r.pq_event_ms + PQ_EVENT_REARM_MS)):
        r.pq_classical = 1
        r.pq_event_ms = w.now_ms
        ev = error_event(w, c, CAUSE_PQ_CLASSICAL, 0)
        if ev != NULL:
            if c.tls_side == SIDE_CLIENT:
                who = "the client offered no hybrid group:"
            if name == NULL:
                name = "no key exchange"
            snprintf(ev.reason, REASON_LEN, "%s %s (%s), not a post-quantum hybrid group;"
                     " logged once, counted in group_*", who, name, SSL_get_version(c.ssl))
    return True
