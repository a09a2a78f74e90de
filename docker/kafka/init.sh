#!/usr/bin/env bash
# The `kafka-init` job: as the super user admin, creates the topics (create-topics.sh), then
# the ACLs of every user (set-acls.sh), and exits 0; the services start only after it.
set -euo pipefail

export ADMIN_CONFIG=/tmp/sagashop-admin.properties
cat > "$ADMIN_CONFIG" <<PROPERTIES
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD:?}";
PROPERTIES

here="$(dirname "${BASH_SOURCE[0]}")"
bash "$here/create-topics.sh"
bash "$here/set-acls.sh"
