#!/usr/bin/env bash
# Starts the compose broker (docker-compose.yml, service `kafka`) with SASL/SCRAM users.
#
# On the first start (an empty data volume) the storage is formatted with the SCRAM-SHA-512
# credentials of every user (`kafka-storage.sh format --add-scram`, KIP-900): KRaft keeps them in
# the cluster metadata, and the broker needs its own before it can serve anyone. Later starts
# keep the stored credentials (--ignore-formatted): to change a password afterwards, use
# kafka-configs.sh --alter --add-config 'SCRAM-SHA-512=[password=...]' as admin, or start afresh
# with `docker compose down -v`.
#
#   user                password (.env)           may (ACLs: docker/kafka/set-acls.sh)
#   admin               KAFKA_ADMIN_PASSWORD      everything (super user): the broker, kafka-init
#   order-service       ORDER_KAFKA_PASSWORD      write its topic, read what it consumes
#   payment-service     PAYMENT_KAFKA_PASSWORD      "
#   inventory-service   INVENTORY_KAFKA_PASSWORD    "
#   shipping-service    SHIPPING_KAFKA_PASSWORD     "
#   query-service       QUERY_KAFKA_PASSWORD      read every event topic, write its dead letters
#   kafka-ui            KAFKA_UI_KAFKA_PASSWORD   describe and read everything (the web UI)
set -euo pipefail

template="${KAFKA_SERVER_PROPERTIES:-/opt/sagashop/server.properties}"
config=/tmp/sagashop-server.properties
kafka_bin="${KAFKA_BIN:-/opt/kafka/bin}"

scram() {
    local user="$1" password="$2"
    printf 'SCRAM-SHA-512=[name=%s,password=%s]' "$user" "$password"
}

# The broker authenticates to its own SASL listener (inter-broker traffic) as admin.
cp "$template" "$config"
{
    echo
    printf 'listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=%s\n' \
        "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${KAFKA_ADMIN_PASSWORD:?}\";"
} >> "$config"

# The health check's client settings (admin, over the SASL listener).
cat > /tmp/sagashop-admin.properties <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
PROPERTIES

"$kafka_bin/kafka-storage.sh" format --ignore-formatted \
    --cluster-id "${CLUSTER_ID:?}" \
    --config "$config" \
    --add-scram "$(scram admin "$KAFKA_ADMIN_PASSWORD")" \
    --add-scram "$(scram order-service "${ORDER_KAFKA_PASSWORD:?}")" \
    --add-scram "$(scram payment-service "${PAYMENT_KAFKA_PASSWORD:?}")" \
    --add-scram "$(scram inventory-service "${INVENTORY_KAFKA_PASSWORD:?}")" \
    --add-scram "$(scram shipping-service "${SHIPPING_KAFKA_PASSWORD:?}")" \
    --add-scram "$(scram query-service "${QUERY_KAFKA_PASSWORD:?}")" \
    --add-scram "$(scram kafka-ui "${KAFKA_UI_KAFKA_PASSWORD:?}")"

exec "$kafka_bin/kafka-server-start.sh" "$config"
