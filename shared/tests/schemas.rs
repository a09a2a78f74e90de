//! The schema gate on the real `schemas/` directory, and on doctored copies of it.

use shared::schemas::{self, Incompatibility, Problem, Rule, Violation};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ is inside the workspace")
}

#[test]
fn committed_schemas_match_the_rust_types_and_stay_compatible() {
    if let Err(problems) = schemas::verify(workspace_root()) {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!(
            "schemas/ is out of date with the event types (`cargo xtask schemas`):\n{}",
            lines.join("\n")
        );
    }
}

/// A copy of the committed `schemas/` in a fresh directory, removed on drop.
struct Copy {
    root: PathBuf,
}

impl Copy {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "sagashop-schemas-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        copy_dir(
            &workspace_root().join(schemas::SCHEMAS_DIR),
            &root.join(schemas::SCHEMAS_DIR),
        );
        Self { root }
    }

    fn path(&self, subject: &str, version: u32) -> PathBuf {
        self.root.join(schemas::schema_path(subject, version))
    }

    fn read(&self, subject: &str, version: u32) -> String {
        std::fs::read_to_string(self.path(subject, version)).unwrap()
    }

    fn put(&self, subject: &str, version: u32, contents: &str) {
        let path = self.path(subject, version);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    fn problems(&self) -> Vec<Problem> {
        schemas::verify(&self.root).expect_err("the doctored copy has problems")
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn messages(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

#[test]
fn a_v2_that_removes_a_required_field_is_caught() {
    let copy = Copy::new();
    assert_eq!(schemas::verify(&copy.root), Ok(()), "the copy starts clean");
    let mut v2: serde_json::Value =
        serde_json::from_str(&copy.read("payment.refunded", 1)).unwrap();
    v2["properties"]
        .as_object_mut()
        .unwrap()
        .remove("amount_cents");
    v2["required"]
        .as_array_mut()
        .unwrap()
        .retain(|field| field != "amount_cents");
    copy.put(
        "payment.refunded",
        2,
        &serde_json::to_string_pretty(&v2).unwrap(),
    );

    let problems = copy.problems();
    assert!(
        problems.contains(&Problem::Incompatible(Incompatibility {
            subject: "payment.refunded".into(),
            newer: 2,
            older: 1,
            mode: schemas::Mode::BackwardTransitive,
            violation: Violation {
                path: "/amount_cents".into(),
                rule: Rule::RequiredFieldRemoved,
            },
        })),
        "{problems:#?}"
    );
    let messages = messages(&problems);
    assert!(
        messages.contains(
            &"payment.refunded v2 breaks BACKWARD_TRANSITIVE against v1: field /amount_cents: \
              required field removed"
                .to_owned()
        ),
        "{messages:#?}"
    );
    // And the file has no Rust type behind it.
    assert!(problems.iter().any(|p| matches!(
        p,
        Problem::NoRustType { event_type, .. } if event_type == "payment.refunded.v2"
    )));
    assert_eq!(problems.len(), 2, "{messages:#?}");
}

#[test]
fn a_published_version_may_not_change() {
    let copy = Copy::new();
    let published = copy
        .read("order.created", 1)
        .replace("\"sku\"", "\"product\"");
    copy.put("order.created", 1, &published);

    let problems = copy.problems();
    assert!(
        matches!(
            problems.as_slice(),
            [Problem::Changed { event_type, next: 2, .. }] if event_type == "order.created.v1"
        ),
        "{problems:#?}"
    );
    assert!(messages(&problems)[0].contains("publish the change as v2"));

    // `write` never overwrites it.
    assert_eq!(schemas::write(&copy.root), Err(problems));
    assert_eq!(copy.read("order.created", 1), published);
}

#[test]
fn a_published_version_may_not_disappear_and_versions_are_contiguous() {
    let copy = Copy::new();
    let v1 = copy.read("shipment.cancelled", 1);
    copy.put("shipment.cancelled", 3, &v1);
    copy.put("retired.event", 1, &v1);

    let mut messages = messages(&copy.problems());
    messages.sort();
    assert_eq!(
        messages,
        [
            "schemas/retired.event/v1.json has no Rust type: readers must keep reading every \
             version ever published; restore the payload type with TYPE = \"retired.event.v1\"",
            "schemas/shipment.cancelled/v3.json has no Rust type: readers must keep reading \
             every version ever published; restore the payload type with TYPE = \
             \"shipment.cancelled.v3\"",
            "shipment.cancelled: versions must be contiguous from v1, missing v2",
        ]
    );
}

#[test]
fn write_adds_missing_versions_byte_for_byte_and_nothing_else() {
    let copy = Copy::new();
    let original = copy.read("inventory.reserved", 1);
    std::fs::remove_file(copy.path("inventory.reserved", 1)).unwrap();
    std::fs::write(copy.root.join("schemas/stray.json"), "{}").unwrap();

    let problems = copy.problems();
    assert!(
        problems.contains(&Problem::UnexpectedFile("schemas/stray.json".into())),
        "{problems:#?}"
    );
    assert!(problems.iter().any(|p| matches!(
        p,
        Problem::NotCommitted { event_type, .. } if event_type == "inventory.reserved.v1"
    )));
    // Nothing is written while another problem stands.
    assert!(schemas::write(&copy.root).is_err());
    assert!(!copy.path("inventory.reserved", 1).exists());

    std::fs::remove_file(copy.root.join("schemas/stray.json")).unwrap();
    assert_eq!(
        schemas::write(&copy.root),
        Ok(vec![schemas::schema_path("inventory.reserved", 1)])
    );
    assert_eq!(copy.read("inventory.reserved", 1), original);
    assert_eq!(schemas::verify(&copy.root), Ok(()));
}
