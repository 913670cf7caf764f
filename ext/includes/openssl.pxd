# The libssl / libcrypto symbols relaycore calls (OpenSSL >= 3.5: openssl_version.h checks
# the headers). Declarations only.
# Several are macros in the headers (SSL_CTX_set_mode, SSL_set_tlsext_host_name,
# BIO_get_ktls_send, ...); declared here as functions, Cython emits the same call text.

from libc.stdint cimport int64_t


cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct SSL_SESSION:
        pass
    ctypedef struct BIO:
        pass
    ctypedef struct X509:
        pass
    ctypedef struct X509_PUBKEY:
        pass
    ctypedef struct X509_VERIFY_PARAM:
        pass
    ctypedef struct X509_STORE_CTX:
        pass
    ctypedef struct X509_NAME:
        pass
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct SSL_CIPHER:
        pass

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_VERIFY_NONE
        SSL_VERIFY_PEER
        SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_RELEASE_BUFFERS
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_NO_INTERNAL_STORE
        SSL_OP_ENABLE_KTLS
        SSL_OP_NO_RENEGOTIATION
        SSL_FILETYPE_PEM
        TLS1_2_VERSION
        TLS1_3_VERSION
        SSL_AD_REASON_OFFSET
        SSL_R_UNEXPECTED_EOF_WHILE_READING
        SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
        SSL_CB_CONNECT_LOOP
        SSL_CB_ACCEPT_LOOP
        TLS_ST_CR_SRVR_HELLO
        TLS_ST_SW_SRVR_HELLO
        SSL_OP_NO_TICKET
        SSL_RECEIVED_SHUTDOWN
        SSL_SENT_SHUTDOWN
        SSL3_RT_HANDSHAKE
        SSL3_MT_KEY_UPDATE
        SSL_KEY_UPDATE_REQUESTED
        SSL_KEY_UPDATE_NOT_REQUESTED
        SSL_KEY_UPDATE_NONE

    const SSL_METHOD *TLS_client_method()
    const SSL_METHOD *TLS_server_method()
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
    void SSL_CTX_free(SSL_CTX *ctx)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    unsigned long SSL_CTX_set_options(SSL_CTX *ctx, unsigned long op)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set_ciphersuites(SSL_CTX *ctx, const char *s)
    int SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *s)
    int SSL_set1_groups_list(SSL *ssl, const char *s)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *cafile, const char *capath)
    int SSL_CTX_set_default_verify_paths(SSL_CTX *ctx)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX *ctx, const char *file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX *ctx, const char *file, int type)
    int SSL_CTX_check_private_key(const SSL_CTX *ctx)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode,
                            int (*cb)(int, X509_STORE_CTX *) noexcept nogil)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx,
                                       unsigned int sid_ctx_len)
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)
    void SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, int (*cb)(SSL *, SSL_SESSION *) noexcept nogil)
    void SSL_CTX_set_info_callback(SSL_CTX *ctx, void (*cb)(const SSL *, int, int) noexcept nogil)
    # ALPN (RFC 7301)
    enum:
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_ALERT_FATAL
        OPENSSL_NPN_NEGOTIATED
        SSL_AD_NO_APPLICATION_PROTOCOL
        SSL_R_NO_APPLICATION_PROTOCOL
    int SSL_CTX_set_alpn_protos(SSL_CTX *ctx, const unsigned char *protos, unsigned int len)
    void SSL_CTX_set_alpn_select_cb(
        SSL_CTX *ctx,
        int (*cb)(SSL *, const unsigned char **, unsigned char *, const unsigned char *,
                  unsigned int, void *) noexcept nogil,
        void *arg)
    int SSL_select_next_proto(unsigned char **out, unsigned char *outlen,
                              const unsigned char *server, unsigned int server_len,
                              const unsigned char *client, unsigned int client_len)
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    void SSL_CTX_set_cert_cb(SSL_CTX *ctx, int (*cb)(SSL *, void *) noexcept nogil, void *arg)
    void SSL_set_msg_callback(SSL *ssl, void (*cb)(int, int, int, const void *, size_t, SSL *,
                                                   void *) noexcept nogil)
    int SSL_CTX_set_app_data(SSL_CTX *ctx, void *arg)
    void *SSL_CTX_get_app_data(const SSL_CTX *ctx)

    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl)
    int SSL_set_fd(SSL *ssl, int fd)
    void SSL_set_connect_state(SSL *ssl)
    void SSL_set_accept_state(SSL *ssl)
    int SSL_set_app_data(SSL *ssl, void *arg)
    void *SSL_get_app_data(const SSL *ssl)
    int SSL_get_ex_data_X509_STORE_CTX_idx()
    int SSL_set_tlsext_host_name(SSL *ssl, const char *name)
    int SSL_set1_host(SSL *ssl, const char *hostname)
    X509_VERIFY_PARAM *SSL_get0_param(SSL *ssl)
    int SSL_set_session(SSL *ssl, SSL_SESSION *session)
    int SSL_session_reused(const SSL *ssl)
    unsigned long SSL_clear_options(SSL *ssl, unsigned long op)
    int SSL_do_handshake(SSL *ssl)
    int SSL_read(SSL *ssl, void *buf, int num)
    int SSL_write(SSL *ssl, const void *buf, int num)
    int SSL_shutdown(SSL *ssl)
    int SSL_get_shutdown(const SSL *ssl)
    int SSL_get_error(const SSL *ssl, int ret)
    int SSL_has_pending(const SSL *ssl)
    int SSL_key_update(SSL *ssl, int updatetype)
    int SSL_in_init(const SSL *ssl)
    int SSL_get_key_update_type(const SSL *ssl)
    int SSL_free_buffers(SSL *ssl)
    int SSL_version(const SSL *ssl)
    int SSL_get_state(const SSL *ssl)
    const char *SSL_get_version(const SSL *ssl)
    const char *SSL_get_cipher_name(const SSL *ssl)
    long SSL_get_verify_result(const SSL *ssl)
    X509 *SSL_get0_peer_certificate(const SSL *ssl)
    BIO *SSL_get_wbio(const SSL *ssl)
    BIO *SSL_get_rbio(const SSL *ssl)
    const char *SSL_alert_desc_string_long(int value)
    const char *SSL_get0_group_name(SSL *ssl)
    int SSL_get1_groups(SSL *ssl, int *groups)
    const char *SSL_group_to_name(SSL *ssl, int id)
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *ssl)
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *cipher)

    int SSL_SESSION_is_resumable(const SSL_SESSION *s)
    int SSL_SESSION_get_protocol_version(const SSL_SESSION *s)
    void SSL_SESSION_free(SSL_SESSION *s)

    long BIO_get_ktls_send(BIO *b)
    long BIO_get_ktls_recv(BIO *b)

    void SSL_set_read_ahead(SSL *ssl, int yes)
    void SSL_set0_wbio(SSL *ssl, BIO *wbio)
    void SSL_set0_rbio(SSL *ssl, BIO *rbio)
    ctypedef struct BIO_METHOD:
        pass
    enum:
        BIO_TYPE_SOURCE_SINK
        BIO_CTRL_FLUSH
        BIO_CTRL_WPENDING
        BIO_CTRL_EOF
    int BIO_get_new_index()
    BIO_METHOD *BIO_meth_new(int type, const char *name)
    int BIO_meth_set_write_ex(BIO_METHOD *m,
                              int (*write)(BIO *, const char *, size_t, size_t *) noexcept nogil)
    int BIO_meth_set_ctrl(BIO_METHOD *m, long (*ctrl)(BIO *, int, long, void *) noexcept nogil)
    int BIO_meth_set_read_ex(BIO_METHOD *m,
                             int (*read)(BIO *, char *, size_t, size_t *) noexcept nogil)
    void BIO_set_data(BIO *b, void *ptr)
    void *BIO_get_data(BIO *b)
    void BIO_set_init(BIO *b, int init)
    void BIO_set_retry_write(BIO *b)
    void BIO_set_retry_read(BIO *b)
    void BIO_clear_retry_flags(BIO *b)
    enum:
        BIO_CB_READ
        BIO_CB_RETURN
    ctypedef long (*BIO_callback_fn_ex)(BIO *b, int oper, const char *argp, size_t n,
                                        int argi, long argl, int ret, size_t *processed)
    void BIO_set_callback_ex(BIO *b, BIO_callback_fn_ex callback)
    void BIO_set_callback_arg(BIO *b, char *arg)
    char *BIO_get_callback_arg(const BIO *b)


