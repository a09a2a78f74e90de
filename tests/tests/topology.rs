//! Every file that lists the services lists each service of `shared::topology`, with its own
//! values (package, port, database, topics), and the service crates agree with it. Needs no
//! Docker, PostgreSQL or Kafka.
//!
//! [`misses`] takes the files through a reader, so the tests run it on the real files and, to
//! show that each check can fail, on doctored copies and on a service that no file knows.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use clap::CommandFactory;
use serde_norway::Value;
use shared::topics::Topic;
use shared::topology::{Service, INVENTORY, ORDER, PAYMENT, QUERY, SERVICES, SHIPPING};

/// What one file lacks for one service.
#[derive(Debug)]
struct Miss {
    file: String,
    service: &'static str,
    needs: String,
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} needs {}", self.file, self.service, self.needs)
    }
}

/// Given a file and a service, what the file lacks for it.
type Check = fn(&str, &Service) -> Vec<String>;

/// The files that list every service, with what each must hold for one.
const FILES: &[(&str, Check)] = &[
    ("Cargo.toml", workspace_manifest),
    ("tests/Cargo.toml", e2e_manifest),
    ("tests/src/lib.rs", e2e_harness),
    ("docker-compose.yml", compose),
    ("docker/postgres/initdb/10-sagashop.sh", init_script),
    ("docker/kafka/create-topics.sh", create_topics),
    ("docker/kafka/start-kafka.sh", kafka_users),
    ("docker/kafka/set-acls.sh", kafka_acls),
    ("Dockerfile", dockerfile),
    ("docker/prometheus/prometheus.yml", prometheus),
    ("docker/gateway/nginx.conf", nginx),
    ("docker/grafana/dashboards/sagashop.json", grafana),
    (".github/workflows/ci.yml", github_workflow),
    ("scripts/compose-smoke.sh", smoke_script),
    ("README.md", readme),
    ("docs/DOCKER.md", docker_docs),
];

/// Everything the files that `read` returns (path relative to the workspace root -> contents,
/// `None` when there is no such file) lack for `services`.
fn misses(services: &[Service], read: &dyn Fn(&str) -> Option<String>) -> Vec<Miss> {
    let mut misses = Vec::new();
    for service in services {
        let own_files: [(String, Check, bool); 2] = [
            (
                format!("services/{}/Cargo.toml", service.name),
                service_manifest,
                true,
            ),
            (
                format!("services/{}/src/startup.rs", service.name),
                subscriptions,
                true,
            ),
        ];
        let shared_files = FILES
            .iter()
            .map(|(path, check)| (path.to_string(), *check, true));
        for (file, check, required) in shared_files.chain(own_files) {
            let needs = match read(&file) {
                Some(text) => check(&text, service),
                None if required => vec!["this file, which is missing".to_owned()],
                None => Vec::new(),
            };
            misses.extend(needs.into_iter().map(|needs| Miss {
                file: file.clone(),
                service: service.name,
                needs,
            }));
        }
    }
    misses
}

fn workspace_manifest(text: &str, service: &Service) -> Vec<String> {
    let member = format!("services/{}", service.name);
    let dependency = format!("{} = {{ path = \"{member}\" }}", service.package);
    let mut needs = Vec::new();
    if !quoted_list(text, "members = [").contains(&member) {
        needs.push(format!("\"{member}\" in [workspace] members"));
    }
    if !text.lines().any(|line| line.trim() == dependency) {
        needs.push(format!("`{dependency}` in [workspace.dependencies]"));
    }
    needs
}

fn e2e_manifest(text: &str, service: &Service) -> Vec<String> {
    let dependency = format!("{}.workspace = true", service.package);
    match text.lines().any(|line| line.trim() == dependency) {
        true => Vec::new(),
        false => vec![format!(
            "the dependency `{dependency}` (the e2e harness starts it)"
        )],
    }
}

