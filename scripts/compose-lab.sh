#!/usr/bin/env bash
# The compose lab: `docker compose up` for real on a machine that cannot pull images (ours),
# as root, from one command:
#
#   scripts/compose-lab.sh
#
#   1. installs what is missing (Debian's docker.io, docker-compose, debootstrap, curl) and starts
#      a private dockerd whose data, sockets and logs all live under LAB_DIR;
#   2. makes the images the Dockerfile starts from, under its exact names: debian:bookworm-slim
#      (debootstrap from this machine's Debian mirror) and rust:<RUST_VERSION>-slim-bookworm
#      (this machine's toolchain on that base);
#   3. builds the stand-ins docker/lab/compose.lab.yml selects for the images that cannot be had
#      here: PostgreSQL and nginx from Debian's packages, tansu instead of Apache Kafka;
#   4. `docker build`s every service image with the project's Dockerfile;
#   5. `docker-compose up` with the override, checking that the startup followed depends_on and
#      the health checks; the walkthrough through the gateway (scripts/compose-smoke.sh);
#      `--scale payment=3`, checking that the replicas share the consumer group; one payment
#      replica killed (SIGKILL, as a crash), restarted by its restart policy, every order
#      placed meanwhile ended (CONFIRMED or CANCELLED and compensated), stock and balance
#      matching the confirmed orders, the ledger verified;
#   6. tears everything down: the stack and its volumes, dockerd, and LAB_DIR.
#
# Settings: LAB_DIR (default /var/tmp/sagashop-compose-lab), LAB_KEEP=1 (leave the stack and
# dockerd running, print how to reach them), LAB_KEEP_DATA=1 (stop dockerd but keep LAB_DIR, so a
# second run reuses the images and the build cache), LAB_STORAGE_DRIVER (overlay2 when the
# kernel mounts overlayfs, else vfs), LAB_ORDERS (orders placed per step, default 20).
# docs/DOCKER.md ("The compose lab") says what it stands in for and what it cannot check.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

LAB_DIR="${LAB_DIR:-/var/tmp/sagashop-compose-lab}"
LAB_ORDERS="${LAB_ORDERS:-20}"
export COMPOSE_PROJECT_NAME=sagashop-lab
export DOCKER_HOST="unix://$LAB_DIR/run/docker.sock"
export DOCKER_BUILDKIT=1
started=$SECONDS

