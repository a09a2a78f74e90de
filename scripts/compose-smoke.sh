#!/usr/bin/env bash
# End-to-end smoke test of the compose stack, for a machine with Docker (and CI):
# builds and starts everything with `docker compose up --wait`, runs the walkthrough of
# docs/DOCKER.md (one order confirmed, one cancelled because its country is not served), checks
# the outcome (statuses, stock, balance, the compensations in the timeline, the topics) and
# tears the stack down (`docker compose down -v`), also on failure.
#
#   scripts/compose-smoke.sh
#   SMOKE_SCALE="payment=3 inventory=2" scripts/compose-smoke.sh   # replicas (docker compose --scale)
#   SMOKE_KEEP=1 scripts/compose-smoke.sh                           # leave the stack running
#   SMOKE_NO_COMPOSE=1 scripts/compose-smoke.sh                     # walkthrough only, against services
#                                                                   # already listening (e.g. cargo xtask up)
# Other settings: COMPOSE_PROJECT_NAME (default sagashop-smoke), SMOKE_WAIT_TIMEOUT (seconds for
# the stack to become healthy once built, default 300), SMOKE_SAGA_TIMEOUT (seconds for each saga
# to settle, default 60), ORDER_URL PAYMENT_URL INVENTORY_URL SHIPPING_URL QUERY_URL (default
# http://127.0.0.1:8081 ... :8085). Needs bash, curl, and docker with the compose plugin (v2.20+).
# The secrets come from .env when there is one, else from .env.example (its demo passwords).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

ORDER_URL="${ORDER_URL:-http://127.0.0.1:8081}"
PAYMENT_URL="${PAYMENT_URL:-http://127.0.0.1:8082}"
INVENTORY_URL="${INVENTORY_URL:-http://127.0.0.1:8083}"
SHIPPING_URL="${SHIPPING_URL:-http://127.0.0.1:8084}"
QUERY_URL="${QUERY_URL:-http://127.0.0.1:8085}"
KAFKA_UI_URL="${KAFKA_UI_URL:-http://127.0.0.1:8080}"
SAGA_TIMEOUT="${SMOKE_SAGA_TIMEOUT:-60}"
WAIT_TIMEOUT="${SMOKE_WAIT_TIMEOUT:-300}"
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-sagashop-smoke}"
use_compose=true
[ "${SMOKE_NO_COMPOSE:-0}" = 1 ] && use_compose=false

compose=(docker compose -f docker-compose.yml)
# The secrets: the developer's .env, else the documented example's demo passwords (CI).
if [ ! -f .env ]; then
    compose+=(--env-file .env.example)
fi
# The admin client settings start-kafka.sh writes in the broker's container.
kafka_admin=(--command-config /tmp/sagashop-admin.properties)
work="$(mktemp -d)"
started=$SECONDS
status=""
body=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }
die() {
    printf '\nSMOKE TEST FAILED: %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local code=$?
    if [ "$use_compose" = true ]; then
        if [ "$code" -ne 0 ]; then
            echo "--- docker compose ps" >&2
            "${compose[@]}" ps -a >&2 || true
            echo "--- last log lines" >&2
            "${compose[@]}" logs --no-color --tail 60 >&2 || true
        fi
        if [ "${SMOKE_KEEP:-0}" = 1 ]; then
            echo "SMOKE_KEEP=1: the stack keeps running (docker compose -p $COMPOSE_PROJECT_NAME down -v)" >&2
        else
            say "tearing down"
            "${compose[@]}" down -v --remove-orphans || true
        fi
    fi
    rm -rf "$work"
    exit "$code"
}
trap cleanup EXIT

command -v curl > /dev/null || die "curl is required"

# request METHOD URL [JSON]: sets $status (HTTP code, 000 when unreachable) and $body.
request() {
    local method="$1" url="$2" data="${3-}"
    local args=(-sS -o "$work/body" -w '%{http_code}' -X "$method" --max-time 10
        -H 'content-type: application/json' -H 'accept: application/json')
    [ -n "$data" ] && args+=(--data "$data")
    status="$(curl "${args[@]}" "$url" 2> "$work/curl-error")" || status=000
    body="$(cat "$work/body" 2> /dev/null || true)"
    rm -f "$work/body"
}