/// The in-process e2e harness starts every service (the start-up is typed, so written per
/// service).
fn e2e_harness(text: &str, service: &Service) -> Vec<String> {
    let start = format!("{}::Application::build(", service.package.replace('-', "_"));
    match text.contains(&start) {
        true => Vec::new(),
        false => vec![format!("to start it (`{start}...`)")],
    }
}

fn service_manifest(text: &str, service: &Service) -> Vec<String> {
    let name = format!("name = \"{}\"", service.package);
    let in_package = text
        .lines()
        .skip_while(|line| line.trim() != "[package]")
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .any(|line| line.trim() == name);
    match in_package {
        true => Vec::new(),
        false => vec![format!("`{name}` in [package]")],
    }
}

/// startup.rs subscribes to what the topology declares for the service, not a list of its own.
fn subscriptions(text: &str, service: &Service) -> Vec<String> {
    let declared = format!("topology::{}.consumes", service.name.to_uppercase());
    match text.contains(&declared) {
        true => Vec::new(),
        false => vec![format!("to subscribe to `{declared}`")],
    }
}

fn compose(text: &str, service: &Service) -> Vec<String> {
    let compose = match yaml(text) {
        Ok(compose) => compose,
        Err(error) => return vec![error],
    };
    let services = &compose["services"];
    let port = service.http_port.to_string();
    let mut needs = Vec::new();
    match services.get(service.name) {
        None => needs.push(format!("a service `{}`", service.name)),
        Some(entry) => {
            if scalar(&entry["build"]["args"]["SERVICE"]) != service.package {
                needs.push(format!("build argument SERVICE: {}", service.package));
            }
            let environment = environment(entry);
            if environment.get("HTTP_PORT") != Some(&port) {
                needs.push(format!("HTTP_PORT: {port} in its environment"));
            }
            let database = environment
                .get("DATABASE_URL")
                .and_then(|url| url.rsplit_once('/'))
                .and_then(|(_, database)| database.split('?').next());
            if database != Some(service.database) {
                needs.push(format!(
                    "a DATABASE_URL naming database {} in its environment",
                    service.database
                ));
            }
            let upper = service.name.to_uppercase();
            for (variable, role, password) in [
                (
                    "DATABASE_URL",
                    service.runtime_role(),
                    format!("{upper}_DB_PASSWORD"),
                ),
                (
                    "DATABASE_MIGRATION_URL",
                    service.owner_role(),
                    format!("{upper}_DB_OWNER_PASSWORD"),
                ),
            ] {
                let expected = format!(
                    "postgres://{role}:${{{password}:?set it in .env}}@postgres:5432/{}",
                    service.database
                );
                if environment.get(variable) != Some(&expected) {
                    needs.push(format!("{variable}: {expected}"));
                }
            }
            let user = service.kafka_user().to_owned();
            let password = format!("${{{upper}_KAFKA_PASSWORD:?set it in .env}}");
            for (variable, value) in [
                ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext".to_owned()),
                ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
                ("KAFKA_SASL_USERNAME", user),
                ("KAFKA_SASL_PASSWORD", password),
            ] {
                if environment.get(variable) != Some(&value) {
                    needs.push(format!("{variable}: {value} in its environment"));
                }
            }
        }
    }
    let upper = service.name.to_uppercase();
    for (infrastructure, password) in [
        ("postgres", format!("{upper}_DB_PASSWORD")),
        ("postgres", format!("{upper}_DB_OWNER_PASSWORD")),
        ("kafka", format!("{upper}_KAFKA_PASSWORD")),
    ] {
        let expected = format!("${{{password}:?set it in .env}}");
        if environment_of(services, infrastructure).get(&password) != Some(&expected) {
            needs.push(format!(
                "{password}: {expected} in the {infrastructure} service's environment (its start-up script reads it)"
            ));
        }
    }
    let gateway = &services["gateway"];
    let published = gateway["ports"].as_sequence().is_some_and(|ports| {
        ports.iter().any(|mapping| {
            let mapping = scalar(mapping);
            let parts: Vec<&str> = mapping.rsplitn(3, ':').collect();
            parts.len() >= 2 && parts[0] == port && parts[1] == port
        })
    });
    if !published {
        needs.push(format!("gateway port \"127.0.0.1:{port}:{port}\""));
    }
    if gateway["depends_on"].get(service.name).is_none() {
        needs.push(format!("gateway depends_on {}", service.name));
    }
    needs
}

