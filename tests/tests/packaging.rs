//! Static checks of the Docker packaging against the code: docker-compose.yml, Dockerfile,
//! .dockerignore and the files under docker/. Needs no Docker, PostgreSQL or Kafka.
//!
//! The environment contract (docs/DOCKER.md): every variable the compose file passes to a
//! service is one that service reads (no typo, no dead setting), and every service gets the
//! variables it cannot run without in a container. "Reads" is taken from the services' own clap
//! `Config` (every argument's `env`) plus what `shared::telemetry` reads directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use serde_norway::Value;
use shared::topology;

/// Read by `shared::telemetry::init`, outside clap.
const TELEMETRY_VARIABLES: [&str; 2] = ["RUST_LOG", "LOG_FORMAT"];

/// What a service needs in a container: its database, the broker, and to listen on every
/// interface (the default host is 127.0.0.1) on a known port (the health check and the gateway
/// use it).
const REQUIRED_VARIABLES: [&str; 4] = ["DATABASE_URL", "KAFKA_BROKERS", "HTTP_HOST", "HTTP_PORT"];

/// A service as the compose file, Cargo and clap know it.
struct Service {
    /// Compose service name (`docker compose up --scale payment=3`).
    name: &'static str,
    /// Cargo package and binary name.
    package: &'static str,
    command: clap::Command,
}

/// The services of `shared::topology`, each with its clap command.
fn services() -> Vec<Service> {
    topology::SERVICES
        .iter()
        .map(|service| Service {
            name: service.name,
            package: service.package,
            command: match service.package {
                "order-service" => order_service::Config::command(),
                "payment-service" => payment_service::Config::command(),
                "inventory-service" => inventory_service::Config::command(),
                "shipping-service" => shipping_service::Config::command(),
                "query-service" => query_service::Config::command(),
                other => panic!("tests/tests/packaging.rs has no Config command for {other}"),
            },
        })
        .collect()
}

fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

fn yaml(relative: &str) -> Value {
    let mut value: Value = serde_norway::from_str(&read(relative))
        .unwrap_or_else(|error| panic!("parsing {relative}: {error}"));
    value
        .apply_merge()
        .unwrap_or_else(|error| panic!("merging the << keys of {relative}: {error}"));
    value
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service `{name}`"))
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Null => String::new(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

/// The `environment` of a compose service (map or `KEY=value` list form) as name -> value.
fn environment(service: &Value) -> BTreeMap<String, String> {
    assert!(
        service.get("env_file").is_none(),
        "env_file is not allowed: this test could not see its variables"
    );
    match service.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Mapping(map)) => map
            .iter()
            .map(|(key, value)| (scalar(key), scalar(value)))
            .collect(),
        Some(Value::Sequence(list)) => list
            .iter()
            .map(|entry| {
                let entry = scalar(entry);
                match entry.split_once('=') {
                    Some((key, value)) => (key.to_owned(), value.to_owned()),
                    None => (entry, String::new()),
                }
            })
            .collect(),
        Some(other) => panic!("unexpected environment {other:?}"),
    }
}

/// Every environment variable the service reads.
fn variables_read(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|name| name.to_string_lossy().into_owned())
        .chain(TELEMETRY_VARIABLES.map(str::to_owned))
        .collect()
}

#[test]
fn compose_passes_each_service_only_variables_it_reads() {
    let compose = compose();
    for service in services() {
        let read = variables_read(&service.command);
        let passed: BTreeSet<String> = environment(compose_service(&compose, service.name))
            .into_keys()
            .collect();
        let unknown: Vec<&String> = passed.difference(&read).collect();
        assert!(
            unknown.is_empty(),
            "docker-compose.yml passes {} variables it never reads: {unknown:?}\n(it reads {read:?})",
            service.name
        );
    }
}

