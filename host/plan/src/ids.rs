//! Deterministic id assignment for groups and steps written without an `id`.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::model::{GroupId, Plan, PlanId, Step, StepId};

/// Whether `id` is a valid plan, group or step id: 1 to 64 characters from
/// `[a-z0-9_.-]`, starting with a letter or digit.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'))
}

/// The lower-case slug of a name: letters and digits kept, runs of anything else turned
/// into one `-`, at most 32 characters; `fallback` when nothing is left.
pub fn slug(name: &str, fallback: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 32 {
            break;
        }
    }
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.to_string()
    }
}

fn derived(kind: &str, scope: &str, name: &str, taken: &BTreeSet<String>) -> String {
    let base = slug(name, kind);
    let candidate = |n: u32| {
        let mut h = Sha256::new();
        for part in [kind, scope, name] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.update(n.to_le_bytes());
        let digest = h.finalize();
        let short: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
        format!("{base}-{short}")
    };
    (0u32..=u32::MAX)
        .map(candidate)
        .find(|id| !taken.contains(id))
        .unwrap_or_else(|| format!("{base}-{}", taken.len()))
}

/// Assigns ids to the plan, groups and steps that have none. Derived ids are the name's
/// slug plus a short hash of (kind, scope, name), made unique within the plan, so the
/// same file always yields the same ids and exported files keep them.
pub fn assign_ids(plan: &mut Plan) {
    if plan.id.is_empty() {
        plan.id = PlanId(slug(&plan.name, "plan"));
    }
    let mut taken_groups: BTreeSet<String> = plan.groups.iter().map(|g| g.id.0.clone()).collect();
    for group in &mut plan.groups {
        if group.id.is_empty() {
            let id = derived("group", "", &group.name, &taken_groups);
            taken_groups.insert(id.clone());
            group.id = GroupId(id);
        }
    }
    let mut taken_steps: BTreeSet<String> = BTreeSet::new();
    let mut all_steps: Vec<(&str, &mut Step)> = Vec::new();
    for s in &mut plan.pre_steps {
        all_steps.push(("plan.pre", s));
    }
    for s in &mut plan.post_steps {
        all_steps.push(("plan.post", s));
    }
    for g in &mut plan.groups {
        for s in g.pre_steps.iter_mut().chain(g.post_steps.iter_mut()) {
            all_steps.push((g.id.as_str(), s));
        }
    }
    for (_, s) in &all_steps {
        taken_steps.insert(s.id.0.clone());
    }
    for (scope, step) in all_steps {
        if step.id.is_empty() {
            let id = derived("step", scope, &step.name, &taken_steps);
            taken_steps.insert(id.clone());
            step.id = StepId(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slug("Database tier (primary)", "g"),
            "database-tier-primary"
        );
        assert_eq!(slug("  ***  ", "group"), "group");
        assert_eq!(slug("Ünïcode ok", "g"), "n-code-ok");
        assert!(slug(&"x".repeat(100), "g").len() <= 32);
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("db-1.a_b"));
        assert!(!is_valid_id("-db"));
        assert!(!is_valid_id("DB"));
        assert!(!is_valid_id("a:b"));
        assert!(!is_valid_id(""));
    }
}
