//! Differences between two versions of a plan, matched by stable ids.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{GroupId, Plan, Step, StepId};

/// One field that changed, with the old and new values in JSON notation (`None`: the
/// field is absent on that side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Field path relative to the plan, group or step, e.g. `rto`, `action.message`,
    /// `network_map.0.test`.
    pub field: String,
    /// Old value.
    pub old: Option<String>,
    /// New value.
    pub new: Option<String>,
}

/// What happened to a group or step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    /// Only in the new plan.
    Added,
    /// Only in the old plan.
    Removed,
    /// In both, moved and/or with changed fields.
    Modified,
}

/// A group that was added, removed, moved or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChange {
    /// The group id (the matching key).
    pub id: GroupId,
    /// The group's name (the new one when modified).
    pub name: String,
    /// Added, removed or modified.
    pub kind: ChangeKind,
    /// Position in the old plan's `groups`.
    pub old_index: Option<usize>,
    /// Position in the new plan's `groups`.
    pub new_index: Option<usize>,
    /// Whether its order relative to the other kept groups changed.
    pub moved: bool,
    /// Changed fields (steps are reported separately).
    pub fields: Vec<Change>,
}

/// A step that was added, removed, moved or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepChange {
    /// The step id (the matching key).
    pub id: StepId,
    /// The step's name (the new one when modified).
    pub name: String,
    /// Added, removed or modified.
    pub kind: ChangeKind,
    /// Where it was: `pre_steps.1`, `groups.<group id>.post_steps.0`, …
    pub old_location: Option<String>,
    /// Where it is now.
    pub new_location: Option<String>,
    /// Whether it changed list, or its order relative to the other kept steps of its list.
    pub moved: bool,
    /// Changed fields.
    pub fields: Vec<Change>,
}

/// The differences between two plans (see [`diff`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanDiff {
    /// Changed plan-level fields (everything but groups and steps).
    pub fields: Vec<Change>,
    /// Added, removed, moved and changed groups, in new-plan order (removed ones last).
    pub groups: Vec<GroupChange>,
    /// Added, removed, moved and changed steps, in new-plan order (removed ones last).
    pub steps: Vec<StepChange>,
}

impl PlanDiff {
    /// Whether the plans are equivalent.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.groups.is_empty() && self.steps.is_empty()
    }

    /// A one-line summary like `git diff --stat`.
    pub fn stat(&self) -> String {
        fn count<T>(items: &[T], f: impl Fn(&T) -> bool) -> usize {
            items.iter().filter(|i| f(i)).count()
        }
        format!(
            "{} plan field(s) changed; groups: {} added, {} removed, {} changed, {} moved; steps: {} added, {} removed, {} changed, {} moved",
            self.fields.len(),
            count(&self.groups, |g| g.kind == ChangeKind::Added),
            count(&self.groups, |g| g.kind == ChangeKind::Removed),
            count(&self.groups, |g| g.kind == ChangeKind::Modified && !g.fields.is_empty()),
            count(&self.groups, |g| g.moved),
            count(&self.steps, |s| s.kind == ChangeKind::Added),
            count(&self.steps, |s| s.kind == ChangeKind::Removed),
            count(&self.steps, |s| s.kind == ChangeKind::Modified && !s.fields.is_empty()),
            count(&self.steps, |s| s.moved),
        )
    }
}

fn show(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(none)")
}

fn write_fields(out: &mut String, fields: &[Change]) {
    for c in fields {
        let _ = writeln!(
            out,
            "      {}: {} → {}",
            c.field,
            show(&c.old),
            show(&c.new)
        );
    }
}

