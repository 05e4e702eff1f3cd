#!/usr/bin/env bash
# Submit one job to rmcs from a shell, with amqp-publish (Debian package amqp-tools); no Python.
#
#   submit-job.sh [options] ENTRYPOINT...
#
# ENTRYPOINT is the shell command the cluster runs (several words are joined with spaces);
# scripts and programs are named by absolute path. Prints the submission id on stdout.
#
# Options:
#   --submission-id ID      the job's identity (default: generated, sub_<uuid>)
#   --job-id ID             a caller's name for the job
#   --priority P            0..9, or HIGH / NORMAL / LOW (9 / 5 / 1)
#   --cpus N, --gpus N      resource_requirements CPU / GPU (numbers)
#   --memory GIB            resource_requirements memory in GiB
#   --cluster NAME          preferred_cluster
#   --cluster-tag TAG       the cluster must carry this tag (repeatable)
#   --tag TAG               a label for the job, echoed on its events (repeatable)
#   --max-retries N         further attempts after a failure or a lost cluster
#   --queue-timeout S       expire if not dispatched within S seconds
#   --print                 print the JSON body instead of publishing it
#
# Environment: RMCS_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
# RMCS_INTAKE_EXCHANGE (rmcs.jobs), RMCS_INTAKE_ROUTING_KEY (submit).
#
# The JSON body is built in bash: every string is escaped (backslash, quote, control characters;
# UTF-8 passes through), every number is checked against a pattern, so no argument can break out of
# its JSON string. The message is persistent with content type application/json.
#
# amqp-publish cannot set the AMQP `priority` and `message_id` properties, so the priority and the
# submission id go in the body, which the daemon honours (the body wins). The difference: RabbitMQ
# orders the intake queue by the priority *property*, so a job sent by this script waits behind
# jobs with a higher property priority that are already queued. Use the Node example
# (examples/node/submit-job.js) when queue order matters; it also waits for a publisher confirm,
# where amqp-publish only reports errors the broker sends before the connection closes (for
# example a missing exchange).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "submit-job.sh: $*" >&2; exit 2; }

# json_str STRING: STRING as a JSON string literal, quotes included.
json_str() {
  local LC_ALL=C s=$1 out='' c i
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  if [[ $s == *[$'\x01'-$'\x1f'$'\x7f']* ]]; then   # other control characters: \u00XX
    for ((i = 0; i < ${#s}; i++)); do
      c=${s:i:1}
      if [[ $c == [$'\x01'-$'\x1f'$'\x7f'] ]]; then
        printf -v c '\\u%04x' "'$c"
      fi
      out+=$c
    done
    s=$out
  fi
  printf '"%s"' "$s"
}

number() {  # number OPTION VALUE: VALUE if it is a plain non-negative number
  [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$1 wants a number, got '$2'"
  printf '%s' "$2"
}

json_list() {  # json_list ITEM...: a JSON list of strings
  local out='' item
  for item in "$@"; do out+="${out:+, }$(json_str "$item")"; done
  printf '[%s]' "$out"
}

sid='' job_id='' priority='' cpus='' gpus='' memory='' cluster='' retries='' timeout='' print=0
tags=() cluster_tags=() words=()
need() { [[ $# -ge 2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --submission-id) need "$@"; sid=$2; shift 2 ;;
    --job-id) need "$@"; job_id=$2; shift 2 ;;
    --priority) need "$@"; priority=$2; shift 2 ;;
    --cpus) need "$@"; cpus=$(number "$1" "$2"); shift 2 ;;
    --gpus) need "$@"; gpus=$(number "$1" "$2"); shift 2 ;;
    --memory) need "$@"; memory=$(number "$1" "$2"); shift 2 ;;
    --cluster) need "$@"; cluster=$2; shift 2 ;;
    --cluster-tag) need "$@"; cluster_tags+=("$2"); shift 2 ;;
    --tag) need "$@"; tags+=("$2"); shift 2 ;;
    --max-retries) need "$@"; [[ $2 =~ ^[0-9]+$ ]] || die "--max-retries wants an integer"; retries=$2; shift 2 ;;
    --queue-timeout) need "$@"; timeout=$(number "$1" "$2"); shift 2 ;;
    --print) print=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; words+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) words+=("$1"); shift ;;
  esac
done
[[ ${#words[@]} -gt 0 ]] || die "an ENTRYPOINT is required (see --help)"
entrypoint="${words[*]}"

if [[ -z $sid ]]; then
  if [[ -r /proc/sys/kernel/random/uuid ]]; then sid="sub_$(< /proc/sys/kernel/random/uuid)"
  else sid="sub_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"; fi
fi
[[ $sid =~ ^[A-Za-z0-9._-]{1,128}$ ]] || die "--submission-id must match [A-Za-z0-9._-]{1,128}"
case ${priority^^} in
  '') ;;
  HIGH) priority=9 ;; NORMAL) priority=5 ;; LOW) priority=1 ;;
  [0-9]) ;;
  *) die "--priority wants 0..9 or HIGH/NORMAL/LOW, got '$priority'" ;;
esac

body="{\"submission_id\": $(json_str "$sid"), \"entrypoint\": $(json_str "$entrypoint")"
[[ -n $job_id ]] && body+=", \"job_id\": $(json_str "$job_id")"
[[ -n $priority ]] && body+=", \"priority\": $priority"
resources=''
[[ -n $cpus ]] && resources+="${resources:+, }\"CPU\": $cpus"
[[ -n $gpus ]] && resources+="${resources:+, }\"GPU\": $gpus"
[[ -n $memory ]] && resources+="${resources:+, }\"memory\": $memory"
[[ -n $resources ]] && body+=", \"resource_requirements\": {$resources}"
[[ -n $cluster ]] && body+=", \"preferred_cluster\": $(json_str "$cluster")"
[[ ${#cluster_tags[@]} -gt 0 ]] && body+=", \"cluster_tags\": $(json_list "${cluster_tags[@]}")"
[[ ${#tags[@]} -gt 0 ]] && body+=", \"tags\": $(json_list "${tags[@]}")"
[[ -n $retries ]] && body+=", \"max_retries\": $retries"
[[ -n $timeout ]] && body+=", \"queue_timeout_s\": $timeout"
body+="}"

if [[ $print == 1 ]]; then printf '%s\n' "$body"; exit 0; fi

command -v amqp-publish >/dev/null || die "amqp-publish not found: apt-get install amqp-tools (or scripts/install-example-deps)"
url=${RMCS_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}
# rmcs reads an empty path as the default vhost "/"; rabbitmq-c reads "host/" as the vhost "".
[[ $url =~ ^amqps?://[^/]*/$ ]] && url=${url%/}
amqp-publish --url="$url" --exchange="${RMCS_INTAKE_EXCHANGE:-rmcs.jobs}" \
  --routing-key="${RMCS_INTAKE_ROUTING_KEY:-submit}" --persistent --content-type=application/json \
  --body="$body"
printf '%s\n' "$sid"
