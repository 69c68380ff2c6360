//! `docs/appmesh-compatibility.md` against the service model trellis-control
//! embeds: every operation, request member, error and spec field has a row,
//! no row names something the model lacks (so a typo cannot hide a gap),
//! and the counts the page opens with are the counts of its rows.

use std::collections::{BTreeMap, BTreeSet};

use trellis_control::model::Kind;
use trellis_control::service_model::{ServiceModel, ShapeType};
use trellis_control::ErrorKind;

const DOC: &str = include_str!("../../docs/appmesh-compatibility.md");

const STATUSES: [&str; 3] = ["supported", "partly", "not supported"];

/// One body row of a table: the backticked names of its first cell and its
/// status cell.
struct Row {
    line: usize,
    names: Vec<String>,
    status: String,
}

/// Every body row of every table (the lines after a `|---` separator).
fn rows(doc: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let mut in_body = false;
    for (i, line) in doc.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_body = false;
            continue;
        }
        if line.starts_with("|---") {
            in_body = true;
            continue;
        }
        if !in_body {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let names = cells[0]
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.push(Row {
            line: i + 1,
            names,
            status: cells.get(1).copied().unwrap_or_default().to_string(),
        });
    }
    out
}

/// Every leaf path under `shape`: structures by member, lists as `[]`.
fn leaves(model: &ServiceModel, shape: &str, path: String, seen: &mut Vec<String>) -> Vec<String> {
    let s = model
        .shape(shape)
        .unwrap_or_else(|| panic!("{path}: no shape {shape} in the model"));
    match s.shape_type {
        ShapeType::Structure => {
            assert!(!seen.iter().any(|x| x == shape), "{path}: {shape} recurses");
            seen.push(shape.to_string());
            let out = s
                .members
                .iter()
                .flat_map(|(name, m)| leaves(model, &m.shape, format!("{path}.{name}"), seen))
                .collect();
            seen.pop();
            out
        }
        ShapeType::List => {
            let member = s.member.as_ref().expect("a list shape names its member");
            leaves(model, &member.shape, format!("{path}[]"), seen)
        }
        _ => vec![path],
    }
}

fn spec_leaves(model: &ServiceModel) -> Vec<String> {
    Kind::ALL
        .iter()
        .flat_map(|k| {
            leaves(
                model,
                k.spec_shape(),
                k.spec_shape().to_string(),
                &mut Vec::new(),
            )
        })
        .collect()
}

/// Where a row's name belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Operation,
    Error,
    SpecField,
    Member,
}

fn class(model: &ServiceModel, name: &str) -> Class {
    if model.operation(name).is_some() {
        Class::Operation
    } else if name.ends_with("Exception") {
        Class::Error
    } else if Kind::ALL
        .iter()
        .any(|k| name.starts_with(&format!("{}.", k.spec_shape())))
    {
        Class::SpecField
    } else {
        Class::Member
    }
}

/// Request members of every operation, plus what every resource reply
/// carries (`metadata.*`, `status.status`).
fn members(model: &ServiceModel) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = model
        .operations
        .values()
        .filter_map(|op| model.input_shape(op))
        .flat_map(|s| s.members.keys().cloned())
        .collect();
    let metadata = model.shape("ResourceMetadata").expect("ResourceMetadata");
    out.extend(metadata.members.keys().map(|m| format!("metadata.{m}")));
    out.insert("status.status".into());
    out
}

fn errors(model: &ServiceModel) -> BTreeSet<String> {
    model
        .shapes
        .iter()
        .filter(|(_, s)| s.error.is_some())
        .map(|(name, _)| name.clone())
        .collect()
}

/// The row that decides a leaf: its exact path, else the longest `.*` row
/// above it.
fn decide<'a>(leaf: &str, patterns: &'a BTreeMap<String, usize>) -> Option<(&'a String, usize)> {
    if let Some((p, row)) = patterns.get_key_value(leaf) {
        return Some((p, *row));
    }
    patterns
        .iter()
        .filter(|(p, _)| {
            p.strip_suffix('*')
                .is_some_and(|prefix| prefix.ends_with('.') && leaf.starts_with(prefix))
        })
        .max_by_key(|(p, _)| p.len())
        .map(|(p, row)| (p, *row))
}