fn init_script(text: &str, service: &Service) -> Vec<String> {
    let upper = service.name.to_uppercase();
    let call = format!(
        "create_service_database {} {} \"${{{upper}_DB_OWNER_PASSWORD:?}}\" {} \"${{{upper}_DB_PASSWORD:?}}\"",
        service.database,
        service.owner_role(),
        service.runtime_role(),
    );
    let calls = logical_lines(text)
        .iter()
        .any(|line| line.split_whitespace().collect::<Vec<_>>().join(" ") == call);
    match calls {
        true => Vec::new(),
        false => vec![format!("`{call}`")],
    }
}

/// The broker's start-up script creates the service's SCRAM user with its own password.
fn kafka_users(text: &str, service: &Service) -> Vec<String> {
    let add = format!(
        "--add-scram \"$(scram {} \"${{{}_KAFKA_PASSWORD:?}}\")\"",
        service.kafka_user(),
        service.name.to_uppercase()
    );
    match text
        .lines()
        .any(|line| line.trim().trim_end_matches('\\').trim() == add)
    {
        true => Vec::new(),
        false => vec![format!("`{add}`")],
    }
}

/// The ACLs let the service write its own topic and dead-letter topic, and read what it
/// consumes in its group: exactly the topology's lists.
fn kafka_acls(text: &str, service: &Service) -> Vec<String> {
    let writes = owned_topics(service)
        .into_iter()
        .chain(
            service
                .publishes_state
                .iter()
                .map(|topic| topic.base_name().to_owned()),
        )
        .collect::<Vec<_>>()
        .join(",");
    let reads: Vec<&str> = service
        .consumes
        .iter()
        .map(|topic| topic.base_name())
        .chain(service.replicates.iter().map(|topic| topic.base_name()))
        .collect();
    let grant = format!(
        "grant_service {} {} {writes} {}",
        service.kafka_user(),
        service.group_id,
        reads.join(",")
    );
    let prefix = format!("grant_service {} ", service.kafka_user());
    let granted: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .collect();
    match granted[..] {
        [line] if line.trim() == grant => Vec::new(),
        _ => vec![format!("exactly one `{grant}`")],
    }
}

fn create_topics(text: &str, service: &Service) -> Vec<String> {
    let mut needs = Vec::new();
    let event_topic = service
        .owns
        .map(|topic| ("event_topics=(", topic.base_name().to_owned()));
    let dead_letters = ("dlq_topics=(", service.dead_letter_topic(""));
    let states = service
        .publishes_state
        .iter()
        .map(|topic| ("state_topics=(", topic.base_name().to_owned()));
    for (array, topic) in event_topic.into_iter().chain([dead_letters]).chain(states) {
        let listed = text
            .lines()
            .find_map(|line| line.trim().strip_prefix(array))
            .is_some_and(|rest| {
                rest.trim_end_matches(')')
                    .split_whitespace()
                    .any(|word| word == topic)
            });
        if !listed {
            needs.push(format!("{topic} in {array}...)"));
        }
    }
    needs
}

