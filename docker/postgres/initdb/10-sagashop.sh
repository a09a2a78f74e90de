#!/usr/bin/env bash
# Runs once, on the first start of the postgres container (empty volume), as the superuser.
# Creates one database per service with two login roles each (docker/postgres/service-database.sql):
# the owner, which applies the migrations, and the runtime role the service works with, which
# may only read and write rows of its own database (README.md, Security).
#
#   database            owner role        runtime role       passwords (.env)
#   sagashop_order      order_owner       order_service      ORDER_DB_OWNER_PASSWORD, ORDER_DB_PASSWORD
#   sagashop_payment    payment_owner     payment_service    PAYMENT_DB_OWNER_PASSWORD, PAYMENT_DB_PASSWORD
#   sagashop_inventory  inventory_owner   inventory_service  INVENTORY_DB_OWNER_PASSWORD, INVENTORY_DB_PASSWORD
#   sagashop_shipping   shipping_owner    shipping_service   SHIPPING_DB_OWNER_PASSWORD, SHIPPING_DB_PASSWORD
#   sagashop_query      query_owner       query_service      QUERY_DB_OWNER_PASSWORD, QUERY_DB_PASSWORD
#
# CONNECT is revoked from PUBLIC on every database, so no role reaches another service's data.
set -eo pipefail

service_database_sql="${SERVICE_DATABASE_SQL:-/opt/sagashop/service-database.sql}"

create_service_database() {
    local database="$1" owner="$2" owner_password="$3" runtime="$4" runtime_password="$5"
    echo "sagashop: creating database $database owned by $owner, used by $runtime"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v database="$database" -v owner="$owner" -v owner_password="$owner_password" \
        -v runtime="$runtime" -v runtime_password="$runtime_password" \
        -f "$service_database_sql"
}

create_service_database sagashop_order order_owner "${ORDER_DB_OWNER_PASSWORD:?}" \
    order_service "${ORDER_DB_PASSWORD:?}"
create_service_database sagashop_payment payment_owner "${PAYMENT_DB_OWNER_PASSWORD:?}" \
    payment_service "${PAYMENT_DB_PASSWORD:?}"
create_service_database sagashop_inventory inventory_owner "${INVENTORY_DB_OWNER_PASSWORD:?}" \
    inventory_service "${INVENTORY_DB_PASSWORD:?}"
create_service_database sagashop_shipping shipping_owner "${SHIPPING_DB_OWNER_PASSWORD:?}" \
    shipping_service "${SHIPPING_DB_PASSWORD:?}"
create_service_database sagashop_query query_owner "${QUERY_DB_OWNER_PASSWORD:?}" \
    query_service "${QUERY_DB_PASSWORD:?}"

# Nor may the service roles open the maintenance databases.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
SQL
