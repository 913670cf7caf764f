/* Constants whose only header cannot be included beside glibc's, and errno for Cython.
 *
 * SO_ORIGINAL_DST lives in <linux/netfilter_ipv4.h> and IP6T_SO_ORIGINAL_DST in
 * <linux/netfilter_ipv6/ip6_tables.h>; both drag in kernel socket headers that redefine
 * struct in_addr and friends from <netinet/in.h>. The values are kernel ABI (80 since
 * 2.4 and 2.6 respectively) and do not change.
 */
#ifndef RELAYCORE_COMPAT_H
#define RELAYCORE_COMPAT_H

#define RELAYCORE_SO_ORIGINAL_DST 80
#define RELAYCORE_IP6T_SO_ORIGINAL_DST 80

/* errno from Cython code: assigning the cimported name would make a local variable. */
#include <errno.h>
static inline void relaycore_set_errno(int e) { errno = e; }

#endif