/// Everything `doc` gets wrong about the model, one line each.
fn problems(doc: &str) -> Vec<String> {
    let model = ServiceModel::get();
    let rows = rows(doc);
    let mut problems: Vec<String> = Vec::new();

    let mut named: BTreeMap<Class, BTreeMap<String, usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        if !STATUSES.contains(&row.status.as_str()) {
            problems.push(format!(
                "line {}: status '{}' is not one of {STATUSES:?}",
                row.line, row.status
            ));
        }
        let classes: BTreeSet<Class> = row.names.iter().map(|n| class(model, n)).collect();
        if classes.len() != 1 {
            problems.push(format!(
                "line {}: a row names one kind of thing (operations, errors, members or spec fields), found {classes:?}",
                row.line
            ));
        }
        for name in &row.names {
            let previous = named
                .entry(class(model, name))
                .or_default()
                .insert(name.clone(), i);
            if let Some(p) = previous {
                problems.push(format!(
                    "line {}: `{name}` already has a row (line {})",
                    row.line, rows[p].line
                ));
            }
        }
    }
    let empty = BTreeMap::new();
    let of = |c: Class| named.get(&c).unwrap_or(&empty);

    let want_ops: BTreeSet<&String> = model.operations.keys().collect();
    for op in &want_ops {
        if !of(Class::Operation).contains_key(*op) {
            problems.push(format!("operation {op} has no row"));
        }
    }

    let want_members = members(model);
    for m in &want_members {
        if !of(Class::Member).contains_key(m) {
            problems.push(format!("request or response member `{m}` has no row"));
        }
    }
    for (m, row) in of(Class::Member) {
        if !want_members.contains(m) {
            problems.push(format!(
                "line {}: `{m}` is no member of the model's requests or resource replies",
                rows[*row].line
            ));
        }
    }

    let model_errors = errors(model);
    for e in &model_errors {
        if !of(Class::Error).contains_key(e) {
            problems.push(format!("error {e} has no row"));
        }
    }
    for (e, row) in of(Class::Error) {
        if !model_errors.contains(e) && ErrorKind::from_type_name(e).is_none() {
            problems.push(format!(
                "line {}: {e} is neither in the model nor an error trellis returns",
                rows[*row].line
            ));
        }
    }

    let leaves = spec_leaves(model);
    let patterns = of(Class::SpecField);
    let mut used: BTreeSet<&String> = BTreeSet::new();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for leaf in &leaves {
        match decide(leaf, patterns) {
            Some((pattern, row)) => {
                used.insert(pattern);
                *by_status.entry(rows[row].status.as_str()).or_default() += 1;
            }
            None => problems.push(format!("spec field {leaf} has no row")),
        }
    }
    for (pattern, row) in patterns {
        let line = rows[*row].line;
        let exists = match pattern.strip_suffix('*') {
            Some(prefix) => prefix.ends_with('.') && leaves.iter().any(|l| l.starts_with(prefix)),
            None => leaves.contains(pattern),
        };
        if !exists {
            problems.push(format!(
                "line {line}: `{pattern}` is no field of the model (a leaf path, or a path ending in `.*` above one)"
            ));
        } else if !used.contains(pattern) {
            problems.push(format!(
                "line {line}: `{pattern}` decides no field: longer rows name every one below it"
            ));
        }
    }

    let spec_rows: BTreeSet<usize> = patterns.values().copied().collect();
    let count = |s: &str| by_status.get(s).copied().unwrap_or(0);
    let summary = format!(
        "{} leaf paths in {} rows: {} supported, {} partly, {} not supported.",
        leaves.len(),
        spec_rows.len(),
        count("supported"),
        count("partly"),
        count("not supported"),
    );
    if !doc.contains(&format!("**Spec fields:** {summary}")) {
        problems.push(format!(
            "the summary line must read: **Spec fields:** {summary}"
        ));
    }
    let supported_ops = want_ops
        .iter()
        .filter(|op| {
            of(Class::Operation)
                .get(**op)
                .is_some_and(|row| rows[*row].status == "supported")
        })
        .count();
    let ops_line = format!(
        "**Operations:** {supported_ops} of {} supported.",
        want_ops.len()
    );
    if !doc.contains(&ops_line) {
        problems.push(format!("the summary line must read: {ops_line}"));
    }
    problems
}