fn dockerfile(text: &str, service: &Service) -> Vec<String> {
    let lines = logical_lines(text);
    let mut needs = Vec::new();
    for command in ["cargo chef cook", "cargo build"] {
        let selects = lines
            .iter()
            .filter(|line| line.starts_with("RUN ") && line.contains(command))
            .any(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                words.windows(2).any(|w| w == ["-p", service.package])
            });
        if !selects {
            needs.push(format!("`-p {}` in `{command}`", service.package));
        }
    }
    let binary = format!("target/release/{}", service.package);
    let copied = lines
        .iter()
        .filter(|line| line.starts_with("RUN ") && line.contains("cp "))
        .any(|line| line.split_whitespace().any(|word| word == binary));
    if !copied {
        needs.push(format!("{binary} copied out of the build (`cp ... /out/`)"));
    }
    let hint = lines
        .iter()
        .find_map(|line| Some(line.split_once("--build-arg SERVICE=<")?.1))
        .map(|rest| &rest[..rest.find('>').unwrap_or(rest.len())])
        .unwrap_or_default();
    if !hint.split('|').any(|package| package == service.package) {
        needs.push(format!(
            "{} in the hint `--build-arg SERVICE=<...>`",
            service.package
        ));
    }
    needs
}

fn prometheus(text: &str, service: &Service) -> Vec<String> {
    let prometheus = match yaml(text) {
        Ok(prometheus) => prometheus,
        Err(error) => return vec![error],
    };
    let job = prometheus["scrape_configs"].as_sequence().and_then(|jobs| {
        jobs.iter()
            .find(|job| scalar(&job["job_name"]) == service.name)
    });
    let Some(job) = job else {
        return vec![format!("a scrape job `{}`", service.name)];
    };
    let sd = &job["dns_sd_configs"][0];
    let names = sd["names"].as_sequence().cloned().unwrap_or_default();
    match names.iter().any(|name| scalar(name) == service.name)
        && scalar(&sd["port"]) == service.http_port.to_string()
    {
        true => Vec::new(),
        false => vec![format!(
            "dns_sd_configs names [{}], port {} in job {}",
            service.name, service.http_port, service.name
        )],
    }
}

fn nginx(text: &str, service: &Service) -> Vec<String> {
    let listen = format!("listen {};", service.http_port);
    let upstream = format!("set $upstream {}:{};", service.name, service.http_port);
    match text
        .split("server {")
        .any(|block| block.contains(&listen) && block.contains(&upstream))
    {
        true => Vec::new(),
        false => vec![format!("a server block with `{listen}` and `{upstream}`")],
    }
}

/// Every `job=~"a|b"` selector of the dashboard's queries names the service.
fn grafana(text: &str, service: &Service) -> Vec<String> {
    let dashboard: serde_json::Value = match serde_json::from_str(text) {
        Ok(dashboard) => dashboard,
        Err(error) => return vec![format!("valid JSON ({error})")],
    };
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    let mut needs: Vec<String> = expressions
        .iter()
        .flat_map(|expression| expression.split("job=~\"").skip(1))
        .map(|rest| &rest[..rest.find('"').unwrap_or(rest.len())])
        .filter(|jobs| !jobs.split('|').any(|job| job == service.name))
        .map(|jobs| format!("`{}` in job=~\"{jobs}\"", service.name))
        .collect();
    needs.dedup();
    needs
}

fn collect_expressions(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expression)) => {
                        into.push(expression.clone())
                    }
                    _ => collect_expressions(value, into),
                }
            }
        }
        serde_json::Value::Array(values) => values
            .iter()
            .for_each(|value| collect_expressions(value, into)),
        _ => {}
    }
}

/// The replicas run of the compose smoke test (`SMOKE_SCALE`) scales every service.
fn github_workflow(text: &str, service: &Service) -> Vec<String> {
    let workflow = match yaml(text) {
        Ok(workflow) => workflow,
        Err(error) => return vec![error],
    };
    let mut scales = Vec::new();
    collect_values(&workflow, "SMOKE_SCALE", &mut scales);
    let prefix = format!("{}=", service.name);
    scales
        .iter()
        .filter(|scale| {
            !scale
                .split_whitespace()
                .any(|item| item.starts_with(&prefix))
        })
        .map(|scale| format!("{prefix}N in SMOKE_SCALE \"{scale}\""))
        .collect()
}