expect_status() {
    local expected="$1" what="$2"
    [ "$status" = "$expected" ] || die "$what: expected HTTP $expected, got $status: $body $(cat "$work/curl-error" 2> /dev/null)"
}

# json FIELD: the first top-level string or number FIELD of $body ("" for null or absent).
# The services answer compact JSON, so grep is enough when jq is not installed.
json() {
    local field="$1"
    if command -v jq > /dev/null; then
        jq -r --arg f "$field" '.[$f] // empty | tostring' <<< "$body"
    else
        grep -oE "\"$field\":(\"[^\"]*\"|-?[0-9]+)" <<< "$body" | head -n 1 \
            | sed "s/^\"$field\"://; s/^\"//; s/\"\$//" || true
    fi
}

# eventually DESCRIPTION COMMAND...: retries COMMAND every second for SAGA_TIMEOUT seconds.
eventually() {
    local what="$1" deadline=$((SECONDS + SAGA_TIMEOUT))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what did not happen within ${SAGA_TIMEOUT}s (last answer: HTTP $status $body)"
        sleep 1
    done
}

# --- bring the stack up -------------------------------------------------------------------------
# SMOKE_SCALE="payment=3 inventory=2" -> --scale payment=3 --scale inventory=2
read -r -a scale_items <<< "${SMOKE_SCALE:-}"
scale_args=()
for item in ${scale_items[@]+"${scale_items[@]}"}; do
    [[ "$item" =~ ^[a-z-]+=[0-9]+$ ]] || die "SMOKE_SCALE: '$item' is not SERVICE=REPLICAS"
    scale_args+=(--scale "$item")
done
replicas_of() { # SERVICE -> the replica count SMOKE_SCALE asks for ("" when not scaled)
    local item
    for item in ${scale_items[@]+"${scale_items[@]}"}; do
        [ "${item%%=*}" = "$1" ] && echo "${item#*=}"
    done
    return 0
}

if [ "$use_compose" = true ]; then
    command -v docker > /dev/null || die "docker is required"
    docker compose version > /dev/null 2>&1 || die "the docker compose plugin (v2) is required"
    say "docker compose up --build --wait (project $COMPOSE_PROJECT_NAME, scale: ${SMOKE_SCALE:-none})"
    "${compose[@]}" build
    "${compose[@]}" up -d --wait --wait-timeout "$WAIT_TIMEOUT" ${scale_args[@]+"${scale_args[@]}"}
    "${compose[@]}" ps
    info "stack healthy after $((SECONDS - started))s"

    for item in ${scale_items[@]+"${scale_items[@]}"}; do
        service="${item%%=*}"
        running="$("${compose[@]}" ps -q --status running "$service" | wc -l | tr -d ' ')"
        [ "$running" -eq "${item#*=}" ] || die "$service: $running replicas running, ${item#*=} requested"
        info "$service: $running replicas running"
    done

    say "topics (kafka-init)"
    topics="$("${compose[@]}" exec -T kafka /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 "${kafka_admin[@]}" --list)"
    for topic in order.events inventory.events payment.events shipping.events \
        order-service.dlq payment-service.dlq inventory-service.dlq shipping-service.dlq \
        query-service.dlq; do
        grep -qx "$topic" <<< "$topics" || die "topic $topic is missing"
    done
    info "all topics exist"

    request GET "$KAFKA_UI_URL/actuator/health"
    expect_status 200 "Kafka UI health"
    info "Kafka UI answers at $KAFKA_UI_URL"
fi

for url in "$ORDER_URL" "$PAYMENT_URL" "$INVENTORY_URL" "$SHIPPING_URL" "$QUERY_URL"; do
    request GET "$url/health/ready"
    expect_status 200 "$url/health/ready"
done

# --- the walkthrough ----------------------------------------------------------------------------
run="$(date +%s)-$$"
sku="SMOKE-$run"
customer="smoke-$run"

say "a product (10 in stock at 15.00) and an account (100.00)"
request POST "$INVENTORY_URL/products" "{\"sku\":\"$sku\",\"name\":\"Smoke test mug\",\"price_cents\":1500,\"stock\":10}"
expect_status 201 "POST /products"
info "product $sku: $body"
request POST "$PAYMENT_URL/accounts" "{\"customer_id\":\"$customer\",\"balance_cents\":10000}"
expect_status 201 "POST /accounts"
info "account $customer: $body"

