/* The one newer glibc symbol Debian 13's static OpenSSL uses, for glibc < 2.38.
 *
 * Debian 13 builds against glibc 2.41, whose <stdlib.h> maps strtol to __isoc23_strtol
 * (C23's, which differs from C99's only in also reading a "0b" prefix with base 0 or 2).
 * Debian 12 has glibc 2.36, which lacks it, so the C99 strtol stands in. Hidden:
 * relaycore._core exports nothing but its init function.
 * Compiled only when the extension links ext/openssl/fetch.sh's libraries (locate.py).
 */
#include <stdlib.h>

__attribute__((visibility("hidden")))
long __isoc23_strtol(const char *nptr, char **endptr, int base)
{
    return strtol(nptr, endptr, base);
}