cdef extern from "<openssl/x509.h>" nogil:
    X509 *X509_new()
    void X509_free(X509 *x)
    int X509_set_version(X509 *x, long version)
    void *X509_get_serialNumber(X509 *x)
    void *X509_gmtime_adj(void *s, long adj)
    void *X509_getm_notBefore(const X509 *x)
    void *X509_getm_notAfter(const X509 *x)
    int X509_set_pubkey(X509 *x, EVP_PKEY *pkey)
    X509_NAME *X509_get_subject_name(const X509 *x)
    int X509_set_issuer_name(X509 *x, const X509_NAME *name)
    int X509_NAME_add_entry_by_txt(X509_NAME *name, const char *field, int type,
                                   const unsigned char *data, int len, int loc, int set)
    int X509_sign(X509 *x, EVP_PKEY *pkey, const void *md)
    void *X509_STORE_CTX_get_ex_data(const X509_STORE_CTX *ctx, int idx)
    int X509_STORE_CTX_get_error_depth(const X509_STORE_CTX *ctx)
    X509 *X509_STORE_CTX_get0_cert(const X509_STORE_CTX *ctx)
    void X509_STORE_CTX_set_error(X509_STORE_CTX *ctx, int s)
    X509_PUBKEY *X509_get_X509_PUBKEY(const X509 *x)
    int i2d_X509_PUBKEY(const X509_PUBKEY *a, unsigned char **out)
    const char *X509_verify_cert_error_string(long n)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc)
    enum:
        X509_V_OK
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
        X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
        X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
        X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        X509_V_ERR_CERT_HAS_EXPIRED
        X509_V_ERR_CERT_NOT_YET_VALID
        X509_V_ERR_HOSTNAME_MISMATCH
        X509_V_ERR_IP_ADDRESS_MISMATCH
        X509_V_ERR_CERT_REJECTED
        MBSTRING_ASC


