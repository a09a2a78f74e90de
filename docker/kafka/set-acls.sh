#!/usr/bin/env bash
# Grants each service's Kafka user what it needs and nothing more (run by `kafka-init` after
# create-topics.sh, as the super user admin). The broker denies whatever no ACL allows
# (allow.everyone.if.no.acl.found=false):
#
#   user                writes (and creates)               reads (and creates)              group
#   order-service       order.events, order-service.dlq    inventory.events, payment.events, order-service
#                                                          shipping.events, inventory.products
#   payment-service     payment.events, payment-service.dlq  inventory.events, order.events  payment-service
#   inventory-service   inventory.events, inventory-service.dlq,  order.events             inventory-service
#                       inventory.products
#   shipping-service    shipping.events, shipping-service.dlq  payment.events, order.events  shipping-service
#   query-service       query-service.dlq (owns no topic)  order.events, inventory.events,  query-service
#                                                          payment.events, shipping.events,
#                                                          inventory.products
#   kafka-ui            nothing                            every topic (and describes every group and the cluster)
#
# Every service also writes (and may read) the logs topic: its log records, not events.
# A state topic (inventory.products) is written by its publisher and read by its replicas, who
# assign themselves its partitions without a group. Each may also read its own dead-letter topic (`sagashop-dlq list`). Create is granted on a
# service's own topics because each service creates the topics it uses at
# start-up if they are missing (they exist already: kafka-init made them). The lists are the
# ones of shared/src/topology.rs (tests/tests/topology.rs checks them). Adding an ACL that exists
# changes nothing, so the job can run again.
set -euo pipefail

bootstrap="${BOOTSTRAP_SERVER:-kafka:9092}"
# KAFKA_ACLS_SH: another kafka-acls.sh (e.g. a stub, to try this script without a broker).
kafka_acls="${KAFKA_ACLS_SH:-/opt/kafka/bin/kafka-acls.sh}"
admin_config="${ADMIN_CONFIG:?the client settings of the admin user}"

acl() {
    "$kafka_acls" --bootstrap-server "$bootstrap" --command-config "$admin_config" --add "$@" > /dev/null
}

# grant_service USER GROUP WRITES READS (WRITES, READS: comma-separated topics)
grant_service() {
    local user="$1" group="$2" writes="$3" reads="$4" topic
    local principal="User:$user"
    local write_topics=() read_topics=()
    IFS=',' read -r -a write_topics <<<"$writes"
    IFS=',' read -r -a read_topics <<<"$reads"
    for topic in "${write_topics[@]}"; do
        acl --allow-principal "$principal" --operation Write --operation Describe --operation Create --topic "$topic"
    done
    for topic in "${read_topics[@]}"; do
        acl --allow-principal "$principal" --operation Read --operation Describe --operation Create --topic "$topic"
    done
    # Its own dead letters, for `sagashop-dlq list` in its container (replay writes to the source
    # topics: run it as admin).
    acl --allow-principal "$principal" --operation Read --topic "$group.dlq"
    acl --allow-principal "$principal" --operation Read --group "$group"
    # Its log records (shared::log_shipping), and everyone's for `sagashop-logs` in its container
    # (it assigns itself the partitions: no group).
    acl --allow-principal "$principal" --operation Write --operation Read --operation Describe --operation Create --topic logs
    echo "kafka-init: $user writes $writes, reads $reads in group $group"
}

grant_service order-service order-service order.events,order-service.dlq inventory.events,payment.events,shipping.events,inventory.products
grant_service payment-service payment-service payment.events,payment-service.dlq inventory.events,order.events
grant_service inventory-service inventory-service inventory.events,inventory-service.dlq,inventory.products order.events
grant_service shipping-service shipping-service shipping.events,shipping-service.dlq payment.events,order.events
grant_service query-service query-service query-service.dlq order.events,inventory.events,payment.events,shipping.events,inventory.products

# The web UI sees everything and changes nothing.
acl --allow-principal User:kafka-ui --operation Read --operation Describe --operation DescribeConfigs --topic '*'
acl --allow-principal User:kafka-ui --operation Describe --group '*'
acl --allow-principal User:kafka-ui --operation Describe --operation DescribeConfigs --cluster
echo "kafka-init: kafka-ui reads and describes everything"

"$kafka_acls" --bootstrap-server "$bootstrap" --command-config "$admin_config" --list
echo "kafka-init: the ACLs are in place"