say() { printf '\n\033[1m== %s (%s, %ss)\033[0m\n' "$*" "$(date -u +%H:%M:%S)" "$((SECONDS - started))"; }
info() { printf '   %s\n' "$*"; }
die() {
    printf '\nCOMPOSE LAB FAILED: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run it as root (it starts its own dockerd)"

# --- 1. tools and a private dockerd ------------------------------------------------------------
apt_updated=false
need() { # COMMAND PACKAGE: installs PACKAGE unless COMMAND is there
    [ -x "$1" ] || command -v "$1" > /dev/null && return 0
    if [ "$apt_updated" = false ]; then
        apt-get update -q > /dev/null
        apt_updated=true
    fi
    info "installing $2 (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" > /dev/null
}
say "tools"
need /usr/sbin/dockerd docker.io
need docker-compose docker-compose
need debootstrap debootstrap
need curl curl
need iptables iptables
# Debian's docker CLI (20.10) builds with the engine's BuildKit when DOCKER_BUILDKIT=1; a newer
# CLI elsewhere on PATH may want the buildx plugin, which Debian 12 does not package.
docker() { /usr/bin/docker "$@"; }
compose=(docker-compose -f docker-compose.yml -f docker/lab/compose.lab.yml)
[ -f .env ] || compose+=(--env-file .env.example)
dc() { "${compose[@]}" "$@"; }
info "$(/usr/sbin/dockerd --version), $(docker-compose version --short 2> /dev/null || docker-compose --version)"

dockerd_pid=""
forward_policy=""
ip_forward=""
cleanup() {
    local code=$?
    set +e
    if [ "$code" -ne 0 ] && [ -S "$LAB_DIR/run/docker.sock" ]; then
        echo "--- docker-compose ps" >&2
        dc ps >&2
        echo "--- last log lines" >&2
        dc logs --no-color --tail 40 >&2
    fi
    if [ "${LAB_KEEP:-0}" = 1 ]; then
        printf '\nLAB_KEEP=1: the stack and dockerd keep running:\n  export DOCKER_HOST=%s\n  %s ps\n  stop: kill %s; rm -rf %s\n' \
            "$DOCKER_HOST" "${compose[*]}" "$dockerd_pid" "$LAB_DIR"
        exit "$code"
    fi
    say "teardown"
    if [ -n "$dockerd_pid" ]; then
        dc --profile lab-no-stand-in down -v --remove-orphans > /dev/null 2>&1
        kill "$dockerd_pid" 2> /dev/null
        for _ in $(seq 1 60); do
            kill -0 "$dockerd_pid" 2> /dev/null || break
            sleep 0.5
        done
        info "dockerd stopped"
    fi
    # dockerd leaves its default bridge and iptables rules behind: remove them unless another
    # dockerd still uses them.
    if [ -n "$dockerd_pid" ] && ! pgrep -x dockerd > /dev/null; then
        ip link delete docker0 2> /dev/null
        local table rule chain
        for table in filter nat; do
            iptables -t "$table" -S 2> /dev/null | grep -E '^-A .*(DOCKER|docker0)' | sed 's/^-A /-D /' \
                | while read -r rule; do
                    # shellcheck disable=SC2086 # a rule is a list of words
                    iptables -t "$table" $rule 2> /dev/null
                done
            for chain in $(iptables -t "$table" -S 2> /dev/null | awk '$1 == "-N" && $2 ~ /^DOCKER/ { print $2 }'); do
                iptables -t "$table" -F "$chain" 2> /dev/null
                iptables -t "$table" -X "$chain" 2> /dev/null
            done
        done
        [ -n "$forward_policy" ] && iptables -P FORWARD "$forward_policy" 2> /dev/null
        [ -n "$ip_forward" ] && echo "$ip_forward" > /proc/sys/net/ipv4/ip_forward
    fi
    # Whatever dockerd left mounted under LAB_DIR (it unmounts its own on a clean stop).
    grep -o " $LAB_DIR/[^ ]*" /proc/mounts | sort -r | xargs -r -n 1 umount -l 2> /dev/null
    if [ "${LAB_KEEP_DATA:-0}" = 1 ]; then
        info "LAB_KEEP_DATA=1: images and build cache kept in $LAB_DIR"
    else
        rm -rf "$LAB_DIR"
        info "removed $LAB_DIR"
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "a private dockerd in $LAB_DIR"
mkdir -p "$LAB_DIR/data" "$LAB_DIR/exec" "$LAB_DIR/run"
storage_driver="${LAB_STORAGE_DRIVER:-}"
if [ -z "$storage_driver" ]; then
    probe="$(mktemp -d "$LAB_DIR/overlay-probe.XXXX")"
    mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
    if mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2> /dev/null; then
        umount "$probe/merged"
        storage_driver=overlay2
    else
        storage_driver=vfs # copies every layer in full: needs much more disk
    fi
    rm -rf "$probe"
fi
# dockerd turns IP forwarding on and the FORWARD policy to DROP: the teardown puts them back.
forward_policy="$(iptables -S FORWARD 2> /dev/null | awk '$1 == "-P" { print $3 }')"
ip_forward="$(cat /proc/sys/net/ipv4/ip_forward)"
nice -n 10 /usr/sbin/dockerd --storage-driver="$storage_driver" --data-root "$LAB_DIR/data" \
    --exec-root "$LAB_DIR/exec" -H "$DOCKER_HOST" --pidfile "$LAB_DIR/run/dockerd.pid" \
    > "$LAB_DIR/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 60); do
    docker info > /dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2> /dev/null || die "dockerd exited: $(tail -n 5 "$LAB_DIR/dockerd.log")"
    sleep 0.5
done
docker info > /dev/null 2>&1 || die "dockerd did not answer: $(tail -n 5 "$LAB_DIR/dockerd.log")"
info "dockerd $dockerd_pid, storage driver $storage_driver, log $LAB_DIR/dockerd.log"

# --- 2. the images the Dockerfile starts from --------------------------------------------------
dockerfile_arg() { sed -n "s/^ARG $1=//p" Dockerfile | head -n 1; }
rust_version="$(dockerfile_arg RUST_VERSION)"
debian_release="$(dockerfile_arg DEBIAN_RELEASE)"
{ [ -n "$rust_version" ] && [ -n "$debian_release" ]; } || die "no ARG RUST_VERSION / DEBIAN_RELEASE in the Dockerfile"
debian_image="debian:$debian_release-slim"
rust_image="rust:$rust_version-slim-$debian_release"

# This machine's Debian mirror (the first URIs: or deb line of its apt sources).
mirror="$({ grep -rhoE '^(URIs:|deb) +http[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d 2> /dev/null || true; } \
    | awk '{print $2}' | head -n 1)"
mirror="${mirror:-http://deb.debian.org/debian}"

if ! docker image inspect "$debian_image" > /dev/null 2>&1; then
    say "$debian_image: debootstrap --variant=minbase $debian_release from $mirror"
    rootfs="$LAB_DIR/rootfs"
    rm -rf "$rootfs"
    nice -n 10 debootstrap --variant=minbase "$debian_release" "$rootfs" "$mirror" > "$LAB_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed: $(tail -n 5 "$LAB_DIR/debootstrap.log")"
    # The apt sources of the real image: the release, its updates and its security archive.
    rm -f "$rootfs/etc/apt/sources.list"
    cat > "$rootfs/etc/apt/sources.list.d/debian.sources" << SOURCES
Types: deb
URIs: ${mirror%/}
Suites: $debian_release $debian_release-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/}-security
Suites: $debian_release-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$debian_image" > /dev/null
    rm -rf "$rootfs"
fi
info "$debian_image: $(docker image inspect -f '{{.Size}}' "$debian_image") bytes"

if ! docker image inspect "$rust_image" > /dev/null 2>&1; then
    say "$rust_image from this machine's toolchain"
    sysroot="$(rustc --print sysroot)"
    rustc_version="$(rustc --version | awk '{print $2}')"
    case "$rustc_version" in
        "$rust_version" | "$rust_version".*) ;;
        *) die "the Dockerfile wants Rust $rust_version, rustc here is $rustc_version (rustup toolchain install $rust_version)" ;;
    esac
    context="$LAB_DIR/context/rust"
    rm -rf "$context"
    mkdir -p "$context"
    cp -rL --preserve=mode "$sysroot" "$context/toolchain"
    rm -rf "$context/toolchain/share/doc" "$context/toolchain/share/zsh"
    # CAs this machine trusts beyond Debian's (an egress proxy's): cargo in the image needs them
    # to reach crates.io the way this machine does.
    python3 - "$context" << 'PYTHON'