cdef extern from "<openssl/x509v3.h>" nogil:
    ctypedef struct X509V3_CTX:
        pass
    ctypedef struct X509_EXTENSION:
        pass
    enum:
        NID_basic_constraints
        NID_key_usage
        NID_ext_key_usage
        NID_subject_key_identifier
    void X509V3_set_ctx(X509V3_CTX *ctx, X509 *issuer, X509 *subject, void *req, void *crl,
                        int flags)
    X509_EXTENSION *X509V3_EXT_conf_nid(void *conf, X509V3_CTX *ctx, int nid,
                                        const char *value)
    int X509_add_ext(X509 *x, X509_EXTENSION *ex, int loc)
    void X509_EXTENSION_free(X509_EXTENSION *ex)


cdef extern from "<openssl/asn1.h>" nogil:
    int ASN1_INTEGER_set_int64(void *a, int64_t r)
    # the upstream certificates seen (tls/certseen.pxi)
    ctypedef struct ASN1_TIME:
        pass
    struct tm:                    # <time.h>
        int tm_sec
        int tm_min
        int tm_hour
        int tm_mday
        int tm_mon
        int tm_year
    int ASN1_TIME_to_tm(const ASN1_TIME *s, tm *tm)
    const ASN1_TIME *X509_get0_notAfter(const X509 *x)
    X509_NAME *X509_get_issuer_name(const X509 *x)
    int X509_NAME_print_ex(BIO *out, const X509_NAME *nm, int indent, unsigned long flags)
    int X509_up_ref(X509 *x)
    int X509_cmp(const X509 *a, const X509 *b)
    enum:
        XN_FLAG_RFC2253


cdef extern from "<openssl/bio.h>" nogil:
    const void *BIO_s_mem()
    BIO *BIO_new(const void *method)
    BIO *BIO_new_mem_buf(const void *buf, int len)
    long BIO_get_mem_data(BIO *b, char **pp)
    int BIO_free(BIO *b)


cdef extern from "<openssl/pem.h>" nogil:
    X509 *PEM_read_bio_X509(BIO *bp, X509 **x, void *cb, void *u)
    int PEM_write_bio_X509(BIO *bp, X509 *x)
    int PEM_write_bio_PrivateKey(BIO *bp, EVP_PKEY *x, const void *enc,
                                 unsigned char *kstr, int klen, void *cb, void *u)


cdef extern from "<openssl/err.h>" nogil:
    void ERR_clear_error()
    unsigned long ERR_peek_last_error()
    unsigned long ERR_get_error()
    int ERR_GET_LIB(unsigned long e)
    int ERR_GET_REASON(unsigned long e)
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)
    const char *ERR_reason_error_string(unsigned long e)
    enum:
        ERR_LIB_SSL


cdef extern from "<openssl/evp.h>" nogil:
    int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size,
                   const void *type, void *impl)
    const void *EVP_sha256()
    EVP_PKEY *EVP_EC_gen(const char *curve)
    EVP_PKEY *EVP_PKEY_Q_keygen(void *libctx, const char *propq, const char *type, ...)
    void EVP_PKEY_free(EVP_PKEY *pkey)


cdef extern from "<openssl/crypto.h>" nogil:
    enum:
        OPENSSL_VERSION_TEXT "OPENSSL_VERSION"
    const char *OpenSSL_version(int t)
    void OPENSSL_free(void *p)
    int EVP_EncodeBlock(unsigned char *t, const unsigned char *f, int n)


cdef extern from "openssl_version.h" nogil:
    const char *RELAYCORE_OPENSSL_ORIGIN     # which OpenSSL setup.py linked, for humans
