//! wip
pub struct PlanDiff; pub struct Change; pub struct GroupChange; pub struct StepChange;
pub fn diff() {}