#[test]
fn compose_passes_each_service_the_variables_it_requires() {
    let compose = compose();
    let advertised = kafka_server_properties()["advertised.listeners"].clone();
    let mut ports = BTreeSet::new();
    for service in services() {
        let read = variables_read(&service.command);
        let environment = environment(compose_service(&compose, service.name));
        for required in REQUIRED_VARIABLES {
            assert!(
                read.contains(required),
                "{} no longer reads {required}: update this test",
                service.package
            );
            assert!(
                environment.contains_key(required),
                "docker-compose.yml does not pass {required} to {}",
                service.name
            );
        }
        assert_eq!(
            environment["HTTP_HOST"], "0.0.0.0",
            "{} must listen on every interface",
            service.name
        );
        let port = &environment["HTTP_PORT"];
        assert!(
            port.parse::<u16>().is_ok_and(|port| port > 0),
            "{}: HTTP_PORT {port:?}",
            service.name
        );
        assert!(
            ports.insert(port.clone()),
            "{}: HTTP_PORT {port} is used twice",
            service.name
        );
        for broker in environment["KAFKA_BROKERS"].split(',') {
            assert!(
                advertised.split(',').any(|listener| listener.ends_with(&format!("://{broker}"))),
                "{}: KAFKA_BROKERS {broker} is not a listener the kafka service advertises ({advertised})",
                service.name
            );
        }
    }
}

/// docker/kafka/server.properties, the compose broker's configuration, as key -> value.
fn kafka_server_properties() -> BTreeMap<String, String> {
    read("docker/kafka/server.properties")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("server.properties: not key=value: {line}"));
            (key.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

/// `postgres://user:password@host:port/database` -> (user, host, database).
fn parse_database_url(url: &str) -> (String, String, String) {
    let rest = url
        .strip_prefix("postgres://")
        .unwrap_or_else(|| panic!("not a postgres:// URL: {url}"));
    let (credentials, rest) = rest
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("no user in {url}"));
    let user = credentials.split(':').next().unwrap_or_default().to_owned();
    let (address, database) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("no database in {url}"));
    let host = address.split(':').next().unwrap_or_default().to_owned();
    let database = database.split('?').next().unwrap_or_default().to_owned();
    (user, host, database)
}

#[test]
fn each_service_migrates_as_the_owner_and_runs_as_its_own_runtime_role() {
    let compose = compose();
    let init_script = read("docker/postgres/initdb/10-sagashop.sh");
    let postgres = compose_service(&compose, "postgres");
    let mounts = format!("{:?}", postgres["volumes"]);
    assert!(
        mounts
            .contains("./docker/postgres/service-database.sql:/opt/sagashop/service-database.sql"),
        "the postgres service does not mount the SQL the init script runs: {mounts}"
    );
    assert!(init_script.contains("/opt/sagashop/service-database.sql"));
    let (mut users, mut databases) = (BTreeSet::new(), BTreeSet::new());
    for service in topology::SERVICES {
        let environment = environment(compose_service(&compose, service.name));
        let (runtime, host, database) = parse_database_url(&environment["DATABASE_URL"]);
        let (owner, owner_host, owner_database) =
            parse_database_url(&environment["DATABASE_MIGRATION_URL"]);
        assert_eq!(
            (host.as_str(), owner_host.as_str()),
            ("postgres", "postgres"),
            "{}: both database URLs must point at the compose postgres service",
            service.name
        );
        assert_eq!(database, owner_database, "{}: two databases", service.name);
        assert_eq!(database, service.database);
        assert_eq!(runtime, service.runtime_role());
        assert_eq!(owner, service.owner_role());
        assert_ne!(
            runtime, owner,
            "{}: the runtime role owns the database",
            service.name
        );
        for user in [&runtime, &owner] {
            assert!(
                users.insert(user.clone()),
                "role {user} is shared by two services"
            );
        }
        assert!(
            databases.insert(database.clone()),
            "database {database} is shared by two services"
        );
    }
}

/// No secret has a default in the compose file: each comes from .env, and .env.example (the
/// documented example) names every variable the file interpolates.
#[test]
fn compose_takes_every_secret_from_the_env_file() {
    let text = read("docker-compose.yml");
    let example = read(".env.example");
    let documented: BTreeSet<&str> = example
        .lines()
        .map(|line| line.trim().trim_start_matches("# "))
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    let mut secrets = 0;
    for reference in text.split("${").skip(1) {
        let end = reference
            .find(['}', ':', '-', '?'])
            .expect("a ${...} that ends");
        let name = &reference[..end];
        assert!(
            documented.contains(name),
            ".env.example does not document {name}, which docker-compose.yml reads"
        );
        if name.contains("PASSWORD") {
            secrets += 1;
            assert!(
                reference[end..].starts_with(":?"),
                "docker-compose.yml gives the secret {name} a default: use ${{{name}:?...}}"
            );
        }
    }
    assert!(
        secrets >= 12,
        "only {secrets} secrets in docker-compose.yml"
    );
}