place_order() { # QUANTITY COUNTRY -> prints the order id
    request POST "$ORDER_URL/orders" \
        "{\"customer_id\":\"$customer\",\"items\":[{\"sku\":\"$sku\",\"quantity\":$1}],\"shipping_address\":{\"country\":\"$2\"}}"
    expect_status 202 "POST /orders"
    [ "$(json status)" = PENDING ] || die "a new order should be PENDING: $body"
    json order_id
}

settled() { # ORDER_ID: true once the order is no longer PENDING
    request GET "$ORDER_URL/orders/$1"
    [ "$status" = 200 ] && [ "$(json status)" != PENDING ]
}

stock_is() { # AVAILABLE RESERVED SOLD
    request GET "$INVENTORY_URL/products/$sku"
    [ "$status" = 200 ] && [ "$(json available)" = "$1" ] && [ "$(json reserved)" = "$2" ] && [ "$(json sold)" = "$3" ]
}

balance_is() { # CENTS
    request GET "$PAYMENT_URL/accounts/$customer"
    [ "$status" = 200 ] && [ "$(json balance_cents)" = "$1" ]
}

timeline_has() { # ORDER_ID EVENT_TYPE... (without the version: payment.charged matches payment.charged.v2)
    local order="$1" type
    shift
    request GET "$ORDER_URL/orders/$order/timeline"
    [ "$status" = 200 ] || return 1
    for type in "$@"; do
        grep -qE "\"type\":\"${type//./\\.}\\.v[0-9]+\"" <<< "$body" || return 1
    done
}

say "order 1: 2 mugs to FR -> CONFIRMED"
confirmed="$(place_order 2 FR)"
info "order $confirmed accepted (PENDING)"
eventually "order $confirmed settling" settled "$confirmed"
[ "$(json status)" = CONFIRMED ] || die "order $confirmed should be CONFIRMED: $body"
info "CONFIRMED, total $(json total_cents) cents"
eventually "stock 8 available, 0 reserved, 2 sold" stock_is 8 0 2
eventually "balance 7000" balance_is 7000
info "stock: 8 available, 2 sold; balance: 70.00"
eventually "the confirmed order's timeline" timeline_has "$confirmed" \
    order.created inventory.reserved payment.charged shipment.scheduled order.confirmed

say "order 2: 1 mug to AQ (not served) -> CANCELLED, shipping_unavailable, compensated"
cancelled="$(place_order 1 AQ)"
info "order $cancelled accepted (PENDING)"
eventually "order $cancelled settling" settled "$cancelled"
[ "$(json status)" = CANCELLED ] || die "order $cancelled should be CANCELLED: $body"
[ "$(json cancellation_reason)" = shipping_unavailable ] || die "order $cancelled: wrong reason: $body"
info "CANCELLED, reason shipping_unavailable"
eventually "the reservation released (8 available, 0 reserved, 2 sold)" stock_is 8 0 2
eventually "the charge refunded (balance 7000)" balance_is 7000
eventually "the compensations in the timeline" timeline_has "$cancelled" \
    order.created inventory.reserved payment.charged shipment.rejected order.cancelled \
    inventory.released payment.refunded
info "timeline: shipment.rejected -> order.cancelled -> inventory.released + payment.refunded"
info "stock back to 8 available, balance back to 70.00"

payment_replicas="$(replicas_of payment)"
if [ "$use_compose" = true ] && [ -n "$payment_replicas" ]; then
    say "payment replicas share the consumer group payment-service"
    members() {
        "${compose[@]}" exec -T kafka /opt/kafka/bin/kafka-consumer-groups.sh \
            --bootstrap-server localhost:9092 "${kafka_admin[@]}" --describe --group payment-service 2> /dev/null \
            | awk '$1 == "payment-service" && $7 != "-" { print $7 }' | sort -u | wc -l | tr -d ' '
    }
    expected=$((payment_replicas < 3 ? payment_replicas : 3)) # 3 partitions per topic
    group_has_members() { [ "$(members)" -ge "$expected" ]; }
    eventually "$expected members in consumer group payment-service" group_has_members
    info "$(members) consumers own the partitions of payment-service's topics"
fi

say "smoke test passed in $((SECONDS - started))s"
info "confirmed: $confirmed"
info "cancelled: $cancelled (shipping_unavailable, compensated)"
