-- One service's database and its two roles, as the PostgreSQL superuser, in database postgres.
-- Run with psql variables database, owner, owner_password, runtime, runtime_password by
-- docker/postgres/initdb/10-sagashop.sh (compose), and by `cargo xtask up` and the e2e test
-- tests/tests/roles.rs through devenv::postgres::create_service_database (which substitutes the
-- variables the same way; keep to one statement per `;`-terminated line group, no psql commands).
--
--   owner    owns the database and its public schema (PostgreSQL 15+: pg_database_owner); the
--            service connects as it (DATABASE_MIGRATION_URL) only to create its tables and apply
--            its migrations, then grants the runtime role row access (shared::db).
--   runtime  what the service runs with (DATABASE_URL): it may connect to this database only,
--            and read and write rows; it cannot create, alter or drop anything.
CREATE ROLE :"owner" LOGIN PASSWORD :'owner_password';
CREATE ROLE :"runtime" LOGIN PASSWORD :'runtime_password';
CREATE DATABASE :"database" OWNER :"owner";
-- Nobody else may connect (PUBLIC has CONNECT and TEMPORARY on a new database by default).
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"runtime";
