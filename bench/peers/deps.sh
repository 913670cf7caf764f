#!/bin/sh
# Debian packages for `make bench-peers`: the relays relaycore is compared with.
# Installs only what is missing (a prepared machine does no apt work); needs root.
#   stunnel4             stunnel 5.x (client mode: plain in, TLS out)
#   haproxy              HAProxy (mode tcp, server ... ssl verify required)
#   libnginx-mod-stream  nginx's stream module (stream {}, proxy_ssl on); nginx itself
#                        comes from nginx-light, which `make deps` installs
#   socat                plain TCP forwarding, a process per connection
set -eu
PACKAGES="stunnel4 haproxy nginx-light libnginx-mod-stream socat"
missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
		|| missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "bench-peers: installing Debian packages:$missing"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
