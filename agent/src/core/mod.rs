//! The agent's pure core: deciding what to do with an assignment, tracking
//! which attempts this agent knows, and turning how a process ended into the
//! event the scheduler receives. No I/O, no async, no clock — the shell
//! (`crate::shell`) performs what these functions decide.

pub mod assign;
pub mod capacity;
pub mod container;
pub mod executor;
pub mod fence;
pub mod gpu;
pub mod limits;
pub mod outcome;
pub mod table;

pub use assign::{
    decide_assign, AssignDecision, AttemptPlan, CodePlan, InputFetch, InputSource, OutputUpload,
    StoredObject,
};
pub use executor::ExecutorKind;
pub use fence::{Fence, FenceDecision};
pub use outcome::{Failure, StopCause, Termination};
pub use table::{AttemptKey, AttemptTable};