fn collect_values(value: &Value, key: &str, into: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                match scalar(k) == key {
                    true => into.push(scalar(v)),
                    false => collect_values(v, key, into),
                }
            }
        }
        Value::Sequence(values) => values.iter().for_each(|v| collect_values(v, key, into)),
        _ => {}
    }
}

fn smoke_script(text: &str, service: &Service) -> Vec<String> {
    let variable = format!("{}_URL", service.name.to_uppercase());
    let default = format!(
        "{variable}=\"${{{variable}:-http://127.0.0.1:{}}}\"",
        service.http_port
    );
    let lines = logical_lines(text);
    let words_of = |start: &str| -> Vec<String> {
        lines
            .iter()
            .find_map(|line| line.strip_prefix(start))
            .map(|rest| {
                let rest = &rest[..rest.find("; do").unwrap_or(rest.len())];
                rest.split_whitespace().map(str::to_owned).collect()
            })
            .unwrap_or_default()
    };
    let mut needs = Vec::new();
    if !lines.contains(&default) {
        needs.push(format!("`{default}`"));
    }
    if !words_of("for url in ").contains(&format!("\"${variable}\"")) {
        needs.push(format!(
            "\"${variable}\" in `for url in ...` (the health checks)"
        ));
    }
    let topics = words_of("for topic in ");
    for topic in owned_topics(service) {
        if !topics.contains(&topic) {
            needs.push(format!("{topic} in `for topic in ...`"));
        }
    }
    needs
}

fn readme(text: &str, service: &Service) -> Vec<String> {
    let mut needs = Vec::new();
    let ports = paragraphs(text)
        .into_iter()
        .find_map(|paragraph| Some(paragraph.split_once("Service ports:")?.1.to_owned()))
        .unwrap_or_default();
    let entry = format!("{} {}", service.name, service.http_port);
    if !ports.split([',', '(']).any(|item| item.trim() == entry) {
        needs.push(format!("`{entry}` in \"Service ports: ...\""));
    }
    let database = format!("`{}`", service.database);
    if !text.contains(&database) {
        needs.push(format!(
            "{database} among the databases `cargo xtask up` creates"
        ));
    }
    let topic = service.owns.map(|topic| format!("`{}`", topic.base_name()));
    let owner_row = text.lines().any(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        cells.len() > 2 && topic.as_deref() == Some(cells[1]) && cells[2] == service.name
    });
    if let Some(topic) = topic.filter(|_| !owner_row) {
        needs.push(format!(
            "a topic table row `| {topic} | {} |`",
            service.name
        ));
    }
    let config_row = text
        .lines()
        .find(|line| line.starts_with("| `HTTP_HOST`, `HTTP_PORT` |"))
        .unwrap_or_default();
    if !config_row
        .split(['/', ' ', '|'])
        .any(|word| word == service.http_port.to_string())
    {
        needs.push(format!(
            "{} among the defaults of `HTTP_HOST`, `HTTP_PORT` (Configuration)",
            service.http_port
        ));
    }
    needs
}

fn docker_docs(text: &str, service: &Service) -> Vec<String> {
    let rows: Vec<&str> = text.lines().filter(|line| line.starts_with('|')).collect();
    let mut needs = Vec::new();
    let port_row = format!("| {} | {} service |", service.http_port, service.name);
    if !rows.iter().any(|row| row.starts_with(&port_row)) {
        needs.push(format!("the Ports row `{port_row} ...`"));
    }
    let database_row = format!("| `{}` |", service.database);
    if !rows.iter().any(|row| row.starts_with(&database_row)) {
        needs.push(format!("the Databases row `{database_row} ...`"));
    }
    for topic in owned_topics(service) {
        if !rows.iter().any(|row| row.contains(&format!("`{topic}`"))) {
            needs.push(format!("`{topic}` in the Topics table"));
        }
    }
    needs
}

/// The topics a service writes: the one it owns (if any) and its dead-letter topic.
fn owned_topics(service: &Service) -> Vec<String> {
    service
        .owns
        .map(|topic| topic.base_name().to_owned())
        .into_iter()
        .chain([service.dead_letter_topic("")])
        .collect()
}