#[test]
fn the_compatibility_page_covers_the_whole_model() {
    let problems = problems(DOC);
    assert!(
        problems.is_empty(),
        "docs/appmesh-compatibility.md disagrees with the App Mesh model:\n{}",
        problems.join("\n")
    );
}

/// The page with one line replaced, for the tests of the checker itself.
fn edited(find: &str, replace: &str) -> String {
    assert!(DOC.contains(find), "the page has no line {find}");
    DOC.replacen(find, replace, 1)
}

#[test]
fn a_missing_row_a_typo_and_a_bad_status_are_all_named() {
    // Dropping the row leaves its fields uncovered.
    let doc = edited(
        "| `RouteSpec.tcpRoute.timeout.*` | supported |",
        "| `RouteSpec.tcpRoute.timeout.idle.vlaue` | supported |",
    );
    let found = problems(&doc);
    let has = |needle: &str| found.iter().any(|p| p.contains(needle));
    assert!(
        has("spec field RouteSpec.tcpRoute.timeout.idle.unit has no row"),
        "{found:?}"
    );
    assert!(
        has("spec field RouteSpec.tcpRoute.timeout.idle.value has no row"),
        "{found:?}"
    );
    assert!(
        has("`RouteSpec.tcpRoute.timeout.idle.vlaue` is no field of the model"),
        "{found:?}"
    );
    assert!(has("the summary line must read"), "{found:?}");

    let doc = edited("| `tagKeys` | supported |", "| `tagKey` | mostly |");
    let found = problems(&doc);
    let has = |needle: &str| found.iter().any(|p| p.contains(needle));
    assert!(has("member `tagKeys` has no row"), "{found:?}");
    assert!(has("`tagKey` is no member"), "{found:?}");
    assert!(has("status 'mostly'"), "{found:?}");

    let doc = edited(
        "| `UntagResource` | supported |",
        "| `UntagResources` | supported |",
    );
    assert!(problems(&doc).contains(&"operation UntagResource has no row".to_string()));
}

#[test]
fn shadowed_repeated_and_mixed_rows_are_named() {
    // `tcpRoute.match` has one field, which has its own row.
    let doc = edited(
        "| `RouteSpec.tcpRoute.timeout.*` |",
        "| `RouteSpec.tcpRoute.timeout.*`, `RouteSpec.tcpRoute.match.*`, `RouteSpec.priority` |",
    );
    let found = problems(&doc);
    let has = |needle: &str| found.iter().any(|p| p.contains(needle));
    assert!(
        has("`RouteSpec.tcpRoute.match.*` decides no field"),
        "{found:?}"
    );
    assert!(has("`RouteSpec.priority` already has a row"), "{found:?}");

    let doc = edited("| `tagKeys` |", "| `tagKeys`, `TagResource` |");
    let found = problems(&doc);
    assert!(
        found
            .iter()
            .any(|p| p.contains("a row names one kind of thing")),
        "{found:?}"
    );
}

#[test]
fn rows_decide_by_exact_path_then_longest_prefix() {
    let patterns: BTreeMap<String, usize> = [
        ("A.b.*".to_string(), 0),
        ("A.b.c.*".to_string(), 1),
        ("A.b.c.d".to_string(), 2),
        ("A.bx*".to_string(), 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(decide("A.b.c.d", &patterns).map(|d| d.1), Some(2));
    assert_eq!(decide("A.b.c.e", &patterns).map(|d| d.1), Some(1));
    assert_eq!(decide("A.b.z", &patterns).map(|d| d.1), Some(0));
    // A `.*` row covers whole members only, never a longer member name.
    assert_eq!(decide("A.bx.y", &patterns), None);
    assert_eq!(decide("A.bz", &patterns), None);
}
