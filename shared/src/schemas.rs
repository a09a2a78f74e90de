//! The published JSON Schemas of the event contracts (`schemas/<subject>/v<N>.json`), generated
//! from the Rust payload types, and the gate that keeps them evolvable the way Confluent Schema
//! Registry defines it for JSON Schema: a published version never changes, never disappears, and
//! each new version can read every earlier one (BACKWARD_TRANSITIVE by default).
//!
//! The schemas describe the open content model readers use (unknown fields are ignored), so none
//! says `additionalProperties: false`. They are the wire shape only: doc comments stay in Rust
//! and nested types are inlined, so fixing a comment or renaming a Rust type never changes a
//! published file.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;

use crate::envelope::EventPayload;
use crate::events::*;
use crate::state::{ProductState, StateRecord};

/// Every record type of the state topics, at every version still read.
pub(crate) fn state_schemas() -> Vec<EventSchema> {
    vec![EventSchema::of_state::<ProductState>()]
}

/// Where the schemas live, relative to the workspace root.
pub const SCHEMAS_DIR: &str = "schemas";

/// The JSON Schema of every event version this build reads, from the Rust types: the current
/// version of each event and every older one still upcast (`shared::events`), and every
/// record of the state topics (`shared::state`), by type.
pub fn generated() -> Vec<EventSchema> {
    let mut schemas = Event::current_schemas();
    schemas.extend(older_schemas());
    schemas.extend(state_schemas());
    schemas.sort_by_key(|schema| schema.event_type);
    schemas
}

pub use crate::events::split_type;

fn parse_version(digits: &str) -> Option<u32> {
    let canonical = digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
    digits.parse().ok().filter(|_| canonical)
}

/// The generated schema of one event version.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSchema {
    /// The versioned event type, e.g. `payment.charged.v1`.
    pub event_type: &'static str,
    pub schema: Value,
}

impl EventSchema {
    pub(crate) fn of<P: EventPayload + schemars::JsonSchema>() -> Self {
        Self::of_type::<P>(P::TYPE)
    }

    /// The schema of a state topic's record (`shared::state`).
    pub(crate) fn of_state<R: StateRecord>() -> Self {
        Self::of_type::<R>(R::TYPE)
    }

    fn of_type<P: schemars::JsonSchema>(event_type: &'static str) -> Self {
        let generator = schemars::generate::SchemaSettings::draft2020_12()
            .with(|settings| settings.inline_subschemas = true)
            .into_generator();
        let mut schema = generator.into_root_schema_for::<P>().to_value();
        normalize(&mut schema);
        schema["title"] = event_type.into();
        Self {
            event_type,
            schema: sort_keys(schema),
        }
    }

    /// The file's contents: pretty JSON with keys in a stable order and a trailing newline.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(&self.schema).expect("a Value serializes");
        json.push('\n');
        json
    }
}

/// `schemas/<subject>/v<N>.json`, relative to the workspace root.
pub fn schema_path(subject: &str, version: u32) -> PathBuf {
    Path::new(SCHEMAS_DIR)
        .join(subject)
        .join(format!("v{version}.json"))
}

/// Which earlier versions of a subject its newest version must be able to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The one before it.
    Backward,
    /// Every earlier one: consumers must read every version still on the topics.
    #[default]
    BackwardTransitive,
    /// None (the other rules still hold).
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::None => "NONE",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    /// `BACKWARD`, `BACKWARD_TRANSITIVE` or `NONE`, in any case, `-` for `_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.to_ascii_uppercase().replace('-', "_");
        [Self::Backward, Self::BackwardTransitive, Self::None]
            .into_iter()
            .find(|mode| mode.as_str() == wanted)
            .ok_or_else(|| format!("unknown mode {s:?}: BACKWARD, BACKWARD_TRANSITIVE or NONE"))
    }
}

/// A rule of BACKWARD compatibility that a newer schema breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    RequiredFieldAdded,
    RequiredFieldRemoved,
    OptionalMadeRequired,
    TypeChanged {
        from: String,
        to: String,
    },
    EnumValuesRemoved(Vec<String>),
    /// Any value of its type was accepted; now only an enum of values is.
    RestrictedToEnum,
    FormatChanged {
        from: Option<String>,
        to: String,
    },
    /// `additionalProperties: false` where extra fields were accepted before.
    ContentModelClosed,
    /// An optional field is gone and fields not listed are rejected, so data that has it is too.
    FieldRemovedFromClosedModel,
    /// Any value was accepted; now only some are.
    Restricted,
    UnresolvedRef(String),
    /// A keyword the check does not analyse was added or changed.
    UncheckedKeyword(String),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RequiredFieldAdded => f.write_str("required field added"),
            Self::RequiredFieldRemoved => f.write_str("required field removed"),
            Self::OptionalMadeRequired => f.write_str("optional field made required"),
            Self::TypeChanged { from, to } => write!(f, "type changed from {from} to {to}"),
            Self::EnumValuesRemoved(values) => {
                write!(f, "enum values removed: {}", values.join(", "))
            }
            Self::RestrictedToEnum => f.write_str("any value was accepted, now only an enum"),
            Self::FormatChanged { from: None, to } => write!(f, "format {to} added"),
            Self::FormatChanged {
                from: Some(from),
                to,
            } => {
                write!(f, "format changed from {from} to {to}")
            }
            Self::ContentModelClosed => f.write_str("additional properties no longer allowed"),
            Self::FieldRemovedFromClosedModel => {
                f.write_str("field removed while additional properties are not allowed")
            }
            Self::Restricted => f.write_str("any value was accepted, now only some are"),
            Self::UnresolvedRef(reference) => write!(f, "$ref {reference} does not resolve"),
            Self::UncheckedKeyword(keyword) => write!(
                f,
                "`{keyword}` added or changed (not analysed, so taken as breaking)"
            ),
        }
    }
}

