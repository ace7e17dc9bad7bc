//! Alert triggers: Alertmanager sends a group's notification again on every
//! `repeat_interval` and once more when it resolves. One run per group
//! firing: a group fires again only after it resolved.

/// What a stored alert group says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Firing,
    Resolved,
}

/// What a notification does to its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Start a run and mark the group firing.
    Fire,
    /// Store the group's new state; no run.
    Record(GroupState),
    /// Nothing changes (a repeat).
    Ignore,
}

/// `stored`: the group's state so far (None: never seen); `firing`: the
/// notification's status.
pub fn on_notification(stored: Option<GroupState>, firing: bool) -> Outcome {
    match (stored, firing) {
        (Some(GroupState::Firing), true) => Outcome::Ignore,
        (_, true) => Outcome::Fire,
        (Some(GroupState::Firing), false) => Outcome::Record(GroupState::Resolved),
        (_, false) => Outcome::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_fires_once_until_it_resolves() {
        let mut state = None;
        let mut runs = 0;
        // firing, repeat, repeat, resolved, resolved again, firing again
        for firing in [true, true, true, false, false, true, true] {
            match on_notification(state, firing) {
                Outcome::Fire => {
                    runs += 1;
                    state = Some(GroupState::Firing);
                }
                Outcome::Record(s) => state = Some(s),
                Outcome::Ignore => {}
            }
        }
        assert_eq!(runs, 2);
        assert_eq!(state, Some(GroupState::Firing));
        assert_eq!(on_notification(None, false), Outcome::Ignore);
    }
}