/// Kafka requires SASL/SCRAM on every listener that a client outside the broker's container can
/// reach, authorises with ACLs and denies what no ACL allows; each service logs in as its own
/// user, which the broker's start-up script creates.
#[test]
fn kafka_authenticates_every_client_and_authorises_with_acls() {
    let properties = kafka_server_properties();
    let protocols: BTreeMap<&str, &str> = properties["listener.security.protocol.map"]
        .split(',')
        .filter_map(|entry| entry.split_once(':'))
        .collect();
    for listener in properties["listeners"].split(',') {
        let (name, address) = listener.split_once("://").expect("NAME://host:port");
        let protocol = protocols[name];
        assert!(
            protocol.starts_with("SASL_") || address.starts_with("localhost:"),
            "listener {listener} ({protocol}) lets clients in unauthenticated"
        );
    }
    assert_eq!(
        properties["authorizer.class.name"],
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    );
    assert_eq!(properties["allow.everyone.if.no.acl.found"], "false");
    assert_eq!(properties["sasl.enabled.mechanisms"], "SCRAM-SHA-512");
    assert_eq!(properties["auto.create.topics.enable"], "false");
    assert_eq!(
        properties["process.roles"], "broker,controller",
        "a single KRaft node"
    );

    let compose = compose();
    let start = read("docker/kafka/start-kafka.sh");
    let kafka = environment(compose_service(&compose, "kafka"));
    for service in topology::SERVICES {
        let environment = environment(compose_service(&compose, service.name));
        assert_eq!(
            environment["KAFKA_SECURITY_PROTOCOL"].to_uppercase(),
            protocols["SASL_PLAINTEXT"],
            "{}",
            service.name
        );
        assert_eq!(
            environment["KAFKA_SASL_MECHANISM"],
            properties["sasl.enabled.mechanisms"]
        );
        assert_eq!(environment["KAFKA_SASL_USERNAME"], service.kafka_user());
        let password = &environment["KAFKA_SASL_PASSWORD"];
        let variable = format!("{}_KAFKA_PASSWORD", service.name.to_uppercase());
        assert!(
            password.starts_with(&format!("${{{variable}:?")),
            "{password}"
        );
        assert_eq!(
            &kafka[&variable], password,
            "the broker gets another password"
        );
        assert!(start.contains(&format!(
            "scram {} \"${{{variable}:?}}\"",
            service.kafka_user()
        )));
    }
}

#[test]
fn the_startup_order_is_declared_with_health_conditions() {
    let compose = compose();
    let condition = |service: &str, dependency: &str| {
        compose_service(&compose, service)
            .get("depends_on")
            .and_then(|depends_on| depends_on.get(dependency))
            .and_then(|dependency| dependency.get("condition"))
            .map(scalar)
            .unwrap_or_else(|| panic!("{service} has no depends_on condition on {dependency}"))
    };
    for service in services() {
        assert_eq!(condition(service.name, "postgres"), "service_healthy");
        assert_eq!(
            condition(service.name, "kafka-init"),
            "service_completed_successfully"
        );
        assert_eq!(condition("gateway", service.name), "service_healthy");
        let test = compose_service(&compose, service.name)["healthcheck"]["test"].clone();
        assert!(
            format!("{test:?}").contains("/app/healthcheck"),
            "{}: health check {test:?}",
            service.name
        );
    }
    assert_eq!(condition("kafka-init", "kafka"), "service_healthy");
    for infrastructure in ["postgres", "kafka"] {
        assert!(
            compose_service(&compose, infrastructure)
                .get("healthcheck")
                .is_some(),
            "{infrastructure} has no health check"
        );
    }
}

