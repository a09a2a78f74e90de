#!/usr/bin/env bash
# The lab's `kafka-init`: the broker made the users and the topics on its first start
# (start-tansu.sh), and tansu has no ACLs to set, so this only checks that the broker answers
# on kafka:9092 and exits 0, which lets the services start (depends_on ...
# service_completed_successfully).
set -euo pipefail
for attempt in $(seq 1 30); do
    if (: < /dev/tcp/kafka/9092) 2> /dev/null; then
        echo "kafka-init (lab): the broker answers on kafka:9092"
        exit 0
    fi
    echo "kafka-init (lab): waiting for kafka:9092 ($attempt)"
    sleep 2
done
exit 1