/// The quoted strings of the list that starts on the line beginning with `start`.
fn quoted_list(text: &str, start: &str) -> Vec<String> {
    let Some(begin) = text.find(start) else {
        return Vec::new();
    };
    let list = &text[begin + start.len()..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Lines with `\` continuations joined, trimmed, without comments and blank lines.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                lines.push(std::mem::take(&mut current));
            }
        }
    }
    lines
}

/// Markdown paragraphs, each on one line.
fn paragraphs(text: &str) -> Vec<String> {
    text.split("\n\n")
        .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn yaml(text: &str) -> Result<Value, String> {
    let mut value: Value =
        serde_norway::from_str(text).map_err(|error| format!("valid YAML ({error})"))?;
    value
        .apply_merge()
        .map_err(|error| format!("valid << merge keys ({error})"))?;
    Ok(value)
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        _ => String::new(),
    }
}

/// A compose service's `environment`, in map or `KEY=value` list form.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Value::Sequence(list) => list
            .iter()
            .map(|entry| {
                let entry = scalar(entry);
                let (key, value) = entry.split_once('=').unwrap_or((&entry, ""));
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn environment_of(services: &Value, name: &str) -> BTreeMap<String, String> {
    environment(&services[name])
}

fn read_real(relative: &str) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    std::fs::read_to_string(root.join(relative)).ok()
}

fn real(relative: &str) -> String {
    read_real(relative).unwrap_or_else(|| panic!("{relative} is missing"))
}

fn shown(misses: &[Miss]) -> Vec<String> {
    misses.iter().map(Miss::to_string).collect()
}

#[test]
fn every_file_lists_every_service_of_the_topology() {
    let misses = misses(SERVICES, &read_real);
    assert!(
        misses.is_empty(),
        "files that do not list every service of shared::topology (README.md, \"Adding a service\"):\n  {}",
        shown(&misses).join("\n  ")
    );
}

/// A service that no file knows yet: every file misses it.
#[test]
fn a_service_no_file_knows_is_missed_by_every_file() {
    const UNKNOWN: Service = Service {
        name: "loyalty",
        package: "loyalty-service",
        http_port: 8089,
        owns: Some(Topic::Order),
        consumes: &[Topic::Order],
        database: "sagashop_loyalty",
        group_id: "loyalty-service",
        publishes_state: &[],
        replicates: &[],
    };
    let misses = misses(&[UNKNOWN], &read_real);
    let mut files: Vec<&str> = misses.iter().map(|miss| miss.file.as_str()).collect();
    files.dedup();
    let mut expected: Vec<&str> = FILES.iter().map(|(file, _)| *file).collect();
    expected.extend([
        "services/loyalty/Cargo.toml",
        "services/loyalty/src/startup.rs",
    ]);
    assert_eq!(files, expected, "{:#?}", shown(&misses));
    assert!(misses.iter().all(|miss| miss.service == "loyalty"));
    assert!(shown(&misses)
        .contains(&"docker-compose.yml: loyalty needs a service `loyalty`".to_owned()));
}

/// The misses of the real files with `file` replaced by `doctored` (`None`: deleted).
fn misses_with(file: &str, doctored: Option<String>) -> Vec<String> {
    let read = |path: &str| match path == file {
        true => doctored.clone(),
        false => read_real(path),
    };
    shown(&misses(SERVICES, &read))
}

fn without_lines(file: &str, unwanted: &str) -> Option<String> {
    let text = real(file);
    assert!(text.contains(unwanted), "{file} has no {unwanted:?}");
    Some(
        text.lines()
            .filter(|line| !line.contains(unwanted))
            .map(|line| format!("{line}\n"))
            .collect(),
    )
}

#[test]
fn a_service_taken_out_of_one_file_is_named_with_that_file() {
    assert_eq!(
        misses_with(
            "Cargo.toml",
            without_lines("Cargo.toml", "\"services/payment\",")
        ),
        ["Cargo.toml: payment needs \"services/payment\" in [workspace] members"]
    );
    assert_eq!(
        misses_with(
            "tests/src/lib.rs",
            Some(real("tests/src/lib.rs").replace("payment_service::Application::build(", "payment_service::router("))
        ),
        ["tests/src/lib.rs: payment needs to start it (`payment_service::Application::build(...`)"]
    );
    assert_eq!(
        misses_with("Dockerfile", without_lines("Dockerfile", "target/release/shipping-service")),
        ["Dockerfile: shipping needs target/release/shipping-service copied out of the build (`cp ... /out/`)"]
    );
    assert_eq!(
        misses_with(
            "docker/gateway/nginx.conf",
            without_lines("docker/gateway/nginx.conf", "set $upstream inventory:8083;")
        ),
        ["docker/gateway/nginx.conf: inventory needs a server block with `listen 8083;` and `set $upstream inventory:8083;`"]
    );
    assert_eq!(
        misses_with(
            "docker/postgres/initdb/10-sagashop.sh",
            without_lines("docker/postgres/initdb/10-sagashop.sh", "create_service_database sagashop_order ")
        ),
        ["docker/postgres/initdb/10-sagashop.sh: order needs `create_service_database sagashop_order order_owner \"${ORDER_DB_OWNER_PASSWORD:?}\" order_service \"${ORDER_DB_PASSWORD:?}\"`"]
    );
    assert_eq!(
        misses_with(
            "docker/kafka/set-acls.sh",
            Some(real("docker/kafka/set-acls.sh").replace(
                "payment.events,payment-service.dlq inventory.events,order.events",
                "payment.events,payment-service.dlq,order.events inventory.events,order.events"
            ))
        ),
        ["docker/kafka/set-acls.sh: payment needs exactly one `grant_service payment-service payment-service payment.events,payment-service.dlq inventory.events,order.events`"]
    );
    assert_eq!(
        misses_with(
            "docker/kafka/set-acls.sh",
            Some(real("docker/kafka/set-acls.sh").replace(
                "order-service.dlq inventory.events,payment.events,shipping.events,inventory.products",
                "order-service.dlq inventory.events,payment.events,shipping.events"
            ))
        ),
        ["docker/kafka/set-acls.sh: order needs exactly one `grant_service order-service order-service order.events,order-service.dlq inventory.events,payment.events,shipping.events,inventory.products`"]
    );
    assert_eq!(
        misses_with(
            "docker/kafka/create-topics.sh",
            without_lines("docker/kafka/create-topics.sh", "state_topics=(inventory.products)")
        ),
        ["docker/kafka/create-topics.sh: inventory needs inventory.products in state_topics=(...)"]
    );
    assert_eq!(
        misses_with(
            "docker/kafka/start-kafka.sh",
            without_lines("docker/kafka/start-kafka.sh", "scram shipping-service")
        ),
        ["docker/kafka/start-kafka.sh: shipping needs `--add-scram \"$(scram shipping-service \"${SHIPPING_KAFKA_PASSWORD:?}\")\"`"]
    );
    assert_eq!(
        misses_with("services/shipping/Cargo.toml", None),
        ["services/shipping/Cargo.toml: shipping needs this file, which is missing"]
    );
    assert_eq!(
        misses_with(
            "services/inventory/src/startup.rs",
            Some(".consumes(topology::ORDER.consumes, InventoryEventHandler)".to_owned())
        ),
        ["services/inventory/src/startup.rs: inventory needs to subscribe to `topology::INVENTORY.consumes`"]
    );
}

