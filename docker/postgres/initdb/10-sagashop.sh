#!/usr/bin/env bash
# Runs once, on the first start of the postgres container (empty volume), as the superuser.
# Creates one database per service, each owned by its own login role, and makes sure a role can
# connect to its own database only: CONNECT is revoked from PUBLIC on every database, so only
# the owner (and the superuser) can reach it.
#
#   database            role               password (environment of the postgres service)
#   sagashop_order      order_service      ORDER_DB_PASSWORD
#   sagashop_payment    payment_service    PAYMENT_DB_PASSWORD
#   sagashop_inventory  inventory_service  INVENTORY_DB_PASSWORD
#   sagashop_shipping   shipping_service   SHIPPING_DB_PASSWORD
#
# The owner of a database also owns its `public` schema (PostgreSQL 15+: pg_database_owner),
# so each service can run its migrations there.
set -eo pipefail

create_service_database() {
    local database="$1" role="$2" password="$3"
    echo "sagashop: creating database $database owned by role $role"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v database="$database" -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL
}

create_service_database sagashop_order order_service "${ORDER_DB_PASSWORD:?}"
create_service_database sagashop_payment payment_service "${PAYMENT_DB_PASSWORD:?}"
create_service_database sagashop_inventory inventory_service "${INVENTORY_DB_PASSWORD:?}"
create_service_database sagashop_shipping shipping_service "${SHIPPING_DB_PASSWORD:?}"

# Nor may the service roles open the maintenance databases.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
SQL