import glob, re, sys
def certificates(text):
    return re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
known = set()
for path in glob.glob("/usr/share/ca-certificates/**/*.crt", recursive=True):
    known.update(c.strip() for c in certificates(open(path).read()))
bundle = open("/etc/ssl/certs/ca-certificates.crt").read()
extra = [c for c in certificates(bundle) if c.strip() not in known]
for index, certificate in enumerate(extra):
    open(f"{sys.argv[1]}/host-ca-{index}.crt", "w").write(certificate + "\n")
print(f"   {len(extra)} extra CA certificate(s) of this machine")
PYTHON
    toolchain="/usr/local/rustup/toolchains/$rustc_version-x86_64-unknown-linux-gnu"
    {
        echo "FROM $debian_image"
        echo "ENV RUSTUP_HOME=/usr/local/rustup \\"
        echo "    CARGO_HOME=/usr/local/cargo \\"
        echo "    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\"
        echo "    RUST_VERSION=$rustc_version"
        if compgen -G "$context/host-ca-*.crt" > /dev/null; then
            echo "COPY host-ca-*.crt /usr/local/share/ca-certificates/"
        fi
        cat << DOCKERFILE
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
COPY toolchain $toolchain
RUN mkdir -p /usr/local/cargo/bin \\
    && for tool in $toolchain/bin/*; do ln -s "\$tool" /usr/local/cargo/bin/; done \\
    && chmod -R a+w /usr/local/cargo \\
    && cargo --version && rustc --version
DOCKERFILE
    } > "$context/Dockerfile"
    nice -n 10 /usr/bin/docker build -q -t "$rust_image" "$context" > /dev/null
    rm -rf "$context"
fi
info "$rust_image: $(docker run --rm "$rust_image" rustc --version)"

# --- 3. stand-ins --------------------------------------------------------------------------------
say "stand-ins: sagashop-lab/postgres, sagashop-lab/gateway, sagashop-lab/tansu"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v tansu > /dev/null; then
    info "cargo install tansu --locked --features libsql (about 20 minutes)"
    nice -n 10 cargo install tansu --locked --features libsql
fi
context="$LAB_DIR/context/tansu"
mkdir -p "$context"
cp docker/lab/kafka/Dockerfile "$(command -v tansu)" "$context/"
nice -n 10 /usr/bin/docker build -q -t sagashop-lab/tansu "$context" > /dev/null
rm -rf "$context"
nice -n 10 /usr/bin/docker build -q -t sagashop-lab/postgres docker/lab/postgres > /dev/null
nice -n 10 /usr/bin/docker build -q -t sagashop-lab/gateway docker/lab/gateway > /dev/null
info "$(docker run --rm --entrypoint tansu sagashop-lab/tansu --version 2>&1 | head -n 1)"

# --- 4. the service images, with the project's Dockerfile --------------------------------------
services=(order payment inventory shipping query)
for service in "${services[@]}"; do
    say "docker build --build-arg SERVICE=$service-service -t sagashop-lab/$service-service ."
    build_started=$SECONDS
    nice -n 10 /usr/bin/docker build --progress=plain --build-arg "SERVICE=$service-service" \
        -t "sagashop-lab/$service-service" . > "$LAB_DIR/build-$service.log" 2>&1 \
        || die "docker build of $service-service failed: $(tail -n 30 "$LAB_DIR/build-$service.log")"
    info "built in $((SECONDS - build_started))s (log $LAB_DIR/build-$service.log)"
done

# --- 5. the stack ---------------------------------------------------------------------------------
container_of() { dc ps -q "$1" | head -n 1; }
health_of() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$1"; }
wait_healthy() { # TIMEOUT CONTAINER...
    local deadline=$((SECONDS + $1)) id
    shift
    for id in "$@"; do
        until [ "$(health_of "$id")" = healthy ]; do
            [ "$SECONDS" -lt "$deadline" ] || die "$(docker inspect -f '{{.Name}}' "$id") is $(health_of "$id")"
            sleep 1
        done
    done
}
# The containers' events since `up` began (docker events replays them): one line per event,
# "NANOSECONDS SERVICE STATUS", e.g. "... kafka health_status: healthy".
record_events() {
    docker events --since "$up_since" --until "$(date +%s)" --filter type=container \
        --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
        --format '{{.TimeNano}} {{index .Actor.Attributes "com.docker.compose.service"}} {{.Status}}' \
        > "$LAB_DIR/events.txt"
}
first_event() { # SERVICE STATUS -> nanoseconds of its first such event
    local at
    at="$(grep -m 1 -E "^[0-9]+ $1 $2\$" "$LAB_DIR/events.txt" | cut -d' ' -f1)"
    [ -n "$at" ] || die "no '$2' event of $1 (docker events: $LAB_DIR/events.txt)"
    echo "$at"
}
at() { date -u -d "@$(($1 / 1000000000)).$(printf '%09d' $(($1 % 1000000000)))" +%H:%M:%S.%3N; }
# after SERVICE STATUS SERVICE STATUS: the first event of the first pair came after the second's.
after() {
    local later earlier
    later="$(first_event "$1" "$2")" && earlier="$(first_event "$3" "$4")" || exit 1
    [ "$later" -gt "$earlier" ] || die "$1 $2 at $(at "$later"), before $3 $4 at $(at "$earlier")"
    info "$1 $2 at $(at "$later"), after $3 $4 at $(at "$earlier")"
}

say "docker-compose up -d (project $COMPOSE_PROJECT_NAME)"
up_started=$SECONDS
up_since="$(date +%s)"
dc up -d --no-build
gateway="$(container_of gateway)"
wait_healthy 300 "$gateway"
info "every container up and healthy after $((SECONDS - up_started))s"
dc ps

say "startup order: depends_on and health checks (docker events)"
record_events
kafka_init="$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter label=com.docker.compose.service=kafka-init | head -n 1)"
[ "$(docker inspect -f '{{.State.ExitCode}}' "$kafka_init")" = 0 ] || die "kafka-init did not exit 0"
after kafka-init start kafka "health_status: healthy"
for service in "${services[@]}"; do
    after "$service" start postgres "health_status: healthy"
    after "$service" start kafka-init die
    after gateway start "$service" "health_status: healthy"
done
for id in $(dc ps -q); do
    [ "$(docker inspect -f '{{.State.Status}}' "$id")" = exited ] && continue
    [ "$(health_of "$id")" = healthy ] || die "$(docker inspect -f '{{.Name}}' "$id") is $(health_of "$id")"
done
info "every running container reports healthy"

say "the walkthrough through the gateway (scripts/compose-smoke.sh against 127.0.0.1:8081-8085)"
SMOKE_NO_COMPOSE=1 bash scripts/compose-smoke.sh

# --- scaling -------------------------------------------------------------------------------------
say "docker-compose up -d --scale payment=3"
dc up -d --no-build --no-recreate --scale payment=3
mapfile -t payments < <(dc ps -q payment)
[ "${#payments[@]}" -eq 3 ] || die "${#payments[@]} payment containers, 3 asked"
wait_healthy 180 "${payments[@]}"
info "3 payment replicas healthy"

# place_orders COUNT COUNTRY: places COUNT orders of one mug for a fresh product and customer
# through the gateway; sets $sku, $customer and the array $orders.
request() { # METHOD URL [JSON] -> prints the body; fails unless 2xx
    curl -sS -f --max-time 10 -X "$1" -H 'content-type: application/json' ${3:+--data "$3"} "$2"
}
place_orders() {
    local count="$1" country="$2" index body
    sku="LAB-$(date +%s)-$RANDOM"
    customer="lab-$RANDOM-$RANDOM"
    request POST http://127.0.0.1:8083/products \
        "{\"sku\":\"$sku\",\"name\":\"Lab mug\",\"price_cents\":100,\"stock\":1000}" > /dev/null
    request POST http://127.0.0.1:8082/accounts "{\"customer_id\":\"$customer\",\"balance_cents\":100000}" > /dev/null
    orders=()
    for index in $(seq 1 "$count"); do
        body="$(request POST http://127.0.0.1:8081/orders \
            "{\"customer_id\":\"$customer\",\"items\":[{\"sku\":\"$sku\",\"quantity\":1}],\"shipping_address\":{\"country\":\"$country\"}}")"
        orders+=("$(grep -oE '"order_id":"[^"]+"' <<< "$body" | cut -d'"' -f4)")
        info "order $index/$count: ${orders[-1]}"
    done
}
order_status() { request GET "http://127.0.0.1:8081/orders/$1" | grep -oE '"status":"[A-Z_]+"' | cut -d'"' -f4; }
wait_confirmed() { # TIMEOUT: every order of $orders CONFIRMED
    local deadline=$((SECONDS + $1)) order status
    for order in "${orders[@]}"; do
        while status="$(order_status "$order")"; [ "$status" != CONFIRMED ]; do
            [ "$status" = PENDING ] || [ -z "$status" ] \
                || die "order $order ended $status: $(request GET "http://127.0.0.1:8081/orders/$order/timeline")"
            [ "$SECONDS" -lt "$deadline" ] || die "order $order still $status after $1s"
            sleep 1
        done
    done
}
wait_settled() { # TIMEOUT: every order of $orders out of PENDING; counts them in $confirmed/$cancelled
    local deadline=$((SECONDS + $1)) order status
    confirmed=0 cancelled=0
    for order in "${orders[@]}"; do
        while status="$(order_status "$order")"; [ "$status" = PENDING ] || [ -z "$status" ]; do
            [ "$SECONDS" -lt "$deadline" ] || die "order $order still ${status:-unreadable} after $1s"
            sleep 1
        done
        case "$status" in
            CONFIRMED) confirmed=$((confirmed + 1)) ;;
            CANCELLED)
                cancelled=$((cancelled + 1))
                info "order $order CANCELLED: $(request GET "http://127.0.0.1:8081/orders/$order/timeline" \
                    | grep -oE '"type":"[a-z_.0-9]+"' | cut -d'"' -f4 | tr '\n' ' ')"
                ;;
            *) die "order $order ended $status" ;;
        esac
    done
}
# eventually TIMEOUT DESCRIPTION COMMAND...: retries COMMAND every second.
eventually() {
    local deadline=$((SECONDS + $1)) what="$2"
    shift 2
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what: not so after $1s"
        sleep 1
    done
}
field_is() { # URL FIELD VALUE
    [ "$(request GET "$1" | grep -oE "\"$2\":-?[0-9]+" | cut -d: -f2)" = "$3" ]
}
stock_is() { # SOLD RESERVED AVAILABLE of $sku
    local url="http://127.0.0.1:8083/products/$sku"
    field_is "$url" sold "$1" && field_is "$url" reserved "$2" && field_is "$url" available "$3"
}
consumed_by() { # CONTAINER: the events the replica consumed (its /metrics, through its own IP)
    local ip
    ip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1")"
    curl -sS --max-time 5 "http://$ip:8082/metrics" \
        | awk '/^sagashop_events_consumed_total\{/ { sum += $NF } END { printf "%d\n", sum }'
}

say "the replicas share the consumer group payment-service"
declare -A consumed_before
for id in "${payments[@]}"; do consumed_before[$id]="$(consumed_by "$id")"; done
place_orders "$LAB_ORDERS" FR
wait_confirmed 180
info "all $LAB_ORDERS orders CONFIRMED with 3 payment replicas"
idle=0
for id in "${payments[@]}"; do
    delta=$(($(consumed_by "$id") - consumed_before[$id]))
    info "$(docker inspect -f '{{.Name}}' "$id"): consumed $delta events"
    [ "$delta" -gt 0 ] || idle=$((idle + 1))
done
# The orders' keys spread over the 3 partitions; a replica that consumed nothing either owns no
# partition (the group did not split them) or was unlucky with the keys.
[ "$idle" -eq 0 ] || die "$idle payment replica(s) consumed nothing: the group did not split the partitions"

# --- a crash and the restart policy --------------------------------------------------------------
victim="${payments[0]}"
victim_name="$(docker inspect -f '{{.Name}}' "$victim")"
say "kill -9 of $victim_name (a crash: restart: unless-stopped brings it back)"
restarts_before="$(docker inspect -f '{{.RestartCount}}' "$victim")"
kill -KILL "$(docker inspect -f '{{.State.Pid}}' "$victim")"
place_orders "$LAB_ORDERS" FR
deadline=$((SECONDS + 120))
until [ "$(docker inspect -f '{{.RestartCount}}' "$victim")" -gt "$restarts_before" ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "$victim_name was not restarted"
    sleep 1
done
info "$victim_name restarted by Docker (RestartCount $(docker inspect -f '{{.RestartCount}}' "$victim"))"
wait_healthy 180 "$victim"
info "$victim_name healthy again"
# Nothing lost: every order ends, CONFIRMED or CANCELLED (an order whose payment waited for the
# group to hand the dead member's partitions over may pass its saga deadline and be cancelled,
# with its compensations), and stock and money add up to the confirmed orders exactly.
wait_settled 300
info "all $LAB_ORDERS orders placed around the crash ended: $confirmed CONFIRMED, $cancelled CANCELLED"
eventually 120 "balance of $customer = $((100000 - 100 * confirmed))" \
    field_is "http://127.0.0.1:8082/accounts/$customer" balance_cents $((100000 - 100 * confirmed))
eventually 120 "$sku: $confirmed sold, 0 reserved, $((1000 - confirmed)) available" \
    stock_is "$confirmed" 0 $((1000 - confirmed))
info "balance and stock match the $confirmed confirmed orders: charged and sold exactly once each, the rest released and refunded"
dc exec -T payment sagashop-ledger verify
info "sagashop-ledger verify passed"
# Not checked: that new orders confirm again soon after the crash. On tansu the restarted
# member, back within its session timeout, wedges the group (docs/DOCKER.md, The compose lab):
# orders keyed to its partitions then end CANCELLED (timeout), compensated, for minutes.

say "compose lab passed in $((SECONDS - started))s"