#[test]
fn nothing_in_compose_prevents_scaling_the_services() {
    let compose = compose();
    let all = compose["services"]
        .as_mapping()
        .expect("services is a mapping");
    for (name, service) in all {
        assert!(
            service.get("container_name").is_none(),
            "{name:?} sets container_name"
        );
    }
    for service in services() {
        let definition = compose_service(&compose, service.name);
        for key in ["ports", "hostname"] {
            assert!(
                definition.get(key).is_none(),
                "{} sets {key}: replicas would collide (the gateway publishes it)",
                service.name
            );
        }
    }
}

#[test]
fn the_gateway_and_prometheus_reach_every_service_on_its_port() {
    let compose = compose();
    let nginx = read("docker/gateway/nginx.conf");
    let prometheus = yaml("docker/prometheus/prometheus.yml");
    let gateway_ports = format!("{:?}", compose_service(&compose, "gateway")["ports"]);
    for service in services() {
        let port = environment(compose_service(&compose, service.name))["HTTP_PORT"].clone();
        assert!(
            nginx.contains(&format!("set $upstream {}:{port};", service.name)),
            "nginx.conf does not proxy to {}:{port}",
            service.name
        );
        assert!(
            gateway_ports.contains(&format!("{port}:")),
            "the gateway does not publish {port}"
        );
        let job = prometheus["scrape_configs"]
            .as_sequence()
            .and_then(|jobs| jobs.iter().find(|job| job["job_name"] == service.name))
            .unwrap_or_else(|| panic!("prometheus.yml has no job {}", service.name));
        let sd = &job["dns_sd_configs"][0];
        assert_eq!(sd["names"][0], Value::from(service.name));
        assert_eq!(
            scalar(&sd["port"]),
            port,
            "prometheus scrapes {} on the wrong port",
            service.name
        );
    }
}

#[test]
fn kafka_init_creates_every_topic_the_services_use() {
    let script = read("docker/kafka/create-topics.sh");
    let mut topics: Vec<String> = shared::topics::Topic::ALL
        .iter()
        .map(|topic| topic.base_name().to_owned())
        .collect();
    topics.extend(
        services()
            .iter()
            .map(|service| shared::topics::dead_letter_topic("", service.package)),
    );
    topics.extend(
        shared::topics::StateTopic::ALL
            .iter()
            .map(|topic| topic.base_name().to_owned()),
    );
    for topic in topics {
        let quoted = [
            format!("({topic} "),
            format!(" {topic} "),
            format!(" {topic})"),
            format!("({topic})"),
        ];
        assert!(
            quoted.iter().any(|form| script.contains(form)),
            "docker/kafka/create-topics.sh does not create {topic}"
        );
    }
    // The state topics are created compacted, as the services create them.
    for (key, value) in shared::topics::STATE_TOPIC_CONFIG {
        assert!(
            script.contains(&format!("--config {key}={value}")),
            "docker/kafka/create-topics.sh does not create the state topics with {key}={value}"
        );
    }
    let properties = kafka_server_properties();
    assert_eq!(properties["auto.create.topics.enable"], "false");
}

