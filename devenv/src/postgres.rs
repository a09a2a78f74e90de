//! PostgreSQL: the server from DATABASE_URL, or a private throwaway cluster stopped on drop.

use crate::process::{find_on_path, pick_port, run, stdout_of, tail, Stop, TempDir};
use crate::say;
use anyhow::{bail, Context, Result};
use sqlx::{Connection, PgConnection};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use url::Url;

/// Settings of every private cluster: a throwaway server, so nothing is synced to disk.
/// `synchronous_commit=off` may lose the last commits when PostgreSQL itself crashes (its WAL
/// buffers are in shared memory); pass `synchronous_commit=on` to [`Cluster::start_with`] when
/// a test crashes it on purpose.
const BASE_SETTINGS: &str = "-c listen_addresses=127.0.0.1 -c max_connections=400 \
     -c fsync=off -c synchronous_commit=off -c full_page_writes=off";

/// What a cluster needs to sync every commit to disk, as a production server does (overrides
/// the defaults above; for [`Cluster::start_with`] and [`Postgres::start_with`], e.g. benchmarks).
pub const DURABLE_SETTINGS: [(&str, &str); 3] = [
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
];

/// The server xtask uses: the one from DATABASE_URL, or a private [`Cluster`].
pub struct Postgres {
    /// Server-level URL (database `postgres` for the private cluster).
    pub admin_url: Url,
    cluster: Option<Cluster>,
}

impl Postgres {
    /// The server from DATABASE_URL if set, else a new private cluster.
    pub async fn start(stop: &Stop, preferred_port: Option<u16>) -> Result<Self> {
        Self::start_with(stop, preferred_port, &[]).await
    }

    /// Like [`Postgres::start`]; a private cluster gets the extra server `settings` (see
    /// [`Cluster::start_with`]). The server from DATABASE_URL is used as it is.
    pub async fn start_with(
        stop: &Stop,
        preferred_port: Option<u16>,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let admin_url = Url::parse(&url).context("DATABASE_URL is not a valid URL")?;
            say!(
                "using the PostgreSQL server from DATABASE_URL ({})",
                redact(&admin_url)
            );
            return Ok(Self {
                admin_url,
                cluster: None,
            });
        }
        let cluster = Cluster::start_with(stop, preferred_port, settings).await?;
        Ok(Self {
            admin_url: cluster.admin_url.clone(),
            cluster: Some(cluster),
        })
    }

    /// Connects to the admin URL, retrying for up to 10 s.
    pub async fn connect(&self) -> Result<PgConnection> {
        connect(&self.admin_url, Duration::from_secs(10)).await
    }

    /// Creates `database` and its roles with the SQL the compose stack runs
    /// ([`create_service_database`]), unless the database exists already and so do its roles.
    pub async fn create_service_database(&self, service: &ServiceDatabase) -> Result<()> {
        let mut conn = self.connect().await?;
        let (database_exists, roles): (bool, i64) = sqlx::query_as(
            "select exists (select 1 from pg_database where datname = $1),
                    (select count(*) from pg_roles where rolname in ($2, $3))",
        )
        .bind(&service.database)
        .bind(&service.owner)
        .bind(&service.runtime)
        .fetch_one(&mut conn)
        .await?;
        match (database_exists, roles) {
            (true, 2) => Ok(()),
            (true, _) => bail!(
                "database {} exists without the roles {} and {} (made by an earlier version?): \
                 drop it, or point DATABASE_URL at another server",
                service.database,
                service.owner,
                service.runtime
            ),
            (false, _) => {
                create_service_database(&mut conn, service).await?;
                say!(
                    "created database {} (owner {}, runtime role {})",
                    service.database,
                    service.owner,
                    service.runtime
                );
                Ok(())
            }
        }
    }

    /// The admin URL with its path replaced by `database`.
    pub fn url_for(&self, database: &str) -> Url {
        url_for(&self.admin_url, database)
    }

    /// Where the server is, for the banner.
    pub fn describe(&self) -> String {
        match &self.cluster {
            Some(c) => format!("{} (log: {})", self.admin_url, c.log().display()),
            None => format!("{} (from DATABASE_URL)", redact(&self.admin_url)),
        }
    }

    pub fn log(&self) -> Option<PathBuf> {
        self.cluster.as_ref().map(Cluster::log)
    }

    /// The private cluster, if this is one (None for the server from DATABASE_URL).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }
}

/// One service's database and its two login roles (see docker/postgres/service-database.sql).
#[derive(Debug, Clone)]
pub struct ServiceDatabase {
    pub database: String,
    /// Owns the database; applies the migrations.
    pub owner: String,
    pub owner_password: String,
    /// What the service runs with: rows only.
    pub runtime: String,
    pub runtime_password: String,
}

impl ServiceDatabase {
    /// `url` (any URL of the server) for `database` as `role` with `password`.
    pub fn url(&self, server_url: &Url, as_owner: bool) -> Url {
        let mut url = url_for(server_url, &self.database);
        let (role, password) = match as_owner {
            true => (&self.owner, &self.owner_password),
            false => (&self.runtime, &self.runtime_password),
        };
        url.set_username(role).expect("a server URL has a host");
        url.set_password(Some(password))
            .expect("a server URL has a host");
        url
    }
}