/// YAML copies with a service's entry or one of its values taken out.
#[test]
fn a_service_taken_out_of_a_yaml_file_is_named_with_that_file() {
    let doctored = |file: &str, edit: &dyn Fn(&mut Value)| {
        let mut value = yaml(&real(file)).expect("the real file parses");
        edit(&mut value);
        misses_with(file, Some(serde_norway::to_string(&value).unwrap()))
    };
    let remove = |value: &mut Value, key: &str| {
        value.as_mapping_mut().expect("a mapping").remove(key);
    };
    assert_eq!(
        doctored("docker-compose.yml", &|compose| remove(
            &mut compose["services"],
            "payment"
        )),
        ["docker-compose.yml: payment needs a service `payment`"]
    );
    assert_eq!(
        doctored("docker-compose.yml", &|compose| remove(
            &mut compose["services"]["shipping"]["environment"],
            "DATABASE_URL"
        )),
        [
            "docker-compose.yml: shipping needs a DATABASE_URL naming database sagashop_shipping in its environment",
            "docker-compose.yml: shipping needs DATABASE_URL: postgres://shipping_service:${SHIPPING_DB_PASSWORD:?set it in .env}@postgres:5432/sagashop_shipping",
        ]
    );
    assert_eq!(
        doctored("docker-compose.yml", &|compose| remove(
            &mut compose["services"]["gateway"]["depends_on"],
            "order"
        )),
        ["docker-compose.yml: order needs gateway depends_on order"]
    );
    assert_eq!(
        doctored("docker/prometheus/prometheus.yml", &|prometheus| {
            let jobs = prometheus["scrape_configs"].as_sequence_mut().unwrap();
            jobs.retain(|job| job["job_name"] != "inventory");
        }),
        ["docker/prometheus/prometheus.yml: inventory needs a scrape job `inventory`"]
    );
}

