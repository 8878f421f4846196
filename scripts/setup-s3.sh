#!/usr/bin/env bash
# A real S3 endpoint for the tests: a single-node Ceph RGW (Ceph 16) on loopback, all in memory.
#   scripts/setup-s3.sh           start it (or reuse the running one); prints the env file's path
#   scripts/setup-s3.sh --stop    stop its daemons (by their pid files) and remove its state
#   scripts/setup-s3.sh --status  exit 0 when it runs and answers
#   scripts/setup-s3.sh --stop-rgw / --start-rgw   stop or start only radosgw (a cut connection)
# Idempotent. Installs the Debian packages (ceph-mon ceph-osd radosgw ceph-common) when missing
# and boto3 into .venv (the [s3] extra) when .venv exists. Everything lives under $FIBACKUP_RGW_DIR
# (default /var/tmp/fibackup-rgw); tests source $FIBACKUP_RGW_DIR/env, which exports
# AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION.
set -euo pipefail
cd "$(dirname "$0")/.."
C=${FIBACKUP_RGW_DIR:-/var/tmp/fibackup-rgw}
PORT=${FIBACKUP_RGW_PORT:-7480}
ENDPOINT="http://127.0.0.1:$PORT"
ACCESS_KEY=fibackup-test
SECRET_KEY=fibackup-test-secret

stop() {
  for pidfile in "$C"/run/*.pid; do
    [ -e "$pidfile" ] && stop_pid "$pidfile"
  done
  # daemons of an instance whose pid files are gone (a killed test session) would keep
  # the ports, and the next start would fail: stop whatever runs on this configuration
  pkill -f -- "-c $C/ceph.conf" 2>/dev/null || true
  for _ in $(seq 50); do pgrep -f -- "-c $C/ceph.conf" >/dev/null || break; sleep 0.1; done
  pkill -9 -f -- "-c $C/ceph.conf" 2>/dev/null || true
  rm -rf "$C"
}

stop_pid() {
  local pidfile=$1 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

start_rgw() {
  radosgw -c "$C/ceph.conf" -n client.rgw.a
  for _ in $(seq 120); do answers && return 0; sleep 0.5; done
  echo "setup-s3: radosgw does not answer on $ENDPOINT (see $C/log)" >&2
  exit 1
}

answers() {
  curl -s -o /dev/null --max-time 2 "$ENDPOINT" 2>/dev/null
}

running() {
  [ -s "$C/env" ] || return 1
  for name in mon.a osd.0 client.rgw.a; do
    [ -s "$C/run/$name.pid" ] && kill -0 "$(cat "$C/run/$name.pid")" 2>/dev/null || return 1
  done
  answers
}

install() {
  local missing=()
  for tool in ceph-mon ceph-osd radosgw ceph; do
    command -v "$tool" >/dev/null || missing=(ceph-mon ceph-osd radosgw ceph-common)
  done
  command -v curl >/dev/null || missing+=(curl)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-s3: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
  fi
  if [ -x .venv/bin/python ] && ! .venv/bin/python -c 'import boto3' 2>/dev/null; then
    echo "setup-s3: installing fibackup's [s3] extra (boto3) into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[s3,test]' >/dev/null
  fi
}

start() {
  stop
  mkdir -p "$C/run" "$C/log" "$C/mon" "$C/osd0" "$C/rgw"
  local fsid osd_uuid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  cat > "$C/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = 127.0.0.1:6789
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd objectstore = memstore
memstore device bytes = 3221225472
run dir = $C/run
pid file = $C/run/\$name.pid
log file = $C/log/\$name.log
admin socket = $C/run/\$name.asok
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
ms bind ipv4 = true
ms bind ipv6 = false
[mon.a]
mon data = $C/mon
[osd.0]
osd data = $C/osd0
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $C/rgw
# deleted objects are freed at once (the default waits 2 h): the store lives in memory
rgw gc obj min wait = 0
rgw gc processor period = 5
rgw gc processor max time = 5
CONF
  local conf=(-c "$C/ceph.conf")
  ceph-authtool --create-keyring "$C/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --add a 127.0.0.1:6789 --fsid "$fsid" "$C/monmap" >/dev/null
  ceph-mon "${conf[@]}" --mkfs -i a --monmap "$C/monmap" --keyring "$C/keyring"
  ceph-mon "${conf[@]}" -i a
  local id
  id=$(timeout 60 ceph "${conf[@]}" osd new "$osd_uuid")
  ceph-osd "${conf[@]}" -i "$id" --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1
  ceph-osd "${conf[@]}" -i "$id" 2>>"$C/log/start.log"
  timeout 60 ceph "${conf[@]}" osd crush add "osd.$id" 1.0 host=localhost root=default >/dev/null 2>&1
  start_rgw
  timeout 60 radosgw-admin "${conf[@]}" user create --uid=fibackup --display-name=fibackup \
    --access-key="$ACCESS_KEY" --secret="$SECRET_KEY" >/dev/null
  cat > "$C/env.tmp" <<ENV
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_DEFAULT_REGION=us-east-1
export FIBACKUP_RGW_DIR=$C
ENV
  mv "$C/env.tmp" "$C/env"
}

case "${1:-}" in
  --stop) stop; exit 0 ;;
  --status) running; exit $? ;;
  --stop-rgw) stop_pid "$C/run/client.rgw.a.pid"; exit 0 ;;
  --start-rgw) running && exit 0; start_rgw; exit 0 ;;
  "") ;;
  *) echo "usage: scripts/setup-s3.sh [--stop]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "setup-s3: run as root (it installs Debian packages and starts Ceph daemons)" >&2
  exit 1
fi
install
if ! running; then
  started=$(date +%s)
  start
  echo "setup-s3: Ceph RGW started on $ENDPOINT in $(( $(date +%s) - started )) s" >&2
fi
echo "$C/env"