impl fmt::Display for PlanDiff {
    /// The human rendering used by `haven plan diff`: the stat line, then details.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.stat());
        if !self.fields.is_empty() {
            out.push_str("plan\n");
            for c in &self.fields {
                let _ = writeln!(out, "  ~ {}: {} → {}", c.field, show(&c.old), show(&c.new));
            }
        }
        if !self.groups.is_empty() {
            out.push_str("groups\n");
        }
        for g in &self.groups {
            let (sign, place) = match g.kind {
                ChangeKind::Added => (
                    "+",
                    format!("at groups.{}", g.new_index.unwrap_or_default()),
                ),
                ChangeKind::Removed => (
                    "-",
                    format!("was groups.{}", g.old_index.unwrap_or_default()),
                ),
                ChangeKind::Modified if g.moved => (
                    "~",
                    format!(
                        "moved groups.{} → groups.{}",
                        g.old_index.unwrap_or_default(),
                        g.new_index.unwrap_or_default()
                    ),
                ),
                ChangeKind::Modified => {
                    ("~", format!("groups.{}", g.new_index.unwrap_or_default()))
                }
            };
            let _ = writeln!(out, "  {sign} {} ({}) {place}", g.id, g.name);
            write_fields(&mut out, &g.fields);
        }
        if !self.steps.is_empty() {
            out.push_str("steps\n");
        }
        for s in &self.steps {
            let old = s.old_location.as_deref().unwrap_or("?");
            let new = s.new_location.as_deref().unwrap_or("?");
            let (sign, place) = match s.kind {
                ChangeKind::Added => ("+", format!("at {new}")),
                ChangeKind::Removed => ("-", format!("was {old}")),
                ChangeKind::Modified if s.moved => ("~", format!("moved {old} → {new}")),
                ChangeKind::Modified => ("~", new.to_string()),
            };
            let _ = writeln!(out, "  {sign} {} ({}) {place}", s.id, s.name);
            write_fields(&mut out, &s.fields);
        }
        f.write_str(&out)
    }
}

/// Flattens a JSON value into `path → rendered value`: objects and arrays of objects
/// are descended into, everything else is a leaf.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&join(&i.to_string()), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn field_changes<T: Serialize>(old: &T, new: &T, skip: &[&str]) -> Vec<Change> {
    let to_map = |v: &T| {
        let mut value = serde_json::to_value(v).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            for k in skip {
                map.remove(*k);
            }
        }
        let mut flat = BTreeMap::new();
        flatten("", &value, &mut flat);
        flat
    };
    let (a, b) = (to_map(old), to_map(new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            field: k.clone(),
            old: a.get(k).cloned(),
            new: b.get(k).cloned(),
        })
        .collect()
}

