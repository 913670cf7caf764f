/* The OpenSSL relaycore._core is built with: at least 3.5, and where it came from.
 *
 * 3.5 brings the hybrid ML-KEM groups (X25519MLKEM768) and, since 3.2, kTLS receive for
 * TLS 1.3 (docs/HOTPATH.md §7). setup.py (ext/openssl/locate.py) picks the library and
 * defines RELAYCORE_OPENSSL_ORIGIN ("static, Debian 13 libssl-dev 3.5.9-1~deb13u1",
 * "system 3.5.1", ...); building against older headers fails here rather than later.
 */
#ifndef RELAYCORE_OPENSSL_VERSION_H
#define RELAYCORE_OPENSSL_VERSION_H

#include <openssl/opensslv.h>

#if OPENSSL_VERSION_NUMBER < 0x30500000L
#error "relaycore needs OpenSSL >= 3.5 headers: see ext/openssl/locate.py"
#endif

#ifndef RELAYCORE_OPENSSL_ORIGIN
#define RELAYCORE_OPENSSL_ORIGIN "unknown"
#endif

#endif