/// The Dockerfile as logical lines (continuations joined), split into stages at each FROM.
fn dockerfile_stages() -> Vec<Vec<String>> {
    let text = read("Dockerfile");
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        // Comments may also sit between the continuation lines of one instruction.
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<String>> = vec![Vec::new()];
    for line in lines {
        if line.starts_with("FROM ") {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("at least one stage").push(line);
    }
    stages
}

/// The packages selected by the `cargo <subcommand>` in a RUN line (`-p`, `--package`, `--bin`).
fn cargo_selection(stages: &[Vec<String>], subcommand: &str) -> (String, BTreeSet<String>) {
    let invocation = stages
        .iter()
        .flatten()
        .filter(|line| line.starts_with("RUN "))
        .flat_map(|line| line.split("&&"))
        .find_map(|command| {
            let start = command.find(&format!("cargo {subcommand} "))?;
            Some(command[start..].trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the Dockerfile has no RUN cargo {subcommand}"));
    let words: Vec<&str> = invocation.split_whitespace().collect();
    let mut selected = BTreeSet::new();
    for (index, word) in words.iter().enumerate() {
        if let Some(value) = word
            .strip_prefix("--package=")
            .or_else(|| word.strip_prefix("--bin="))
        {
            selected.insert(value.to_owned());
        } else if matches!(*word, "-p" | "--package" | "--bin") {
            selected.insert(
                words
                    .get(index + 1)
                    .expect("a value after -p/--bin")
                    .trim_matches('"')
                    .to_owned(),
            );
        }
    }
    (invocation, selected)
}

/// Binaries of the workspace packages under services/, from `cargo metadata`.
/// The binaries of the crates under services/: (the service binaries, named as their package;
/// the tools beside them, such as `sagashop-ledger`).
fn service_binaries() -> (BTreeSet<String>, BTreeSet<String>) {
    let metadata = workspace_metadata();
    let services_dir = root().join("services");
    let mut services = BTreeSet::new();
    let mut tools = BTreeSet::new();
    for package in metadata["packages"].as_array().expect("packages") {
        if !Path::new(package["manifest_path"].as_str().unwrap_or_default())
            .starts_with(&services_dir)
        {
            continue;
        }
        let name = package["name"].as_str().unwrap_or_default();
        for target in package["targets"].as_array().cloned().unwrap_or_default() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"));
            let binary = target["name"].as_str().unwrap_or_default().to_owned();
            match (is_bin, binary == name) {
                (true, true) => services.insert(binary),
                (true, false) => tools.insert(binary),
                (false, _) => false,
            };
        }
    }
    (services, tools)
}

fn workspace_metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .expect("running cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn the_dockerfile_builds_every_service_binary_and_compose_runs_each() {
    let (binaries, tools) = service_binaries();
    let expected: BTreeSet<String> = services()
        .iter()
        .map(|service| service.package.to_owned())
        .collect();
    assert_eq!(
        binaries, expected,
        "the binaries under services/ are not the packages of shared::topology (README.md, \"Adding a service\")"
    );

    let stages = dockerfile_stages();
    let (build, built) = cargo_selection(&stages, "build");
    assert!(
        build.contains("--release") && build.contains("--locked"),
        "{build}"
    );
    // Every service binary is built (a tool comes with its service's package) and every binary
    // under services/ is copied out.
    for binary in binaries.iter().map(String::as_str).chain(["healthcheck"]) {
        assert!(
            built.contains(binary),
            "the Dockerfile's `{build}` does not build {binary}"
        );
    }
    for binary in binaries
        .iter()
        .chain(&tools)
        .map(String::as_str)
        .chain(["healthcheck"])
    {
        assert!(
            stages
                .iter()
                .flatten()
                .any(|line| line.contains(&format!("target/release/{binary} "))),
            "the Dockerfile does not copy target/release/{binary} out of the build"
        );
    }
    // The dependency layer must be built for the same packages, or features resolve
    // differently and the cached dependencies are rebuilt.
    let (cook, cooked) = cargo_selection(&stages, "chef cook");
    assert_eq!(
        cooked, built,
        "`{cook}` and `{build}` must select the same packages"
    );

    // The runtime stage runs the binary the build argument SERVICE names, as a non-root user.
    let runtime = stages.last().expect("a runtime stage");
    assert!(
        runtime.iter().any(|line| line == "ARG SERVICE"),
        "the runtime stage does not declare ARG SERVICE"
    );
    assert!(runtime
        .iter()
        .any(|line| line.starts_with("COPY --from=builder") && line.contains("${SERVICE}")));
    let user = runtime
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "runs as {user}"
    );
    assert!(runtime
        .iter()
        .any(|line| line.starts_with("HEALTHCHECK") && line.contains("/app/healthcheck")));

    let compose = compose();
    for service in services() {
        let build = &compose_service(&compose, service.name)["build"];
        assert_eq!(
            scalar(&build["context"]),
            ".",
            "{}: build context",
            service.name
        );
        assert_eq!(
            scalar(&build["dockerfile"]),
            "Dockerfile",
            "{}: Dockerfile",
            service.name
        );
        assert_eq!(
            scalar(&build["args"]["SERVICE"]),
            service.package,
            "{}: build argument SERVICE",
            service.name
        );
    }
}

/// `.dockerignore` glob: `*` and `?` stay within one path component, `**` spans any number.
fn glob_matches(pattern: &str, path: &str) -> bool {
    fn matches(pattern: &[u8], path: &[u8]) -> bool {
        match pattern {
            [] => path.is_empty(),
            [b'*', b'*', b'/', rest @ ..] => {
                matches(rest, path)
                    || (0..path.len()).any(|i| path[i] == b'/' && matches(rest, &path[i + 1..]))
            }
            [b'*', b'*', rest @ ..] => (0..=path.len()).any(|i| matches(rest, &path[i..])),
            [b'*', rest @ ..] => (0..=path.len())
                .take_while(|&i| i == 0 || path[i - 1] != b'/')
                .any(|i| matches(rest, &path[i..])),
            [b'?', rest @ ..] => {
                path.first().is_some_and(|&c| c != b'/') && matches(rest, &path[1..])
            }
            [c, rest @ ..] => path.first() == Some(c) && matches(rest, &path[1..]),
        }
    }
    matches(pattern.as_bytes(), path.as_bytes())
}

/// Whether `.dockerignore` keeps `path` (relative to the root) out of the build context: the
/// last rule matching the path or one of its parent directories decides (`!` lets it back in).
fn docker_ignores(rules: &str, path: &str) -> bool {
    let mut ignored = false;
    for rule in rules
        .lines()
        .map(str::trim)
        .filter(|rule| !rule.is_empty() && !rule.starts_with('#'))
    {
        let (include, pattern) = match rule.strip_prefix('!') {
            Some(pattern) => (true, pattern),
            None => (false, rule),
        };
        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
        let mut prefixes = path
            .match_indices('/')
            .map(|(end, _)| &path[..end])
            .collect::<Vec<_>>();
        prefixes.push(path);
        if prefixes.iter().any(|prefix| glob_matches(pattern, prefix)) {
            ignored = !include;
        }
    }
    ignored
}

fn files_under(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in
        std::fs::read_dir(dir).unwrap_or_else(|error| panic!("reading {}: {error}", dir.display()))
    {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name != "target") {
                files_under(&path, files);
            }
        } else {
            files.push(path);
        }
    }
}