/// Where a newer schema cannot read what an older one accepted: the JSON path of the field
/// (`/items/*/sku`; `*` is any array element or map value) and the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub rule: Rule,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "the payload: {}", self.rule)
        } else {
            write!(f, "field {}: {}", self.path, self.rule)
        }
    }
}

/// A violation found between two versions of a subject under a mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    pub subject: String,
    pub newer: u32,
    pub older: u32,
    pub mode: Mode,
    pub violation: Violation,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} breaks {} against v{}: {}",
            self.subject, self.newer, self.mode, self.older, self.violation
        )
    }
}

/// BACKWARD compatibility of one pair: everything in `newer` (the reader) that cannot read data
/// valid under `older`. A field may be added only as optional; nothing required may be removed;
/// no field may change type (removing enum values included; adding them is fine); a field
/// optional before must not become required. Checked recursively through nested objects,
/// arrays' `items`, `$ref`s into `$defs`/`definitions`, and `oneOf`/`anyOf` (enums of strings
/// included). An empty list means compatible.
pub fn check_compatibility(older: &Value, newer: &Value) -> Vec<Violation> {
    let mut checker = Checker {
        older_root: older,
        newer_root: newer,
        visiting: HashSet::new(),
        found: Vec::new(),
    };
    checker.compare(older, newer, "");
    checker.found
}

/// The newest of a subject's versions checked against the earlier ones `mode` names (older
/// versions were checked when they were the newest, and published files never change).
pub fn check_subject(
    subject: &str,
    versions: &BTreeMap<u32, Value>,
    mode: Mode,
) -> Vec<Incompatibility> {
    let Some((&newest, newer)) = versions.last_key_value() else {
        return Vec::new();
    };
    let earlier = versions.range(..newest).rev();
    let against: Vec<_> = match mode {
        Mode::Backward => earlier.take(1).collect(),
        Mode::BackwardTransitive => earlier.collect(),
        Mode::None => Vec::new(),
    };
    let mut found = Vec::new();
    for (&older, older_schema) in against.into_iter().rev() {
        found.extend(
            check_compatibility(older_schema, newer)
                .into_iter()
                .map(|violation| Incompatibility {
                    subject: subject.to_owned(),
                    newer: newest,
                    older,
                    mode,
                    violation,
                }),
        );
    }
    found
}

/// Why the committed schemas do not match the Rust types, or cannot evolve as they did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A Rust event type whose `TYPE` is not `<subject>.v<N>`.
    BadEventType(String),
    /// Two Rust types with one `TYPE`.
    DuplicateEventType(String),
    NotCommitted {
        event_type: String,
        path: PathBuf,
    },
    /// A published version whose Rust type now generates something else; `next` is the
    /// subject's first free version.
    Changed {
        event_type: String,
        path: PathBuf,
        next: u32,
    },
    NoRustType {
        event_type: String,
        path: PathBuf,
    },
    NotContiguous {
        subject: String,
        missing: Vec<u32>,
    },
    /// Something in `schemas/` that is not `<subject>/v<N>.json`.
    UnexpectedFile(PathBuf),
    /// A file that cannot be read, parsed or written.
    File {
        path: PathBuf,
        error: String,
    },
    Incompatible(Incompatibility),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadEventType(event_type) => write!(
                f,
                "event type {event_type:?} is not <subject>.v<N> (lowercase subject, N from 1)"
            ),
            Self::DuplicateEventType(event_type) => {
                write!(
                    f,
                    "event type {event_type} belongs to more than one Rust type"
                )
            }
            Self::NotCommitted { event_type, path } => write!(
                f,
                "{event_type} is not published: {} is missing (`cargo xtask schemas --write` \
                 writes it; commit it)",
                path.display()
            ),
            Self::Changed {
                event_type,
                path,
                next,
            } => {
                let (subject, version) = split_type(event_type).unwrap_or((event_type, 0));
                write!(
                    f,
                    "the Rust type of {event_type} no longer generates {}: v{version} is \
                     published and may never change; keep that type as it was and publish the \
                     change as v{next}, a new type with TYPE = \"{subject}.v{next}\"",
                    path.display()
                )
            }
            Self::NoRustType { event_type, path } => write!(
                f,
                "{} has no Rust type: readers must keep reading every version ever published; \
                 restore the payload type with TYPE = {event_type:?}",
                path.display()
            ),
            Self::NotContiguous { subject, missing } => {
                let missing: Vec<_> = missing.iter().map(|v| format!("v{v}")).collect();
                write!(
                    f,
                    "{subject}: versions must be contiguous from v1, missing {}",
                    missing.join(", ")
                )
            }
            Self::UnexpectedFile(path) => write!(
                f,
                "{}: not a schema (expected {SCHEMAS_DIR}/<subject>/v<N>.json)",
                path.display()
            ),
            Self::File { path, error } => write!(f, "{}: {error}", path.display()),
            Self::Incompatible(incompatibility) => incompatibility.fmt(f),
        }
    }
}

/// Checks the schemas under `root` (the workspace root) with the default mode,
/// BACKWARD_TRANSITIVE. See [`verify_with`].
pub fn verify(root: &Path) -> Result<(), Vec<Problem>> {
    verify_with(root, Mode::default())
}