/// The SQL that creates a service's database and roles, shared with the compose stack.
const SERVICE_DATABASE_SQL: &str = include_str!("../../docker/postgres/service-database.sql");

/// Runs docker/postgres/service-database.sql on `conn` (a superuser or a role with CREATEROLE
/// and CREATEDB, in database postgres) for `service`, substituting its psql variables as psql
/// does (`:"name"` an identifier, `:'name'` a literal), one statement at a time (CREATE
/// DATABASE cannot run in a transaction).
pub async fn create_service_database(
    conn: &mut PgConnection,
    service: &ServiceDatabase,
) -> Result<()> {
    for statement in service_database_statements(service)? {
        sqlx::raw_sql(&statement)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("running {statement}"))?;
    }
    Ok(())
}

/// The statements of docker/postgres/service-database.sql for `service`.
pub fn service_database_statements(service: &ServiceDatabase) -> Result<Vec<String>> {
    let variables = [
        ("database", &service.database),
        ("owner", &service.owner),
        ("owner_password", &service.owner_password),
        ("runtime", &service.runtime),
        ("runtime_password", &service.runtime_password),
    ];
    let mut sql: String = SERVICE_DATABASE_SQL
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    if sql.lines().any(|line| line.trim_start().starts_with('\\')) {
        bail!("service-database.sql uses a psql command, which this runner cannot run");
    }
    for quote in ['"', '\''] {
        for used in sql.split(&format!(":{quote}")).skip(1) {
            let name = used.split(quote).next().unwrap_or_default();
            if !variables.iter().any(|(known, _)| *known == name) {
                bail!("service-database.sql uses the unknown psql variable {name:?}");
            }
        }
    }
    for (name, value) in variables {
        let identifier = format!("\"{}\"", value.replace('"', "\"\""));
        let literal = format!("'{}'", value.replace('\'', "''"));
        sql = sql
            .replace(&format!(":\"{name}\""), &identifier)
            .replace(&format!(":'{name}'"), &literal);
    }
    Ok(sql
        .split(';')
        .map(str::trim)
        .filter(|statement| !statement.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A private PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only, with trust
/// authentication for the `postgres` user. Stopped (and its directory deleted) on drop.
pub struct Cluster {
    /// Server-level URL: database `postgres`, user `postgres`, no password.
    pub admin_url: Url,
    port: u16,
    bindir: PathBuf,
    /// Run the binaries as the `postgres` user (we are root).
    as_postgres: bool,
    /// The `-o` options of `pg_ctl start`.
    options: String,
    dir: TempDir,
}

impl Cluster {
    /// `initdb` and `pg_ctl start` on `preferred_port` if it is free, else on a free port.
    pub async fn start(stop: &Stop, preferred_port: Option<u16>) -> Result<Self> {
        Self::start_with(stop, preferred_port, &[]).await
    }

    /// Like [`Cluster::start`], with extra server settings (`-c name=value`) that override the
    /// defaults, e.g. `[("synchronous_commit", "on")]`.
    pub async fn start_with(
        stop: &Stop,
        preferred_port: Option<u16>,
        settings: &[(&str, &str)],
    ) -> Result<Self> {
        let bindir = find_bindir()?;
        let as_postgres = stdout_of(Command::new("id").arg("-u")).as_deref() == Some("0");
        let dir = TempDir::new("pg")?;
        if as_postgres {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .with_context(|| format!("chown postgres {}", dir.path().display()))?;
        }
        let port = pick_port(preferred_port)?;
        say!(
            "starting a private PostgreSQL {} cluster on 127.0.0.1:{port} (data in {})",
            version(&bindir).unwrap_or_default(),
            dir.path().display()
        );
        let mut options = format!("-p {port} -k '{}' {BASE_SETTINGS}", dir.path().display());
        for (name, value) in settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let cluster = Cluster {
            admin_url: Url::parse(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))?,
            port,
            bindir,
            as_postgres,
            options,
            dir,
        };
        let mut initdb = cluster.command("initdb");
        initdb
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "--auth=trust"]);
        initdb.args(["-E", "UTF8", "--no-locale", "--no-sync"]);
        run(initdb, "initdb", Some(&cluster.setup_log()), stop).await?;
        cluster.pg_ctl_start(stop).await?;
        Ok(cluster)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin URL with its path replaced by `database`.
    pub fn url_for(&self, database: &str) -> Url {
        url_for(&self.admin_url, database)
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.data()
    }

    /// The postmaster's process id while the server runs: the first line of `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// The server log.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Connects to the admin URL, retrying for up to `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<PgConnection> {
        connect(&self.admin_url, timeout).await
    }

    /// `pg_ctl restart -m immediate`: every backend is killed without a checkpoint (as in a
    /// crash), the server starts again with the same options and recovers from its WAL. Returns
    /// once it accepts connections again.
    pub async fn restart_immediate(&self) -> Result<()> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("restart").args(["-m", "immediate", "-w", "-D"]);
        pg_ctl.arg(self.data()).arg("-l").arg(self.log());
        pg_ctl.args(["-o", &self.options]);
        self.run_pg_ctl(pg_ctl, "pg_ctl restart -m immediate", &Stop::never())
            .await?;
        drop(self.connect(Duration::from_secs(30)).await?);
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the server is down until [`Cluster::start_again`].
    pub async fn stop_immediate(&self) -> Result<()> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("stop").args(["-m", "immediate", "-w", "-D"]);
        pg_ctl.arg(self.data());
        self.run_pg_ctl(pg_ctl, "pg_ctl stop -m immediate", &Stop::never())
            .await
    }

    /// Starts the server again after [`Cluster::stop_immediate`]; returns once it accepts
    /// connections.
    pub async fn start_again(&self) -> Result<()> {
        self.pg_ctl_start(&Stop::never()).await?;
        drop(self.connect(Duration::from_secs(30)).await?);
        Ok(())
    }

    async fn pg_ctl_start(&self, stop: &Stop) -> Result<()> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("start").arg("-w").arg("-D").arg(self.data());
        pg_ctl.arg("-l").arg(self.log()).args(["-o", &self.options]);
        self.run_pg_ctl(pg_ctl, "pg_ctl start", stop).await
    }

    async fn run_pg_ctl(&self, pg_ctl: Command, what: &str, stop: &Stop) -> Result<()> {
        if let Err(e) = run(pg_ctl, what, Some(&self.setup_log()), stop).await {
            bail!(
                "{e:#}\nlast lines of {}:\n{}",
                self.log().display(),
                tail(&self.log(), 40)
            );
        }
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn setup_log(&self) -> PathBuf {
        self.dir.path().join("setup.log")
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        let mut cmd = if self.as_postgres {
            let runuser = find_on_path("runuser").unwrap_or_else(|| "/usr/sbin/runuser".into());
            let mut cmd = Command::new(runuser);
            cmd.args(["-u", "postgres", "--"]).arg(exe);
            cmd
        } else {
            Command::new(exe)
        };
        cmd.current_dir(self.dir.path());
        cmd
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            say!("stopping PostgreSQL");
            let mut stop = self.command("pg_ctl");
            stop.arg("stop")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w"]);
            let status = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
            if !status.is_ok_and(|s| s.success()) {
                say!("warning: `pg_ctl stop` failed; a postgres process may be left");
            }
        }
    }
}

