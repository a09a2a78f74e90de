#!/usr/bin/env bash
# The subset of Apache Kafka's kafka-topics.sh that docker/kafka/create-topics.sh uses
# (--list, --create, --describe), done with tansu's command line, for the lab's broker.
set -euo pipefail

action="" bootstrap="" topic="" partitions=3
configs=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --list | --create | --describe) action="${1#--}" ;;
        --bootstrap-server) bootstrap="$2"; shift ;;
        --topic) topic="$2"; shift ;;
        --partitions) partitions="$2"; shift ;;
        --config) configs+=(--config "$2"); shift ;;
        --replication-factor | --command-config) shift ;;
        --if-not-exists) ;;
        *) echo "kafka-topics.sh (lab shim): unsupported argument $1" >&2; exit 2 ;;
    esac
    shift
done
broker="tcp://${bootstrap#tcp://}"

case "$action" in
    list | describe)
        topics="$(tansu topic list --broker "$broker")"
        { grep -o '"name":"[^"]*"' <<< "$topics" || true; } | sed 's/^"name":"//; s/"$//'
        ;;
    create)
        tansu topic create --broker "$broker" --partitions "$partitions" "${configs[@]}" "$topic"
        echo "Created topic $topic."
        ;;
    *) echo "kafka-topics.sh (lab shim): --list, --create or --describe" >&2; exit 2 ;;
esac