/// Checks that (a) every generated schema is committed, byte for byte; (b) every committed
/// schema still has its Rust type; (c) each subject's versions run from 1 without a gap; (d) the
/// newest version of each subject is compatible under `mode` (an unpublished version is checked
/// as generated, so a breaking change shows before it is written).
pub fn verify_with(root: &Path, mode: Mode) -> Result<(), Vec<Problem>> {
    let problems = Catalog::load(root).problems(mode);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Writes the schema files that are missing under `root` and returns their paths (relative to
/// `root`), with the default mode. See [`write_with`].
pub fn write(root: &Path) -> Result<Vec<PathBuf>, Vec<Problem>> {
    write_with(root, Mode::default())
}

/// Writes the schema files that are missing under `root` and returns their paths (relative to
/// `root`). Never overwrites an existing file, and writes nothing while any other problem stands
/// (a changed published version, an incompatible new one, ...): those are the error.
pub fn write_with(root: &Path, mode: Mode) -> Result<Vec<PathBuf>, Vec<Problem>> {
    let catalog = Catalog::load(root);
    let (missing, others): (Vec<_>, Vec<_>) = catalog
        .problems(mode)
        .into_iter()
        .partition(|problem| matches!(problem, Problem::NotCommitted { .. }));
    if !others.is_empty() {
        return Err(others);
    }
    let mut written = Vec::new();
    let mut failed = Vec::new();
    for problem in missing {
        let Problem::NotCommitted { event_type, path } = problem else {
            continue;
        };
        let Some(schema) = catalog
            .generated
            .iter()
            .find(|g| g.event_type == event_type)
        else {
            continue;
        };
        match create_new(&root.join(&path), &schema.to_json()) {
            Ok(()) => written.push(path),
            Err(e) => failed.push(Problem::File {
                path,
                error: format!("cannot write: {e}"),
            }),
        }
    }
    if failed.is_empty() {
        Ok(written)
    } else {
        Err(failed)
    }
}

/// Writes a file that must not exist yet, and its directory.
fn create_new(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
}

/// The generated schemas next to the committed ones.
struct Catalog {
    generated: Vec<EventSchema>,
    /// subject -> version -> file contents.
    committed: BTreeMap<String, BTreeMap<u32, String>>,
    /// Found while reading `schemas/`.
    read_problems: Vec<Problem>,
}

impl Catalog {
    fn load(root: &Path) -> Self {
        let mut read_problems = Vec::new();
        let committed = read_committed(root, &mut read_problems);
        Self {
            generated: generated(),
            committed,
            read_problems,
        }
    }

    fn problems(&self, mode: Mode) -> Vec<Problem> {
        let mut problems = self.read_problems.clone();
        // subject -> version -> (event type, generated schema)
        let mut rust: BTreeMap<&str, BTreeMap<u32, &EventSchema>> = BTreeMap::new();
        for schema in &self.generated {
            let Some((subject, version)) = split_type(schema.event_type) else {
                problems.push(Problem::BadEventType(schema.event_type.to_owned()));
                continue;
            };
            let versions = rust.entry(subject).or_default();
            if versions.insert(version, schema).is_some() {
                problems.push(Problem::DuplicateEventType(schema.event_type.to_owned()));
            }
        }

        // (a) generated => committed, byte for byte.
        for (subject, versions) in &rust {
            let committed = self.committed.get(*subject);
            let newest = versions
                .keys()
                .chain(committed.into_iter().flat_map(BTreeMap::keys))
                .max()
                .copied()
                .unwrap_or(0);
            for (&version, schema) in versions {
                let path = schema_path(subject, version);
                let event_type = schema.event_type.to_owned();
                match committed.and_then(|c| c.get(&version)) {
                    None => problems.push(Problem::NotCommitted { event_type, path }),
                    Some(text) if *text != schema.to_json() => {
                        problems.push(Problem::Changed {
                            event_type,
                            path,
                            next: newest + 1,
                        });
                    }
                    Some(_) => {}
                }
            }
        }

        // (b) committed => generated.
        for (subject, versions) in &self.committed {
            for &version in versions.keys() {
                let has_type = rust
                    .get(subject.as_str())
                    .is_some_and(|r| r.contains_key(&version));
                if !has_type {
                    problems.push(Problem::NoRustType {
                        event_type: format!("{subject}.v{version}"),
                        path: schema_path(subject, version),
                    });
                }
            }
        }

        // (c) and (d), per subject, over every version either side knows.
        let subjects: BTreeSet<&str> = rust
            .keys()
            .copied()
            .chain(self.committed.keys().map(String::as_str))
            .collect();
        for subject in subjects {
            let mut versions: BTreeMap<u32, Value> = BTreeMap::new();
            if let Some(generated) = rust.get(subject) {
                for (&version, schema) in generated {
                    versions.insert(version, schema.schema.clone());
                }
            }
            // What was published wins over what the code generates now.
            for (&version, text) in self.committed.get(subject).into_iter().flatten() {
                match serde_json::from_str(text) {
                    Ok(schema) => {
                        versions.insert(version, schema);
                    }
                    Err(e) => problems.push(Problem::File {
                        path: schema_path(subject, version),
                        error: format!("not JSON: {e}"),
                    }),
                }
            }
            let newest = versions.keys().next_back().copied().unwrap_or(0);
            let missing: Vec<u32> = (1..newest).filter(|v| !versions.contains_key(v)).collect();
            if !missing.is_empty() {
                problems.push(Problem::NotContiguous {
                    subject: subject.to_owned(),
                    missing,
                });
            }
            problems.extend(
                check_subject(subject, &versions, mode)
                    .into_iter()
                    .map(Problem::Incompatible),
            );
        }
        problems
    }
}

/// `schemas/<subject>/v<N>.json` under `root`; a missing `schemas/` is an empty one.
fn read_committed(
    root: &Path,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, BTreeMap<u32, String>> {
    let mut committed: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    let dir = Path::new(SCHEMAS_DIR);
    let file_error = |path: &Path, e: std::io::Error| Problem::File {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let subjects = match sorted_entries(&root.join(dir)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return committed,
        Err(e) => {
            problems.push(file_error(dir, e));
            return committed;
        }
    };
    for subject in subjects {
        let subject_dir = dir.join(&subject);
        let valid_subject = split_type(&format!("{subject}.v1")).is_some();
        let files = match sorted_entries(&root.join(&subject_dir)) {
            Ok(files) if valid_subject => files,
            Ok(_) => {
                problems.push(Problem::UnexpectedFile(subject_dir));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                problems.push(Problem::UnexpectedFile(subject_dir));
                continue;
            }
            Err(e) => {
                problems.push(file_error(&subject_dir, e));
                continue;
            }
        };
        for file in files {
            let path = subject_dir.join(&file);
            let version = file
                .strip_prefix('v')
                .and_then(|rest| rest.strip_suffix(".json"))
                .and_then(parse_version);
            let Some(version) = version else {
                problems.push(Problem::UnexpectedFile(path));
                continue;
            };
            match std::fs::read_to_string(root.join(&path)) {
                Ok(text) => {
                    committed
                        .entry(subject.clone())
                        .or_default()
                        .insert(version, text);
                }
                Err(e) => problems.push(file_error(&path, e)),
            }
        }
    }
    committed
}

/// The names in a directory, sorted (names that are not UTF-8 are kept lossily, so they show up
/// as unexpected files).
fn sorted_entries(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

// ---- Normalizing generated schemas ----

/// Keywords whose values are subschemas (a schema, an array of schemas, or a map of them).
const SCHEMA_KEYWORDS: &[&str] = &[
    "items",
    "additionalProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contains",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
];
const SCHEMA_ARRAY_KEYWORDS: &[&str] = &["allOf", "anyOf", "oneOf", "prefixItems", "items"];
const SCHEMA_MAP_KEYWORDS: &[&str] = &[
    "properties",
    "patternProperties",
    "$defs",
    "definitions",
    "dependentSchemas",
];
/// Keywords that never change which values a schema accepts.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$anchor",
    "$comment",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Calls `f` on every schema object in `schema`, innermost first.
fn for_each_schema_mut(schema: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    let Value::Object(object) = schema else {
        return;
    };
    for (keyword, value) in object.iter_mut() {
        let keyword = keyword.as_str();
        match value {
            Value::Array(schemas) if SCHEMA_ARRAY_KEYWORDS.contains(&keyword) => {
                schemas.iter_mut().for_each(|s| for_each_schema_mut(s, f));
            }
            Value::Object(schemas) if SCHEMA_MAP_KEYWORDS.contains(&keyword) => {
                schemas.values_mut().for_each(|s| for_each_schema_mut(s, f));
            }
            _ if SCHEMA_KEYWORDS.contains(&keyword) => for_each_schema_mut(value, f),
            _ => {}
        }
    }
    f(object);
}

/// Drops doc comments and `additionalProperties: false` (readers ignore unknown fields), merges
/// enums split by documented variants back into one, and sorts the sets (`required`, `enum`,
/// `type`) so field and variant order do not matter.
fn normalize(schema: &mut Value) {
    for_each_schema_mut(schema, &mut |object| {
        object.remove("description");
        if object.get("additionalProperties") == Some(&Value::Bool(false)) {
            object.remove("additionalProperties");
        }
        merge_enum_branches(object);
        for set in ["required", "enum", "type"] {
            if let Some(Value::Array(items)) = object.get_mut(set) {
                items.sort_by_cached_key(Value::to_string);
                items.dedup();
            }
        }
    });
}

/// `{"oneOf": [{"type": "string", "enum": [..]}, {"type": "string", "const": ..}]}` becomes
/// `{"type": "string", "enum": [..]}`.
fn merge_enum_branches(object: &mut Map<String, Value>) {
    for keyword in ["oneOf", "anyOf"] {
        let Some(Value::Array(branches)) = object.get(keyword) else {
            continue;
        };
        let mut ty = None;
        let mut values = Vec::new();
        for branch in branches {
            let Some(branch) = branch.as_object() else {
                return;
            };
            let plain = branch
                .keys()
                .all(|k| matches!(k.as_str(), "type" | "enum" | "const"));
            let same_type = ty.is_none_or(|t| Some(t) == branch.get("type"));
            if !plain || !same_type {
                return;
            }
            ty = branch.get("type");
            match (branch.get("enum"), branch.get("const")) {
                (Some(Value::Array(e)), None) => values.extend(e.iter().cloned()),
                (None, Some(c)) => values.push(c.clone()),
                _ => return,
            }
        }
        let ty = ty.cloned();
        object.remove(keyword);
        if let Some(ty) = ty {
            object.insert("type".into(), ty);
        }
        object.insert("enum".into(), Value::Array(values));
    }
}

/// The same value with every object's keys in sorted order (whatever map serde_json uses).
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let sorted: BTreeMap<String, Value> =
                object.into_iter().map(|(k, v)| (k, sort_keys(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

// ---- The BACKWARD check ----

/// Keywords [`Checker::compare`] understands; any other one that is not an annotation is taken
/// as breaking when the newer schema adds or changes it.
const CHECKED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "oneOf",
    "anyOf",
    "format",
    "$ref",
    "$defs",
    "definitions",
];

static ANY: Value = Value::Bool(true);

struct Checker<'a> {
    older_root: &'a Value,
    newer_root: &'a Value,
    /// The (older, newer) pairs being compared, to stop on recursive `$ref`s.
    visiting: HashSet<(*const Value, *const Value)>,
    found: Vec<Violation>,
}

#[derive(Clone, Copy)]
enum Side {
    Older,
    Newer,
}

impl<'a> Checker<'a> {
    fn push(&mut self, path: &str, rule: Rule) {
        self.found.push(Violation {
            path: path.to_owned(),
            rule,
        });
    }

    /// Follows `$ref`s (`#/...` JSON pointers into the same document).
    fn resolve(&self, side: Side, mut schema: &'a Value) -> Result<&'a Value, String> {
        let root = match side {
            Side::Older => self.older_root,
            Side::Newer => self.newer_root,
        };
        for _ in 0..64 {
            let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
                return Ok(schema);
            };
            schema = reference
                .strip_prefix('#')
                .and_then(|pointer| root.pointer(pointer))
                .ok_or_else(|| reference.to_owned())?;
        }
        Err("(a cycle of $refs)".to_owned())
    }

    /// Compares in a scratch checker, for trying union branches.
    fn trial(&self, older: &'a Value, newer: &'a Value, path: &str) -> Vec<Violation> {
        let mut scratch = Checker {
            older_root: self.older_root,
            newer_root: self.newer_root,
            visiting: self.visiting.clone(),
            found: Vec::new(),
        };
        scratch.compare(older, newer, path);
        scratch.found
    }

    fn compare(&mut self, older: &'a Value, newer: &'a Value, path: &str) {
        let (older, newer) = match (
            self.resolve(Side::Older, older),
            self.resolve(Side::Newer, newer),
        ) {
            (Ok(older), Ok(newer)) => (older, newer),
            (Err(reference), _) | (_, Err(reference)) => {
                return self.push(path, Rule::UnresolvedRef(reference));
            }
        };
        let pair = (older as *const Value, newer as *const Value);
        if !self.visiting.insert(pair) {
            return; // Already being compared further up: a recursive type.
        }
        self.compare_resolved(older, newer, path);
        self.visiting.remove(&pair);
    }

    fn compare_resolved(&mut self, older: &'a Value, newer: &'a Value, path: &str) {
        if older == &Value::Bool(false) || accepts_anything(newer) {
            return;
        }
        if accepts_anything(older) || newer == &Value::Bool(false) {
            return self.push(path, Rule::Restricted);
        }
        let (Some(older_object), Some(newer_object)) = (older.as_object(), newer.as_object())
        else {
            return; // Not a schema: nothing to compare.
        };

        match (
            self.enum_values(Side::Older, older),
            self.enum_values(Side::Newer, newer),
        ) {
            (Some(old_values), Some(new_values)) => {
                let removed: Vec<String> = old_values
                    .iter()
                    .filter(|v| !new_values.contains(v))
                    .map(|v| display_value(v))
                    .collect();
                if !removed.is_empty() {
                    self.push(path, Rule::EnumValuesRemoved(removed));
                }
                return;
            }
            (Some(old_values), None) => {
                let new_types = types(newer);
                let lost = old_values.iter().any(|v| {
                    new_types
                        .as_ref()
                        .is_some_and(|t| !accepts_type(t, json_type(v)))
                });
                if lost {
                    let from: BTreeSet<&str> = old_values.iter().map(|v| json_type(v)).collect();
                    self.push(path, type_changed(Some(&from), new_types.as_ref()));
                }
                return;
            }
            (None, Some(_)) => return self.push(path, Rule::RestrictedToEnum),
            (None, None) => {}
        }

        let older_branches = branches(older);
        let newer_branches = branches(newer);
        if older_branches.len() > 1 || newer_branches.len() > 1 {
            // Each thing the older schema accepted must be accepted by some newer branch.
            for old_branch in older_branches {
                let trials: Vec<Vec<Violation>> = newer_branches
                    .iter()
                    .map(|new_branch| self.trial(old_branch, new_branch, path))
                    .collect();
                if trials.iter().any(Vec::is_empty) {
                    continue;
                }
                // Report the closest branch: same type first, then fewest violations.
                let closest = trials.into_iter().min_by_key(|found| {
                    let retyped = found
                        .iter()
                        .any(|v| v.path == path && matches!(v.rule, Rule::TypeChanged { .. }));
                    (retyped, found.len())
                });
                self.found.extend(closest.into_iter().flatten());
            }
            return;
        }

        let old_types = types(older);
        let new_types = types(newer);
        if let Some(new_types) = &new_types {
            let lost = match &old_types {
                None => true,
                Some(old_types) => old_types.iter().any(|t| !accepts_type(new_types, t)),
            };
            if lost {
                return self.push(path, type_changed(old_types.as_ref(), Some(new_types)));
            }
        }
        let may_be = |ty: &str| old_types.as_ref().is_none_or(|t| t.contains(ty));

        self.compare_format(older_object, newer_object, path);
        if may_be("object") {
            self.compare_object(older_object, newer_object, path);
        }
        if may_be("array") {
            self.compare_items(older_object, newer_object, path);
        }
        for (keyword, value) in newer_object {
            let unchecked =
                !CHECKED.contains(&keyword.as_str()) && !ANNOTATIONS.contains(&keyword.as_str());
            if unchecked && older_object.get(keyword) != Some(value) {
                self.push(path, Rule::UncheckedKeyword(keyword.clone()));
            }
        }
    }

    /// The values of an enum: `enum`, `const`, or a `oneOf`/`anyOf` of those.
    fn enum_values(&self, side: Side, schema: &'a Value) -> Option<Vec<&'a Value>> {
        let schema = self.resolve(side, schema).ok()?;
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return Some(values.iter().collect());
        }
        if let Some(value) = schema.get("const") {
            return Some(vec![value]);
        }
        let branches = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))?
            .as_array()?;
        let mut values = Vec::new();
        for branch in branches {
            values.extend(self.enum_values(side, branch)?);
        }
        Some(values)
    }

    fn compare_format(
        &mut self,
        older: &Map<String, Value>,
        newer: &Map<String, Value>,
        path: &str,
    ) {
        let Some(to) = newer.get("format").and_then(Value::as_str) else {
            return; // No format (any more) accepts at least as much.
        };
        let from = older.get("format").and_then(Value::as_str);
        if from.is_some_and(|from| format_widens(from, to)) {
            return;
        }
        self.push(
            path,
            Rule::FormatChanged {
                from: from.map(str::to_owned),
                to: to.to_owned(),
            },
        );
    }

    fn compare_object(
        &mut self,
        older: &'a Map<String, Value>,
        newer: &'a Map<String, Value>,
        path: &str,
    ) {
        let old_properties = properties(older);
        let new_properties = properties(newer);
        let old_required = required(older);
        let new_required = required(newer);
        let field = |name: &str| format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"));

        for name in new_required.difference(&old_required) {
            let rule = if old_properties.contains_key(*name) {
                Rule::OptionalMadeRequired
            } else {
                Rule::RequiredFieldAdded
            };
            self.push(&field(name), rule);
        }
        for name in &old_required {
            if !new_properties.contains_key(*name) && !new_required.contains(name) {
                self.push(&field(name), Rule::RequiredFieldRemoved);
            }
        }

        let old_closed = older.get("additionalProperties") == Some(&Value::Bool(false));
        let new_closed = newer.get("additionalProperties") == Some(&Value::Bool(false));
        if new_closed && !old_closed {
            self.push(path, Rule::ContentModelClosed);
        }
        for (name, old_schema) in old_properties {
            match new_properties.get(name) {
                Some(new_schema) => self.compare(old_schema, new_schema, &field(name)),
                None if new_closed && !old_required.contains(name.as_str()) => {
                    self.push(&field(name), Rule::FieldRemovedFromClosedModel);
                }
                None => {}
            }
        }
        if let Some(new_extra) = newer.get("additionalProperties").filter(|_| !new_closed) {
            let old_extra = older.get("additionalProperties").unwrap_or(&ANY);
            self.compare(old_extra, new_extra, &format!("{path}/*"));
        }
    }

    fn compare_items(
        &mut self,
        older: &'a Map<String, Value>,
        newer: &'a Map<String, Value>,
        path: &str,
    ) {
        let Some(new_items) = newer.get("items") else {
            return;
        };
        let old_items = older.get("items").unwrap_or(&ANY);
        if new_items.is_array() || old_items.is_array() {
            // Tuple `items` (before 2020-12) are not analysed.
            if old_items != new_items {
                self.push(path, Rule::UncheckedKeyword("items".into()));
            }
            return;
        }
        self.compare(old_items, new_items, &format!("{path}/*"));
    }
}

/// `true`, or an object with nothing but annotations.
fn accepts_anything(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(object) => object
            .keys()
            .all(|k| ANNOTATIONS.contains(&k.as_str()) || k == "$defs" || k == "definitions"),
        _ => false,
    }
}

/// The alternatives of a `oneOf`/`anyOf`, or the schema itself.
fn branches(schema: &Value) -> Vec<&Value> {
    match schema
        .get("oneOf")
        .or_else(|| schema.get("anyOf"))
        .and_then(Value::as_array)
    {
        Some(branches) => branches.iter().collect(),
        None => vec![schema],
    }
}

/// The `type` keyword as a set; `None` when absent (any type).
fn types(schema: &Value) -> Option<BTreeSet<&str>> {
    match schema.get("type")? {
        Value::String(ty) => Some(BTreeSet::from([ty.as_str()])),
        Value::Array(types) => Some(types.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn accepts_type(types: &BTreeSet<&str>, ty: &str) -> bool {
    types.contains(ty) || (ty == "integer" && types.contains("number"))
}

fn type_changed(from: Option<&BTreeSet<&str>>, to: Option<&BTreeSet<&str>>) -> Rule {
    let describe = |types: Option<&BTreeSet<&str>>| match types {
        Some(types) if !types.is_empty() => types.iter().copied().collect::<Vec<_>>().join(" or "),
        _ => "any".to_owned(),
    };
    Rule::TypeChanged {
        from: describe(from),
        to: describe(to),
    }
}

/// The JSON Schema type of a value (`integer` for whole numbers).
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn properties(schema: &Map<String, Value>) -> &Map<String, Value> {
    static NONE: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);
    schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&NONE)
}

fn required(schema: &Map<String, Value>) -> BTreeSet<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// Whether a reader with format `to` reads every value written with format `from`: the same,
/// or a wider integer or float.
fn format_widens(from: &str, to: &str) -> bool {
    fn int_bits(format: &str) -> Option<(bool, u32)> {
        let (signed, bits) = match format.strip_prefix('u') {
            Some(rest) => (false, rest.strip_prefix("int")?),
            None => (true, format.strip_prefix("int")?),
        };
        Some((signed, bits.parse().ok()?))
    }
    if from == to || (from == "float" && to == "double") {
        return true;
    }
    match (int_bits(from), int_bits(to)) {
        (Some((from_signed, from_bits)), Some((to_signed, to_bits))) => {
            (from_signed == to_signed && to_bits >= from_bits)
                || (!from_signed && to_signed && to_bits > from_bits)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A payload with the shapes the check walks: scalars, an enum, a nested object, an array of
    /// `$ref`'d objects.
    fn base() -> Value {
        json!({
            "type": "object",
            "title": "payment.charged.v1",
            "properties": {
                "order_id": { "type": "string", "format": "uuid" },
                "amount_cents": { "type": "integer", "format": "int64" },
                "note": { "type": "string", "description": "Free text." },
                "reason": { "type": "string", "enum": ["no_account", "insufficient_funds"] },
                "address": {
                    "type": "object",
                    "properties": {
                        "country": { "type": "string" },
                        "city": { "type": "string" }
                    },
                    "required": ["country"]
                },
                "items": { "type": "array", "items": { "$ref": "#/$defs/Line" } }
            },
            "required": ["order_id", "amount_cents", "reason", "address", "items"],
            "$defs": {
                "Line": {
                    "type": "object",
                    "properties": {
                        "sku": { "type": "string" },
                        "quantity": { "type": "integer", "format": "int32" }
                    },
                    "required": ["sku", "quantity"]
                }
            }
        })
    }

    /// The violations of `base()` changed by `edit`, as (path, rule) pairs.
    fn breaks(edit: impl FnOnce(&mut Value)) -> Vec<(String, Rule)> {
        let mut newer = base();
        edit(&mut newer);
        check_compatibility(&base(), &newer)
            .into_iter()
            .map(|v| (v.path, v.rule))
            .collect()
    }

    fn remove_required(schema: &mut Value, name: &str) {
        let required = schema["required"].as_array_mut().unwrap();
        required.retain(|r| r != name);
    }

    fn one(path: &str, rule: Rule) -> Vec<(String, Rule)> {
        vec![(path.to_owned(), rule)]
    }

    #[test]
    fn an_unchanged_schema_is_compatible() {
        assert_eq!(breaks(|_| {}), vec![]);
    }

    #[test]
    fn adding_a_required_field_breaks() {
        assert_eq!(
            breaks(|s| {
                s["properties"]["currency"] = json!({ "type": "string" });
                s["required"]
                    .as_array_mut()
                    .unwrap()
                    .push("currency".into());
            }),
            one("/currency", Rule::RequiredFieldAdded)
        );
    }

    #[test]
    fn removing_a_required_field_breaks() {
        assert_eq!(
            breaks(|s| {
                s["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("amount_cents");
                remove_required(s, "amount_cents");
            }),
            one("/amount_cents", Rule::RequiredFieldRemoved)
        );
    }

    #[test]
    fn retyping_a_field_breaks() {
        assert_eq!(
            breaks(|s| s["properties"]["amount_cents"] = json!({ "type": "string" })),
            one(
                "/amount_cents",
                Rule::TypeChanged {
                    from: "integer".into(),
                    to: "string".into()
                }
            )
        );
        assert_eq!(
            breaks(|s| s["properties"]["amount_cents"]["format"] = "int32".into()),
            one(
                "/amount_cents",
                Rule::FormatChanged {
                    from: Some("int64".into()),
                    to: "int32".into()
                }
            )
        );
    }

    #[test]
    fn removing_an_enum_value_breaks_and_adding_one_does_not() {
        assert_eq!(
            breaks(|s| s["properties"]["reason"]["enum"] = json!(["no_account"])),
            one(
                "/reason",
                Rule::EnumValuesRemoved(vec!["insufficient_funds".into()])
            )
        );
        assert_eq!(
            breaks(|s| {
                s["properties"]["reason"]["enum"] =
                    json!(["no_account", "insufficient_funds", "card_expired"]);
            }),
            vec![]
        );
    }

    #[test]
    fn enums_split_into_one_of_branches_are_compared_by_value() {
        // How schemars writes an enum with a documented variant, behind a `$ref`.
        let with_one_of = |values: Value| {
            let mut schema = base();
            schema["properties"]["reason"] = json!({ "$ref": "#/$defs/Reason" });
            schema["$defs"]["Reason"] = json!({ "oneOf": [
                { "type": "string", "enum": values },
                { "type": "string", "const": "timeout", "description": "Too late." }
            ]});
            schema
        };
        let older = with_one_of(json!(["no_account", "insufficient_funds"]));
        let same_values = base();
        let mut fewer = base();
        fewer["properties"]["reason"]["enum"] = json!(["no_account", "timeout"]);

        assert_eq!(
            check_compatibility(&older, &fewer),
            vec![Violation {
                path: "/reason".into(),
                rule: Rule::EnumValuesRemoved(vec!["insufficient_funds".into()])
            }]
        );
        assert_eq!(
            check_compatibility(&older, &same_values),
            vec![Violation {
                path: "/reason".into(),
                rule: Rule::EnumValuesRemoved(vec!["timeout".into()])
            }]
        );
        assert_eq!(check_compatibility(&same_values, &older), vec![]);
    }

    #[test]
    fn making_an_optional_field_required_breaks() {
        assert_eq!(
            breaks(|s| s["required"].as_array_mut().unwrap().push("note".into())),
            one("/note", Rule::OptionalMadeRequired)
        );
    }

    #[test]
    fn removing_a_field_of_a_nested_object_breaks() {
        assert_eq!(
            breaks(|s| {
                let address = &mut s["properties"]["address"];
                address["properties"]
                    .as_object_mut()
                    .unwrap()
                    .remove("country");
                address["required"] = json!([]);
            }),
            one("/address/country", Rule::RequiredFieldRemoved)
        );
    }

    #[test]
    fn array_items_are_followed_through_refs() {
        assert_eq!(
            breaks(|s| {
                s["$defs"]["Line"]["properties"]["quantity"] = json!({ "type": "string" });
            }),
            one(
                "/items/*/quantity",
                Rule::TypeChanged {
                    from: "integer".into(),
                    to: "string".into()
                }
            )
        );
        assert_eq!(
            breaks(|s| s["$defs"]["Line"]["required"] = json!(["sku", "quantity", "price"])),
            one("/items/*/price", Rule::RequiredFieldAdded)
        );
        assert_eq!(
            breaks(|s| s["$defs"] = json!({})),
            one("/items/*", Rule::UnresolvedRef("#/$defs/Line".into()))
        );
    }

    #[test]
    fn adding_an_optional_field_is_compatible() {
        assert_eq!(
            breaks(|s| s["properties"]["currency"] = json!({ "type": "string" })),
            vec![]
        );
    }

    #[test]
    fn removing_an_optional_field_is_compatible_in_the_open_content_model() {
        assert_eq!(
            breaks(|s| {
                s["properties"].as_object_mut().unwrap().remove("note");
            }),
            vec![]
        );
    }

    #[test]
    fn description_and_title_changes_are_compatible() {
        assert_eq!(
            breaks(|s| {
                s["properties"]["note"]["description"] = "Anything the customer wrote.".into();
                s["properties"]["amount_cents"]["description"] = "In cents.".into();
                s["title"] = "payment.charged.v2".into();
            }),
            vec![]
        );
    }

    #[test]
    fn widening_is_compatible() {
        assert_eq!(
            breaks(|s| {
                remove_required(s, "amount_cents"); // required -> optional
                s["properties"]["order_id"] = json!({ "type": "string" }); // format dropped
                s["$defs"]["Line"]["properties"]["quantity"]["format"] = "int64".into();
                s["properties"]["note"]["type"] = json!(["string", "null"]);
            }),
            vec![]
        );
        assert_eq!(
            breaks(|s| s["properties"]["amount_cents"] = json!({ "type": "number" })),
            vec![]
        );
    }

    #[test]
    fn closing_the_content_model_breaks() {
        assert_eq!(
            breaks(|s| s["additionalProperties"] = false.into()),
            one("", Rule::ContentModelClosed)
        );
        let mut closed = base();
        closed["additionalProperties"] = false.into();
        let mut without_note = closed.clone();
        without_note["properties"]
            .as_object_mut()
            .unwrap()
            .remove("note");
        assert_eq!(
            check_compatibility(&closed, &without_note),
            vec![Violation {
                path: "/note".into(),
                rule: Rule::FieldRemovedFromClosedModel
            }]
        );
    }

    #[test]
    fn no_longer_accepting_null_breaks() {
        let nullable_line = |schema: &mut Value| {
            schema["properties"]["line"] =
                json!({ "anyOf": [{ "$ref": "#/$defs/Line" }, { "type": "null" }] });
        };
        let mut older = base();
        nullable_line(&mut older);
        let mut newer = older.clone();
        newer["properties"]["line"] = json!({ "$ref": "#/$defs/Line" });
        assert_eq!(
            check_compatibility(&older, &newer),
            vec![Violation {
                path: "/line".into(),
                rule: Rule::TypeChanged {
                    from: "null".into(),
                    to: "object".into()
                }
            }]
        );
        // A field of the nullable object, reported at its own path.
        let mut newer = older.clone();
        newer["$defs"]["Line"]["required"] = json!(["sku", "quantity", "price"]);
        assert!(check_compatibility(&older, &newer).contains(&Violation {
            path: "/line/price".into(),
            rule: Rule::RequiredFieldAdded
        }));
        assert_eq!(check_compatibility(&older, &older), vec![]);
    }

    #[test]
    fn keywords_the_check_does_not_analyse_are_breaking_when_added_and_fine_when_dropped() {
        assert_eq!(
            breaks(|s| s["properties"]["amount_cents"]["minimum"] = 1.into()),
            one("/amount_cents", Rule::UncheckedKeyword("minimum".into()))
        );
        let mut older = base();
        older["properties"]["amount_cents"]["minimum"] = 1.into();
        assert_eq!(check_compatibility(&older, &base()), vec![]);
    }

    #[test]
    fn modes_pick_the_versions_the_newest_is_checked_against() {
        // v1 requires `legacy`, v2 makes it optional, v3 drops it: fine step by step, but v3
        // cannot read v1's data.
        let v1 = base();
        let mut v2 = base();
        v2["properties"]["legacy"] = json!({ "type": "string" });
        let mut v1_required = v1.clone();
        v1_required["properties"]["legacy"] = json!({ "type": "string" });
        v1_required["required"]
            .as_array_mut()
            .unwrap()
            .push("legacy".into());
        let versions = BTreeMap::from([(1, v1_required), (2, v2), (3, base())]);

        assert_eq!(
            check_subject("payment.charged", &versions, Mode::Backward),
            vec![]
        );
        assert_eq!(
            check_subject("payment.charged", &versions, Mode::None),
            vec![]
        );
        let found = check_subject("payment.charged", &versions, Mode::BackwardTransitive);
        let messages: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "payment.charged v3 breaks BACKWARD_TRANSITIVE against v1: field /legacy: \
              required field removed"
            ]
        );
        assert_eq!(Mode::default(), Mode::BackwardTransitive);
    }

    #[test]
    fn modes_parse_from_their_names() {
        for mode in [Mode::Backward, Mode::BackwardTransitive, Mode::None] {
            assert_eq!(mode.to_string().parse(), Ok(mode));
        }
        assert_eq!("backward-transitive".parse(), Ok(Mode::BackwardTransitive));
        assert!("forward".parse::<Mode>().is_err());
    }

    #[test]
    fn event_types_split_into_subject_and_version() {
        assert_eq!(
            split_type("payment.charged.v1"),
            Some(("payment.charged", 1))
        );
        assert_eq!(
            split_type("inventory.release_failed.v12"),
            Some(("inventory.release_failed", 12))
        );
        for bad in [
            "payment.charged",
            "payment.charged.v0",
            "payment.charged.v01",
            "payment.charged.v",
            "payment.charged.vx",
            ".v1",
            "../etc.v1",
            "Payment.charged.v1",
            "payment.charged.v99999999999",
        ] {
            assert_eq!(split_type(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_schemas_are_open_undocumented_and_read_themselves() {
        let schemas = generated();
        assert!(!schemas.is_empty());
        for event in &schemas {
            assert_eq!(event.schema["title"], event.event_type);
            let mut schema = event.schema.clone();
            for_each_schema_mut(&mut schema, &mut |object| {
                assert_ne!(
                    object.get("additionalProperties"),
                    Some(&Value::Bool(false)),
                    "{}",
                    event.event_type
                );
                assert!(!object.contains_key("description"), "{}", event.event_type);
                assert!(!object.contains_key("$ref"), "{}", event.event_type);
            });
            assert_eq!(check_compatibility(&event.schema, &event.schema), vec![]);
            assert!(event.to_json().ends_with("}\n"));
        }
    }

    #[test]
    fn generated_enums_are_one_enum_even_with_documented_variants() {
        let cancelled = EventSchema::of::<OrderCancelled>();
        let reason = &cancelled.schema["properties"]["reason"];
        assert_eq!(reason.get("oneOf"), None);
        assert_eq!(
            reason["enum"],
            json!([
                "cancelled_by_customer",
                "out_of_stock",
                "payment_declined",
                "shipping_unavailable",
                "timeout",
                "unknown_product"
            ])
        );
    }

    #[test]
    fn generated_payloads_are_open_and_addresses_keep_free_form_fields() {
        let charged = EventSchema::of::<PaymentCharged>();
        assert_eq!(charged.schema.get("additionalProperties"), None);
        let address = &charged.schema["properties"]["shipping_address"];
        assert_eq!(address["additionalProperties"], true);
        assert_eq!(address["required"], json!(["country"]));
        assert_eq!(
            charged.schema["required"],
            json!([
                "amount_cents",
                "customer_id",
                "order_id",
                "shipping_address"
            ])
        );
    }
}