async fn connect(url: &Url, timeout: Duration) -> Result<PgConnection> {
    let deadline = Instant::now() + timeout;
    loop {
        match PgConnection::connect(url.as_str()).await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("connecting to {}", redact(url)))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn url_for(admin_url: &Url, database: &str) -> Url {
    let mut url = admin_url.clone();
    url.set_path(database);
    url
}

fn find_bindir() -> Result<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = stdout_of(Command::new("pg_config").arg("--bindir")).map(PathBuf::from) {
        if usable(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| usable(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    if let Some(initdb) = find_on_path("initdb") {
        let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = initdb.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    bail!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them with \
         `sudo apt-get install postgresql`, or set DATABASE_URL to an existing server \
         (e.g. postgres://user:password@localhost:5432/postgres)"
    )
}

/// The major version, e.g. "15", from `pg_ctl --version`.
fn version(bindir: &Path) -> Option<String> {
    let text = stdout_of(Command::new(bindir.join("pg_ctl")).arg("--version"))?;
    Some(
        text.split_whitespace()
            .nth(2)?
            .split('.')
            .next()?
            .to_string(),
    )
}

fn postgres_user() -> Result<(u32, u32)> {
    let id = |flag| {
        stdout_of(Command::new("id").args([flag, "postgres"]))?
            .parse()
            .ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => bail!(
            "running as root, but PostgreSQL refuses to run as root and there is no `postgres` \
             system user to run it as: install Debian's PostgreSQL (`apt-get install postgresql`), \
             run as a normal user, or set DATABASE_URL to an existing server"
        ),
    }
}

/// The URL with its password hidden.
fn redact(url: &Url) -> Url {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url
}

#[cfg(test)]
mod service_database_tests {
    use super::*;

    #[test]
    fn the_compose_sql_is_filled_in_as_psql_would() {
        let service = ServiceDatabase {
            database: "sagashop_payment".to_owned(),
            owner: "payment_owner".to_owned(),
            owner_password: "it's".to_owned(),
            runtime: "payment_service".to_owned(),
            runtime_password: "p".to_owned(),
        };
        let statements = service_database_statements(&service).expect("statements");
        assert_eq!(
            statements,
            [
                r#"CREATE ROLE "payment_owner" LOGIN PASSWORD 'it''s'"#,
                r#"CREATE ROLE "payment_service" LOGIN PASSWORD 'p'"#,
                r#"CREATE DATABASE "sagashop_payment" OWNER "payment_owner""#,
                r#"REVOKE ALL ON DATABASE "sagashop_payment" FROM PUBLIC"#,
                r#"GRANT CONNECT ON DATABASE "sagashop_payment" TO "payment_service""#,
            ]
        );
    }
}
