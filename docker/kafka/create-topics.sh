#!/usr/bin/env bash
# Creates Sagashop's topics on the compose broker (run once by the `kafka-init` service).
#
#   topic                                  partitions  retention (retention.ms)
#   order.events, inventory.events,        3           7 days  (EVENT_RETENTION_MS)
#   payment.events, shipping.events
#   order-service.dlq, payment-service.dlq, 3          30 days (DLQ_RETENTION_MS)
#   inventory-service.dlq, shipping-service.dlq
#   inventory.products                     3           compacted: the latest record per key,
#                                                      for ever (cleanup.policy=compact)
#   logs                                   3           3 days (LOG_RETENTION_MS): every service's
#                                                      log records (shared::log_shipping), not events
#
# Three partitions let up to three replicas of a service share its consumer group's work.
# Dead-letter topics keep messages longer than the events: someone has to look at them.
# State topics (shared::topics::StateTopic) are compacted, with the settings of
# shared::topics::STATE_TOPIC_CONFIG: a replica rebuilds from them at any time.
# Existing topics are left as they are (`docker compose down -v` starts afresh); the broker does
# not auto-create topics (KAFKA_AUTO_CREATE_TOPICS_ENABLE=false), and each service also creates
# the topics it needs at start-up, with the same names, if they are missing.
set -euo pipefail

bootstrap="${BOOTSTRAP_SERVER:-kafka:9092}"
partitions="${TOPIC_PARTITIONS:-3}"
replication="${TOPIC_REPLICATION_FACTOR:-1}"
event_retention_ms="${EVENT_RETENTION_MS:-604800000}"
dlq_retention_ms="${DLQ_RETENTION_MS:-2592000000}"
log_retention_ms="${LOG_RETENTION_MS:-259200000}"
# KAFKA_TOPICS_SH: another kafka-topics.sh (e.g. a stub, to try this script without a broker).
kafka_topics="${KAFKA_TOPICS_SH:-/opt/kafka/bin/kafka-topics.sh}"
# ADMIN_CONFIG: the client settings (SASL) of the admin user, when the broker requires them.
auth=()
if [ -n "${ADMIN_CONFIG:-}" ]; then
    auth=(--command-config "$ADMIN_CONFIG")
fi

event_topics=(order.events inventory.events payment.events shipping.events)
dlq_topics=(order-service.dlq payment-service.dlq inventory-service.dlq shipping-service.dlq query-service.dlq)
state_topics=(inventory.products)
log_topics=(logs)

# The broker is healthy before this job starts, but give it a little slack anyway.
existing=""
for attempt in $(seq 1 30); do
    if existing="$("$kafka_topics" --bootstrap-server "$bootstrap" "${auth[@]}" --list)"; then
        break
    fi
    if [ "$attempt" -eq 30 ]; then
        echo "kafka-init: the broker at $bootstrap does not answer" >&2
        exit 1
    fi
    sleep 2
done

create() {
    local topic="$1" retention_ms="$2"
    if grep -qxF "$topic" <<<"$existing"; then
        echo "kafka-init: $topic exists"
        return
    fi
    "$kafka_topics" --bootstrap-server "$bootstrap" "${auth[@]}" --create --if-not-exists \
        --topic "$topic" \
        --partitions "$partitions" \
        --replication-factor "$replication" \
        --config cleanup.policy=delete \
        --config "retention.ms=$retention_ms"
}

for topic in "${event_topics[@]}"; do
    create "$topic" "$event_retention_ms"
done
for topic in "${dlq_topics[@]}"; do
    create "$topic" "$dlq_retention_ms"
done
for topic in "${log_topics[@]}"; do
    create "$topic" "$log_retention_ms"
done
for topic in "${state_topics[@]}"; do
    if grep -qxF "$topic" <<<"$existing"; then
        echo "kafka-init: $topic exists"
        continue
    fi
    "$kafka_topics" --bootstrap-server "$bootstrap" "${auth[@]}" --create --if-not-exists \
        --topic "$topic" \
        --partitions "$partitions" \
        --replication-factor "$replication" \
        --config cleanup.policy=compact \
        --config min.cleanable.dirty.ratio=0.1 \
        --config segment.ms=3600000
done

"$kafka_topics" --bootstrap-server "$bootstrap" "${auth[@]}" --describe \
    --topic "$(IFS='|'; echo "${event_topics[*]}|${dlq_topics[*]}|${state_topics[*]}|${log_topics[*]}")" | grep -v 'Partition: ' || true
echo "kafka-init: all topics are ready"