/// The elements of `b` (a sequence of distinct keys) that are not in a longest common
/// subsequence with `a`: those whose relative order changed.
fn moved_keys<K: Ord + Clone>(a: &[K], b: &[K]) -> BTreeSet<K> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut kept = BTreeSet::new();
    let (mut i, mut j) = (0, 0);
    while i < n && j < m {
        if a[i] == b[j] {
            kept.insert(a[i].clone());
            i += 1;
            j += 1;
        } else if lcs[i + 1][j] >= lcs[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    b.iter().filter(|k| !kept.contains(*k)).cloned().collect()
}

/// Every step of a plan with its list (`pre_steps`, `groups.<id>.post_steps`, …) and
/// position in that list.
fn steps_of(plan: &Plan) -> Vec<(String, usize, &Step)> {
    let mut out = Vec::new();
    for (i, s) in plan.pre_steps.iter().enumerate() {
        out.push(("pre_steps".to_string(), i, s));
    }
    for g in &plan.groups {
        for (i, s) in g.pre_steps.iter().enumerate() {
            out.push((format!("groups.{}.pre_steps", g.id), i, s));
        }
        for (i, s) in g.post_steps.iter().enumerate() {
            out.push((format!("groups.{}.post_steps", g.id), i, s));
        }
    }
    for (i, s) in plan.post_steps.iter().enumerate() {
        out.push(("post_steps".to_string(), i, s));
    }
    out
}

/// Compares two plans, matching groups and steps by id. Duplicate ids (rejected by
/// verification) are matched by their first occurrence.
pub fn diff(old: &Plan, new: &Plan) -> PlanDiff {
    let fields = field_changes(old, new, &["groups", "pre_steps", "post_steps"]);

    // Groups.
    let old_groups: BTreeMap<&GroupId, usize> = old
        .groups
        .iter()
        .enumerate()
        .rev()
        .map(|(i, g)| (&g.id, i))
        .collect();
    let new_ids: BTreeSet<&GroupId> = new.groups.iter().map(|g| &g.id).collect();
    let common_old: Vec<&GroupId> = old
        .groups
        .iter()
        .map(|g| &g.id)
        .filter(|id| new_ids.contains(id))
        .collect();
    let common_new: Vec<&GroupId> = new
        .groups
        .iter()
        .map(|g| &g.id)
        .filter(|id| old_groups.contains_key(id))
        .collect();
    let moved = moved_keys(&common_old, &common_new);
    let mut groups = Vec::new();
    let mut seen = BTreeSet::new();
    for (j, g) in new.groups.iter().enumerate() {
        if !seen.insert(&g.id) {
            continue;
        }
        match old_groups.get(&g.id) {
            None => groups.push(GroupChange {
                id: g.id.clone(),
                name: g.name.clone(),
                kind: ChangeKind::Added,
                old_index: None,
                new_index: Some(j),
                moved: false,
                fields: Vec::new(),
            }),
            Some(&i) => {
                let fields = field_changes(&old.groups[i], g, &["pre_steps", "post_steps"]);
                let is_moved = moved.contains(&g.id);
                if is_moved || !fields.is_empty() {
                    groups.push(GroupChange {
                        id: g.id.clone(),
                        name: g.name.clone(),
                        kind: ChangeKind::Modified,
                        old_index: Some(i),
                        new_index: Some(j),
                        moved: is_moved,
                        fields,
                    });
                }
            }
        }
    }
    for (i, g) in old.groups.iter().enumerate() {
        if !new_ids.contains(&g.id) && old_groups.get(&g.id) == Some(&i) {
            groups.push(GroupChange {
                id: g.id.clone(),
                name: g.name.clone(),
                kind: ChangeKind::Removed,
                old_index: Some(i),
                new_index: None,
                moved: false,
                fields: Vec::new(),
            });
        }
    }

    // Steps.
    let old_steps = steps_of(old);
    let new_steps = steps_of(new);
    let mut old_by_id: BTreeMap<&StepId, (&String, usize, &Step)> = BTreeMap::new();
    for (list, i, s) in old_steps.iter().rev() {
        old_by_id.insert(&s.id, (list, *i, s));
    }
    let new_step_ids: BTreeSet<&StepId> = new_steps.iter().map(|(_, _, s)| &s.id).collect();
    // Relative order is compared per list, over the steps that stayed in that list.
    let mut moved_steps = BTreeSet::new();
    let lists: BTreeSet<&String> = new_steps.iter().map(|(l, _, _)| l).collect();
    for list in lists {
        let stayed =
            |steps: &[(String, usize, &Step)], other: &dyn Fn(&StepId) -> bool| -> Vec<StepId> {
                steps
                    .iter()
                    .filter(|(l, _, s)| l == list && other(&s.id))
                    .map(|(_, _, s)| s.id.clone())
                    .collect()
            };
        let in_new_same = |id: &StepId| new_steps.iter().any(|(l, _, s)| l == list && &s.id == id);
        let in_old_same = |id: &StepId| old_by_id.get(id).is_some_and(|(l, _, _)| *l == list);
        let a = stayed(&old_steps, &in_new_same);
        let b = stayed(&new_steps, &in_old_same);
        moved_steps.extend(moved_keys(&a, &b));
    }
    let mut steps = Vec::new();
    let mut seen = BTreeSet::new();
    for (list, j, s) in &new_steps {
        if !seen.insert(&s.id) {
            continue;
        }
        let location = format!("{list}.{j}");
        match old_by_id.get(&s.id) {
            None => steps.push(StepChange {
                id: s.id.clone(),
                name: s.name.clone(),
                kind: ChangeKind::Added,
                old_location: None,
                new_location: Some(location),
                moved: false,
                fields: Vec::new(),
            }),
            Some((old_list, i, old_step)) => {
                let fields = field_changes(*old_step, *s, &[]);
                let is_moved = *old_list != list || moved_steps.contains(&s.id);
                if is_moved || !fields.is_empty() {
                    steps.push(StepChange {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        kind: ChangeKind::Modified,
                        old_location: Some(format!("{old_list}.{i}")),
                        new_location: Some(location),
                        moved: is_moved,
                        fields,
                    });
                }
            }
        }
    }
    let mut removed_seen = BTreeSet::new();
    for (list, i, s) in &old_steps {
        if !new_step_ids.contains(&s.id) && removed_seen.insert(&s.id) {
            steps.push(StepChange {
                id: s.id.clone(),
                name: s.name.clone(),
                kind: ChangeKind::Removed,
                old_location: Some(format!("{list}.{i}")),
                new_location: None,
                moved: false,
                fields: Vec::new(),
            });
        }
    }
    PlanDiff {
        fields,
        groups,
        steps,
    }
}