#[test]
fn a_service_missing_from_a_dashboard_selector_or_the_readme_is_named() {
    assert_eq!(
        misses_with(
            "docker/grafana/dashboards/sagashop.json",
            Some(real("docker/grafana/dashboards/sagashop.json").replace(
                "job=~\\\"order|payment|inventory|shipping|query\\\"}[1h]",
                "job=~\\\"order|payment|inventory|query\\\"}[1h]"
            ))
        ),
        ["docker/grafana/dashboards/sagashop.json: shipping needs `shipping` in job=~\"order|payment|inventory|query\""]
    );
    assert_eq!(
        misses_with(
            "README.md",
            Some(real("README.md").replace(" payment 8082,", ""))
        ),
        ["README.md: payment needs `payment 8082` in \"Service ports: ...\""]
    );
}

/// The crates under services/ say the same as the topology: the name they give the plumbing
/// (from which `shared::service` derives the consumer group and the dead-letter topic), the
/// command name, and the default HTTP port.
#[test]
fn the_service_crates_agree_with_the_topology() {
    let crates = [
        (
            &ORDER,
            order_service::SERVICE,
            order_service::Config::command(),
        ),
        (
            &PAYMENT,
            payment_service::SERVICE,
            payment_service::Config::command(),
        ),
        (
            &INVENTORY,
            inventory_service::SERVICE,
            inventory_service::Config::command(),
        ),
        (
            &SHIPPING,
            shipping_service::SERVICE,
            shipping_service::Config::command(),
        ),
        (
            &QUERY,
            query_service::SERVICE,
            query_service::Config::command(),
        ),
    ];
    let names: Vec<&str> = crates.iter().map(|(service, ..)| service.name).collect();
    let declared: Vec<&str> = SERVICES.iter().map(|service| service.name).collect();
    assert_eq!(
        names, declared,
        "tests/tests/topology.rs (this test) lists a crate per service of the topology"
    );
    for (service, name, command) in crates {
        assert_eq!(name, service.name, "{}::SERVICE", service.package);
        assert_eq!(command.get_name(), service.package);
        let default_port = command
            .get_arguments()
            .find(|argument| argument.get_id() == "http_port")
            .and_then(|argument| argument.get_default_values().first().cloned())
            .map(|port| port.to_string_lossy().into_owned());
        assert_eq!(
            default_port,
            Some(service.http_port.to_string()),
            "{}: the default HTTP_PORT",
            service.package
        );
    }
}
