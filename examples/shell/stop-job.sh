#!/usr/bin/env bash
# Ask rmcs to stop a job, with amqp-publish (Debian package amqp-tools); no Python.
#
#   stop-job.sh SUBMISSION_ID [REASON]
#
# Publishes {"submission_id": ..., "reason": ...} to the event exchange with routing key
# control.stop. A job not yet dispatched ends CANCELLED (even while its message is still deep in
# the queue); a job on a cluster is stopped there and ends STOPPED. The daemon answers on the event
# exchange with key control.stop.answer; watch it with
#   node examples/node/dashboard.js control.stop.answer
#
# Environment: RMCS_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
# RMCS_EVENTS_EXCHANGE (rmcs.events).
set -euo pipefail

die() { echo "stop-job.sh: $*" >&2; exit 2; }
case ${1:-} in
  ''|-h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; [[ -n ${1:-} ]]; exit ;;
esac
sid=$1
reason=${2:-requested with stop-job.sh}
[[ $sid =~ ^[A-Za-z0-9._-]{1,128}$ ]] || die "a submission id matches [A-Za-z0-9._-]{1,128}"

# The id is checked above; the reason is escaped for JSON (backslash, quote, control characters).
json_str() {
  local LC_ALL=C s=$1 out='' c i
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    [[ $c == [$'\x01'-$'\x1f'$'\x7f'] ]] && printf -v c '\\u%04x' "'$c"
    out+=$c
  done
  printf '"%s"' "$out"
}

command -v amqp-publish >/dev/null || die "amqp-publish not found: apt-get install amqp-tools (or scripts/install-example-deps)"
url=${RMCS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
# rmcs reads an empty path as the default vhost "/"; rabbitmq-c reads "host/" as the vhost "".
[[ $url =~ ^amqps?://[^/]*/$ ]] && url=${url%/}
amqp-publish --url="$url" --exchange="${RMCS_EVENTS_EXCHANGE:-rmcs.events}" --routing-key=control.stop \
  --persistent --content-type=application/json \
  --body="{\"submission_id\": \"$sid\", \"reason\": $(json_str "$reason")}"
echo "stop requested for $sid" >&2