#[test]
fn dockerignore_lets_every_workspace_member_into_the_build_context() {
    let rules = read(".dockerignore");
    let root = root();
    let mut files = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    if root.join(".cargo").is_dir() {
        files_under(&root.join(".cargo"), &mut files);
    }
    for package in workspace_metadata()["packages"]
        .as_array()
        .expect("packages")
    {
        let manifest = Path::new(package["manifest_path"].as_str().unwrap_or_default());
        files_under(manifest.parent().expect("a package directory"), &mut files);
    }
    for file in files {
        let relative = file
            .strip_prefix(&root)
            .expect("workspace members live under the root");
        let relative = relative.to_string_lossy();
        assert!(
            !docker_ignores(&rules, &relative),
            ".dockerignore keeps {relative} out of the build context"
        );
    }
    // ...and it does keep out what would invalidate the build cache for nothing.
    for path in [
        "docs/DOCKER.md",
        "docker-compose.yml",
        "scripts/compose-smoke.sh",
        "target/debug/x",
        "services/order/target/x",
    ] {
        assert!(
            docker_ignores(&rules, path),
            ".dockerignore lets {path} into the build context"
        );
    }
}

#[test]
fn the_dockerignore_matcher_follows_docker_semantics() {
    let rules = "*\n!services/\n**/target/\n*.md\n";
    assert!(docker_ignores(rules, "docs/DOCKER.md"));
    assert!(!docker_ignores(rules, "services/order/src/main.rs"));
    assert!(docker_ignores(rules, "services/order/target/debug/x"));
    assert!(docker_ignores(rules, "README.md"));
    assert!(
        !docker_ignores(rules, "services/README.md"),
        "a root pattern's * does not cross /"
    );
    assert!(glob_matches("**/target", "target"));
    assert!(glob_matches("a/**/b", "a/x/y/b"));
    assert!(!glob_matches("a/*", "a/x/y"));
}
