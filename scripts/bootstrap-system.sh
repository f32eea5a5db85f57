#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks need (dnsmasq-base for DNS,
# postfix for smtp-sink/smtp-source and a private smtpd, unbound as a validating
# resolver for the DANE tests, redis-server for the fleet-wide limit tests) without
# starting any system-wide service. Idempotent; a no-op when everything is present.
set -euo pipefail
need=()
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || need+=(redis-server)
[ -x /usr/sbin/unbound ] || need+=(unbound)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]}; run as root or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${need[*]}" >&2
# Keep package scripts from starting postfix or redis as a system service.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
fi
trap '[ $created_policy = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
