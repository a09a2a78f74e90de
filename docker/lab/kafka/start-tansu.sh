#!/usr/bin/env bash
# The lab's broker (service `kafka` in docker/lab/compose.lab.yml): tansu with SASL/SCRAM
# authentication, storing everything in SQLite on the kafka-data volume.
#
# On the first start (an empty volume), like docker/kafka/start-kafka.sh, it creates the
# SCRAM-SHA-512 users of every client with the passwords of .env; and, since tansu's command
# line cannot authenticate, it also creates the topics then, with the project's own
# docker/kafka/create-topics.sh through a kafka-topics.sh shim. Both run against a broker that
# listens without authentication on the container's loopback interface only. Then the broker
# starts for real, requiring SASL on kafka:9092. tansu has no ACLs: docker/kafka/set-acls.sh
# does not run here, and every authenticated user may do anything.
set -euo pipefail

data=/var/lib/kafka/data
mkdir -p "$data"
cd "$data"

wait_for_port() {
    local port="$1"
    for _ in $(seq 1 50); do
        if (: < "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "start-tansu: nothing listens on 127.0.0.1:$port" >&2
    return 1
}

if [ ! -f .sagashop-lab-initialised ]; then
    setup_url=tcp://127.0.0.1:9093
    tansu broker --listener-url "$setup_url" --advertised-listener-url "$setup_url" \
        --storage-engine sqlite://tansu.db &
    setup_broker=$!
    wait_for_port 9093
    for user in admin order-service payment-service inventory-service shipping-service \
        query-service kafka-ui; do
        variable="$(tr 'a-z-' 'A-Z_' <<< "${user%-service}")_KAFKA_PASSWORD"
        [ "$user" = admin ] && variable=KAFKA_ADMIN_PASSWORD
        echo "start-tansu: SCRAM-SHA-512 user $user"
        tansu user create --broker "$setup_url" --mechanism scram512 "$user" "${!variable:?$variable is not set}"
    done
    BOOTSTRAP_SERVER="$setup_url" KAFKA_TOPICS_SH=/opt/sagashop-lab/kafka-topics.sh \
        bash /opt/sagashop/create-topics.sh
    kill "$setup_broker"
    wait "$setup_broker" || true
    touch .sagashop-lab-initialised
fi

exec tansu broker --listener-url tcp://0.0.0.0:9092 --advertised-listener-url tcp://kafka:9092 \
    --storage-engine sqlite://tansu.db --authentication
